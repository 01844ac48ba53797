"""Hotplug invariants (docs/hotplug.md) as hypothesis properties on the fake kvm.

Random sequences of attach, detach, soft reboot and hard restart; after every step:

- the saved runtime equals what the running VM has: the guest's own sysfs shows
  exactly the saved NICs, each at its saved PCI slot;
- a soft reboot never loses or adds a device (the saved runtime is unchanged by it);
- a hard restart applies the instance file (its NICs at the default slots).

The same for NICs and virtio disks mixed (``test_nics_and_disks_...``): the guest's
/sys/block and /proc/partitions show exactly the saved disks (told apart by size),
each under its saved PCI slot.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_lifecycle_properties import fresh_lab, lab_instances

from kvmlab.errors import HotplugRefusedError
from kvmlab.lifecycle.hypervisor import Hypervisor
from kvmlab.runtime.ports import guest_sysfs_dir, has_root_ports
from kvmlab.runtime.saved import DISK_SLOTS, KVMRuntime, default_nic_slots
from kvmlab.spec.instance import Disk, Instance, Nic
from kvmlab.testing import strategies as kst

hotplug_settings = settings(max_examples=30, deadline=None)

steps = st.lists(
    st.one_of(
        st.tuples(st.just("attach"), kst.macs()),
        st.tuples(st.just("detach"), st.integers(0, 15)),
        st.tuples(st.just("reboot"), st.none()),
        st.tuples(st.just("restart"), st.none()),
    ),
    min_size=1,
    max_size=8,
)


def vm_nics(lab: Hypervisor, name: str, runtime: KVMRuntime) -> None:
    """The guest shows exactly the saved NICs, each at its saved slot."""
    shell = lab.guest(name)
    seen = shell.run("cat /sys/class/net/*/address", ready_timeout=10).stdout.split()
    seen.remove("00:00:00:00:00:00")  # lo
    assert sorted(seen) == sorted(nic.mac for nic in runtime.nics)
    ports = has_root_ports(runtime.argv)
    for nic, slot in zip(runtime.nics, runtime.nic_slots, strict=True):
        pci = guest_sysfs_dir(slot, ports)
        assert shell.run(f"cat {pci}/*/net/*/address").stdout.split() == [nic.mac]


#: q35 (NICs and disks behind PCIe root ports) and pc (on the root bus).
machines = pytest.mark.parametrize("machine", ["q35", "pc"])


@machines
@hotplug_settings
@given(lab_instances().map(lambda i: i.model_copy(update={"name": "vm1"})), steps)
def test_saved_runtime_always_equals_the_running_vm(machine: str, instance: Instance, plan) -> None:
    hv = {"nic_type": "paravirtual", "machine_version": machine}
    instance = instance.model_copy(update={"hvparams": instance.hvparams.model_copy(update=hv)})
    with fresh_lab() as (lab, _private):
        lab.start(instance)
        for action, arg in plan:
            before = lab.load_runtime("vm1")
            if action in {"attach", "detach"} and not instance.hvparams.acpi:
                # No ACPI, no PCI hotplug for the guest: refused, nothing changed.
                with pytest.raises(HotplugRefusedError, match="acpi"):
                    if action == "attach":
                        lab.attach_nic("vm1", Nic(mac=arg, mode="user"))
                    else:
                        lab.detach_nic(
                            "vm1", before.nics[0].mac if before.nics else "52:54:00:00:00:99"
                        )
                after = before
            elif action == "attach":
                if arg in {nic.mac for nic in before.nics} or len(before.nics) == 16:
                    continue
                after = lab.attach_nic("vm1", Nic(mac=arg, mode="user"))
                assert after.nics == (*before.nics, Nic(mac=arg, mode="user"))
                assert set(after.nic_slots) - set(before.nic_slots) == {
                    min(set(range(0x10, 0x20)) - set(before.nic_slots))
                }
            elif action == "detach":
                if not before.nics:
                    continue
                gone = before.nics[arg % len(before.nics)]
                after = lab.detach_nic("vm1", gone.mac)
                assert gone not in after.nics
                kept = [
                    (n, s) for n, s in zip(before.nics, before.nic_slots, strict=True) if n != gone
                ]
                assert list(zip(after.nics, after.nic_slots, strict=True)) == kept, (
                    "no other NIC moves"
                )
            elif action == "reboot":
                lab.reboot("vm1")
                after = lab.load_runtime("vm1")
                assert after == before, "a soft reboot never loses or adds a device"
            else:
                lab.restart(instance, force=True)
                after = lab.load_runtime("vm1")
                assert after.nics == instance.nics
                assert after.nic_slots == default_nic_slots(len(instance.nics))
            assert lab.load_runtime("vm1") == after
            vm_nics(lab, "vm1", after)


#: Image sizes in MiB: each image's size tells the guest's view of it apart.
POOL_MIB = (1, 2, 3, 4, 5)

mixed_steps = st.lists(
    st.one_of(
        st.tuples(st.just("attach-nic"), kst.macs()),
        st.tuples(st.just("detach-nic"), st.integers(0, 15)),
        st.tuples(st.just("attach-disk"), st.integers(0, len(POOL_MIB) - 1)),
        st.tuples(st.just("detach-disk"), st.integers(0, 7)),
        st.tuples(st.just("reboot"), st.none()),
        st.tuples(st.just("restart"), st.none()),
    ),
    min_size=1,
    max_size=10,
)


@pytest.fixture(scope="module")
def pool() -> Iterator[list[str]]:
    """Raw images of the sizes in :data:`POOL_MIB` (outside the lab's private temp dir)."""
    root = Path(tempfile.mkdtemp(prefix="kpd-"))
    paths = []
    for mib in POOL_MIB:
        path = root / f"{mib}m.img"
        with path.open("wb") as file:
            file.truncate(mib << 20)
        paths.append(str(path))
    yield paths
    shutil.rmtree(root, ignore_errors=True)


def vm_disks(lab: Hypervisor, name: str, runtime: KVMRuntime) -> None:
    """The guest shows exactly the saved disks, each at its saved slot (sizes tell them apart)."""
    shell = lab.guest(name)
    listed = shell.run(["ls", "/sys/block"], ready_timeout=10).stdout.split()
    sizes = sorted(int(shell.run(["cat", f"/sys/block/{dev}/size"]).stdout) for dev in listed)
    assert sizes == sorted(Path(disk.path).stat().st_size // 512 for disk in runtime.disks)
    partitions = shell.run(["cat", "/proc/partitions"]).stdout.splitlines()[2:]
    assert sorted(line.split()[3] for line in partitions) == sorted(listed)
    ports = has_root_ports(runtime.argv)
    for disk, slot in zip(runtime.disks, runtime.disk_slots, strict=True):
        pci = guest_sysfs_dir(slot, ports)
        (dev,) = shell.run(f"ls {pci}/virtio*/block").stdout.split()
        size = int(shell.run(["cat", f"/sys/block/{dev}/size"]).stdout)
        assert size == Path(disk.path).stat().st_size // 512


@machines
@hotplug_settings
@given(
    lab_instances().map(lambda i: i.model_copy(update={"name": "vm1"})),
    st.sets(st.integers(0, len(POOL_MIB) - 1), max_size=3),
    mixed_steps,
)
def test_nics_and_disks_saved_runtime_always_equals_the_running_vm(
    machine: str, pool: list[str], instance: Instance, start_disks: set[int], plan
) -> None:
    hv = {"nic_type": "paravirtual", "machine_version": machine}
    instance = instance.model_copy(
        update={
            "hvparams": instance.hvparams.model_copy(update=hv),
            "disks": tuple(Disk(path=pool[i]) for i in sorted(start_disks)),
        }
    )
    acpi = instance.hvparams.acpi
    with fresh_lab() as (lab, _private):
        lab.start(instance)
        for action, arg in plan:
            before = lab.load_runtime("vm1")
            if action == "attach-nic":
                if arg in {nic.mac for nic in before.nics} or len(before.nics) == 16:
                    continue
                if not acpi:
                    with pytest.raises(HotplugRefusedError, match="acpi"):
                        lab.attach_nic("vm1", Nic(mac=arg, mode="user"))
                    continue
                after = lab.attach_nic("vm1", Nic(mac=arg, mode="user"))
                assert (after.disks, after.disk_slots) == (before.disks, before.disk_slots)
            elif action == "detach-nic":
                if not before.nics or not acpi:
                    continue
                after = lab.detach_nic("vm1", before.nics[arg % len(before.nics)].mac)
                assert (after.disks, after.disk_slots) == (before.disks, before.disk_slots)
            elif action == "attach-disk":
                disk = Disk(path=pool[arg])
                if not acpi:
                    with pytest.raises(HotplugRefusedError, match="acpi"):
                        lab.attach_disk("vm1", disk)
                    continue
                if disk in before.disks:
                    with pytest.raises(HotplugRefusedError, match="already has disk"):
                        lab.attach_disk("vm1", disk)
                    continue
                after = lab.attach_disk("vm1", disk)
                assert after.disks == (*before.disks, disk)
                assert after.disk_slots == (
                    *before.disk_slots,
                    min(set(DISK_SLOTS) - set(before.disk_slots)),
                )
                assert (after.nics, after.nic_slots) == (before.nics, before.nic_slots)
            elif action == "detach-disk":
                if not before.disks or not acpi:
                    continue
                index = arg % len(before.disks)
                after = lab.detach_disk("vm1", before.disks[index].path)
                kept = [
                    pair
                    for i, pair in enumerate(zip(before.disks, before.disk_slots, strict=True))
                    if i != index
                ]
                assert list(zip(after.disks, after.disk_slots, strict=True)) == kept, (
                    "no other disk moves"
                )
            elif action == "reboot":
                lab.reboot("vm1")
                after = lab.load_runtime("vm1")
                assert after == before, "a soft reboot never loses or adds a device"
            else:
                lab.restart(instance, force=True)
                after = lab.load_runtime("vm1")
                assert after.disks == instance.disks
                assert after.disk_slots == tuple(DISK_SLOTS[: len(instance.disks)])
                assert after.nics == instance.nics
            assert lab.load_runtime("vm1") == after
            vm_nics(lab, "vm1", after)
            vm_disks(lab, "vm1", after)
