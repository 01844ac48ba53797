"""The saved runtime's JSON format, and the upgrade of legacy runtimes (Ganeti's list format)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kvmlab.errors import RuntimeFormatError
from kvmlab.runtime.generator import generate_runtime
from kvmlab.runtime.plan import NicPlan, NicPlanKind, StartFacts, plan_execution
from kvmlab.runtime.saved import (
    FORMAT_VERSION,
    GANETI_UNMODELLED_HVPARAMS,
    KVMRuntime,
    upgrade_legacy_argv,
)
from kvmlab.spec.capabilities import QemuCapabilities, load_profile
from kvmlab.spec.instance import Disk, HvParams, Instance, Nic, NicMode
from kvmlab.spec.layout import StateLayout

MAC = "02:00:00:00:00:01"
MAC2 = "aa:00:00:3c:51:0b"


def runtime_for(caps: QemuCapabilities | None = None, **fields: Any) -> KVMRuntime:
    fields.setdefault("name", "vm1")
    return generate_runtime(
        Instance.model_validate(fields), caps, layout=StateLayout(Path("/srv/kvmlab"))
    )


def format_error(text: str | bytes) -> str:
    with pytest.raises(RuntimeFormatError) as info:
        KVMRuntime.from_json(text)
    message = str(info.value)
    assert "\n" not in message, message
    return message


def legacy(cmd: list[Any], *rest: Any) -> str:
    return json.dumps([cmd, *rest])


CMD = ["/usr/bin/kvm", "-name", "vm1", "-m", 512, "-smp", 1]


# --- current format -----------------------------------------------------------------------

RUNTIMES = {
    "minimal": runtime_for,
    "nics-disks": lambda: runtime_for(
        nics=[{"mac": MAC, "link": "br0"}, {"mac": "02:00:00:00:00:02", "mode": "user"}],
        disks=[{"path": "/dev/vg/a,b"}, {"path": "/srv/c.img", "mode": "ro"}],
        hvparams={"kernel_path": "", "acpi": False, "kvm_extra": "-no-hpet"},
        network_port=5905,
    ),
    "qemu-10.0": lambda: runtime_for(
        load_profile("qemu-10.0"), hvparams={"use_chroot": True, "acpi": False}
    ),
}


@pytest.mark.parametrize("make", RUNTIMES.values(), ids=RUNTIMES.keys())
def test_round_trip(make: Any) -> None:
    runtime = make()
    text = runtime.to_json()
    again = KVMRuntime.from_json(text)
    assert again == runtime
    assert again.to_json() == text
    assert KVMRuntime.from_json(text.encode()) == runtime


def test_document_is_versioned_json() -> None:
    runtime = runtime_for(nics=[{"mac": MAC, "link": "br0"}])
    document = json.loads(runtime.to_json())
    assert document["format"] == FORMAT_VERSION == 3
    assert document["name"] == "vm1"
    assert document["argv"] == list(runtime.argv)
    assert document["nics"] == [{"mac": MAC, "mode": "bridged", "link": "br0"}]
    assert document["nic_slots"] == [0x10]
    assert isinstance(document["hvparams"], dict)


def test_format_1_document_is_upgraded_with_the_slots_it_implied() -> None:
    runtime = runtime_for(nics=[{"mac": MAC, "link": "br0"}, {"mac": MAC2, "link": "br0"}])
    document = json.loads(runtime.to_json())
    document["format"] = 1
    del document["nic_slots"], document["disk_slots"]  # format 1 had neither
    upgraded = KVMRuntime.from_json(json.dumps(document))
    assert upgraded == runtime
    assert upgraded.format == FORMAT_VERSION
    assert upgraded.nic_slots == (0x10, 0x11)
    assert KVMRuntime.from_json(upgraded.to_json()) == upgraded


@pytest.mark.parametrize(
    ("slots", "message"),
    [([0x10], "2 NICs but 1 nic_slots"), ([0x10, 0x10], "twice"), ([0x10, 0x05], "outside")],
)
def test_bad_nic_slots_are_refused(slots: list[int], message: str) -> None:
    runtime = runtime_for(nics=[{"mac": MAC, "link": "br0"}, {"mac": MAC2, "link": "br0"}])
    document = json.loads(runtime.to_json())
    document["nic_slots"] = slots
    with pytest.raises(RuntimeFormatError, match=message):
        KVMRuntime.from_json(json.dumps(document))


def test_virtio_disks_get_the_reserved_disk_slots_in_order() -> None:
    runtime = runtime_for(disks=[{"path": "/a"}, {"path": "/b"}, {"path": "/c"}])
    assert runtime.disk_slots == (0x08, 0x09, 0x0A)
    devices = [runtime.argv[i + 1] for i, w in enumerate(runtime.argv) if w == "-device"]
    assert "virtio-blk-pci,drive=drive-s0a,id=disk-s0a,addr=0x0a" in devices
    assert json.loads(runtime.to_json())["disk_slots"] == [8, 9, 10]
    # IDE disks sit on the IDE bus: no slot of their own.
    ide = runtime_for(disks=[{"path": "/a"}], hvparams={"disk_type": "ide"})
    assert ide.disk_slots == ()


def test_format_2_document_is_upgraded_without_disk_slots() -> None:
    """Format 2 wrote ``if=virtio`` drives (QEMU picked their slots): no slots is what its
    argv says, and disk hotplug refuses it until a hard restart regenerates it."""
    runtime = runtime_for(disks=[{"path": "/a"}], hvparams={"disk_type": "ide"})
    document = json.loads(runtime.to_json())
    document["format"] = 2
    del document["disk_slots"]
    upgraded = KVMRuntime.from_json(json.dumps(document))
    assert upgraded == runtime
    assert upgraded.format == FORMAT_VERSION
    assert upgraded.disk_slots == ()
    assert KVMRuntime.from_json(upgraded.to_json()) == upgraded


@pytest.mark.parametrize(
    ("slots", "message"),
    [([0x08], "2 disks but 1 disk_slots"), ([0x08, 0x08], "twice"), ([0x08, 0x10], "outside")],
)
def test_bad_disk_slots_are_refused(slots: list[int], message: str) -> None:
    runtime = runtime_for(disks=[{"path": "/a"}, {"path": "/b"}])
    document = json.loads(runtime.to_json())
    document["disk_slots"] = slots
    with pytest.raises(RuntimeFormatError, match=message):
        KVMRuntime.from_json(json.dumps(document))


def test_runtime_is_frozen() -> None:
    runtime = runtime_for()
    with pytest.raises(ValueError):
        runtime.argv = ("/bin/true",)  # type: ignore[misc]
    assert isinstance(runtime.argv, tuple)


def test_leading_whitespace_is_fine() -> None:
    runtime = runtime_for()
    assert KVMRuntime.from_json("\n  " + runtime.to_json()) == runtime


# --- legacy runtime files (kvmlab's own, in Ganeti's list format) --------------------------
#
# fixtures/legacy-runtimes/ holds hand-written runtimes in the shapes Ganeti's releases
# saved (see its README.md): 2, 3 and 4 elements, integers in the argv, NIC dicts of
# several generations, hvparams of several release lines, disk entries with metadata.

LEGACY_DIR = Path(__file__).resolve().parents[2] / "fixtures" / "legacy-runtimes"
LEGACY_FILES = {
    "early-kvm-72-net-nic": 3,
    "chroot-runas-no-vnc": 3,
    "spice-era-with-disks": 4,
    "two-elements-bridge-nic": 2,
}
DEPRECATED = {"-balloon", "-localtime", "-chroot"}


def legacy_file(name: str) -> tuple[list[Any], KVMRuntime]:
    text = (LEGACY_DIR / f"{name}.json").read_text(encoding="utf-8")
    return json.loads(text), KVMRuntime.from_json(text)


def rewritten(cmd: list[Any]) -> list[str]:
    """The upgrade written out by hand: each deprecated option replaced in place."""
    out: list[str] = []
    words = [str(word) for word in cmd]
    skip = False
    for index, word in enumerate(words):
        if skip:
            skip = False
        elif word == "-localtime":
            out += ["-rtc", "base=localtime"]
        elif word == "-balloon":
            out += ["-device", "virtio-balloon"] if words[index + 1].startswith("virtio") else []
            skip = True
        elif word == "-chroot":
            out += ["-run-with", "chroot=" + words[index + 1].replace(",", ",,")]
            skip = True
        else:
            out.append(word)
    return out


def test_the_legacy_runtime_files_are_all_there() -> None:
    assert sorted(path.stem for path in LEGACY_DIR.glob("*.json")) == sorted(LEGACY_FILES)
    lengths = {name: len(legacy_file(name)[0]) for name in LEGACY_FILES}
    assert lengths == LEGACY_FILES
    everything = " ".join(json.dumps(legacy_file(name)[0][0]) for name in LEGACY_FILES)
    for option in ("-vnc", "-nographic", "-chroot", "-runas", "-localtime", "-balloon"):
        assert f'"{option}"' in everything, option


@pytest.mark.parametrize("name", LEGACY_FILES)
def test_legacy_runtime_upgrades(name: str) -> None:
    original, runtime = legacy_file(name)
    assert runtime.format == FORMAT_VERSION
    assert runtime.name == original[0][original[0].index("-name") + 1]
    assert list(runtime.argv) == rewritten(original[0]), "deprecated options replaced in place"
    assert not DEPRECATED & set(runtime.argv)
    assert [nic.mac for nic in runtime.nics] == [nic["mac"].lower() for nic in original[1]]
    hvparams = original[2] if len(original) > 2 else {}
    modelled = {key: value for key, value in hvparams.items() if key in HvParams.model_fields}
    assert runtime.hvparams == HvParams.model_validate(modelled)
    disks = original[3] if len(original) > 3 else []
    assert runtime.disks == tuple(Disk(path=path, mode=meta["mode"]) for meta, path, _ in disks)


@pytest.mark.parametrize("name", LEGACY_FILES)
def test_legacy_runtime_upgrade_is_a_fixed_point(name: str) -> None:
    _, upgraded = legacy_file(name)
    text = upgraded.to_json()
    again = KVMRuntime.from_json(text)
    assert again == upgraded
    assert again.to_json() == text
    assert upgrade_legacy_argv(upgraded.argv) == upgraded.argv


def test_early_runtime_keeps_vnc_and_integers_become_strings() -> None:
    original, runtime = legacy_file("early-kvm-72-net-nic")
    words = list(runtime.argv)
    assert original[0][original[0].index("-m") + 1] == 512
    assert words[words.index("-m") + 1] == "512" and words[words.index("-smp") + 1] == "1"
    assert words[words.index("-vnc") + 1] == "127.0.0.1:3"
    assert words[-2:] == ["-rtc", "base=localtime"]
    assert runtime.nics == (
        Nic(mac="aa:00:00:3c:51:0a", mode=NicMode.BRIDGED, link="xen-br0"),
        Nic(mac="aa:00:00:3c:51:0b", mode=NicMode.ROUTED, link="100"),
    )
    assert runtime.hvparams.use_localtime and runtime.hvparams.usb_mouse == "tablet"
    assert runtime.hvparams.kernel_path == "/boot/vmlinuz-2.6-kvmU"


def nic_start_args(runtime: KVMRuntime, profile: str) -> tuple[str, ...]:
    plans = (
        NicPlan(NicPlanKind.SCRIPT, script_path="/tmp/kvmlab-start-x/up-0"),
        NicPlan(NicPlanKind.FD, fd=7),
    )[: len(runtime.nics)]
    facts = StartFacts(nic_plans=plans, qmp_socket="/srv/q.qmp", caps=load_profile(profile))
    return plan_execution(runtime, facts).start_args


def test_early_runtime_starts_with_net_nic_on_its_old_qemu() -> None:
    """QEMU 0.9.1 (kvm-72) has no -netdev: the NICs kept as data become -net nic/-net tap."""
    _, runtime = legacy_file("early-kvm-72-net-nic")
    assert nic_start_args(runtime, "ganeti-0.9.1") == (
        "-net",
        "nic,vlan=0,macaddr=aa:00:00:3c:51:0a,model=virtio",
        "-net",
        "tap,vlan=0,script=/tmp/kvmlab-start-x/up-0,downscript=no",
        "-net",
        "nic,vlan=1,macaddr=aa:00:00:3c:51:0b,model=virtio",
        "-net",
        "tap,vlan=1,fd=7",  # vnet_hdr is the descriptor's flag: QEMU refuses it with fd=
    ), "and no -qmp: QEMU 0.9.1 has none"
    modern = nic_start_args(runtime, "qemu-10.0")
    assert modern[:4] == (
        "-netdev",
        "tap,id=net-s10,script=/tmp/kvmlab-start-x/up-0,downscript=no",
        "-device",
        "virtio-net-pci,netdev=net-s10,mac=aa:00:00:3c:51:0a,id=nic-s10,addr=0x10",
    )
    assert modern[-2:] == ("-qmp", "unix:/srv/q.qmp,server=on,wait=off")


def test_confined_runtime_without_vnc_is_rewritten_completely() -> None:
    """Ganeti's own upgrade skipped rewrites when no -vnc was present; kvmlab's does not."""
    _, runtime = legacy_file("chroot-runas-no-vnc")
    words = list(runtime.argv)
    assert "-vnc" not in words and "-nographic" in words
    assert words[-8:] == [
        "-serial",
        "none",
        "-rtc",
        "base=localtime",
        "-runas",
        "ganeti-kvm",
        "-run-with",
        "chroot=/var/run/ganeti/kvm-hypervisor/chroot/legacy-db2",
    ]
    at = words.index("-mem-prealloc")
    assert words[at + 1 : at + 3] == ["-device", "virtio-balloon"]
    hv = runtime.hvparams
    assert (hv.use_chroot, hv.security_model, hv.security_domain) == (True, "user", "ganeti-kvm")
    assert (hv.mem_path, hv.vhost_net, hv.kvm_flag, hv.acpi) == (
        "/hugepages",
        True,
        "enabled",
        False,
    )


def test_late_runtime_with_disks_drops_what_kvmlab_does_not_model() -> None:
    original, runtime = legacy_file("spice-era-with-disks")
    words = list(runtime.argv)
    assert words[words.index("-machine") + 1] == "pc-1.1"
    assert words[words.index("virtio-balloon") - 1] == "-device", "-balloon virtio,addr= too"
    assert words[words.index("-vnc") + 1] == ":7,password"
    unmodelled = {key for key in original[2] if key not in HvParams.model_fields}
    assert unmodelled >= {"spice_bind", "migration_caps", "kvm_pci_reservations"}
    assert unmodelled <= GANETI_UNMODELLED_HVPARAMS
    hv = runtime.hvparams
    assert (hv.serial_speed, hv.cpu_cores, hv.keymap, hv.vnet_hdr) == (115200, 2, "en-us", True)
    assert runtime.nics[1] == Nic(mac="aa:00:00:c1:9d:21", mode=NicMode.ROUTED, link="200")
    assert runtime.disks == (
        Disk(path="/var/run/ganeti/instance-disks/legacy-app3:0"),
        Disk(path="/dev/rbd/rbd/9a8b7c6d.rbd.disk1", mode="ro"),
    )


def test_two_element_runtime_takes_the_default_hvparams() -> None:
    _, runtime = legacy_file("two-elements-bridge-nic")
    assert runtime.hvparams == HvParams()
    assert runtime.disks == ()
    assert runtime.nics == (Nic(mac="aa:00:00:05:0e:01", mode=NicMode.BRIDGED, link="xen-br0"),)
    assert runtime.argv[runtime.argv.index("-m") + 1] == "128"


def test_legacy_list_of_two() -> None:
    runtime = KVMRuntime.from_json(legacy(CMD, [{"mac": MAC, "nicparams": {"link": "br0"}}]))
    assert runtime.argv == ("/usr/bin/kvm", "-name", "vm1", "-m", "512", "-smp", "1")
    assert runtime.nics == (Nic(mac=MAC, link="br0"),)
    assert runtime.hvparams == HvParams()
    assert runtime.disks == ()


def test_legacy_list_of_three() -> None:
    runtime = KVMRuntime.from_json(legacy(CMD, [], {"acpi": False, "spice_bind": ""}))
    assert runtime.hvparams.acpi is False
    assert runtime.disks == ()


def test_legacy_list_of_four() -> None:
    disks = [[{"mode": "ro"}, "/dev/drbd1"], [{"mode": "rw"}, "/dev/drbd2", None]]
    runtime = KVMRuntime.from_json(legacy(CMD, [], {}, disks))
    assert runtime.disks == (Disk(path="/dev/drbd1", mode="ro"), Disk(path="/dev/drbd2"))


@pytest.mark.parametrize(
    ("nic", "expected"),
    [
        ({"mac": MAC, "nicparams": {"mode": "bridged", "link": "br1"}}, ("bridged", "br1")),
        ({"mac": MAC, "nicparams": {"mode": "routed", "link": "100"}}, ("routed", "100")),
        ({"mac": MAC, "mode": "bridged", "bridge": "xen-br0"}, ("bridged", "xen-br0")),
        ({"mac": MAC.upper(), "nicparams": {"mode": "routed"}}, ("routed", "")),
    ],
)
def test_legacy_nic_shapes(nic: dict[str, Any], expected: tuple[str, str]) -> None:
    (upgraded,) = KVMRuntime.from_json(legacy(CMD, [nic])).nics
    assert (upgraded.mode, upgraded.link) == expected
    assert upgraded.mac == MAC


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (["-localtime"], ["-rtc", "base=localtime"]),
        (["-chroot", "/srv/jail"], ["-run-with", "chroot=/srv/jail"]),
        (["-balloon", "virtio"], ["-device", "virtio-balloon"]),
        (["-balloon", "virtio,addr=0x5"], ["-device", "virtio-balloon"]),
        (["-balloon", "none"], []),
    ],
)
def test_deprecated_options_are_rewritten_without_vnc(before: list[str], after: list[str]) -> None:
    cmd = [*CMD, *before, "-daemonize"]
    assert "-vnc" not in cmd
    runtime = KVMRuntime.from_json(legacy(cmd, []))
    assert list(runtime.argv) == [str(w) for w in CMD] + after + ["-daemonize"]


def test_deprecated_options_are_rewritten_with_vnc_too() -> None:
    cmd = [*CMD, "-localtime", "-vnc", ":1", "-chroot", "/srv/jail"]
    words = list(KVMRuntime.from_json(legacy(cmd, [])).argv)
    assert words[-6:] == ["-rtc", "base=localtime", "-vnc", ":1", "-run-with", "chroot=/srv/jail"]


def test_chroot_with_comma_is_escaped_when_upgraded() -> None:
    words = KVMRuntime.from_json(legacy([*CMD, "-chroot", "/srv/a,b"], [])).argv
    assert words[-2:] == ("-run-with", "chroot=/srv/a,,b")


@pytest.mark.parametrize(
    "cmd",
    [
        [*CMD, "-localtime", "-chroot", "/j", "-balloon", "virtio"],
        [*CMD, "-vnc", ":3", "-localtime"],
        CMD,
    ],
)
def test_upgrading_is_a_fixed_point(cmd: list[Any]) -> None:
    text = legacy(cmd, [{"mac": MAC, "nicparams": {"link": "br0"}}], {"acpi": False})
    once = KVMRuntime.from_json(text)
    twice = KVMRuntime.from_json(once.to_json())
    assert twice == once
    assert twice.to_json() == once.to_json()
    assert upgrade_legacy_argv(once.argv) == once.argv


# --- errors -------------------------------------------------------------------------------


def current(**changes: Any) -> str:
    document = json.loads(runtime_for().to_json())
    document.update(changes)
    return json.dumps(document)


def test_newer_format_is_refused_with_advice() -> None:
    message = format_error(current(format=FORMAT_VERSION + 1))
    assert "newer" in message
    assert str(FORMAT_VERSION + 1) in message


def test_newer_format_with_new_fields_is_still_a_format_error() -> None:
    message = format_error(current(format=FORMAT_VERSION + 1, snapshots=[]))
    assert "newer" in message


@pytest.mark.parametrize("version", ["x", 0, -1, None, [1]])
def test_unknown_format_value(version: object) -> None:
    message = format_error(current(format=version))
    assert "format" in message
    assert repr(version) in message or str(version) in message


@pytest.mark.parametrize(
    "text",
    ['{"format": 1, "name": "vm1", "argv": ["kvm"],}', "{not json", "[[", "[1, 2", "\x00"],
)
def test_malformed_json(text: str) -> None:
    assert "JSON" in format_error(text)


def test_truncated_json() -> None:
    text = runtime_for().to_json()
    assert "not valid JSON" in format_error(text[: len(text) // 2])


def test_empty_text() -> None:
    format_error("")


@pytest.mark.parametrize("size", [0, 1, 5, 6])
def test_legacy_list_of_wrong_length(size: int) -> None:
    items: list[Any] = [CMD, [], {}, [], {}, {}][:size]
    message = format_error(json.dumps(items))
    assert str(size) in message
    assert "2 to 4" in message


@pytest.mark.parametrize("item", [1.5, None, True, False, {"a": 1}, ["-m"]])
def test_legacy_argv_item_of_wrong_type(item: object) -> None:
    message = format_error(legacy([*CMD, item], []))
    assert f"argv[{len(CMD)}]" in message


@pytest.mark.parametrize("item", [1.5, None, True, 7])
def test_current_argv_item_of_wrong_type(item: object) -> None:
    message = format_error(current(argv=["/usr/bin/kvm", item]))
    assert "argv.1" in message


def test_legacy_unknown_hvparams() -> None:
    message = format_error(legacy(CMD, [], {"acpi": True, "warp_drive": 9}))
    assert "warp_drive" in message


def test_legacy_nic_with_bad_mac() -> None:
    message = format_error(
        legacy(CMD, [{"mac": "01:00:5e:00:00:01", "nicparams": {"link": "br0"}}])
    )
    assert "01:00:5e:00:00:01" in message
    assert "NIC 0" in message


def test_legacy_nic_without_mac() -> None:
    assert "NIC 0" in format_error(legacy(CMD, [{"nicparams": {"link": "br0"}}]))


@pytest.mark.parametrize(("nics", "what"), [({"mac": MAC}, "nics"), ("x", "nics")])
def test_legacy_parts_of_wrong_shape(nics: object, what: str) -> None:
    assert what in format_error(legacy(CMD, nics))


def test_legacy_disk_with_relative_path() -> None:
    assert "disk 0" in format_error(legacy(CMD, [], {}, [[{"mode": "rw"}, "disk0.img"]]))


def test_legacy_without_name() -> None:
    assert "-name" in format_error(legacy(["/usr/bin/kvm", "-m", 512], []))


def test_legacy_empty_argv() -> None:
    format_error(legacy([], []))


@pytest.mark.parametrize("text", ['"a runtime"', "42", "null", "true"])
def test_top_level_scalar(text: str) -> None:
    assert "JSON object" in format_error(text)


def test_unknown_field_in_current_format() -> None:
    message = format_error(current(snapshots=[]))
    assert "snapshots" in message


def test_unknown_hvparam_in_current_format() -> None:
    document = json.loads(current())
    document["hvparams"]["warp_drive"] = 9
    assert "hvparams.warp_drive" in format_error(json.dumps(document))


def test_bad_mac_in_current_format() -> None:
    text = current(nics=[{"mac": "zz:00:00:00:00:01", "mode": "user", "link": ""}])
    assert "zz:00:00:00:00:01" in format_error(text)


def test_current_format_with_empty_argv_is_refused() -> None:
    format_error(current(argv=[]))


@pytest.mark.parametrize(
    "text",
    [
        json.dumps({"format": 1, "name": "../etc/x", "argv": ["/usr/bin/kvm"]}),
        json.dumps({"format": 1, "name": "vm1\ntouch /tmp/x", "argv": ["/usr/bin/kvm"]}),
        legacy(["/usr/bin/kvm", "-name", "vm1\nreboot"], []),
    ],
    ids=["dot-dot", "newline", "legacy-newline"],
)
def test_runtime_name_is_validated(text: str) -> None:
    format_error(text)
