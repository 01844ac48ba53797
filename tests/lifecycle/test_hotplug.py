"""NIC hotplug kept by the saved runtime (docs/hotplug.md): the same bodies on the
fake kvm and on real QEMU with the test guest, which sees each change in its own sysfs."""

from __future__ import annotations

import json
import os
import re
import time

import pytest
from helpers_lifecycle import (
    BOOT_TIMEOUT,
    HOTPLUG_MACHINES,
    guest_pci_dir,
    mac,
    without_root_ports,
)

from kvmlab.errors import (
    HotplugNotRunningError,
    HotplugRefusedError,
    InvalidInputError,
    NotRunningError,
    OperationError,
)
from kvmlab.host.store import save_runtime
from kvmlab.lifecycle.hotplug import nic as hotplug
from kvmlab.spec.instance import Nic
from kvmlab.states import InstanceState

NEW = "52:54:00:6b:01:01"


@pytest.fixture(params=HOTPLUG_MACHINES)
def machine(request: pytest.FixtureRequest) -> str:
    """q35 (the test guest's own: NICs behind PCIe root ports) and pc (on the root bus)."""
    return str(request.param)


@pytest.fixture
def make_instance(make_instance, machine: str):
    """The conftest's instances on ``machine`` (docs/hotplug.md, "PCI slots")."""

    def make(**kwargs: object):
        kwargs.setdefault("machine_version", machine)
        return make_instance(**kwargs)

    return make


def guest_macs(lab, name: str = "vm1") -> list[str]:
    out = lab.guest(name).run("cat /sys/class/net/eth*/address", ready_timeout=BOOT_TIMEOUT)
    return out.stdout.split()


def mac_at_slot(lab, slot: int, name: str = "vm1") -> str:
    """The MAC of the net device the guest found at PCI slot ``slot`` (empty: none)."""
    pci = guest_pci_dir(lab, slot, name)
    out = lab.guest(name).run(f"cat {pci}/virtio*/net/*/address 2>/dev/null", timeout=10)
    return out.stdout.strip() if out.exit_code == 0 else ""


def wait_for(predicate, timeout: float = 60.0) -> float:
    began = time.monotonic()
    while not predicate():
        if time.monotonic() - began > timeout:
            raise AssertionError(f"not true within {timeout} s")
        time.sleep(0.05)
    return time.monotonic() - began


def saved_macs(lab, name: str = "vm1") -> list[str]:
    return [nic.mac for nic in lab.load_runtime(name).nics]


def test_attach_shows_in_the_guest_and_survives_a_soft_reboot(
    lab, make_instance, booted_vm_factory
) -> None:
    booted_vm_factory(make_instance(nics=1))
    assert guest_macs(lab) == [mac(0)]
    saved = lab.attach_nic("vm1", Nic(mac=NEW, mode="user"))
    assert saved.nic_slots == (0x10, 0x11)
    assert saved_macs(lab) == [mac(0), NEW] == [nic.mac for nic in saved.nics]
    wait_for(lambda: NEW in guest_macs(lab))
    assert mac_at_slot(lab, 0x11) == NEW
    assert not lab.layout.hotplug_intent("vm1").exists()

    lab.reboot("vm1")
    assert sorted(guest_macs(lab)) == sorted([mac(0), NEW])
    assert mac_at_slot(lab, 0x10) == mac(0)
    assert mac_at_slot(lab, 0x11) == NEW, "same device at the same address after the reboot"


def test_detach_of_a_middle_nic_keeps_the_others_at_their_slots(
    lab, make_instance, booted_vm_factory
) -> None:
    booted_vm_factory(make_instance(nics=3))
    assert guest_macs(lab) == [mac(0), mac(1), mac(2)]
    saved = lab.detach_nic("vm1", mac(1))
    assert saved.nic_slots == (0x10, 0x12)
    assert saved_macs(lab) == [mac(0), mac(2)]
    wait_for(lambda: mac(1) not in guest_macs(lab))
    assert mac_at_slot(lab, 0x11) == ""

    lab.reboot("vm1")
    assert sorted(guest_macs(lab)) == [mac(0), mac(2)]
    assert mac_at_slot(lab, 0x12) == mac(2), "not shifted into the freed slot"
    # The freed slot is reused by the next attach.
    assert lab.attach_nic("vm1", Nic(mac=NEW, mode="user")).nic_slots == (0x10, 0x12, 0x11)
    wait_for(lambda: mac_at_slot(lab, 0x11) == NEW)


def test_a_hard_restart_applies_the_instance_file(lab, make_instance) -> None:
    instance = make_instance(nics=1)
    lab.start(instance)
    lab.attach_nic("vm1", Nic(mac=NEW, mode="user"))
    lab.restart(instance)
    assert saved_macs(lab) == [mac(0)]
    assert guest_macs(lab) == [mac(0)]


