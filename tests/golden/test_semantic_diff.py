"""``kvmlab.golden.diff``: option-by-option runtime comparison, guest-visible or host-only.

The text ``kvmlab diff`` prints is pinned whole in ``tests/cli/test_cli.py``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from kvmlab import display
from kvmlab.display import diff_html, diff_text
from kvmlab.errors import InstanceError, InvalidInputError, RuntimeFormatError
from kvmlab.golden.cases import default_cases_dir, default_golden_dir, render_args
from kvmlab.golden.diff import (
    Change,
    DiffInputError,
    RuntimeDiff,
    TreeDiff,
    diff_paths,
    diff_runtimes,
)
from kvmlab.golden.options import parse_options
from kvmlab.runtime.generator import generate_runtime
from kvmlab.runtime.saved import KVMRuntime
from kvmlab.spec.instance import Instance
from kvmlab.spec.layout import StateLayout

UUID = "12345678-1234-5678-1234-567812345678"
LAYOUT = StateLayout(Path("/var/lib/kvmlab"))
GOLDEN = default_golden_dir()
LEGACY = Path(__file__).resolve().parents[2] / "fixtures" / "legacy-runtimes"
CASES = default_cases_dir()


def runtime(layout: StateLayout = LAYOUT, **fields: Any) -> KVMRuntime:
    fields.setdefault("name", "vm1")
    fields.setdefault("uuid", UUID)
    return generate_runtime(Instance.model_validate(fields), layout=layout)


def only(diff: RuntimeDiff, option: str) -> Change:
    found = [change for change in diff.changes if change.option == option]
    assert len(found) == 1, diff.changes
    return found[0]


# --- parsing ---------------------------------------------------------------------------------


def test_parse_options_pairs_values_flags_and_positionals() -> None:
    argv = ["/usr/bin/kvm", "-m", "512", "-daemonize", "--smp", "2", "disk.img", "-append", "-v"]
    assert parse_options(argv) == [
        ("(binary)", "/usr/bin/kvm"),
        ("-m", "512"),
        ("-daemonize", None),
        ("-smp", "2"),
        ("(positional)", "disk.img"),
        ("-append", "-v"),
    ]
    assert parse_options(["-S", "-unknown", "-usb", "-last"], binary=False) == [
        ("-S", None),
        ("-unknown", None),
        ("-usb", None),
        ("-last", None),
    ]


# --- classification --------------------------------------------------------------------------


def test_same_runtime_is_equal() -> None:
    diff = diff_runtimes(runtime(), runtime())
    assert diff.equal and not diff.changes and not diff.guest_visible
    assert "no differences" in diff_text(diff)


def test_memory_and_cpus_are_guest_visible() -> None:
    diff = diff_runtimes(runtime(memory=512), runtime(memory=1024, vcpus=2))
    assert [(c.option, c.old, c.new) for c in diff.guest_visible] == [
        ("-m", "512", "1024"),
        ("-smp", "1", "2"),
    ]
    assert not diff.host_only


def test_another_state_directory_is_host_only() -> None:
    diff = diff_runtimes(runtime(), runtime(StateLayout(Path("/srv/lab"))))
    assert not diff.equal
    assert not diff.guest_visible
    assert {c.option for c in diff.host_only} == {"-pidfile", "-monitor", "-chardev"}


def test_name_is_host_only_but_the_derived_uuid_is_not() -> None:
    a = runtime(name="vm1", uuid=None)
    b = runtime(name="vm2", uuid=None)
    diff = diff_runtimes(a, b)
    assert only(diff, "-name").guest_visible is False
    assert only(diff, "-uuid").guest_visible is True


def test_adding_a_cdrom_does_not_shift_disk_matching() -> None:
    disks = [{"path": "/dev/vg/a"}, {"path": "/dev/vg/b"}]
    a = runtime(disks=disks, hvparams={"kernel_path": ""})
    b = runtime(disks=disks, hvparams={"kernel_path": "", "cdrom_image_path": "/srv/x.iso"})
    diff = diff_runtimes(a, b)
    assert [(c.option, c.key, c.kind) for c in diff.changes] == [("-drive", "cdrom#0", "added")]
    assert diff.guest_visible


def test_disk_cache_is_guest_visible_but_aio_is_host_only() -> None:
    disks = [{"path": "/dev/vg/a"}]
    base = runtime(disks=disks, hvparams={"disk_cache": "none"})
    native = runtime(disks=disks, hvparams={"disk_cache": "none", "disk_aio": "native"})
    wb = runtime(disks=disks, hvparams={"disk_cache": "writeback"})
    aio = only(diff_runtimes(base, native), "-drive")
    assert aio.guest_visible is False and aio.details == ("+aio=native",)
    cache = only(diff_runtimes(base, wb), "-drive")
    assert cache.guest_visible is True and cache.details == ("cache=none -> cache=writeback",)


def test_serial_presence_is_guest_visible_its_socket_is_not() -> None:
    diff = diff_runtimes(runtime(), runtime(hvparams={"serial_console": False}))
    console, channel = (change for change in diff.changes if change.option == "-serial")
    assert console.guest_visible and console.new == "none"
    # The command channel (ttyS1) goes with the console: the guest loses a port.
    assert channel.guest_visible and (channel.kind, channel.old) == ("removed", "chardev:cmd0")
    chardevs = [change for change in diff.changes if change.option == "-chardev"]
    assert len(chardevs) == 2 and not any(change.guest_visible for change in chardevs)
    assert only(diff, "-append").guest_visible  # console=ttyS0 left the kernel command line


def test_vnc_and_its_tls_credentials_are_host_only() -> None:
    a = runtime(network_port=5901, hvparams={"vnc_bind_address": "127.0.0.1"})
    b = runtime(network_port=5902, hvparams={"vnc_bind_address": "127.0.0.1", "vnc_tls": True})
    diff = diff_runtimes(a, b)
    assert not diff.guest_visible
    assert {(c.option, c.kind) for c in diff.changes} == {("-vnc", "changed"), ("-object", "added")}


def test_acpi_rtc_boot_kernel_and_cpu_are_guest_visible() -> None:
    a = runtime(hvparams={"kernel_path": ""}, disks=[{"path": "/d"}])
    b = runtime(
        hvparams={
            "kernel_path": "",
            "acpi": False,
            "use_localtime": True,
            "boot_order": "network",
            "cpu_type": "qemu64",
        },
        disks=[{"path": "/d"}],
    )
    diff = diff_runtimes(a, b)
    assert {c.option for c in diff.guest_visible} == {"-no-acpi", "-rtc", "-boot", "-cpu"}
    assert not diff.host_only


def test_confinement_is_host_only() -> None:
    b = runtime(hvparams={"use_chroot": True, "security_model": "user", "security_domain": "qemu"})
    diff = diff_runtimes(runtime(), b)
    assert {c.option for c in diff.host_only} == {"-chroot", "-runas"}
    assert not diff.guest_visible


def test_nics_are_compared_as_data() -> None:
    nic = {"mac": "52:54:00:00:00:01", "mode": "bridged", "link": "br0"}
    a = runtime(nics=[nic])
    b = runtime(nics=[{**nic, "link": "br1"}, {"mac": "52:54:00:00:00:02", "mode": "user"}])
    diff = diff_runtimes(a, b)
    assert [(c.section, c.key, c.kind) for c in diff.changes] == [
        ("nics", "nic0", "changed"),
        ("nics", "nic1", "added"),
    ]
    assert all(c.guest_visible for c in diff.changes)
    vhost = diff_runtimes(a, runtime(nics=[nic], hvparams={"vhost_net": True}))
    assert [(c.option, c.guest_visible) for c in vhost.changes] == [("vhost_net", False)]
    model = diff_runtimes(a, runtime(nics=[nic], hvparams={"nic_type": "e1000"}))
    assert [(c.option, c.guest_visible) for c in model.changes] == [("nic_type", True)]


def test_start_time_tap_paths_are_host_only_the_backend_kind_is_not(tmp_path: Path) -> None:
    argv = ["/usr/bin/kvm", "-m", "128"]
    tap = [
        "-netdev",
        "tap,id=net0,script=/tmp/a/up-0,downscript=no",
        "-device",
        "e1000,netdev=net0,id=nic0",
    ]
    other = [
        "-netdev",
        "tap,id=net0,script=/tmp/b/up-0,downscript=no",
        "-device",
        "e1000,netdev=net0,id=nic0",
    ]
    user = ["-netdev", "user,id=net0", "-device", "e1000,netdev=net0,id=nic0"]
    for name, start in (("tap", tap), ("other", other), ("user", user)):
        (tmp_path / f"{name}.args").write_text(render_args(argv, start))
    script = diff_paths(tmp_path / "tap.args", tmp_path / "other.args")
    assert isinstance(script, RuntimeDiff)
    assert [(c.section, c.label, c.guest_visible) for c in script.changes] == [
        ("start", "-netdev [id=net0]", False)
    ]
    backend = diff_paths(tmp_path / "tap.args", tmp_path / "user.args")
    assert isinstance(backend, RuntimeDiff) and backend.guest_visible


# --- inputs ----------------------------------------------------------------------------------


def test_inputs_of_every_kind(tmp_path: Path) -> None:
    saved = tmp_path / "vm1.runtime"
    saved.write_text(runtime(name="kernel-boot-defaults", uuid=None).to_json())
    case = CASES / "kernel-boot-defaults.json"
    golden = GOLDEN / "qemu-7.2" / "kernel-boot-defaults.args"
    assert diff_paths(saved, case).equal  # an instance is generated with the same defaults
    as_json = tmp_path / "rt.json"
    as_json.write_text(saved.read_text())
    assert diff_paths(as_json, saved).equal
    mixed = diff_paths(case, golden)  # the golden file adds start-time arguments
    assert isinstance(mixed, RuntimeDiff)
    assert {c.section for c in mixed.changes} == {"start"}
    toml = CASES / "kernel-boot-initrd-args.toml"
    yaml = CASES / "disk-boot-two-disks-ro.yaml"
    assert not diff_paths(toml, yaml).equal


def test_legacy_runtime_against_an_instance() -> None:
    legacy = LEGACY / "spice-era-with-disks.json"
    diff = diff_paths(legacy, CASES / "vnc-any-address.json")
    assert isinstance(diff, RuntimeDiff)
    machine = only(diff, "-machine")
    assert (machine.old, machine.guest_visible) == ("pc-1.1", True)
    assert any(c.section == "nics" and c.kind == "removed" for c in diff.changes)
    assert diff_paths(legacy, legacy).equal


def test_refusals_are_compared() -> None:
    refused = GOLDEN / "ganeti-0.12.5" / "disk-boot-two-disks-ro.error"
    generated = GOLDEN / "qemu-7.2" / "disk-boot-two-disks-ro.args"
    diff = diff_paths(generated, refused)
    assert isinstance(diff, RuntimeDiff)
    assert [(c.section, c.old, c.guest_visible) for c in diff.changes] == [
        ("outcome", "generated", True)
    ]


def test_bad_inputs_raise_invalid_input_errors(tmp_path: Path) -> None:
    with pytest.raises(DiffInputError, match="no such file"):
        diff_paths(tmp_path / "missing", tmp_path)
    with pytest.raises(DiffInputError, match="directory with a file"):
        diff_paths(tmp_path, CASES / "acpi-off.json")
    broken = tmp_path / "broken.runtime"
    broken.write_text('{"format": 1, "name": "x"}')
    with pytest.raises(RuntimeFormatError):
        diff_paths(broken, broken)
    with pytest.raises(InstanceError):
        diff_paths(CASES / "refused-duplicate-mac.json", CASES / "acpi-off.json")
    bad_args = tmp_path / "x.args"
    bad_args.write_text("no marker\n")
    with pytest.raises(InvalidInputError, match="marker"):
        diff_paths(bad_args, bad_args)
    assert issubclass(DiffInputError, InvalidInputError)


# --- golden trees ----------------------------------------------------------------------------


def test_golden_trees_file_by_file(tmp_path: Path) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    shutil.copytree(GOLDEN / "qemu-7.2", old / "qemu-7.2")
    shutil.copytree(GOLDEN / "qemu-7.2", new / "qemu-7.2")
    assert diff_paths(old, new).equal
    (new / "qemu-7.2" / "acpi-off.args").unlink()
    shutil.copy(new / "qemu-7.2" / "localtime-clock.args", new / "qemu-7.2" / "brand-new.args")
    changed = new / "qemu-7.2" / "vnc-any-address.args"
    changed.write_text(changed.read_text().replace("\n128\n", "\n4096\n", 1))
    diff = diff_paths(old, new)
    assert isinstance(diff, TreeDiff) and not diff.equal
    assert diff.added == ("qemu-7.2/brand-new",)
    assert diff.removed == ("qemu-7.2/acpi-off",)
    assert [key for key, _ in diff.changed] == ["qemu-7.2/vnc-any-address"]
    assert [(c.option, c.new) for c in diff.guest_visible] == [("-m", "4096")]
    text = diff_text(diff)
    assert "+ case qemu-7.2/brand-new" in text and "- case qemu-7.2/acpi-off" in text
    assert "~ -m: 128 -> 4096" in text


def test_qemu_7_2_against_10_0_golden_trees() -> None:
    diff = diff_paths(GOLDEN / "qemu-7.2", GOLDEN / "qemu-10.0")
    assert isinstance(diff, TreeDiff) and not diff.added and not diff.removed
    options = {c.option for c in diff.changes}
    assert "-machine" in options and "-run-with" in options
    acpi = dict(diff.changed)["acpi-off"]
    assert {(c.option, c.kind) for c in acpi.changes} == {
        ("-no-acpi", "removed"),
        ("-machine", "changed"),
    }


# --- rendering -------------------------------------------------------------------------------


def test_html_is_escaped_and_notebook_friendly() -> None:
    a = runtime()
    b = runtime(hvparams={"kvm_extra": "-fw_cfg 'name=opt/x,string=<script>alert(1)</script>'"})
    diff = diff_runtimes(a, b)
    page = diff_html(diff)
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert page.startswith('<div class="kvmlab-diff">') and "guest-visible" in page
    tree = diff_paths(GOLDEN / "qemu-7.2", GOLDEN / "qemu-10.0")
    assert "<table" in diff_html(tree)
    # The diff is data only: IPython draws both kinds with display's renderers.
    assert not hasattr(diff, "_repr_html_")
    for kind in (RuntimeDiff, TreeDiff):
        entry = ("kvmlab.golden.diff", kind.__name__, diff_html, diff_text)
        assert entry in display.FORMATTERS
