"""Snapshot invariants (docs/snapshots.md) as a hypothesis state machine on the fake kvm.

Random sequences of snapshot, revert, save, restore, NIC hotplug (attach, detach), soft
reboot, migration to a second lab and back, stop and start, on one instance; after every
step:

- a running instance has exactly one VM (one live process started with its pidfile, in
  either lab), a stopped or saved one none;
- the saved runtime is what the VM runs: the live argv is the saved argv followed by
  start-time options only, and the guest's own sysfs shows exactly the saved NICs, each
  at its saved PCI slot;
- a revert makes the snapshot's runtime the saved runtime, a restore the runtime saved
  with the state, a soft reboot changes nothing;
- no journal is left and no temp file beside the states.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile

import pytest
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from test_lifecycle_properties import START_TIME_OPTIONS

from kvmlab.errors import NotRunningError, SavedError, SnapshotRefusedError
from kvmlab.host.backends import FakeBackend
from kvmlab.lifecycle.hypervisor import Hypervisor
from kvmlab.runtime.saved import KVMRuntime
from kvmlab.spec.instance import HvParams, Instance, Nic
from kvmlab.testing.plugin import vm_processes

TAGS = ("a", "b")
#: The hotplug pool: the instance's own NIC is MACS[0].
MACS = ("52:54:00:6c:00:01", "52:54:00:6c:00:02", "52:54:00:6c:00:03")
#: Start-time options of a VM started to load a state: ``-incoming defer`` too.
LOAD_OPTIONS = START_TIME_OPTIONS | {"-incoming"}
INSTANCE = Instance(
    name="vm1",
    memory=128,
    nics=(Nic(mac=MACS[0], mode="user"),),
    # The pc machine: its hotplugged NICs go on the root bus (as on real QEMU today).
    hvparams=HvParams(kernel_path="", vnc_bind_address="", machine_version="pc"),
)


def tail_problems(live: tuple[str, ...], saved: tuple[str, ...]) -> list[str]:
    """The live argv is the saved argv, then start-time options only."""
    if live[: len(saved)] != saved:
        return ["the live argv does not start with the saved argv"]
    tail = live[len(saved) :]
    if len(tail) % 2:
        return [f"odd start-time tail {tail}"]
    return [f"{opt} is not a start-time option" for opt in tail[::2] if opt not in LOAD_OPTIONS]


class SnapshotSequences(RuleBasedStateMachine):
    """One instance in lab ``home``; ``away`` only holds it during a migration."""

    def __init__(self) -> None:
        super().__init__()
        self.roots = [tempfile.mkdtemp(prefix="kps-") for _ in range(2)]
        backend = FakeBackend(faults={"KVMLAB_FAKE_POWERDOWN_DELAY": "0"})
        self.home, self.away = (
            Hypervisor(root, backend=backend, stop_timeout=5.0) for root in self.roots
        )
        self.home.start(INSTANCE)
        self.running = True
        #: The saved runtime (JSON) of each snapshot, and of the saved state.
        self.snapshots: dict[str, str] = {}
        self.saved: str | None = None

    def teardown(self) -> None:
        for lab in (self.home, self.away):
            for info in lab.list_instances():
                if info.pid is not None:
                    with contextlib.suppress(Exception):
                        lab.stop(info.name, force=True)
        for root in self.roots:
            shutil.rmtree(root, ignore_errors=True)

    def runtime(self) -> KVMRuntime:
        return self.home.load_runtime("vm1")

    # -- rules -----------------------------------------------------------------------

    @rule(tag=st.sampled_from(TAGS))
    def snapshot(self, tag: str) -> None:
        if not self.running or tag in self.snapshots:
            with pytest.raises(SnapshotRefusedError):
                self.home.snapshot("vm1", tag)
            return
        info = self.home.snapshot("vm1", tag)
        assert (info.tag, info.kind, info.running) == (tag, "snapshot", True)
        event("snapshot taken")
        self.snapshots[tag] = self.runtime().to_json()

    @rule(tag=st.sampled_from(TAGS))
    def revert(self, tag: str) -> None:
        if self.saved is not None:
            with pytest.raises(SavedError):
                self.home.revert("vm1", tag)
        elif tag not in self.snapshots:
            with pytest.raises(SnapshotRefusedError, match="has no snapshot"):
                self.home.revert("vm1", tag)
        else:
            event(f"revert of a {'running' if self.running else 'stopped'} VM")
            self.home.revert("vm1", tag)
            self.running = True
            assert self.runtime().to_json() == self.snapshots[tag]

    @precondition(lambda self: self.snapshots and self.saved is None)
    @rule(data=st.data())
    def revert_to_one_taken(self, data: st.DataObject) -> None:
        """A revert to a snapshot that exists (the rule above mostly draws unknown tags)."""
        self.revert(data.draw(st.sampled_from(sorted(self.snapshots)), label="tag"))

    @rule()
    def save(self) -> None:
        if not self.running:
            with pytest.raises(SnapshotRefusedError):
                self.home.save("vm1")
            return
        before = self.runtime().to_json()
        info = self.home.save("vm1")
        assert (info.tag, info.kind) == (None, "save")
        self.running, self.saved = False, before
        event("saved")

    @rule()
    def restore(self) -> None:
        if self.saved is None:
            with pytest.raises(SnapshotRefusedError):
                self.home.restore("vm1")
            return
        self.home.restore("vm1")
        assert self.runtime().to_json() == self.saved
        assert self.home.saved_state("vm1") is None
        self.running, self.saved = True, None
        event("restored")

    @precondition(lambda self: self.running)
    @rule(mac=st.sampled_from(MACS[1:]))
    def attach(self, mac: str) -> None:
        if mac in {nic.mac for nic in self.runtime().nics}:
            return
        after = self.home.attach_nic("vm1", Nic(mac=mac, mode="user"))
        assert mac in {nic.mac for nic in after.nics}

    @precondition(lambda self: self.running)
    @rule(index=st.integers(0, 3))
    def detach(self, index: int) -> None:
        nics = self.runtime().nics
        if len(nics) < 2:
            return
        gone = nics[index % len(nics)].mac
        after = self.home.detach_nic("vm1", gone)
        assert gone not in {nic.mac for nic in after.nics}

    @rule()
    def reboot(self) -> None:
        if not self.running:
            with pytest.raises(SavedError if self.saved is not None else NotRunningError):
                self.home.reboot("vm1")
            return
        before = self.runtime()
        self.home.reboot("vm1")
        assert self.runtime() == before

    @precondition(lambda self: self.running)
    @rule()
    def migrate_there_and_back(self) -> None:
        before = self.runtime()
        self.home.migrate("vm1", self.away, timeout=30)
        assert not self.home.layout.runtime_file("vm1").exists()
        self.away.migrate("vm1", self.home, timeout=30)
        after = self.runtime()
        assert (after.nics, after.nic_slots) == (before.nics, before.nic_slots)

    @precondition(lambda self: self.running)
    @rule()
    def stop(self) -> None:
        self.home.stop("vm1", force=True)
        self.running = False

    @rule()
    def start(self) -> None:
        if self.saved is not None:
            with pytest.raises(SavedError):
                self.home.start(INSTANCE)
        elif self.running:
            return
        else:
            self.home.start(INSTANCE)
            self.running = True

    # -- invariants ------------------------------------------------------------------

    @invariant()
    def one_vm_per_running_instance(self) -> None:
        vms = vm_processes(self.home, self.away)
        assert [lab for _, lab in vms] == ([self.home] if self.running else []), vms
        assert not self.away.layout.runtime_file("vm1").exists()

    @invariant()
    def the_saved_runtime_is_the_vm(self) -> None:
        if not self.running:
            return
        runtime = self.runtime()
        info = self.home.info("vm1", query_guest=False)
        assert tail_problems(info.argv, runtime.argv) == []
        shell = self.home.guest("vm1")
        seen = shell.run("cat /sys/class/net/*/address", ready_timeout=10).stdout.split()
        seen.remove("00:00:00:00:00:00")  # lo
        assert sorted(seen) == sorted(nic.mac for nic in runtime.nics)
        for nic, slot in zip(runtime.nics, runtime.nic_slots, strict=True):
            pci = f"/sys/bus/pci/devices/0000:00:{slot:02x}.0"
            assert shell.run(f"cat {pci}/*/net/*/address").stdout.split() == [nic.mac]

    @invariant()
    def records_match_and_nothing_is_left(self) -> None:
        layout = self.home.layout
        assert sorted(s.tag or "" for s in self.home.snapshots("vm1")) == sorted(self.snapshots)
        assert (self.home.saved_state("vm1") is not None) == (self.saved is not None)
        for journal in (layout.snapshot_journal("vm1"), layout.migration_journal("vm1")):
            assert not journal.exists()
        for directory in (layout.root / "snap", layout.root / "save"):
            if directory.exists():
                assert [p for p in directory.rglob(".*") if p.is_file()] == []


SnapshotSequences.TestCase.settings = settings(
    max_examples=12, stateful_step_count=10, deadline=None
)
test_snapshot_sequences = SnapshotSequences.TestCase
