"""Hotplug of tap NICs (docs/hotplug.md, "Tap NICs"), as root with a real bridge.

kvmlab opens the tap, runs the start's up-script on it, passes the descriptor with
``getfd`` and names it in ``netdev_add type=tap,fd=NAME``. The same bodies run on the
fake kvm (``KVMLAB_FAKE_TAP=run``: the soft reboot's start creates real taps too) and on
real QEMU (``KVMLAB_QEMU`` selects 10.0). Without root the module is skipped; the
refusal a non-root run gets is tested in test_hotplug.py and tests/cli.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers_lifecycle import BOOT_TIMEOUT, mac

from kvmlab.errors import OperationError
from kvmlab.lifecycle.hotplug import nic as hotplug
from kvmlab.spec.instance import Nic

# These tests count the host's taps: each holds the host_taps lock (tests/conftest.py), as
# every test that creates taps does, so no other worker's tap shows up in the count.
pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="tap NICs need root"),
    pytest.mark.usefixtures("host_taps"),
]

SYS_NET = Path("/sys/class/net")
NEW = "52:54:00:6b:07:01"


@pytest.fixture
def make_instance(make_instance, fault_env):
    """PC machine (hotplug refuses q35); the fake makes real taps at its starts."""
    fault_env(tap="run")

    def make(**kwargs: object):
        kwargs.setdefault("machine_version", "pc")
        return make_instance(**kwargs)

    return make


@pytest.fixture
def bridge() -> Iterator[str]:
    """A fresh Linux bridge, deleted afterwards whatever happened."""
    if shutil.which("ip") is None:
        pytest.fail("root but no 'ip' command (apt-get install iproute2)")
    name = f"kvmlabhb{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "link", "add", name, "type", "bridge"], check=True)
    try:
        subprocess.run(["ip", "link", "set", name, "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "link", "delete", name], check=False, capture_output=True)


def ports(bridge: str) -> set[str]:
    return {path.name for path in (SYS_NET / bridge / "brif").iterdir()}


def taps() -> set[str]:
    return {path.name for path in SYS_NET.iterdir() if path.name.startswith("tap")}


def is_up(interface: str) -> bool:
    return bool(int((SYS_NET / interface / "flags").read_text(), 16) & 0x1)


def guest_macs(lab, name: str = "vm1") -> list[str]:
    out = lab.guest(name).run("cat /sys/class/net/*/address", ready_timeout=BOOT_TIMEOUT)
    return out.stdout.split()


def mac_at_slot(lab, slot: int, name: str = "vm1") -> str:
    pci = f"/sys/bus/pci/devices/0000:00:{slot:02x}.0"
    out = lab.guest(name).run(f"cat {pci}/virtio*/net/*/address 2>/dev/null", timeout=10)
    return out.stdout.strip() if out.exit_code == 0 else ""


def eventually(predicate, timeout: float = 60.0) -> None:
    """Poll until true (the guest's ACPI round trip); fails only when it never becomes true."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("never became true")
        time.sleep(0.05)


def test_a_bridged_tap_attaches_survives_a_soft_reboot_and_detaches(
    lab, make_instance, bridge
) -> None:
    lab.start(make_instance(nics=1))
    before = taps()
    saved = lab.attach_nic("vm1", Nic(mac=NEW, mode="bridged", link=bridge))
    assert saved.nic_slots == (0x10, 0x11)
    assert [nic.mac for nic in lab.load_runtime("vm1").nics] == [mac(0), NEW]
    record = lab.layout.nic_dir("vm1") / "s11"
    tap = record.read_text().strip()
    assert taps() - before == {tap}
    assert is_up(tap)
    assert ports(bridge) == {tap}
    assert not lab.layout.hotplug_intent("vm1").exists()
    eventually(lambda: NEW in guest_macs(lab))
    assert mac_at_slot(lab, 0x11) == NEW

    lab.reboot("vm1")  # the normal start path: QEMU's tap and the up-script
    assert mac_at_slot(lab, 0x10) == mac(0)
    assert mac_at_slot(lab, 0x11) == NEW
    (port,) = ports(bridge)
    assert is_up(port)
    assert (lab.layout.nic_dir("vm1") / "1").read_text().strip() == port

    lab.detach_nic("vm1", NEW)
    eventually(lambda: not ports(bridge), 10.0)
    assert port not in taps()
    assert list(lab.layout.nic_dir("vm1").iterdir()) == []
    assert [nic.mac for nic in lab.load_runtime("vm1").nics] == [mac(0)]


def test_a_hotplugged_tap_is_detached_and_deleted(lab, make_instance, bridge) -> None:
    lab.start(make_instance(nics=1))
    before = taps()
    lab.attach_nic("vm1", Nic(mac=NEW, mode="bridged", link=bridge))
    eventually(lambda: NEW in guest_macs(lab))
    lab.detach_nic("vm1", NEW)
    eventually(lambda: NEW not in guest_macs(lab))
    assert taps() == before
    assert ports(bridge) == set()
    assert not (lab.layout.nic_dir("vm1") / "s11").exists()
    # The slot and the MAC are free again: a second attach gets both.
    assert lab.attach_nic("vm1", Nic(mac=NEW, mode="routed")).nic_slots == (0x10, 0x11)
    assert ports(bridge) == set()  # routed: on no bridge
    lab.stop("vm1")
    assert taps() == before


def test_a_failed_device_add_leaves_no_tap_and_the_runtime_untouched(
    lab, make_instance, bridge, monkeypatch
) -> None:
    lab.start(make_instance(nics=1))
    before_runtime = lab.layout.runtime_file("vm1").read_bytes()
    before = taps()
    monkeypatch.setattr(hotplug, "nic_device_model", lambda nic_type, caps: "no-such-nic")
    with pytest.raises(OperationError, match=r"device_add failed.*no-such-nic"):
        lab.attach_nic("vm1", Nic(mac=NEW, mode="bridged", link=bridge))
    assert lab.layout.runtime_file("vm1").read_bytes() == before_runtime
    assert taps() == before
    assert ports(bridge) == set()
    assert not lab.layout.hotplug_intent("vm1").exists()
    assert not (lab.layout.nic_dir("vm1") / "s11").exists()
    monkeypatch.undo()
    # The netdev and the descriptor name were removed: the same attach now succeeds.
    assert lab.attach_nic("vm1", Nic(mac=NEW, mode="bridged", link=bridge)).nic_slots == (
        0x10,
        0x11,
    )
    assert len(ports(bridge)) == 1


def test_a_missing_bridge_fails_before_qemu_is_asked(lab, make_instance) -> None:
    lab.start(make_instance(nics=1))
    before_runtime = lab.layout.runtime_file("vm1").read_bytes()
    before = taps()
    with pytest.raises(OperationError, match="up-script"):
        lab.attach_nic("vm1", Nic(mac=NEW, mode="bridged", link="kvmlabnobr"))
    assert taps() == before
    assert lab.layout.runtime_file("vm1").read_bytes() == before_runtime
    assert not lab.layout.hotplug_intent("vm1").exists()
