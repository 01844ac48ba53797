"""Invariants 6 to 9 (docs/architecture.md) as properties over real life cycles (fake kvm).

Hypothesis and function-scoped fixtures do not mix, so every example builds its own
lab (a fresh state directory on the fake backend) and its own private
``tempfile.tempdir``, and tears both down, force-stopping whatever still runs.
"""

from __future__ import annotations

import contextlib
import itertools
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvmlab.channels.console import GuestFacts
from kvmlab.errors import LaunchError
from kvmlab.host.backends import FakeBackend
from kvmlab.host.process import is_alive, read_cmdline
from kvmlab.lifecycle.hypervisor import Hypervisor, InstanceState
from kvmlab.runtime.saved import KVMRuntime
from kvmlab.spec.instance import HvParams, Instance, Nic
from kvmlab.testing import strategies as kst

START_TIME_OPTIONS = frozenset({"-netdev", "-device", "-net", "-qmp"})
FACTS_TIMEOUT = 10.0

lifecycle_settings = settings(max_examples=15, deadline=None)

memories = st.integers(64, 1024)
vcpu_counts = st.integers(1, 4)
mac_lists = st.lists(kst.macs(), min_size=1, max_size=3, unique=True)


def user_nics(macs: list[str]) -> tuple[Nic, ...]:
    return tuple(Nic(mac=mac, mode="user") for mac in macs)


@st.composite
def lab_instances(draw: st.DrawFn) -> Instance:
    """Instances the fake boots without root: 1-3 user-mode NICs, no kernel."""
    return Instance(
        name=draw(kst.instance_names()),
        memory=draw(memories),
        vcpus=draw(vcpu_counts),
        nics=user_nics(draw(mac_lists)),
        hvparams=HvParams(
            kernel_path="",
            vnc_bind_address="",
            acpi=draw(st.booleans()),
            nic_type=draw(st.sampled_from(["paravirtual", "e1000", "rtl8139"])),
        ),
    )


@st.composite
def changed(draw: st.DrawFn, old: Instance) -> Instance:
    """``old`` with its memory, vCPUs and/or NICs changed (at least one of them)."""
    fields = draw(st.sets(st.sampled_from(["memory", "vcpus", "nics"]), min_size=1))
    update: dict[str, object] = {}
    if "memory" in fields:
        update["memory"] = draw(memories.filter(lambda m: m != old.memory))
    if "vcpus" in fields:
        update["vcpus"] = draw(vcpu_counts.filter(lambda n: n != old.vcpus))
    if "nics" in fields:
        old_macs = [nic.mac for nic in old.nics]
        update["nics"] = user_nics(draw(mac_lists.filter(lambda macs: macs != old_macs)))
    return old.model_copy(update=update)


@contextlib.contextmanager
def fresh_lab() -> Iterator[tuple[Hypervisor, Path]]:
    """A lab on a fresh state directory, and a private temp dir kvmlab must leave empty."""
    root = tempfile.mkdtemp(prefix="kp-")
    private = tempfile.mkdtemp(prefix="kpt-")
    saved_tempdir = tempfile.tempdir
    # A guest that powers off at once: graceful stops cost no sleep.
    backend = FakeBackend(faults={"KVMLAB_FAKE_POWERDOWN_DELAY": "0"})
    lab = Hypervisor(root, backend=backend, stop_timeout=5.0)
    tempfile.tempdir = private
    try:
        yield lab, Path(private)
    finally:
        tempfile.tempdir = saved_tempdir
        for info in lab.list_instances():
            if info.pid is not None:
                with contextlib.suppress(Exception):
                    lab.stop(info.name, force=True)
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(private, ignore_errors=True)


def option_values(argv: tuple[str, ...], option: str) -> list[str]:
    return [value for word, value in itertools.pairwise(argv) if word == option]


def macs_in(argv: tuple[str, ...]) -> list[str]:
    found = []
    for option in ("-device", "-net"):
        for value in option_values(argv, option):
            for part in value.split(","):
                key, _, mac = part.partition("=")
                if key in {"mac", "macaddr"}:
                    found.append(mac)
    return found


def facts(lab: Hypervisor, name: str) -> GuestFacts:
    return lab.console(name).facts(FACTS_TIMEOUT)


def assert_guest_sees(seen: GuestFacts, instance: Instance) -> None:
    asked_kb = instance.memory * 1024
    assert 0.75 * asked_kb < seen.mem_kb < asked_kb, (seen.mem_kb, asked_kb)
    assert seen.cpus == instance.vcpus
    assert seen.macs == [nic.mac for nic in instance.nics]


def assert_cmdline_is(pid: int, instance: Instance) -> None:
    cmdline = read_cmdline(pid)
    assert cmdline is not None
    assert option_values(cmdline, "-m") == [str(instance.memory)]
    assert [v.split(",")[0] for v in option_values(cmdline, "-smp")] == [str(instance.vcpus)]
    assert macs_in(cmdline) == [nic.mac for nic in instance.nics]


