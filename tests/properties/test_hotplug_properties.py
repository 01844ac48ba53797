"""Hotplug invariants (issue 11, docs/hotplug.md) as hypothesis properties on the fake kvm.

Random sequences of attach, detach, soft reboot and hard restart; after every step:

- the saved runtime equals what the running VM has: the guest's own sysfs shows
  exactly the saved NICs, each at its saved PCI slot;
- a soft reboot never loses or adds a device (the saved runtime is unchanged by it);
- a hard restart applies the instance file (its NICs at the default slots).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_lifecycle_properties import fresh_lab, lab_instances

from kvmlab.errors import HotplugRefusedError
from kvmlab.lifecycle import Hypervisor
from kvmlab.models import Instance, Nic
from kvmlab.runtime import KVMRuntime, default_nic_slots
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
    for nic, slot in zip(runtime.nics, runtime.nic_slots, strict=True):
        pci = f"/sys/bus/pci/devices/0000:00:{slot:02x}.0"
        assert shell.run(f"cat {pci}/*/net/*/address").stdout.split() == [nic.mac]


@hotplug_settings
@given(lab_instances().map(lambda i: i.model_copy(update={"name": "vm1"})), steps)
def test_saved_runtime_always_equals_the_running_vm(instance: Instance, plan) -> None:
    instance = instance.model_copy(
        update={"hvparams": instance.hvparams.model_copy(update={"nic_type": "paravirtual"})}
    )
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
