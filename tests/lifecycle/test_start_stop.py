"""Start, info, console, stop: the same assertions on the fake kvm and on real QEMU."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest
from helpers_lifecycle import assert_facts_match, boot_facts, kvmlab_temp_leftovers, option_value

from kvmlab.errors import (
    AlreadyRunningError,
    LaunchError,
    LockedError,
    NotRunningError,
    UnknownInstanceError,
)
from kvmlab.host import stopping
from kvmlab.host.process import is_alive, read_pidfile, wait_for_exit
from kvmlab.lifecycle.hypervisor import InstanceState
from kvmlab.runtime.saved import KVMRuntime
from kvmlab.spec.instance import HvParams, Instance, Nic


def test_start_boots_a_guest_that_sees_the_instance(lab, make_instance) -> None:
    instance = make_instance(memory=256, vcpus=2, nics=2)
    before = kvmlab_temp_leftovers()
    info = lab.start(instance)
    assert info.state is InstanceState.RUNNING
    assert info.pid == read_pidfile(lab.layout.pidfile("vm1"))
    assert_facts_match(boot_facts(lab, "vm1"), instance)
    assert not kvmlab_temp_leftovers() - before  # invariant 8


def test_info_shows_the_live_command_line(lab, make_instance) -> None:
    lab.start(make_instance())
    info = lab.info("vm1")
    saved = lab.load_runtime("vm1").argv
    # Invariant 7, read back from /proc. argv[0] is what the kernel reports: a wrapper
    # script that execs QEMU (the QEMU 10.0 install) shows QEMU's own path there.
    assert info.argv[1 : len(saved)] == saved[1:]
    assert option_value(info.argv, "-qmp")
    assert info.memory == 192 and info.vcpus == 2
    data = info.to_dict()
    assert data["state"] == "running" and data["pid"] == info.pid
    json.dumps(data)


def test_second_start_is_refused_and_the_saved_runtime_kept(lab, make_instance) -> None:
    lab.start(make_instance())
    saved = lab.layout.runtime_file("vm1").read_bytes()
    with pytest.raises(AlreadyRunningError, match="already running") as refused:
        lab.start(make_instance(memory=512))
    assert refused.value.state is InstanceState.RUNNING
    assert lab.layout.runtime_file("vm1").read_bytes() == saved


def test_graceful_stop_powers_the_guest_off(lab, make_instance) -> None:
    lab.start(make_instance())
    boot_facts(lab, "vm1")
    pid = lab.info("vm1").pid
    lab.stop("vm1", timeout=30)
    assert not is_alive(pid)
    assert lab.info("vm1").state is InstanceState.STOPPED
    assert not lab.layout.pidfile("vm1").exists()
    assert not lab.layout.qmp_socket("vm1").exists()
    assert lab.layout.runtime_file("vm1").exists()  # kept until cleanup
    # The guest itself powered off (ACPI), it was not killed.
    assert "Power down" in lab.console("vm1").read() or lab.backend.name == "fake"


def test_forced_stop_kills_at_once(lab, make_instance) -> None:
    lab.start(make_instance())
    pid = lab.info("vm1").pid
    lab.stop("vm1", force=True)
    assert not is_alive(pid)


def test_stop_and_reboot_of_a_stopped_instance_fail(lab, make_instance) -> None:
    lab.start(make_instance())
    lab.stop("vm1", force=True)
    with pytest.raises(NotRunningError) as refused:
        lab.stop("vm1")
    assert refused.value.state is InstanceState.STOPPED
    with pytest.raises(NotRunningError):
        lab.reboot("vm1")


def test_unknown_and_invalid_names_are_refused(lab) -> None:
    with pytest.raises(UnknownInstanceError):
        lab.info("nope")
    with pytest.raises(UnknownInstanceError, match="not a valid instance name"):
        lab.stop("../etc")


def test_a_killed_process_counts_as_stopped_and_can_start_again(lab, make_instance) -> None:
    lab.start(make_instance())
    pid = lab.info("vm1").pid
    subprocess.run(["kill", "-KILL", str(pid)], check=True)
    assert wait_for_exit(pid, 5)  # kill(2) returns before the process is gone
    assert lab.info("vm1").state is InstanceState.STOPPED
    info = lab.start(make_instance())
    assert info.pid != pid and is_alive(info.pid)


def test_a_stale_pidfile_naming_another_process_does_not_block(lab, make_instance) -> None:
    lab.start(make_instance())
    lab.stop("vm1", force=True)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lab.layout.pidfile("vm1").write_text(f"{other.pid}\n")
        assert lab.info("vm1").state is InstanceState.STOPPED
        info = lab.start(make_instance())
        assert info.pid != other.pid
        assert other.poll() is None  # the unrelated process was left alone
    finally:
        other.kill()
        other.wait()


def test_start_failure_leaves_nothing_behind(lab, make_instance, kvmlab_backend) -> None:
    before = kvmlab_temp_leftovers()
    instance = make_instance(kvm_extra="-kvmlab-no-such-option")
    with pytest.raises(LaunchError) as caught:
        lab.start(instance)
    assert caught.value.exitcode == 1
    assert "-kvmlab-no-such-option" in caught.value.output
    assert not kvmlab_temp_leftovers() - before
    assert not lab.layout.pidfile("vm1").exists()
    assert not lab.layout.qmp_socket("vm1").exists()
    assert lab.info("vm1").state is InstanceState.STOPPED
    KVMRuntime.from_json(lab.layout.runtime_file("vm1").read_text())


def test_concurrent_starts_run_exactly_one_process(lab, make_instance) -> None:
    outcomes: list[object] = []

    def start() -> None:
        try:
            outcomes.append(lab.start(make_instance()).pid)
        except (AlreadyRunningError, LockedError) as err:
            outcomes.append(type(err))

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    pids = [o for o in outcomes if isinstance(o, int)]
    assert len(pids) == 1, outcomes
    assert lab.info("vm1").pid == pids[0]


def test_cleanup_forgets_a_stopped_instance(lab, make_instance) -> None:
    lab.start(make_instance())
    with pytest.raises(AlreadyRunningError) as refused:
        lab.cleanup("vm1")
    assert refused.value.state is InstanceState.RUNNING
    lab.info("vm1")  # a QMP session: its traffic is logged in log/vm1.qmp.log
    lab.stop("vm1", force=True)
    assert lab.layout.qmp_log("vm1").exists()
    lab.cleanup("vm1")
    assert lab.list_instances() == []
    with pytest.raises(UnknownInstanceError):
        lab.info("vm1")
    left = [path for path in lab.layout.root.rglob("vm1*")]
    assert left == [], f"cleanup left {left}"


#: A VM the fake boots at once (no kernel), for the stop tests that replace its QMP calls.
PLAIN_FAKE_VM = Instance(
    name="vm1",
    memory=128,
    nics=(Nic(mac="52:54:00:6b:00:01", mode="user"),),
    hvparams=HvParams(kernel_path="", vnc_bind_address=""),
)


def test_a_missed_power_button_is_pressed_again(fake_lab, monkeypatch) -> None:
    """A guest still booting misses the ACPI button (real Linux has no button driver yet):
    a graceful stop presses it again every POWERDOWN_RETRY seconds, so it powers off soon
    after it booted instead of being killed at the stop timeout."""
    # Long enough for the fake to exit after the heard press even on a loaded machine,
    # so exactly two presses happen.
    monkeypatch.setattr(stopping, "POWERDOWN_RETRY", 1.0)
    presses: list[bool] = []
    real = fake_lab._powerdown

    def missed_once(name: str, timeout: float, quiet: bool = False) -> bool:
        presses.append(quiet)
        return True if len(presses) == 1 else real(name, timeout, quiet)

    monkeypatch.setattr(fake_lab, "_powerdown", missed_once)
    terms: list[int] = []
    monkeypatch.setattr(stopping, "terminate", lambda name, pid, grace=5.0: terms.append(pid))
    info = fake_lab.start(PLAIN_FAKE_VM)
    fake_lab.stop("vm1", timeout=20)
    assert presses == [False, True]  # pressed twice; the second press was heard
    assert terms == []  # powered off, not terminated
    assert not is_alive(info.pid)


def test_a_retry_press_that_finds_qmp_gone_waits_for_the_exit(fake_lab, monkeypatch) -> None:
    """A press QMP took, then a retry that cannot connect: QEMU removes its QMP socket as
    it exits, so a loaded machine can see that before the exit. That is a power-off in
    progress, not a failure: the stop waits for it instead of terminating the VM."""
    monkeypatch.setattr(stopping, "POWERDOWN_RETRY", 0.2)
    presses: list[bool] = []
    real_powerdown = fake_lab._powerdown

    def missed_heard_then_gone(name: str, timeout: float, quiet: bool = False) -> bool:
        presses.append(quiet)
        if len(presses) == 1:
            return True  # missed: the guest is still booting
        if len(presses) == 2:
            return real_powerdown(name, timeout, quiet)  # heard: it starts powering off
        return False  # the socket is already gone

    waits: list[float] = []
    real_wait = stopping.wait_for_exit  # type: ignore[attr-defined]  # patched below

    def exit_not_seen_in_the_retry_period(pid: int, timeout: float) -> bool:
        waits.append(timeout)
        return False if len(waits) == 2 else real_wait(pid, timeout)

    monkeypatch.setattr(fake_lab, "_powerdown", missed_heard_then_gone)
    monkeypatch.setattr(stopping, "wait_for_exit", exit_not_seen_in_the_retry_period)
    terms: list[int] = []
    monkeypatch.setattr(stopping, "terminate", lambda name, pid, grace=5.0: terms.append(pid))
    info = fake_lab.start(PLAIN_FAKE_VM)
    fake_lab.stop("vm1", timeout=20)
    assert presses == [False, True, True]
    assert terms == []  # it powered off; nothing was killed
    assert not is_alive(info.pid)
