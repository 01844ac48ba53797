"""Processes seen from outside: pidfiles, liveness, command lines, waiting with deadlines.

QEMU runs daemonized, so kvmlab is never its parent: it knows the process only
by its pidfile and ``/proc``. A pid alone proves nothing (pids are reused), so a
process counts as an instance's only when its command line names the instance's
pidfile.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import select
import signal
import time
from pathlib import Path

__all__ = [
    "is_alive",
    "owns_pidfile",
    "read_cmdline",
    "read_pidfile",
    "signal_process",
    "wait_for_exit",
]

log = logging.getLogger("kvmlab.commands")


def read_pidfile(path: str | Path) -> int | None:
    """The pid in ``path``, or ``None`` when missing, empty or not a number."""
    try:
        text = Path(path).read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and int(text) > 0 else None


def is_alive(pid: int | None) -> bool:
    """Whether ``pid`` is a live process (a zombie counts as dead)."""
    if pid is None or pid <= 0:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return False
    # The state follows the parenthesised command name, which may hold spaces.
    state = stat.rsplit(")", 1)[-1].split()[:1]
    return state not in (["Z"], ["X"])


def read_cmdline(pid: int) -> tuple[str, ...] | None:
    """``/proc/<pid>/cmdline`` split into arguments, or ``None`` if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    if not raw:
        return None
    return tuple(os.fsdecode(part) for part in raw.rstrip(b"\0").split(b"\0"))


def owns_pidfile(pid: int | None, pidfile: str | Path) -> bool:
    """Whether ``pid`` is alive and was started with ``-pidfile <pidfile>``."""
    if not is_alive(pid):
        return False
    assert pid is not None
    argv = read_cmdline(pid)
    if argv is None:
        return False
    target = str(pidfile)
    return any(a == "-pidfile" and b == target for a, b in itertools.pairwise(argv))


def wait_for_exit(pid: int, timeout: float, interval: float = 0.01) -> bool:
    """Wait until ``pid`` is gone (or a zombie); ``True`` if it exited before the deadline.

    A pidfd wakes us the moment the process ends (it works for processes that are
    not our children, as daemonized QEMU is not); polling ``/proc`` is the fallback.
    """
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pidfd = None
    if pidfd is not None:
        try:
            select.select([pidfd], [], [], max(timeout, 0.0))
        finally:
            os.close(pidfd)
        return not is_alive(pid)
    deadline = time.monotonic() + timeout
    while is_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
        interval = min(interval * 1.5, 0.1)
    return True


def signal_process(pid: int, sig: signal.Signals) -> bool:
    """Send ``sig``; ``False`` when the process is already gone."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    except OSError as err:  # EPERM: not ours to signal
        if err.errno == errno.EPERM:
            raise
        return False
    log.debug("sent %s to %d", sig.name, pid)
    return True


def remove_quietly(path: str | Path) -> None:
    """Remove a file if it exists."""
    with contextlib.suppress(FileNotFoundError):
        Path(path).unlink()
