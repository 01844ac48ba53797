"""kvmlab reaps the daemons it starts, on the fake kvm and on real QEMU.

A daemonized QEMU outlives its launcher and is reparented; on these machines PID 1
never reaps, so before kvmlab made itself a child subreaper every stopped VM stayed a
zombie. Now the process that starts an instance adopts it: the launcher's middle
process is reaped at start, the daemon when ``stop`` sees it exit, and one that died on
its own by the next operation on the lab. (The suite's own check, in tests/conftest.py,
reaps whatever the tests adopt otherwise and fails a test that leaves a process running.)
"""

from __future__ import annotations

import os
import signal

from kvmlab.host.process import child_states, parent_of, wait_for_exit


def zombies() -> list[int]:
    return sorted(pid for pid, state in child_states().items() if state in ("Z", "X"))


def test_start_leaves_no_zombie_and_the_daemon_is_our_child(lab, make_instance) -> None:
    assert zombies() == []
    info = lab.start(make_instance())
    assert info.pid is not None
    assert parent_of(info.pid) == os.getpid()  # adopted: this process is the subreaper
    assert zombies() == []  # QEMU's middle process (fork, setsid, fork) is reaped too


def test_stop_reaps_the_daemon(lab, make_instance) -> None:
    pid = lab.start(make_instance()).pid
    assert pid is not None
    lab.stop("vm1", force=True)
    assert pid not in child_states()  # neither alive nor a zombie
    assert zombies() == []


def test_a_daemon_that_died_on_its_own_is_reaped_by_the_next_operation(lab, make_instance) -> None:
    instance = make_instance()
    pid = lab.start(instance).pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert wait_for_exit(pid, 10.0)
    assert child_states().get(pid) == "Z"  # ours to reap: nobody else will
    info = lab.start(instance)
    assert pid not in child_states()
    assert zombies() == []
    lab.stop("vm1", force=True)
    assert info.pid not in child_states()
