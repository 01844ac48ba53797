"""Shared test configuration: hypothesis profiles, fixture folders, QEMU requirements."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from kvmlab.host.process import child_states

PROJECT = Path(__file__).resolve().parents[1]
GANETI_FIXTURES = PROJECT.parent / "shared" / "fixtures" / "ganeti"
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}

# CI draws more examples; deadlines are off because a 2-core CI machine running
# QEMU beside the suite has noisy timings (speed is measured by `nox -s bench`).
settings.register_profile(
    "ci", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=100, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if IN_CI else "dev"))


@pytest.fixture(scope="session")
def ganeti_fixtures() -> Path:
    """Ganeti's recorded QEMU help texts, read in place (they are Ganeti's, never copied).

    Only for the tests that parse those raw texts (and check the facts profiles derived
    from them): everything else uses the committed ``fixtures/profiles/ganeti-*`` and
    ``fixtures/legacy-runtimes/``, and a fixture file missing there is an error.
    """
    if not GANETI_FIXTURES.is_dir():
        pytest.skip(
            f"raw-text test: Ganeti's recorded QEMU help texts are not at {GANETI_FIXTURES}"
            " (optional; the facts profiles derived from them are committed)"
        )
    return GANETI_FIXTURES


@pytest.fixture
def host_taps() -> Iterator[None]:
    """Hold the host's taps for this test, across pytest-xdist workers (an ``flock``).

    Every test that creates tap interfaces, and every test that counts them, uses it: the
    kernel names a tap ``tapN`` with the lowest free N, so a tap another worker made at the
    same moment would look like one this test left behind, or take the name of one it just
    removed.
    """
    path = Path(tempfile.gettempdir()) / "kvmlab-tests-host-taps.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def require_binary(path: str) -> str:
    """Skip when ``path`` is missing on a laptop; fail under CI=true."""
    found = shutil.which(path)
    if found is None:
        message = f"{path} not found (install qemu-system-x86)"
        if IN_CI:
            pytest.fail(f"CI=true and {message}")
        pytest.skip(message)
    return found


@pytest.fixture(scope="session")
def qemu_binary() -> str:
    """The system's qemu-system-x86_64 (QEMU 7.2 on Debian 12)."""
    return require_binary("qemu-system-x86_64")


# --- processes: reap what the suite adopts, leave nothing running ----------------------
#
# Each test process (the only one, or each pytest-xdist worker) makes itself a child
# subreaper, so every daemon its tests start (QEMU, the fake kvm, through the API, the CLI
# or directly) is reparented to it, not to PID 1, which on these machines never reaps.
# After each test: the zombies among its children are reaped, and a child process still
# alive that the test started (after a grace for one just killed) is an error of that
# test; it is killed so that it cannot disturb the next one. kvmlab's own reaping (the
# daemons it started and stopped itself) is checked in tests/lifecycle/test_reaping.py.

_LEFTOVER_GRACE = 10.0


def _in_xdist_controller(config: pytest.Config) -> bool:
    """The pytest-xdist controller runs no test: its children are the workers."""
    return not hasattr(config, "workerinput") and bool(getattr(config.option, "numprocesses", 0))


def pytest_sessionstart(session: pytest.Session) -> None:
    if not _in_xdist_controller(session.config):
        from kvmlab.host.process import become_subreaper  # noqa: PLC0415

        become_subreaper()


def _reap_zombies() -> int:
    reaped = 0
    for pid, state in child_states().items():
        if state in ("Z", "X"):
            with contextlib.suppress(ChildProcessError):
                reaped += os.waitpid(pid, os.WNOHANG)[0] == pid
    return reaped


def _describe(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    except OSError:
        return f"{pid} (gone)"
    return f"{pid} {' '.join(os.fsdecode(a) for a in argv)[:200]}"


@pytest.fixture(autouse=True)
def _no_leftover_processes() -> Iterator[None]:
    before = set(child_states())
    yield
    from kvmlab.host.process import wait_for_exit  # noqa: PLC0415

    _reap_zombies()
    left = [pid for pid in child_states() if pid not in before]
    deadline = time.monotonic() + _LEFTOVER_GRACE
    for pid in left:
        wait_for_exit(pid, max(deadline - time.monotonic(), 0.0))
    _reap_zombies()
    alive = {pid: _describe(pid) for pid, state in child_states().items() if pid in left}
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if alive:
        for pid in alive:
            wait_for_exit(pid, 5.0)
        _reap_zombies()
        pytest.fail(
            "the test left processes running (killed now): " + "; ".join(alive.values()),
            pytrace=False,
        )


def pytest_sessionfinish(session: pytest.Session) -> None:
    if _in_xdist_controller(session.config):
        return
    _reap_zombies()
    zombies = [pid for pid, state in child_states().items() if state in ("Z", "X")]
    alive = [_describe(pid) for pid, state in child_states().items() if state not in ("Z", "X")]
    if zombies or alive:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        message = f"kvmlab: left behind: zombies {zombies}, running {alive}"
        if reporter is not None:
            reporter.write_line(message, red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
