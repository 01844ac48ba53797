"""A revert takes the guest back to the snapshot, devices included (docs/snapshots.md).

The same bodies on the fake kvm and on real QEMU with the test guest (7.2, and 10.0 with
``KVMLAB_QEMU``), looking through the guest's command channel: a NIC and a disk
hotplugged after a snapshot are gone after the revert, from the guest's own
``/sys/class/net`` and ``/sys/block`` and from the saved runtime, and a soft reboot keeps
it that way; a file written before the snapshot is there, one written after it is gone;
the boot id is unchanged and the guest printed ``KVMLAB-BOOT-OK`` once (it never booted
again). After save and restore the same. Hotplug runs on the ``pc`` machine here (its
devices on the root bus).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers_lifecycle import BOOT_TIMEOUT, mac

from kvmlab.lifecycle.hypervisor import Hypervisor
from kvmlab.spec.instance import Disk, Instance, Nic

NEW_MAC = "52:54:00:6b:0e:01"
BOOT_MARKER = "KVMLAB-BOOT-OK"
BOOT_ID = "/proc/sys/kernel/random/boot_id"


@pytest.fixture
def image(tmp_path: Path) -> str:
    """A sparse 3 MiB raw image (its size names it in the guest)."""
    path = tmp_path / "disk-3m.img"
    with path.open("wb") as file:
        file.truncate(3 << 20)
    return str(path)


def guest_macs(lab: Hypervisor) -> list[str]:
    out = lab.guest("vm1").run("cat /sys/class/net/eth*/address", ready_timeout=BOOT_TIMEOUT)
    return sorted(out.stdout.split())


def guest_disks(lab: Hypervisor) -> list[str]:
    listing = lab.guest("vm1").run(["ls", "/sys/block"], ready_timeout=BOOT_TIMEOUT).stdout
    return sorted(dev for dev in listing.split() if dev.startswith("vd"))


def read(lab: Hypervisor, path: str) -> str:
    out = lab.guest("vm1").run(f"cat {path} 2>/dev/null || echo missing", timeout=10)
    return out.stdout.strip()


def wait_for(predicate: Callable[[], bool], timeout: float = 60.0) -> None:
    began = time.monotonic()
    while not predicate():
        if time.monotonic() - began > timeout:
            raise AssertionError(f"not true within {timeout} s")
        time.sleep(0.05)


def boots_since(before: str, after: str) -> int:
    """``KVMLAB-BOOT-OK`` lines the guest printed after ``before`` was read.

    The console log is the current process's: a new process may start it afresh, or it
    may continue the one read before.
    """
    new = after[len(before) :] if after.startswith(before) else after
    return new.count(BOOT_MARKER)


def booted(lab: Hypervisor, make_instance: Callable[..., Instance]) -> tuple[str, str]:
    """Start vm1 on ``pc``; return its boot id and the console so far (one boot line)."""
    lab.start(make_instance(nics=1, machine_version="pc"))
    lab.console("vm1").expect(BOOT_MARKER, timeout=BOOT_TIMEOUT)
    boot_id = read(lab, BOOT_ID)
    console = lab.console("vm1").read()
    assert len(boot_id) == 36, boot_id
    assert console.count(BOOT_MARKER) == 1
    return boot_id, console


def test_devices_hotplugged_after_a_snapshot_are_gone_after_the_revert(
    lab: Hypervisor, make_instance: Callable[..., Instance], image: str
) -> None:
    boot_id, console = booted(lab, make_instance)
    shell = lab.guest("vm1")
    assert shell.run("echo kept > /tmp/before").exit_code == 0
    lab.snapshot("vm1", "clean", timeout=120)
    at_snapshot = lab.load_runtime("vm1")

    lab.attach_nic("vm1", Nic(mac=NEW_MAC, mode="user"))
    lab.attach_disk("vm1", Disk(path=image))
    wait_for(lambda: NEW_MAC in guest_macs(lab))
    wait_for(lambda: len(guest_disks(lab)) == 1)
    assert shell.run("echo lost > /tmp/after").exit_code == 0
    assert lab.load_runtime("vm1") != at_snapshot

    lab.revert("vm1", "clean", timeout=120)
    assert guest_macs(lab) == [mac(0)]
    assert guest_disks(lab) == []
    reverted = lab.load_runtime("vm1")
    assert reverted == at_snapshot
    assert [nic.mac for nic in reverted.nics] == [mac(0)] and reverted.disks == ()
    assert read(lab, "/tmp/before") == "kept"
    assert read(lab, "/tmp/after") == "missing"
    assert read(lab, BOOT_ID) == boot_id
    assert boots_since(console, lab.console("vm1").read()) == 0  # printed once, before

    # A soft reboot replays the snapshot's runtime: still no NIC or disk of the hotplug.
    lab.reboot("vm1")
    lab.console("vm1").expect(BOOT_MARKER, timeout=BOOT_TIMEOUT)
    assert lab.load_runtime("vm1") == at_snapshot
    assert guest_macs(lab) == [mac(0)]
    assert guest_disks(lab) == []
    assert read(lab, BOOT_ID) != boot_id  # this one did boot
    lab.stop("vm1", force=True)


def test_a_revert_can_be_repeated_and_the_snapshot_stays(
    lab: Hypervisor, make_instance: Callable[..., Instance]
) -> None:
    boot_id, console = booted(lab, make_instance)
    lab.snapshot("vm1", "clean", timeout=120)
    for attempt in range(2):
        assert lab.guest("vm1").run(f"echo {attempt} > /tmp/after").exit_code == 0
        lab.revert("vm1", "clean", timeout=120)
        assert read(lab, "/tmp/after") == "missing"
        assert read(lab, BOOT_ID) == boot_id
        assert boots_since(console, lab.console("vm1").read()) == 0
    assert [s.tag for s in lab.snapshots("vm1")] == ["clean"]
    lab.stop("vm1", force=True)


def test_save_and_restore_continue_the_same_boot(
    lab: Hypervisor, make_instance: Callable[..., Instance]
) -> None:
    boot_id, console = booted(lab, make_instance)
    assert lab.guest("vm1").run("echo kept > /tmp/before").exit_code == 0
    runtime = lab.load_runtime("vm1")
    saved = lab.save("vm1", timeout=120)
    assert saved.kind == "save" and saved.size > 0
    assert lab.info("vm1", query_guest=False).pid is None
    assert lab.saved_state("vm1") is not None

    lab.restore("vm1", timeout=120)
    assert lab.saved_state("vm1") is None  # continued: no second copy of the VM
    assert lab.load_runtime("vm1") == runtime
    assert read(lab, "/tmp/before") == "kept"
    assert read(lab, BOOT_ID) == boot_id
    assert boots_since(console, lab.console("vm1").read()) == 0
    assert guest_macs(lab) == [mac(0)]
    lab.stop("vm1", force=True)
