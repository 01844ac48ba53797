"""Writing a machine state: QEMU's migration stream into a file, through QMP, no shell.

The steps, each a module-level function so that a test can kill kvmlab between any two:

1. :func:`write_state`: ``stop`` the VM if it runs, lift the bandwidth limit, pass the temp
   file's descriptor (``getfd``) and ``migrate`` to it (``fd:``, on QEMU 7.2 and 10.0
   alike); poll ``query-migrate`` until ``completed`` or ``failed`` (``migrate_cancel``
   at the timeout);
2. :func:`commit_state`: fsync, check QEMU's magic, size and SHA-256, rename the temp
   file to its final name, write the record (from then on the state is complete);
3. :func:`resume_vm` (snapshot: ``cont`` if it ran) or :func:`quit_vm` (save: the
   process ends, the instance is saved).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kvmlab.channels.qemu_state import ACTIVE_MIGRATION, MigrationStatus, QemuRunState
from kvmlab.errors import QmpError, SnapshotError
from kvmlab.host.executor import clear_stale_files
from kvmlab.host.inventory import running_pid
from kvmlab.host.process import adopt, reap_adopted, signal_process, wait_for_exit
from kvmlab.host.stopping import release_nics
from kvmlab.lifecycle.migration.endpoints import (
    POLL_INTERVAL,
    TARGET_TIMEOUT,
    completion_is_ours,
    qmp_session,
    resume,
)
from kvmlab.lifecycle.snapshots.journal import now
from kvmlab.lifecycle.snapshots.record import STATE_MAGIC, SnapshotRecord, state_digest
from kvmlab.spec.layout import StateLayout

__all__ = [
    "BANDWIDTH",
    "DEFAULT_TIMEOUT",
    "STATE_FD_NAME",
    "TIMED_OUT",
    "commit_state",
    "open_temp",
    "quit_vm",
    "resume_vm",
    "temp_path",
    "write_state",
]

log = logging.getLogger("kvmlab")

#: Seconds a write (or a load) may take before it is cancelled (``--timeout``).
DEFAULT_TIMEOUT = 300.0
#: ``max-bandwidth`` in bytes/s: a local file (QEMU 7.2's default, 32 MiB/s, would make
#: the 96 MB of a 256 MiB guest take 3 s).
BANDWIDTH = 1 << 34
#: The name the state's descriptor gets in QEMU (``getfd``), and the URI's.
STATE_FD_NAME = "kvmlab-state"
#: kvmlab's word for a write it cancelled at the timeout.
TIMED_OUT = "timeout"


def temp_path(final: Path) -> Path:
    """A fresh temp name beside ``final``: ``.TAG.state.XXXXXXXX.tmp``, the hidden-temp
    convention of :func:`kvmlab.files.atomic_write`, so stale ones are swept the same way."""
    return final.parent / f".{final.name}.{secrets.token_hex(4)}.tmp"


def open_temp(temp: Path) -> int:
    """Create ``temp`` (never an existing file: ``O_EXCL``), private, open for writing.

    :raise OSError: the directory is missing, read-only or full, or the name is taken.
    """
    temp.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    fd = os.open(temp, flags, 0o600)
    os.fchmod(fd, 0o600)  # whatever the umask
    return fd


def _status_of(info: Mapping[str, Any]) -> str:
    return str(info.get("status", MigrationStatus.NONE))


def write_state(layout: StateLayout, name: str, fd: int, timeout: float) -> Mapping[str, Any]:
    """Stop the VM and have QEMU write its state to ``fd``; the last ``query-migrate`` reply
    (``completed``, or why not: ``failed`` with QEMU's ``error-desc``, ``timeout``).

    :raise QmpError: QMP failed.
    """
    with qmp_session(layout, name) as qmp:
        if str(qmp.execute("query-status").get("status")) == QemuRunState.RUNNING:
            qmp.execute("stop")
        try:
            qmp.execute("migrate-set-parameters", {"max-bandwidth": BANDWIDTH})
        except QmpError as err:  # a QEMU without the parameter: its default speed
            log.debug("migrate-set-parameters: %s", err)
        qmp.send_fd(fd)
        qmp.execute("getfd", {"fdname": STATE_FD_NAME})
        qmp.execute("migrate", {"uri": f"fd:{STATE_FD_NAME}"})
        deadline = time.monotonic() + timeout
        seen_active = False
        while True:
            info: Mapping[str, Any] = qmp.execute("query-migrate")
            status = _status_of(info)
            seen_active = seen_active or status in ACTIVE_MIGRATION
            if status == MigrationStatus.COMPLETED and completion_is_ours(qmp, info, seen_active):
                return info
            if status == MigrationStatus.COMPLETED:
                status = MigrationStatus.SETUP  # the incoming one that brought it: ours comes
            if status not in ACTIVE_MIGRATION:
                return info
            if time.monotonic() >= deadline:
                qmp.execute("migrate_cancel")
                cancel_deadline = time.monotonic() + TARGET_TIMEOUT
                while status in ACTIVE_MIGRATION and time.monotonic() < cancel_deadline:
                    time.sleep(POLL_INTERVAL)
                    status = _status_of(qmp.execute("query-migrate"))
                return {**info, "status": TIMED_OUT}
            time.sleep(POLL_INTERVAL)


def commit_state(
    temp: Path,
    final: Path,
    record_path: Path,
    *,
    fields: Mapping[str, Any],
) -> SnapshotRecord:
    """Make the written temp file the state: fsync, check, rename, record.

    :param fields: the record's fields besides size, digest and creation time.
    :raise SnapshotError: the file is not a complete QEMU stream (QEMU's magic missing).
    :raise OSError: the file cannot be read, renamed or recorded.
    """
    fd = os.open(temp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    size, digest, head = state_digest(temp)
    if head != STATE_MAGIC:
        raise SnapshotError(f"QEMU wrote no machine state into {temp} ({size} bytes)")
    record = SnapshotRecord.model_validate(
        {**fields, "size": size, "sha256": digest, "created": now()}
    )
    os.replace(temp, final)
    dir_fd = os.open(final.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    record.save(record_path)
    return record


def resume_vm(layout: StateLayout, name: str, running: bool) -> None:
    """``cont`` the VM if it ran before (QEMU allows it from ``postmigrate``, which
    reactivates its block devices)."""
    if running:
        resume(layout, name)


def quit_vm(layout: StateLayout, name: str, timeout: float) -> None:
    """``quit`` the instance's QEMU (SIGKILL after ``timeout``), and remove its sockets."""
    pid = running_pid(layout, name)
    if pid is not None:
        adopt(pid)
        try:
            with qmp_session(layout, name) as qmp:
                qmp.execute("quit")
        except QmpError as err:
            log.debug("quit of %s: %s", name, err)
        if not wait_for_exit(pid, timeout):
            signal_process(pid, signal.SIGKILL)
            wait_for_exit(pid, 5.0)
        reap_adopted()
    with contextlib.suppress(OSError):
        release_nics(layout, name)
    clear_stale_files(layout, name)
