"""kvmlab.display: the notebook renderings escape what they show and show what they should.

The HTML goes straight into a browser page, and instance fields such as ``kernel_args`` or
``kvm_extra`` may legally hold ``<`` and ``&``: a missing ``html.escape`` would turn a VM
description into markup (or script). Each renderer is fed such values here.
"""

from __future__ import annotations

import inspect
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from kvmlab import display
from kvmlab.channels.console import GuestFacts
from kvmlab.golden.diff import diff_runtimes
from kvmlab.lifecycle.hypervisor import Hypervisor
from kvmlab.runtime.generator import generate_runtime
from kvmlab.runtime.invariants import check_runtime
from kvmlab.spec.capabilities import QemuCapabilities, load_profile
from kvmlab.spec.instance import Disk, HvParams, Instance, Nic
from kvmlab.testing.plugin import stop_all

HOSTILE_ARGS = "console=ttyS0 <b>&x"
HOSTILE_EXTRA = "-fw_cfg name=opt/kvmlab,string=<script>alert(1)</script>"


def _instance(**hv: object) -> Instance:
    params: dict[str, object] = {
        "kernel_path": "/boot/vmlinuz",
        "initrd_path": "/boot/initrd.img",
        "kernel_args": HOSTILE_ARGS,
        "kvm_extra": HOSTILE_EXTRA,
        "vnc_bind_address": "",
        **hv,
    }
    return Instance(
        name="web1",
        memory=256,
        vcpus=2,
        nics=(Nic(mac="52:54:00:12:34:56", mode="user"),),
        disks=(Disk(path="/srv/a&b.img"),),
        hvparams=HvParams.model_validate(params),
    )


def _assert_escaped(html: str) -> None:
    assert "<script>" not in html
    assert "<b>" not in html
    assert "&x" not in html.replace("&amp;x", "")
    assert "&lt;script&gt;" in html or "&lt;b&gt;" in html


def _body_rows(html: str) -> list[str]:
    """The rows of the first table's body."""
    body = html.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    return re.findall(r"<tr[^>]*>(.*?)</tr>", body)


# --------------------------------------------------------------------------- runtime


def test_runtime_table_has_a_row_per_option_with_the_memory_value() -> None:
    vm = _instance()
    runtime = generate_runtime(vm, load_profile("qemu-7.2"))
    html = display.runtime_html(runtime)
    rows = _body_rows(html)
    options = [word for word in runtime.argv[1:] if word.startswith("-")]
    assert len(rows) == 1 + len(options)  # the binary, then one row per option
    memory_row = next(row for row in rows if ">-m</code>" in row)
    assert ">256</code>" in memory_row
    assert "guest memory (MiB)" in memory_row
    pidfile_row = next(row for row in rows if ">-pidfile</code>" in row)
    assert "host-only" in pidfile_row


def test_runtime_html_escapes_kernel_args_and_kvm_extra() -> None:
    html = display.runtime_html(generate_runtime(_instance()))
    _assert_escaped(html)
    assert "console=ttyS0 &lt;b&gt;&amp;x" in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_runtime_rows_mark_kvm_extra_and_flags() -> None:
    runtime = generate_runtime(_instance(), load_profile("qemu-7.2"))
    rows = display.argv_rows(runtime.argv, extra=runtime.hvparams.kvm_extra_args)
    by_option = {row.option: row for row in rows}
    assert by_option["-daemonize"].value is None
    assert by_option["-fw_cfg"].origin == "kvm_extra"
    assert by_option["-fw_cfg"].why.startswith("from hvparams.kvm_extra")
    assert by_option["(binary)"].value == runtime.argv[0]


def test_argv_html_marks_start_time_arguments() -> None:
    saved = ("/usr/bin/kvm", "-name", "vm1", "-m", "128")
    live = (*saved, "-netdev", "user,id=net0", "-qmp", "unix:/s,server=on,wait=off")
    rows = display.argv_rows(live, saved=saved)
    assert [row.origin for row in rows if row.option in {"-netdev", "-qmp"}] == ["start"] * 2
    assert [row.origin for row in rows if row.option == "-m"] == ["generated"]
    assert "appended at start time" in display.argv_html(live, saved=saved)


def test_incoming_is_explained_as_the_state_a_start_loads() -> None:
    saved = ("/usr/bin/kvm", "-name", "vm1", "-m", "128")
    for uri in ("defer", "unix:/lab/ctrl/vm1.incoming"):
        live = (*saved, "-qmp", "unix:/s,server=on,wait=off", "-incoming", uri)
        (row,) = [row for row in display.argv_rows(live, saved=saved) if row.option == "-incoming"]
        assert (row.value, row.origin) == (uri, "start")
        assert "not a kvmlab option" not in row.why
        assert "migration" in row.why and "saved state" in row.why and "never saved" in row.why


def test_runtime_text_lists_every_option() -> None:
    runtime = generate_runtime(_instance())
    text = display.runtime_text(runtime)
    assert text.strip()
    for word in runtime.argv[1:]:
        if word.startswith("-"):
            assert word in text
    assert "52:54:00:12:34:56" in text  # the NIC, kept as data


