"""The two QEMUs of a migration as kvmlab drives them: QMP, run states, resume, quit, kill.

Every function here is idempotent and reads what is there (a pidfile, a QMP answer), so
that the transfer and the recovery of a kvmlab killed at any step can share them.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from kvmlab.channels.qemu_state import ACTIVE_MIGRATION, RESUMABLE, MigrationStatus, QemuRunState
from kvmlab.errors import QmpError
from kvmlab.host.executor import clear_stale_files
from kvmlab.host.inventory import running_pid
from kvmlab.host.process import adopt, read_cmdline, reap_adopted, signal_process, wait_for_exit
from kvmlab.spec.layout import StateLayout

if TYPE_CHECKING:
    from kvmlab.channels.qmp import QmpSession

__all__ = [
    "POLL_INTERVAL",
    "QMP_TIMEOUT",
    "TARGET_TIMEOUT",
    "cancel_migration",
    "completion_is_ours",
    "kill_target",
    "migration_status",
    "qmp_session",
    "quit_qemu",
    "resume",
    "run_state",
    "wait_finalized",
    "wait_run_state",
]

log = logging.getLogger("kvmlab")

QMP_TIMEOUT = 10.0
POLL_INTERVAL = 0.05
#: Seconds the target gets to answer QMP with ``inmigrate`` once started, and to
#: leave ``inmigrate`` once the source says ``completed``.
TARGET_TIMEOUT = 30.0


@contextlib.contextmanager
def qmp_session(
    layout: StateLayout, name: str, timeout: float = QMP_TIMEOUT
) -> Iterator[QmpSession]:
    """A QMP session with the instance's QEMU in ``layout``.

    :raise QmpError: it does not answer.
    """
    from kvmlab.channels.qmp import QmpSession  # noqa: PLC0415 - 50 ms import

    with QmpSession(layout.qmp_socket(name), timeout=timeout) as session:
        yield session


def run_state(layout: StateLayout, name: str, timeout: float = 2.0) -> str | None:
    """The run state of the instance's QEMU, as QEMU words it (a :class:`QemuRunState`
    value, or one this kvmlab does not know); ``None``: not running, or QMP silent."""
    if running_pid(layout, name) is None:
        return None
    try:
        with qmp_session(layout, name, timeout) as qmp:
            return str(qmp.execute("query-status")["status"])
    except (QmpError, KeyError, TypeError):
        return None


def wait_run_state(
    layout: StateLayout, name: str, accept: Callable[[str], bool], timeout: float
) -> str | None:
    """Poll the run state until ``accept`` takes it; the last state seen (``None``: dead)."""
    deadline = time.monotonic() + timeout
    while True:
        status = run_state(layout, name)
        if status is not None and accept(status):
            return status
        if running_pid(layout, name) is None or time.monotonic() >= deadline:
            return status
        time.sleep(POLL_INTERVAL)


def migration_status(info: Mapping[str, Any]) -> str:
    """A ``query-migrate`` reply's status, as QEMU words it (a :class:`MigrationStatus`
    value, or one this kvmlab does not know)."""
    return str(info.get("status", MigrationStatus.NONE))


def cancel_migration(qmp: QmpSession) -> Mapping[str, Any]:
    """``migrate_cancel``, then the last ``query-migrate`` reply once the migration has
    left the active states (``cancelled``, or how it ended meanwhile), or after
    :data:`TARGET_TIMEOUT`."""
    qmp.execute("migrate_cancel")
    deadline = time.monotonic() + TARGET_TIMEOUT
    info: Mapping[str, Any] = qmp.execute("query-migrate")
    while migration_status(info) in ACTIVE_MIGRATION and time.monotonic() < deadline:
        time.sleep(POLL_INTERVAL)
        info = qmp.execute("query-migrate")
    return info


def completion_is_ours(qmp: QmpSession, info: Mapping[str, Any], seen_active: bool) -> bool:
    """Whether a ``completed`` reply of the source is this transfer's end.

    A VM that arrived by migration answers ``query-migrate`` with that *incoming*
    migration (``completed``, no ``ram`` figures) until its own outgoing state shows;
    QEMU replaces it as soon as ``migrate`` ran (so does the fake kvm), but a reply read
    before that is the old one. The source's run state settles it: ``postmigrate`` only
    follows an outgoing migration that completed.
    """
    if seen_active or "ram" in info:
        return True
    return str(qmp.execute("query-status").get("status")) == QemuRunState.POSTMIGRATE


def _incoming_pids(target: StateLayout, name: str) -> list[int]:
    """Processes started with the target's pidfile: the incoming QEMU, and its launcher
    if a kvmlab killed mid-start left one still daemonizing."""
    wanted = str(target.pidfile(name))
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        argv = read_cmdline(int(entry))
        if argv and any(a == "-pidfile" and b == wanted for a, b in itertools.pairwise(argv)):
            found.append(int(entry))
    return found


def kill_target(target: StateLayout, name: str) -> None:
    """Kill the incoming VM (it never ran the guest) and remove every file it had."""
    for pid in _incoming_pids(target, name):
        adopt(pid)
        signal_process(pid, signal.SIGKILL)
        wait_for_exit(pid, 5.0)
    reap_adopted()
    clear_stale_files(target, name)
    shutil.rmtree(target.nic_dir(name), ignore_errors=True)


def resume(layout: StateLayout, name: str) -> None:
    """``cont`` the VM if it is paused (a failure is logged: the VM stays as it is)."""
    status = run_state(layout, name)
    if status in RESUMABLE:
        try:
            with qmp_session(layout, name) as qmp:
                wait_finalized(qmp)
                qmp.execute("cont")
        except QmpError as err:
            log.warning("cannot resume %s in %s: %s", name, layout.root, err)


def wait_finalized(qmp: QmpSession, timeout: float = TARGET_TIMEOUT) -> None:
    """Wait until QEMU has ended an outgoing migration that it says is over.

    QEMU 7.2 says ``completed`` (or ``failed``) before its migration thread ends, and the
    run state stays ``finish-migrate`` until it has: meanwhile ``cont`` is refused
    ("Migration is not finalized yet"). The moment is short, but on a loaded machine a
    snapshot resumed in it was left paused. After ``timeout`` the caller goes on, and
    QEMU's own refusal names the problem.
    """
    deadline = time.monotonic() + timeout
    while str(qmp.execute("query-status").get("status")) == QemuRunState.FINISH_MIGRATE:
        if time.monotonic() >= deadline:
            return
        time.sleep(POLL_INTERVAL)


def quit_qemu(layout: StateLayout, name: str, timeout: float = 10.0) -> None:
    """``quit`` the instance's QEMU (SIGKILL after ``timeout``) and reap it: a migration's
    source once the target runs, a saved VM once its state is recorded."""
    pid = running_pid(layout, name)
    if pid is None:
        return
    adopt(pid)
    try:
        with qmp_session(layout, name) as qmp:
            qmp.execute("quit")
    except QmpError as err:
        log.debug("quit of %s in %s: %s", name, layout.root, err)
    if not wait_for_exit(pid, timeout):
        signal_process(pid, signal.SIGKILL)
        wait_for_exit(pid, 5.0)
    reap_adopted()
