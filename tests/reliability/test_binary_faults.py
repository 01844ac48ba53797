"""Faults of the hypervisor binary not covered in ``tests/lifecycle``, through the CLI.

Already covered there (fake, and real QEMU where the ``lab`` fixture is parametrised):
failure at start, crash after start, ignored powerdown, slow and hanging starts, SIGKILL
then start, a stale pidfile naming another process, a start failure via ``kvm_extra``.
Added here: the same two on real QEMU through the console script (exit codes, one line,
a private TMPDIR), a failure and a crash *during a soft reboot*, the VM killed while
``stop`` waits for the powerdown, a frozen (SIGSTOPped) VM, and pidfiles holding garbage,
our own pid, PID 1 or a zombie's pid.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers_reliability import (
    MAC1,
    one_line_error,
    processes_naming,
    run_kvmlab,
    vm_processes,
    wait_until,
    write_instance,
)

from kvmlab.errors import NotRunningError
from kvmlab.host.backends import FakeBackend
from kvmlab.host.process import is_alive, read_pidfile
from kvmlab.lifecycle.hypervisor import Hypervisor, InstanceState
from kvmlab.spec.instance import Instance

FAKE = ["--backend", "fake"]


def stale_files(state_dir: Path) -> list[str]:
    paths = [state_dir / "pid" / "vm1", *(state_dir / "ctrl").glob("vm1.*")]
    return sorted(str(p) for p in paths if p.exists())


def info(state_dir: Path, backend: str = "fake") -> dict[str, object]:
    result = run_kvmlab(state_dir, "info", "vm1", "--json", backend=backend)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


# -- real QEMU ----------------------------------------------------------------------------


@pytest.fixture
def qemu_instance(request: pytest.FixtureRequest, workdir: Path) -> Callable[..., Path]:
    """An instance file that boots the test guest under TCG on real QEMU."""
    from kvmlab.testing.plugin import require_qemu  # noqa: PLC0415

    require_qemu()
    guest = request.getfixturevalue("test_guest")

    def make(**hv: str) -> Path:
        params = guest.hvparams(kvm_flag="disabled", **hv)
        return write_instance(workdir / "vm1.json", memory=192, hvparams=params)

    return make


@pytest.mark.qemu
def test_real_qemu_killed_with_sigkill(
    state_dir: Path, private_tmp: Path, qemu_instance: Callable[..., Path]
) -> None:
    vm = qemu_instance()
    started = run_kvmlab(state_dir, "start", str(vm), tmpdir=private_tmp, backend="qemu")
    assert started.returncode == 0, started.stderr
    pid = info(state_dir, "qemu")["pid"]
    assert isinstance(pid, int)
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: not is_alive(pid), 5)
    assert stale_files(state_dir)  # QEMU had no chance to remove its pidfile and sockets

    assert info(state_dir, "qemu")["state"] == "stopped"
    result = run_kvmlab(state_dir, "reboot", "vm1", tmpdir=private_tmp, backend="qemu")
    assert result.returncode == 1
    assert "not running" in one_line_error(result.stderr)
    assert stale_files(state_dir) == []

    again = run_kvmlab(state_dir, "start", str(vm), tmpdir=private_tmp, backend="qemu")
    assert again.returncode == 0, again.stderr
    assert info(state_dir, "qemu")["pid"] not in (None, pid)
    assert run_kvmlab(state_dir, "stop", "vm1", "--force", backend="qemu").returncode == 0
    assert list(private_tmp.iterdir()) == []


@pytest.mark.qemu
def test_real_qemu_start_failure_via_bad_kvm_extra(
    state_dir: Path, private_tmp: Path, qemu_instance: Callable[..., Path]
) -> None:
    vm = qemu_instance(kvm_extra="-kvmlab-no-such-option")
    result = run_kvmlab(state_dir, "start", str(vm), tmpdir=private_tmp, backend="qemu")
    assert result.returncode == 1
    line = one_line_error(result.stderr)
    assert "-kvmlab-no-such-option" in line and "invalid option" in line
    assert stale_files(state_dir) == []
    assert processes_naming(state_dir / "pid" / "vm1") == []
    assert list(private_tmp.iterdir()) == []
    assert info(state_dir, "qemu")["state"] == "stopped"


# -- fake: faults during reboot and stop ---------------------------------------------------


@pytest.mark.parametrize(
    "fault",
    [("fail_start", "disk on fire (injected)", "disk on fire"), ("crash_after", "0", "exited")],
    ids=["fail-start", "crash-at-once"],
)
def test_binary_failing_during_a_soft_reboot(
    workdir: Path, state_dir: Path, private_tmp: Path, fault: tuple[str, str, str]
) -> None:
    name, value, words = fault
    vm = write_instance(workdir / "vm1.json")
    assert run_kvmlab(state_dir, "start", str(vm), tmpdir=private_tmp).returncode == 0
    saved = (state_dir / "conf" / "vm1.runtime").read_bytes()
    env = {f"KVMLAB_FAKE_{name.upper()}": value}
    result = run_kvmlab(state_dir, "reboot", "vm1", tmpdir=private_tmp, env=env)
    assert result.returncode == 1
    assert words in one_line_error(result.stderr)
    assert (state_dir / "conf" / "vm1.runtime").read_bytes() == saved
    assert stale_files(state_dir) == []
    assert vm_processes(state_dir / "pid" / "vm1") == []
    assert list(private_tmp.iterdir()) == []
    assert info(state_dir)["state"] == "stopped"
    assert run_kvmlab(state_dir, "start", str(vm), tmpdir=private_tmp).returncode == 0
    assert run_kvmlab(state_dir, "stop", "vm1").returncode == 0


def test_vm_killed_while_stop_waits_for_the_powerdown(workdir: Path, state_dir: Path) -> None:
    vm = write_instance(workdir / "vm1.json")
    events = workdir / "fake-events.jsonl"
    env = {"KVMLAB_FAKE_POWERDOWN_DELAY": "60", "KVMLAB_FAKE_LOG": str(events)}
    assert run_kvmlab(state_dir, "start", str(vm), env=env).returncode == 0
    pid = info(state_dir)["pid"]
    assert isinstance(pid, int)
    outcome: dict[str, object] = {}
    stopper = threading.Thread(
        target=lambda: outcome.update(
            result=run_kvmlab(state_dir, "stop", "vm1", "--timeout", "120")
        )
    )
    stopper.start()

    def powerdown_asked() -> bool:
        lines = events.read_text().splitlines() if events.exists() else []
        return any(json.loads(line)["event"] == "powerdown" for line in lines)

    # The guest takes 60 s to power off: kill it once the stop is waiting for that.
    assert wait_until(powerdown_asked, 60), "the stop never pressed the power button"
    os.kill(pid, signal.SIGKILL)
    stopper.join(100)
    result = outcome.get("result")
    # Finished before the stop timeout: the stop saw the death, it did not wait it out.
    assert isinstance(result, subprocess.CompletedProcess), "stop still waiting"
    assert result.returncode == 0, result.stderr
    assert stale_files(state_dir) == []  # SIGKILL left them; stop removed them


@pytest.mark.slow
def test_frozen_vm_is_killed_within_the_stop_timeout(workdir: Path, state_dir: Path) -> None:
    vm = write_instance(workdir / "vm1.json")
    assert run_kvmlab(state_dir, "start", str(vm)).returncode == 0
    pid = info(state_dir)["pid"]
    assert isinstance(pid, int)
    os.kill(pid, signal.SIGSTOP)
    began = time.monotonic()
    result = run_kvmlab(state_dir, "stop", "vm1", "--timeout", "1")
    took = time.monotonic() - began
    assert result.returncode == 0, result.stderr
    assert wait_until(lambda: not is_alive(pid), 1)
    assert stale_files(state_dir) == []
    assert took < 4, f"stop --timeout 1 took {took:.1f} s"


# -- stale pidfiles ------------------------------------------------------------------------


@pytest.fixture
def zombie() -> Iterator[int]:
    """A child that exited and is never reaped (until the test ends)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    assert wait_until(lambda: not is_alive(child.pid), 5)
    yield child.pid
    child.wait()


