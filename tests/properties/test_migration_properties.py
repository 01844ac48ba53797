"""Migration invariants (docs/migration.md) as hypothesis properties on the fake kvm.

Random sequences of migrate A -> B / B -> A, NIC hotplug, soft reboot, stop and start
across two fake labs; after every step:

- a running instance has exactly one VM (one live process started with either lab's
  pidfile), in the lab that holds its saved runtime, and the other lab has neither;
- a stopped one has none;
- the saved runtime equals the VM's devices: the guest shows exactly the saved NICs,
  each at its saved PCI slot;
- no migration journal is left.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvmlab.errors import MigrationRefusedError, NotRunningError
from kvmlab.host.backends import FakeBackend
from kvmlab.lifecycle.hypervisor import Hypervisor
from kvmlab.spec.instance import HvParams, Instance, Nic
from kvmlab.testing import strategies as kst
from kvmlab.testing.plugin import vm_processes

steps = st.lists(
    st.one_of(
        st.just(("migrate", None)),
        st.just(("migrate-offline", None)),
        st.tuples(st.just("attach"), kst.macs()),
        st.just(("reboot", None)),
        st.just(("stop", None)),
        st.just(("start", None)),
    ),
    min_size=1,
    max_size=8,
)


@contextlib.contextmanager
def two_labs() -> Iterator[tuple[Hypervisor, Hypervisor]]:
    roots = [tempfile.mkdtemp(prefix="kpm-") for _ in range(2)]
    backend = FakeBackend(faults={"KVMLAB_FAKE_POWERDOWN_DELAY": "0"})
    labs = tuple(Hypervisor(root, backend=backend, stop_timeout=5.0) for root in roots)
    try:
        yield labs[0], labs[1]
    finally:
        for lab in labs:
            for info in lab.list_instances():
                if info.pid is not None:
                    with contextlib.suppress(Exception):
                        lab.stop(info.name, force=True)
        for root in roots:
            shutil.rmtree(root, ignore_errors=True)


def check(home: Hypervisor, away: Hypervisor, running: bool) -> None:
    vms = vm_processes(home, away)
    assert [lab for _, lab in vms] == ([home] if running else [])
    assert home.layout.runtime_file("vm1").exists()
    assert not away.layout.runtime_file("vm1").exists()
    for lab in (home, away):
        assert not lab.layout.migration_journal("vm1").exists()
    if running:
        runtime = home.load_runtime("vm1")
        shell = home.guest("vm1")
        seen = shell.run("cat /sys/class/net/*/address", ready_timeout=10).stdout.split()
        seen.remove("00:00:00:00:00:00")  # lo
        assert sorted(seen) == sorted(nic.mac for nic in runtime.nics)
        for nic, slot in zip(runtime.nics, runtime.nic_slots, strict=True):
            pci = f"/sys/bus/pci/devices/0000:00:{slot:02x}.0"
            assert shell.run(f"cat {pci}/*/net/*/address").stdout.split() == [nic.mac]


@settings(max_examples=25, deadline=None)
@given(st.lists(kst.macs(), min_size=1, max_size=2, unique=True), steps)
def test_one_vm_per_running_instance_and_its_runtime_is_the_vm(macs, plan) -> None:
    instance = Instance(
        name="vm1",
        memory=128,
        nics=tuple(Nic(mac=mac, mode="user") for mac in macs),
        hvparams=HvParams(kernel_path="", vnc_bind_address="", machine_version="pc"),
    )
    with two_labs() as labs:
        home, away = labs
        home.start(instance)
        running = True
        for action, arg in plan:
            if action in ("migrate", "migrate-offline"):
                if not running:
                    with pytest.raises(MigrationRefusedError, match="not running"):
                        home.migrate("vm1", away)
                    continue
                before = home.load_runtime("vm1")
                home.migrate("vm1", away, live=action == "migrate", timeout=30)
                home, away = away, home
                after = home.load_runtime("vm1")
                assert (after.nics, after.nic_slots) == (before.nics, before.nic_slots)
            elif action == "attach":
                runtime = home.load_runtime("vm1")
                if not running or arg in {nic.mac for nic in runtime.nics}:
                    continue
                home.attach_nic("vm1", Nic(mac=arg, mode="user"))
            elif action == "reboot":
                if not running:
                    with pytest.raises(NotRunningError):
                        home.reboot("vm1")
                    continue
                before = home.load_runtime("vm1")
                home.reboot("vm1")
                assert home.load_runtime("vm1") == before
            elif action == "stop":
                if running:
                    home.stop("vm1", force=True)
                    running = False
            elif not running:  # start: a fresh runtime, in the lab that has the instance
                home.start(instance)
                running = True
            check(home, away, running)
