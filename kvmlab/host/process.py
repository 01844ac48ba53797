"""Processes seen from outside: pidfiles, liveness, command lines, waiting with deadlines.

QEMU runs daemonized, so kvmlab is never its parent: it knows the process only
by its pidfile and ``/proc``. A pid alone proves nothing (pids are reused), so a
process counts as an instance's only when its command line names the instance's
pidfile.

Zombies: a daemonized process is reparented when its parent exits, normally to
PID 1, which on some machines (containers, these CI machines) never reaps it. So a
process that starts daemonizing binaries makes itself a *child subreaper*
(:func:`become_subreaper`): its orphaned descendants are reparented to it instead,
and it collects them with :func:`reap_adopted` once they exit. Only processes
recorded with :func:`adopt` are reaped, each checked against its start time, so
neither a reused pid nor a child some other code is waiting for is ever taken.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import itertools
import logging
import os
import select
import signal
import threading
import time
from pathlib import Path

__all__ = [
    "adopt",
    "become_subreaper",
    "child_states",
    "is_alive",
    "owns_pidfile",
    "read_cmdline",
    "read_pidfile",
    "reap_adopted",
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


def _stat_fields(pid: int) -> list[str] | None:
    """``/proc/<pid>/stat`` after the command name: state, ppid, pgrp, session, ...

    ``None`` when the process is gone. (The name is parenthesised and may hold spaces.)
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()


def child_states() -> dict[int, str]:
    """This process's children, from every thread, and their states (``S``, ``R``, ``Z``...).

    What reaping is judged by: a daemon this process adopted as subreaper shows here, as
    a zombie (``Z``) once it exited and until it is reaped.
    """
    found: dict[int, str] = {}
    for task in os.listdir("/proc/self/task"):
        try:
            pids = Path(f"/proc/self/task/{task}/children").read_text().split()
        except OSError:
            continue
        for pid in map(int, pids):
            fields = _stat_fields(pid)
            if fields:
                found[pid] = fields[0]
    return found


def is_alive(pid: int | None) -> bool:
    """Whether ``pid`` is a live process (a zombie counts as dead)."""
    if pid is None or pid <= 0:
        return False
    fields = _stat_fields(pid)
    return fields is not None and fields[:1] not in (["Z"], ["X"])


# --------------------------------------------------------------------------- reaping

_PR_SET_CHILD_SUBREAPER = 36
_subreaper: bool | None = None
#: pid -> start time (``/proc/<pid>/stat`` field 22) of the processes to reap once exited.
_adopted: dict[int, str] = {}
_adopted_lock = threading.Lock()


def become_subreaper() -> bool:
    """Make this process the child subreaper of its descendants (Linux ``prctl``), once.

    Daemonized QEMU and fake kvm processes then become this process's children when
    their launcher exits, instead of PID 1's, and :func:`reap_adopted` can collect
    them. Children created later do not inherit the setting. ``False`` where the
    call is not available (not Linux) or refused.
    """
    global _subreaper  # noqa: PLW0603 - one process-wide setting
    if _subreaper is None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            _subreaper = int(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
        except (OSError, AttributeError):
            _subreaper = False
        log.debug("child subreaper: %s", _subreaper)
    return _subreaper


def adopt(pid: int) -> None:
    """Record ``pid`` (a daemon this process started) to be reaped once it exits."""
    fields = _stat_fields(pid)
    if fields is not None and len(fields) > 19:
        with _adopted_lock:
            _adopted[pid] = fields[19]


def reap_zombie_child(pid: int) -> bool:
    """Reap ``pid`` if it is an exited child of this process (never blocks).

    For a process whose identity is already established (it is a zombie of ours, so
    its pid cannot have been reused).
    """
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return False
    return done == pid


def reap_adopted() -> list[int]:
    """Collect every adopted process that has exited; return their pids.

    A pid is dropped without a ``waitpid`` when it is gone (reaped elsewhere), when it
    now belongs to a process with another start time (reused), or when it is not our
    child (this process was not its subreaper).
    """
    reaped = []
    with _adopted_lock:
        for pid, started in list(_adopted.items()):
            fields = _stat_fields(pid)
            if fields is None or len(fields) <= 19 or fields[19] != started:
                del _adopted[pid]
            elif fields[0] in ("Z", "X"):
                del _adopted[pid]
                if reap_zombie_child(pid):
                    reaped.append(pid)
    if reaped:
        log.debug("reaped %s", reaped)
    return reaped


def session_of(pid: int) -> int | None:
    """The session id of ``pid`` (``None`` when it is gone)."""
    fields = _stat_fields(pid)
    return int(fields[3]) if fields is not None and len(fields) > 3 else None


def parent_of(pid: int) -> int | None:
    """The parent pid of ``pid`` (``None`` when it is gone)."""
    fields = _stat_fields(pid)
    return int(fields[1]) if fields is not None and len(fields) > 1 else None


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