def test_refusals_are_exit_2_and_change_nothing(lab, make_instance, booted_vm_factory) -> None:
    booted_vm_factory(make_instance(nics=1))
    before = lab.layout.runtime_file("vm1").read_bytes()
    with pytest.raises(HotplugRefusedError, match="already has a NIC with MAC"):
        lab.attach_nic("vm1", Nic(mac=mac(0), mode="user"))
    with pytest.raises(HotplugRefusedError, match="no NIC with MAC"):
        lab.detach_nic("vm1", NEW)
    if os.geteuid() != 0:  # as root the tap is made: tests/lifecycle/test_hotplug_taps.py
        with pytest.raises(HotplugRefusedError, match="needs root"):
            lab.attach_nic("vm1", Nic(mac=NEW, mode="bridged", link="br0"))
    assert lab.layout.runtime_file("vm1").read_bytes() == before
    assert guest_macs(lab) == [mac(0)]
    lab.stop("vm1", force=True)
    with pytest.raises(HotplugNotRunningError, match="not running") as stopped:
        lab.attach_nic("vm1", Nic(mac=NEW, mode="user"))
    assert stopped.value.exit_code == 2
    assert isinstance(stopped.value, NotRunningError)
    assert stopped.value.state is InstanceState.STOPPED
    assert isinstance(stopped.value, InvalidInputError)
    with pytest.raises(HotplugNotRunningError):
        lab.detach_nic("vm1", mac(0))
    assert lab.layout.runtime_file("vm1").read_bytes() == before


@pytest.mark.parametrize("machine", ["q35"])
def test_a_q35_runtime_without_root_ports_is_refused_up_front(lab, make_instance) -> None:
    """A q35 runtime an older kvmlab saved (no root ports) is refused until a restart."""
    lab.start(make_instance(nics=1))
    save_runtime(lab.layout.runtime_file("vm1"), without_root_ports(lab.load_runtime("vm1")))
    before = lab.layout.runtime_file("vm1").read_bytes()
    with pytest.raises(HotplugRefusedError, match=r"q35.*without PCIe root ports"):
        lab.attach_nic("vm1", Nic(mac=NEW, mode="user"))
    with pytest.raises(HotplugRefusedError, match="restart it"):
        lab.detach_nic("vm1", mac(0))
    assert lab.layout.runtime_file("vm1").read_bytes() == before


def test_a_failed_device_add_leaves_the_runtime_untouched(lab, make_instance, monkeypatch) -> None:
    lab.start(make_instance(nics=1))
    before = lab.layout.runtime_file("vm1").read_bytes()
    # A device model QEMU does not know: netdev_add succeeds, device_add fails.
    monkeypatch.setattr(hotplug, "nic_device_model", lambda nic_type, caps: "no-such-nic")
    with pytest.raises(OperationError, match=r"device_add failed.*no-such-nic"):
        lab.attach_nic("vm1", Nic(mac=NEW, mode="user"))
    assert lab.layout.runtime_file("vm1").read_bytes() == before
    assert not lab.layout.hotplug_intent("vm1").exists()
    assert "hotplug_pending" not in lab.info("vm1").extra
    assert lab.info("vm1").pending == ()
    monkeypatch.undo()
    # Its netdev was removed again: the same attach now succeeds.
    assert lab.attach_nic("vm1", Nic(mac=NEW, mode="user")).nic_slots == (0x10, 0x11)


def test_a_crash_between_device_add_and_the_save_is_reported_by_info(
    lab, make_instance, monkeypatch
) -> None:
    lab.start(make_instance(nics=1))
    before = lab.layout.runtime_file("vm1").read_bytes()

    def crash(path, runtime) -> None:
        raise KeyboardInterrupt("killed between device_add and the save")

    monkeypatch.setattr(hotplug, "save_runtime", crash)
    with pytest.raises(KeyboardInterrupt):
        lab.attach_nic("vm1", Nic(mac=NEW, mode="user"))
    assert lab.layout.runtime_file("vm1").read_bytes() == before
    crashed = lab.info("vm1", query_guest=False)
    assert crashed.extra["hotplug_pending"] == {"op": "attach-nic", "mac": NEW, "slot": 0x11}
    # Pending on top of the process state, which stays the word scripts read.
    assert crashed.state is InstanceState.RUNNING
    assert crashed.pending == (InstanceState.HOTPLUG_PENDING,)
    info = lab.info("vm1").to_dict()
    assert json.loads(json.dumps(info))["hotplug_pending"]["mac"] == NEW
    lab.stop("vm1", force=True)
    lab.cleanup("vm1")
    assert not lab.layout.hotplug_intent("vm1").exists()


def test_a_qemu_without_the_commands_is_refused_naming_its_version(
    lab, make_instance, monkeypatch, booted_vm_factory
) -> None:
    booted_vm_factory(make_instance(nics=1))
    before = lab.layout.runtime_file("vm1").read_bytes()
    # A command this QEMU lacks (as QEMUs before device_del's event lacked it).
    monkeypatch.setattr(hotplug, "NIC_COMMANDS", (*hotplug.NIC_COMMANDS, "x-no-such-command"))
    with pytest.raises(HotplugRefusedError) as refused:
        lab.attach_nic("vm1", Nic(mac=NEW, mode="user"))
    assert refused.value.exit_code == 2
    assert re.fullmatch(
        r"QEMU \d+\.\d+\.\d+ of vm1 has no x-no-such-command: NIC hotplug needs .*",
        str(refused.value),
    )
    assert lab.layout.runtime_file("vm1").read_bytes() == before
    assert not lab.layout.hotplug_intent("vm1").exists()
    assert guest_macs(lab) == [mac(0)]