# --------------------------------------------------------------------------- instance


def test_instance_html_escapes_and_lists_changed_hvparams() -> None:
    vm = _instance()
    html = display.instance_html(vm)
    _assert_escaped(html)
    assert "kernel_args" in html
    assert "/srv/a&amp;b.img" in html
    assert "52:54:00:12:34:56" in html
    text = display.instance_text(vm)
    assert "web1" in text and "kernel_args" in text


def test_instance_at_defaults_says_so() -> None:
    html = display.instance_html(Instance(name="plain"))
    assert "at Ganeti&#x27;s defaults" in html
    assert "no NIC" in html


# --------------------------------------------------------------------------- invariants


def test_report_html_shows_a_violation_with_its_evidence() -> None:
    vm = _instance()
    runtime = generate_runtime(vm)
    broken = runtime.model_copy(
        update={"argv": (*runtime.argv, "-netdev", "tap,id=x,script=/tmp/<up>&")}
    )
    report = check_runtime(broken, vm)
    assert not report.ok
    html = display.report_html(report)
    assert "violated" in html
    assert "argv[" in html and "-netdev" in html
    assert "/tmp/&lt;up&gt;&amp;" in html
    assert "<up>" not in html
    text = display.report_text(report)
    assert "VIOLATED" in text and "points under a temp directory" in text


def test_report_html_for_a_good_runtime_says_all_hold() -> None:
    vm = _instance()
    html = display.report_html(check_runtime(generate_runtime(vm), vm))
    assert "all 3 hold" in html
    assert "violated" not in html


# --------------------------------------------------------------------------- guest facts


def test_facts_html_escapes_and_shows_mismatches() -> None:
    facts = GuestFacts(mem_kb=251_659, cpus=2, nics={"eth0": "<b>&"})
    nic = Nic(mac="52:54:00:00:00:01", mode="user")
    vm = Instance(name="vm1", memory=384, vcpus=2, nics=(nic,))
    html = display.facts_html(facts, expected=vm)
    assert "<b>" not in html and "&lt;b&gt;&amp;" in html
    assert html.count("differs") == 2  # memory (256 MiB seen, 384 said) and the NICs
    assert "matches" in html  # the CPUs
    text = display.facts_text(facts, expected=vm)
    assert "[DIFFERS] memory" in text and "[ok] cpus" in text


def test_facts_match_the_instance_they_came_from() -> None:
    facts = GuestFacts(mem_kb=223_388, cpus=2, nics={"eth0": "52:54:00:6b:76:01"})
    vm = Instance(name="g", memory=256, vcpus=2, nics=(Nic(mac="52:54:00:6b:76:01", mode="user"),))
    assert "differs" not in display.facts_html(facts, expected=vm)
    assert display.facts_text(facts).startswith("Guest facts: MemTotal 223388 kB")


# --------------------------------------------------------------------------- diff


def test_diff_rendering_shows_both_sides_and_the_impact() -> None:
    vm = _instance()
    diff = diff_runtimes(
        generate_runtime(vm, load_profile("qemu-7.2")),
        generate_runtime(vm.model_copy(update={"memory": 512}), load_profile("qemu-10.0")),
    )
    html = display.diff_html(diff)
    assert html.startswith('<div class="kvmlab-diff">') and html.endswith("</div>")
    assert "<code>-m</code>" in html and "guest-visible" in html
    text = display.diff_text(diff)
    assert text.startswith(f"--- {diff.a}\n+++ {diff.b}\nguest-visible (")
    assert "  ~ -m: " in text and text.endswith("\n")


# --------------------------------------------------------------------------- hypervisor


def test_hypervisor_html_lists_instances(tmp_path: Path) -> None:
    lab = Hypervisor(tmp_path / "lab", backend="fake")
    assert "no instance" in display.hypervisor_html(lab)
    assert "no instance" in display.hypervisor_text(lab)
    vm = Instance(
        name="vm1",
        memory=160,
        nics=(Nic(mac="52:54:00:00:00:09", mode="user"),),
        hvparams=HvParams(kernel_path="", vnc_bind_address=""),
    )
    started = lab.start(vm)
    try:
        html = display.hypervisor_html(lab)
        rows = _body_rows(html)
        assert len(rows) == 1
        assert "vm1" in rows[0] and "running" in rows[0] and str(started.pid) in rows[0]
        assert "160 MiB" in rows[0] and "52:54:00:00:00:09" in rows[0]
        info = lab.info("vm1")
        info_html = display.info_html(info)
        assert f"/proc/{info.pid}/cmdline" in info_html
        assert "start time" in info_html  # the NIC and QMP arguments
        assert "vm1" in display.info_text(info)
    finally:
        lab.stop("vm1", force=True)
    assert "stopped" in display.hypervisor_text(lab)
    lab.cleanup("vm1")