def start_time_tail_ok(live: tuple[str, ...], saved: tuple[str, ...]) -> list[str]:
    """Problems with the live argv: a saved prefix then start-time options only."""
    problems = []
    if live[: len(saved)] != saved:
        problems.append("the live argv does not start with the saved argv")
    tail = live[len(saved) :]
    if len(tail) % 2:
        problems.append(f"odd start-time tail {tail}")
    for option, _value in zip(tail[::2], tail[1::2], strict=False):
        if option not in START_TIME_OPTIONS:
            problems.append(f"{option} is not a start-time option")
    return problems


# -- invariants 6 and 8 (one life cycle, both checked at every step) -------------------


@lifecycle_settings
@given(
    lab_instances(),
    st.integers(1, 2),
    st.text("abcdefghij ", min_size=1, max_size=20).map(str.strip).filter(bool),
)
def test_6_and_8_saved_runtime_unchanged_and_no_temp_file_through_a_life_cycle(
    instance: Instance, reboots: int, message: str
) -> None:
    name = instance.name
    with fresh_lab() as (lab, private):
        expected = lab.generate(instance)
        lab.start(instance)
        assert list(private.iterdir()) == [], "after start"
        path = lab.layout.runtime_file(name)
        saved = path.read_bytes()
        assert KVMRuntime.from_json(saved.decode()) == expected

        for _ in range(reboots):
            info = lab.reboot(name)
            assert info.state is InstanceState.RUNNING
            assert path.read_bytes() == saved, "invariant 6: reboot changed the runtime"
            assert list(private.iterdir()) == [], "after reboot"

        lab.stop(name, force=True)
        assert path.read_bytes() == saved
        assert list(private.iterdir()) == [], "after stop"

        failing = Hypervisor(
            lab.layout.root, backend=FakeBackend(faults={"KVMLAB_FAKE_FAIL_START": message})
        )
        with pytest.raises(LaunchError, match=message):
            failing.start(instance)  # saves the same runtime again, then fails to execute it
        assert path.read_bytes() == saved
        assert list(private.iterdir()) == [], "after a failed start"
        assert lab.info(name).state is InstanceState.STOPPED
        assert not lab.layout.pidfile(name).exists()
        assert lab.load_runtime(name) == expected


# -- invariant 7 -----------------------------------------------------------------------


@lifecycle_settings
@given(lab_instances())
def test_7_live_argv_is_the_saved_argv_then_start_time_options(instance: Instance) -> None:
    with fresh_lab() as (lab, _):
        lab.start(instance)
        saved = lab.load_runtime(instance.name).argv
        for step in ("start", "soft reboot"):
            if step == "soft reboot":
                lab.reboot(instance.name)
            info = lab.info(instance.name)
            assert info.pid is not None and info.argv, step
            assert info.argv == read_cmdline(info.pid)[-len(info.argv) :]  # type: ignore[index]
            assert start_time_tail_ok(info.argv, saved) == [], step
            tail = info.argv[len(saved) :]
            assert macs_in(tail) == [nic.mac for nic in instance.nics], step
            assert len(option_values(tail, "-device")) == len(instance.nics), step
            assert len(option_values(tail, "-qmp")) == 1, step


def test_7_checker_sees_a_foreign_option() -> None:
    saved = ("kvm", "-m", "128")
    assert start_time_tail_ok((*saved, "-qmp", "unix:/q"), saved) == []
    assert start_time_tail_ok((*saved, "-m", "256"), saved) != []
    assert start_time_tail_ok(("kvm", "-m", "256", "-qmp", "unix:/q"), saved) != []


# -- invariant 9 -----------------------------------------------------------------------


@lifecycle_settings
@given(st.data())
def test_9_soft_reboot_replays_the_old_instance_hard_restart_applies_the_new(
    data: st.DataObject,
) -> None:
    old = data.draw(lab_instances(), label="old")
    new = data.draw(changed(old), label="new")
    name = old.name
    with fresh_lab() as (lab, _):
        first = lab.start(old)
        before = facts(lab, name)
        assert_guest_sees(before, old)

        # The instance changes; a soft reboot must apply none of it.
        rebooted = lab.reboot(name)
        assert rebooted.pid != first.pid and not is_alive(first.pid)
        assert rebooted.pid is not None
        assert_cmdline_is(rebooted.pid, old)
        replayed = facts(lab, name)
        assert_guest_sees(replayed, old)
        assert (replayed.mem_kb, replayed.cpus, replayed.nics) == (
            before.mem_kb,
            before.cpus,
            before.nics,
        )

        restarted = lab.restart(new)
        assert restarted.pid is not None
        assert_cmdline_is(restarted.pid, new)
        assert_guest_sees(facts(lab, name), new)
        assert (restarted.memory, restarted.vcpus) == (new.memory, new.vcpus)