@pytest.mark.parametrize(
    "content",
    ["", "garbage\n", "-1\n", "0\n", "99999999999999999999\n", "1\n", "OWN", "ZOMBIE", "12 34\n"],
)
def test_stale_pidfile_contents_do_not_block_and_nobody_is_signalled(
    state_dir: Path, zombie: int, content: str
) -> None:
    lab = Hypervisor(state_dir, backend=FakeBackend(), stop_timeout=5)
    vm = Instance.model_validate(
        {
            "name": "vm1",
            "nics": [{"mac": MAC1, "mode": "user"}],
            "hvparams": {"kernel_path": "", "vnc_bind_address": ""},
        }
    )
    lab.start(vm)
    lab.stop("vm1", force=True)
    text = {"OWN": f"{os.getpid()}\n", "ZOMBIE": f"{zombie}\n"}.get(content, content)
    pidfile = lab.layout.pidfile("vm1")
    pidfile.write_text(text)

    assert lab.info("vm1").state is InstanceState.STOPPED
    with pytest.raises(NotRunningError):
        lab.stop("vm1")  # refuses, and clears the stale file; nobody got a signal
    assert not pidfile.exists()
    pidfile.write_text(text)
    started = lab.start(vm)
    assert started.state is InstanceState.RUNNING
    assert read_pidfile(pidfile) == started.pid != os.getpid()
    lab.stop("vm1")
    assert is_alive(os.getpid()) and is_alive(1)
