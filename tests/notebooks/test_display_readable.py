"""kvmlab.display reads well in a browser: tables say what they compare, name the command
channel right, never show a temporary path or an empty box, and repeat nothing.

The browser check (tools/check_notebooks_browser.py) sees the rendered notebooks; these
pin down each rule on one object, without Jupyter.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from kvmlab import display
from kvmlab.channels.console import GuestFacts
from kvmlab.golden.diff import diff_runtimes
from kvmlab.lifecycle.hypervisor import Hypervisor
from kvmlab.runtime.generator import generate_runtime
from kvmlab.spec.capabilities import load_profile
from kvmlab.spec.instance import Instance
from kvmlab.spec.layout import StateLayout


def _vm(**fields: object) -> Instance:
    data: dict[str, object] = {
        "name": "web1",
        "nics": [{"mac": "52:54:00:12:34:56", "mode": "user"}],
        "hvparams": {"kernel_path": "", "vnc_bind_address": ""},
        **fields,
    }
    return Instance.model_validate(data)


def test_a_diff_names_what_it_compares_in_its_heading_and_columns() -> None:
    vm = _vm(hvparams={"acpi": False, "kernel_path": "", "vnc_bind_address": ""})
    diff = diff_runtimes(
        generate_runtime(vm, load_profile("qemu-7.2")),
        generate_runtime(vm, load_profile("qemu-10.0")),
    )
    html = display.diff_html(diff, labels=("QEMU 7.2", "QEMU 10.0"))
    assert "QEMU 7.2 → QEMU 10.0" in html
    assert ">QEMU 7.2</th>" in html and ">QEMU 10.0</th>" in html
    assert "a:web1" not in html
    # Without labels, the diff's own names, as before.
    assert diff.a in display.diff_html(diff)


def test_diff_cells_are_left_aligned_and_an_absent_side_is_a_dash_not_a_box() -> None:
    vm = _vm()
    bigger = _vm(hvparams={"cpu_type": "qemu64", "kernel_path": "", "vnc_bind_address": ""})
    html = display.diff_html(diff_runtimes(generate_runtime(vm), generate_runtime(bigger)))
    assert "<td>" not in html and "<th>" not in html  # every cell styles its alignment
    assert html.count("text-align:left") >= 7
    assert "<code></code>" not in html and "&mdash;" in html  # -cpu was absent before
    assert "white-space:nowrap;font-weight:bold'>guest-visible" in html


def test_hyphenated_pieces_never_break_and_commas_may() -> None:
    code = display.argv_html(["kvm", "-chardev", "socket,id=cmd0,path=/srv/web-1/x.cmd"])
    assert "<wbr>" in code
    assert "<span style='white-space:nowrap'>path=/srv/web-1/x.cmd</span>" in code


def test_empty_values_say_empty() -> None:
    html = display.instance_html(_vm(hvparams={"kernel_path": "", "vnc_bind_address": ""}))
    assert "<code></code>" not in html and ">empty</span>" in html


def test_the_command_channel_is_explained_as_such() -> None:
    rows = {
        (row.option, row.value): row.why
        for row in display.argv_rows(generate_runtime(_vm(), load_profile("qemu-7.2")).argv)
    }
    assert rows[("-serial", "chardev:serial0")].startswith("the guest's first serial port (ttyS0)")
    assert "command channel" in rows[("-serial", "chardev:cmd0")]
    assert "ttyS1" in rows[("-serial", "chardev:cmd0")]
    chardevs = [why for (option, _), why in rows.items() if option == "-chardev"]
    assert len(chardevs) == 2
    assert "console" in chardevs[0] and "logged to a file" in chardevs[0]
    assert "command channel" in chardevs[1] and "logged" not in chardevs[1]


def test_old_qemu_serial_sockets_are_numbered_too() -> None:
    runtime = generate_runtime(_vm(), load_profile("ganeti-1.0"))
    serial = [row.why for row in display.argv_rows(runtime.argv) if row.option == "-serial"]
    assert [("ttyS0" in why, "ttyS1" in why) for why in serial] == [(True, False), (False, True)]


def test_the_host_only_legend_speaks_of_text_not_rows() -> None:
    html = display.runtime_html(generate_runtime(_vm()))
    assert "grey rows" not in html and "in grey text are host-only" in html
    assert "background:transparent" in html  # JupyterLab's striping does not apply


def test_temporary_state_paths_are_shown_inside_the_state_dir() -> None:
    root = Path(tempfile.mkdtemp(prefix="kvmlab-display-"))
    try:
        runtime = generate_runtime(_vm(), layout=StateLayout(root))
        html = display.runtime_html(runtime)
        assert str(root) not in html
        assert "…/pid/web1" in html
        lab = Hypervisor(root, backend="fake")
        page = display.hypervisor_html(lab)
        assert str(root) not in page and f"$TMPDIR/{root.name}" in page
    finally:
        shutil.rmtree(root)
    # A path that only lies in the temp folder stays (an example, not a state dir).
    assert "/tmp/up" in display.argv_html(["kvm", "-netdev", "tap,script=/tmp/up"])


def test_facts_leave_out_the_loopback_and_headings_differ() -> None:
    facts = GuestFacts(
        mem_kb=223_388, cpus=2, nics={"lo": "00:00:00:00:00:00", "eth0": "52:54:00:12:34:56"}
    )
    vm = _vm(memory=256, vcpus=2)
    bigger = _vm(memory=512, vcpus=2)
    html = display.facts_html(facts, expected=vm)
    assert "00:00:00:00:00:00" not in html and "1 NIC" in html
    assert "differs" not in html
    assert display.facts_html(facts, expected=bigger) != html
    assert "against instance web1: 512 MiB" in display.facts_html(facts, expected=bigger)
    titled = display.facts_html(facts, title="After the reboot")
    assert "<strong>After the reboot</strong>" in titled


def test_one_instance_is_not_plural(tmp_path: Path) -> None:
    lab = Hypervisor(tmp_path / "lab", backend="fake")
    vm = _vm(memory=160)
    lab.start(vm)
    try:
        assert "1 instance, 1 running" in display.hypervisor_html(lab)
    finally:
        lab.stop("web1", force=True)
        lab.cleanup("web1")


# --------------------------------------------------------------------------- helpers


def test_example_files_are_found_from_anywhere(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    names = display.example_files("legacy-runtimes")
    assert "spice-era-with-disks.json" in names
    path = display.example_file("legacy-runtimes", "spice-era-with-disks.json")
    assert path.is_file() and path.read_text().startswith("[")
    with pytest.raises(FileNotFoundError, match=r"no example file 'legacy-runtimes/nope\.json'"):
        display.example_file("legacy-runtimes", "nope.json")
    with pytest.raises(FileNotFoundError, match="not an example file name"):
        display.example_file("..", "pyproject.toml")


def test_live_argv_and_option_values(tmp_path: Path) -> None:
    lab = Hypervisor(tmp_path / "lab", backend="fake")
    pid = lab.start(_vm(memory=160)).pid
    assert pid is not None
    try:
        argv = display.live_argv(pid)
        assert display.option_values(argv, "-m") == ["160"]
        assert any("52:54:00:12:34:56" in value for value in display.option_values(argv, "-device"))
    finally:
        lab.stop("web1", force=True)
        lab.cleanup("web1")
    with pytest.raises(ProcessLookupError, match="no process"):
        display.live_argv(pid)


def test_wait_for_facts_outside_ipython_returns_the_facts(tmp_path: Path) -> None:
    lab = Hypervisor(tmp_path / "lab", backend="fake")
    lab.start(_vm(memory=160, vcpus=2, hvparams={"kernel_path": "", "vnc_bind_address": ""}))
    try:
        facts = display.wait_for_facts(lab.console("web1"), timeout=30)
        assert facts.cpus == 2 and facts.macs[-1] == "52:54:00:12:34:56"
        assert "KVMLAB-FACTS-END" in display.console_tail(lab.console("web1"), lines=50)
    finally:
        lab.stop("web1", force=True)
        lab.cleanup("web1")
