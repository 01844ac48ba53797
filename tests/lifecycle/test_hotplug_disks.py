"""Disk hotplug kept by the saved runtime (docs/hotplug.md): the same bodies on the
fake kvm and on real QEMU with the test guest, which sees each change in its own /sys/block,
/proc/partitions and under /sys/bus/pci/devices.

Every image has its own size, so the guest's view of a disk (whatever ``vdX`` it is named)
tells which image it is."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from helpers_lifecycle import BOOT_TIMEOUT, HOTPLUG_MACHINES, guest_pci_dir, without_root_ports

from kvmlab.errors import (
    HotplugNotRunningError,
    HotplugRefusedError,
    InvalidInputError,
    NotRunningError,
    OperationError,
)
from kvmlab.host.store import save_runtime
from kvmlab.lifecycle.hotplug import disk as hotplug_disk
from kvmlab.spec.instance import Disk, Nic


@pytest.fixture(params=HOTPLUG_MACHINES)
def machine(request: pytest.FixtureRequest) -> str:
    """q35 (the test guest's own: disks behind PCIe root ports) and pc (on the root bus)."""
    return str(request.param)


@pytest.fixture
def make_instance(make_instance, machine: str):
    """The conftest's instances on ``machine`` (docs/hotplug.md, "PCI slots")."""

    def make(**kwargs: object):
        kwargs.setdefault("machine_version", machine)
        return make_instance(**kwargs)

    return make


@pytest.fixture
def image(tmp_path: Path):
    """``image(mib)``: a sparse raw image of ``mib`` MiB (its size names it in the guest)."""

    def make(mib: int) -> str:
        path = tmp_path / f"disk-{mib}m.img"
        with path.open("wb") as file:
            file.truncate(mib << 20)
        return str(path)

    return make


def with_disks(instance, *paths: str):
    return instance.model_copy(update={"disks": tuple(Disk(path=p) for p in paths)})


def guest_disks(lab, name: str = "vm1") -> dict[str, int] | None:
    """``{vdX: size in MiB}`` from the guest's /sys/block when /proc/partitions agrees, else
    ``None`` (a disk the kernel is adding or removing between the two reads)."""
    shell = lab.guest(name)
    listing = shell.run(["ls", "/sys/block"], ready_timeout=BOOT_TIMEOUT).stdout.split()
    disks = {}
    for dev in (dev for dev in listing if dev.startswith("vd")):
        size = shell.run(["cat", f"/sys/block/{dev}/size"]).stdout.strip()
        if size.isdigit():  # a disk going away between the two commands is left out
            disks[dev] = int(size) // 2048
    partitions = shell.run(["cat", "/proc/partitions"]).stdout.splitlines()[2:]
    listed = {line.split()[3]: int(line.split()[2]) // 1024 for line in partitions if line.strip()}
    return disks if {k: v for k, v in listed.items() if k.startswith("vd")} == disks else None


def size_at_slot(lab, slot: int, name: str = "vm1") -> int:
    """The size in MiB of the block device the guest found at PCI slot ``slot`` (0: none)."""
    shell = lab.guest(name)
    pci = guest_pci_dir(lab, slot, name)
    found = shell.run(f"ls {pci}/virtio*/block 2>/dev/null", timeout=10)
    devs = found.stdout.split() if found.exit_code == 0 else []
    if len(devs) != 1:
        return 0
    size = shell.run(["cat", f"/sys/block/{devs[0]}/size"], timeout=10).stdout.strip()
    return int(size) // 2048 if size.isdigit() else 0


def wait_for(predicate, timeout: float = 60.0) -> None:
    began = time.monotonic()
    while not predicate():
        if time.monotonic() - began > timeout:
            raise AssertionError(f"not true within {timeout} s")
        time.sleep(0.05)


def sizes(lab) -> list[int] | None:
    """The sizes of the guest's disks in MiB, ``None`` while its two views disagree."""
    disks = guest_disks(lab)
    return None if disks is None else sorted(disks.values())


def disk_device(slot: int, machine: str) -> str:
    """The saved ``-device`` of the disk at ``slot``: behind its root port on q35."""
    place = f"bus=port-s{slot:02x},addr=0x0" if machine == "q35" else f"addr={slot:#04x}"
    return f"virtio-blk-pci,drive=drive-s{slot:02x},id=disk-s{slot:02x},{place}"


def test_attach_shows_in_the_guest_and_survives_a_soft_reboot(
    lab, make_instance, image, machine: str, booted_vm_factory
) -> None:
    first, new = image(8), image(4)
    booted_vm_factory(with_disks(make_instance(), first))
    assert sizes(lab) == [8]
    saved = lab.attach_disk("vm1", Disk(path=new))
    assert saved.disk_slots == (0x08, 0x09)
    assert [disk.path for disk in lab.load_runtime("vm1").disks] == [first, new]
    assert disk_device(0x09, machine) in saved.argv
    assert not lab.layout.hotplug_intent("vm1").exists()
    wait_for(lambda: sizes(lab) == [4, 8])
    assert size_at_slot(lab, 0x09) == 4

    # A NIC hotplug keeps the disks and their slots.
    assert lab.attach_nic("vm1", Nic(mac="52:54:00:6b:01:01", mode="user")).disk_slots == (8, 9)

    lab.reboot("vm1")
    assert sizes(lab) == [4, 8]
    assert size_at_slot(lab, 0x08) == 8
    assert size_at_slot(lab, 0x09) == 4, "same disk at the same address after the reboot"


def test_detach_of_a_middle_disk_keeps_the_others_at_their_slots(lab, make_instance, image) -> None:
    paths = [image(8), image(4), image(2)]
    lab.start(with_disks(make_instance(), *paths))
    assert sizes(lab) == [2, 4, 8]
    # A disk started with the VM (-drive): QEMU deletes its drive with the device.
    saved = lab.detach_disk("vm1", paths[1])
    assert saved.disk_slots == (0x08, 0x0A)
    assert not any("drive-s09" in word for word in saved.argv)
    wait_for(lambda: sizes(lab) == [2, 8])
    assert size_at_slot(lab, 0x09) == 0

    # The freed slot is reused; the same path again is a new attach.
    assert lab.attach_disk("vm1", Disk(path=paths[1])).disk_slots == (0x08, 0x0A, 0x09)
    wait_for(lambda: size_at_slot(lab, 0x09) == 4)
    # A hotplugged disk (blockdev-add): its node is deleted after the device.
    assert lab.detach_disk("vm1", paths[1]).disk_slots == (0x08, 0x0A)
    wait_for(lambda: sizes(lab) == [2, 8])
    assert lab.attach_disk("vm1", Disk(path=paths[1], mode="ro")).disk_slots[-1] == 0x09
    wait_for(lambda: size_at_slot(lab, 0x09) == 4)

    lab.reboot("vm1")
    assert sizes(lab) == [2, 4, 8]
    assert size_at_slot(lab, 0x0A) == 2, "not shifted into the freed slot"
    assert size_at_slot(lab, 0x09) == 4
    assert lab.load_runtime("vm1").disks[-1].mode == "ro"


def test_a_hard_restart_applies_the_instance_file(lab, make_instance, image) -> None:
    instance = with_disks(make_instance(), image(8))
    lab.start(instance)
    lab.attach_disk("vm1", Disk(path=image(4)))
    lab.restart(instance)
    assert [disk.path for disk in lab.load_runtime("vm1").disks] == [instance.disks[0].path]
    assert sizes(lab) == [8]


def test_refusals_are_exit_2_and_change_nothing(
    lab, make_instance, image, tmp_path, booted_vm_factory
) -> None:
    first = image(8)
    booted_vm_factory(with_disks(make_instance(), first))
    before = lab.layout.runtime_file("vm1").read_bytes()
    with pytest.raises(HotplugRefusedError, match="already has disk"):
        lab.attach_disk("vm1", Disk(path=first))
    with pytest.raises(HotplugRefusedError, match="already has disk"):
        lab.attach_disk("vm1", Disk(path=str(tmp_path / "." / Path(first).name)))
    with pytest.raises(HotplugRefusedError, match="no disk"):
        lab.detach_disk("vm1", image(4))
    missing = str(tmp_path / "missing.img")
    with pytest.raises(HotplugRefusedError, match=f"disk image {re.escape(missing)} does not"):
        lab.attach_disk("vm1", Disk(path=missing))
    with pytest.raises(HotplugRefusedError, match="not a file or a block device"):
        lab.attach_disk("vm1", Disk(path=str(tmp_path)))
    assert lab.layout.runtime_file("vm1").read_bytes() == before
    assert not lab.layout.hotplug_intent("vm1").exists()
    assert sizes(lab) == [8]
    lab.stop("vm1", force=True)
    with pytest.raises(HotplugNotRunningError, match="not running") as stopped:
        lab.attach_disk("vm1", Disk(path=image(4)))
    assert stopped.value.exit_code == 2
    assert isinstance(stopped.value, NotRunningError)
    assert isinstance(stopped.value, InvalidInputError)
    with pytest.raises(HotplugNotRunningError):
        lab.detach_disk("vm1", first)
    assert lab.layout.runtime_file("vm1").read_bytes() == before


@pytest.mark.parametrize(
    ("hv", "message"),
    [
        ({"acpi": False}, "acpi"),
        ({"disk_type": "ide"}, "only virtio"),
    ],
)
def test_machines_and_disk_types_without_disk_hotplug_are_refused(
    lab, make_instance, image, hv, message
) -> None:
    lab.start(with_disks(make_instance(**hv), image(8)))
    before = lab.layout.runtime_file("vm1").read_bytes()
    with pytest.raises(HotplugRefusedError, match=message):
        lab.attach_disk("vm1", Disk(path=image(4)))
    with pytest.raises(HotplugRefusedError, match=message):
        lab.detach_disk("vm1", lab.load_runtime("vm1").disks[0].path)
    assert lab.layout.runtime_file("vm1").read_bytes() == before


@pytest.mark.parametrize("machine", ["q35"])
def test_a_q35_runtime_without_root_ports_is_refused(
    lab, make_instance, image, booted_vm_factory
) -> None:
    """A q35 runtime an older kvmlab saved (no root ports) is refused until a restart."""
    booted_vm_factory(with_disks(make_instance(), image(8)))
    save_runtime(lab.layout.runtime_file("vm1"), without_root_ports(lab.load_runtime("vm1")))
    before = lab.layout.runtime_file("vm1").read_bytes()
    with pytest.raises(HotplugRefusedError, match=r"q35.*without PCIe root ports"):
        lab.attach_disk("vm1", Disk(path=image(4)))
    with pytest.raises(HotplugRefusedError, match="restart it"):
        lab.detach_disk("vm1", lab.load_runtime("vm1").disks[0].path)
    assert lab.layout.runtime_file("vm1").read_bytes() == before


def test_a_failed_device_add_leaves_the_runtime_untouched(
    lab, make_instance, image, monkeypatch, booted_vm_factory
) -> None:
    booted_vm_factory(with_disks(make_instance(), image(8)))
    new = image(4)
    before = lab.layout.runtime_file("vm1").read_bytes()
    # A slot QEMU has given away: blockdev-add succeeds, device_add fails.
    real = hotplug_disk._device
    monkeypatch.setattr(
        hotplug_disk, "_device", lambda node, dev, slot, hv, **kw: real(node, dev, 0x08, hv, **kw)
    )
    # pc: slot 8 of the root bus; q35: slot 0 behind port-s08, where disk-s08 sits.
    with pytest.raises(OperationError, match=r"device_add failed.*slot [08] function 0 not avail"):
        lab.attach_disk("vm1", Disk(path=new))
    assert lab.layout.runtime_file("vm1").read_bytes() == before
    assert not lab.layout.hotplug_intent("vm1").exists()
    monkeypatch.undo()
    # Its block node was removed again: the same attach now succeeds.
    assert lab.attach_disk("vm1", Disk(path=new)).disk_slots == (0x08, 0x09)
    wait_for(lambda: size_at_slot(lab, 0x09) == 4)


def test_a_crash_between_device_add_and_the_save_is_reported_by_info(
    lab, make_instance, image, monkeypatch, booted_vm_factory
) -> None:
    booted_vm_factory(with_disks(make_instance(), image(8)))
    new = image(4)
    before = lab.layout.runtime_file("vm1").read_bytes()

    def crash(path, runtime) -> None:
        raise KeyboardInterrupt("killed between device_add and the save")

    monkeypatch.setattr(hotplug_disk, "save_runtime", crash)
    with pytest.raises(KeyboardInterrupt):
        lab.attach_disk("vm1", Disk(path=new))
    assert lab.layout.runtime_file("vm1").read_bytes() == before
    pending = lab.info("vm1", query_guest=False).extra["hotplug_pending"]
    assert pending == {"op": "attach-disk", "path": new, "slot": 0x09}
    assert json.loads(json.dumps(lab.info("vm1").to_dict()))["hotplug_pending"]["path"] == new
    lab.stop("vm1", force=True)
    lab.cleanup("vm1")
    assert not lab.layout.hotplug_intent("vm1").exists()


def test_a_qemu_without_the_commands_is_refused_naming_its_version(
    lab, make_instance, image, monkeypatch, booted_vm_factory
) -> None:
    booted_vm_factory(with_disks(make_instance(), image(8)))
    before = lab.layout.runtime_file("vm1").read_bytes()
    monkeypatch.setattr(
        hotplug_disk, "DISK_COMMANDS", (*hotplug_disk.DISK_COMMANDS, "x-no-such-command")
    )
    with pytest.raises(HotplugRefusedError) as refused:
        lab.attach_disk("vm1", Disk(path=image(4)))
    assert refused.value.exit_code == 2
    assert re.fullmatch(
        r"QEMU \d+\.\d+\.\d+ of vm1 has no x-no-such-command: disk hotplug needs .*",
        str(refused.value),
    )
    assert lab.layout.runtime_file("vm1").read_bytes() == before
    assert not lab.layout.hotplug_intent("vm1").exists()
    assert sizes(lab) == [8]


def test_a_runtime_from_an_older_kvmlab_refuses_disk_hotplug_until_restarted(
    lab, make_instance, image, booted_vm_factory
) -> None:
    """A format 2 runtime's disks are ``if=virtio`` (QEMU chose their slots): no slot of
    their own to keep, so disk hotplug waits for a hard restart."""
    booted_vm_factory(with_disks(make_instance(), image(8)))
    path = lab.layout.runtime_file("vm1")
    document = json.loads(path.read_text())
    document["format"] = 2
    del document["disk_slots"]
    path.write_text(json.dumps(document))
    with pytest.raises(HotplugRefusedError, match="older kvmlab"):
        lab.attach_disk("vm1", Disk(path=image(4)))


def block_node_files(lab, name: str = "vm1") -> list[str]:
    """The image files of QEMU's named block nodes (``query-named-block-nodes``)."""
    from kvmlab.channels.qmp import QmpSession  # noqa: PLC0415

    with QmpSession(lab.layout.qmp_socket(name), timeout=10) as qmp:
        return [entry["file"] for entry in qmp.execute("query-named-block-nodes")]


def test_a_detach_leaves_no_block_node_behind(lab, make_instance, image, booted_vm_factory) -> None:
    """QEMU deletes a ``-drive`` drive with its device; a ``blockdev-add`` node needs the
    ``blockdev-del`` kvmlab sends after ``DEVICE_DELETED``. Either way, nothing of the
    image stays open."""
    started, hotplugged = image(8), image(4)
    booted_vm_factory(with_disks(make_instance(), started))
    assert sizes(lab) == [8]  # the guest is up: it ejects the disk through ACPI
    assert started in block_node_files(lab)
    lab.detach_disk("vm1", started)
    assert started not in block_node_files(lab)
    lab.attach_disk("vm1", Disk(path=hotplugged))
    assert hotplugged in block_node_files(lab)
    lab.detach_disk("vm1", hotplugged)
    assert block_node_files(lab) == []


def test_attach_then_detach_gives_back_the_very_runtime(
    lab, make_instance, image, machine: str
) -> None:
    """The disk's args go in and out of the saved argv whole: nothing else is rewritten."""
    lab.start(with_disks(make_instance(), image(8), image(2)))
    assert sizes(lab) == [2, 8]
    before = lab.load_runtime("vm1")
    new = image(4)
    attached = lab.attach_disk("vm1", Disk(path=new, mode="ro"))
    words = (
        "-drive",
        f"file={new},format=raw,if=none,id=drive-s0a,readonly=on",
        "-device",
        disk_device(0x0A, machine),
    )
    # Right after the last disk's args, as generation would write a third disk.
    at = before.argv.index(disk_device(0x09, machine)) + 1
    assert attached.argv == (*before.argv[:at], *words, *before.argv[at:])
    wait_for(lambda: size_at_slot(lab, 0x0A) == 4)
    assert lab.detach_disk("vm1", new) == before
    assert lab.load_runtime("vm1") == before


def test_a_path_with_a_comma_and_a_space_cannot_add_options(
    lab, make_instance, tmp_path: Path, machine: str, booted_vm_factory
) -> None:
    """The path is one QMP string and, in the saved argv, one ``file=`` value (its comma
    doubled): after a soft reboot QEMU opens the same image, with no option added."""
    path = tmp_path / "data,format=qcow2 x.img"
    with path.open("wb") as file:
        file.truncate(4 << 20)
    booted_vm_factory(make_instance())  # no disk: the args go at the end of the saved argv
    assert sizes(lab) == []
    saved = lab.attach_disk("vm1", Disk(path=str(path)))
    escaped = str(path).replace(",", ",,")
    assert saved.argv[-4:] == (
        "-drive",
        f"file={escaped},format=raw,if=none,id=drive-s08",
        "-device",
        disk_device(0x08, machine),
    )
    wait_for(lambda: size_at_slot(lab, 0x08) == 4)
    lab.reboot("vm1")
    assert sizes(lab) == [4]
    assert size_at_slot(lab, 0x08) == 4