def test_info_shows_snapshots_and_a_saved_state_as_a_table(tmp_path: Path) -> None:
    lab = Hypervisor(tmp_path / "lab", backend="fake")
    vm = Instance(name="vm1", hvparams=HvParams(kernel_path="", vnc_bind_address=""))
    lab.start(vm)
    try:
        bare = lab.info("vm1", query_guest=False)
        for shown in (display.info_html(bare), display.info_text(bare)):
            assert "snapshots: []" not in shown and "saved: None" not in shown
            assert "saved state waits" not in shown
        taken = lab.snapshot("vm1", "base")
        lab.save("vm1")
    finally:
        stop_all(lab)
    info = lab.info("vm1", query_guest=False)
    size = f"{taken.size / 1e6:.1f} MB"

    html = display.info_html(info)
    assert "[{" not in html and "{'" not in html, "no raw Python list or dict"
    rows = [row for row in re.findall(r"<tr[^>]*>(.*?)</tr>", html) if " MB<" in row]
    assert len(rows) == 2, rows
    saved_row, base_row = rows
    assert "saved state" in saved_row and "base" in base_row
    for cell in (size, taken.created, taken.qemu_version, taken.machine, "running"):
        assert cell in base_row, cell
    words = re.sub(r"<[^>]+>", "", html)
    assert "saved state waits: kvmlab restore vm1 continues it" in words
    assert "<code" in html.split("saved state waits: ", 1)[1].split("continues it", 1)[0]

    text = display.info_text(info)
    assert "[{" not in text and "{'" not in text
    assert text.startswith("vm1: stopped, no process,"), text.splitlines()[0]
    assert "saved state waits: `kvmlab restore vm1` continues it" in text
    (line,) = [line for line in text.splitlines() if line.startswith("base ")]
    assert size in line and taken.machine in line and line.endswith("running")
    lab.cleanup("vm1")


# --------------------------------------------------------------------------- matrix


def _matrix_instances() -> list[Instance]:
    return [
        Instance(name="plain"),
        Instance(name="no-acpi", hvparams=HvParams(acpi=False)),
        Instance(
            name="ro-disk",
            disks=(Disk(path="/srv/base.img", mode="ro"),),
            hvparams=HvParams(kernel_path=""),
        ),
    ]


def test_option_features_drop_instance_data() -> None:
    argv = generate_runtime(_instance(), load_profile("qemu-7.2")).argv
    features = display.option_features(argv)
    assert "-m" in features and "-device virtio-balloon" in features
    assert "-monitor server=on" in features
    assert not any("256" in feature or "web1" in feature for feature in features)
    assert "-device" not in features  # only through its drivers


def test_capability_matrix_shows_spellings_and_failures() -> None:
    old = QemuCapabilities(version=(0, 12, 5), has_drive_readonly=False)
    profiles = {
        "<old>": old,
        "qemu-7.2": load_profile("qemu-7.2"),
        "qemu-10.0": load_profile("qemu-10.0"),
    }
    matrix = display.capability_matrix(_matrix_instances(), profiles)
    assert matrix.present[("-no-acpi", "qemu-7.2")] == {"no-acpi"}
    assert ("-no-acpi", "qemu-10.0") not in matrix.present
    assert matrix.present[("-machine acpi=off", "qemu-10.0")] == {"no-acpi"}
    assert ("ro-disk", "<old>") in matrix.errors
    assert "-m" not in matrix.differing()
    assert "-no-acpi" in matrix.differing()

    html = display.matrix_html(matrix)
    assert "&lt;old&gt;" in html and "<old>" not in html
    assert "cannot be generated" in html and "read-only" in html
    svg = display.matrix_svg(matrix)
    root = ET.fromstring(svg)  # well-formed: everything escaped
    assert root.tag.endswith("svg")
    assert "&lt;old&gt;" in svg
    text = display.matrix_text(matrix, only_differing=False)
    assert text.splitlines()[0].startswith("option")
    assert "ro-disk on <old>" in text


RENDERERS = [
    f"{name}_{kind}"
    for name in ("instance", "runtime", "report", "hypervisor", "facts", "diff", "info")
    for kind in ("html", "text")
]


@pytest.mark.parametrize("name", RENDERERS)
def test_renderers_take_the_object_alone(name: str) -> None:
    # The classes' _repr_html_ and _repr_pretty_ call these as f(obj).
    function = getattr(display, name)
    required = [
        parameter
        for parameter in inspect.signature(function).parameters.values()
        if parameter.default is inspect.Parameter.empty
    ]
    assert len(required) == 1, f"{name} must be callable as {name}(obj)"


def test_capabilities_table_lists_what_differs() -> None:
    profiles = {"qemu-7.2": load_profile("qemu-7.2"), "<b>10.0": load_profile("qemu-10.0")}
    html = display.capabilities_html(profiles)
    assert "&lt;b&gt;10.0" in html and "<b>10.0" not in html
    assert "has_no_acpi" in html and "has_run_with" in html
    assert "has_netdev" not in html  # both have it: not a difference
    text = display.capabilities_text(profiles, only_differing=False)
    assert "has_netdev" in text and "7.2.22" in text
