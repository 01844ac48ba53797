"""Writing a machine state: QEMU's migration stream into a file, through QMP, no shell.

The steps, each a module-level function so that a test can kill kvmlab between any two:

1. :func:`write_state`: ``stop`` the VM if it runs, lift the bandwidth limit, pass the temp
   file's descriptor (``getfd``) and ``migrate`` to it (``fd:``; from QEMU 8.2, which
   deprecates ``fd:`` for regular files, ``file:`` with the temp file's path); poll
   ``query-migrate`` until ``completed`` or ``failed`` (``migrate_cancel`` at the timeout);
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
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kvmlab.channels.qemu_state import ACTIVE_MIGRATION, MigrationStatus, QemuRunState
from kvmlab.errors import QmpError, SnapshotError
from kvmlab.host.executor import clear_stale_files
from kvmlab.host.stopping import release_nics
from kvmlab.lifecycle.migration.endpoints import (
    POLL_INTERVAL,
    cancel_migration,
    completion_is_ours,
    migration_status,
    qmp_session,
    quit_qemu,
    resume,
)
from kvmlab.lifecycle.snapshots.journal import now
from kvmlab.lifecycle.snapshots.record import STATE_MAGIC, SnapshotRecord, state_digest
from kvmlab.spec.layout import StateLayout

if TYPE_CHECKING:
    from kvmlab.channels.qmp import QmpSession
    from kvmlab.runtime.saved import KVMRuntime
    from kvmlab.spec.capabilities import QemuCapabilities

__all__ = [
    "BANDWIDTH",
    "DEFAULT_TIMEOUT",
    "FILE_URI_SINCE",
    "STATE_FD_NAME",
    "TIMED_OUT",
    "commit_state",
    "file_uri_usable",
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
#: The first QEMU with ``file:`` migration URIs (10.0 warns that ``fd:`` on a regular
#: file is deprecated: "Use file: instead").
FILE_URI_SINCE = (8, 2, 0)
#: Options after which QEMU may not open a path of the state directory.
_CONFINING = frozenset({"-chroot", "-runas", "-run-with"})
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


def write_state(
    layout: StateLayout, name: str, fd: int, timeout: float, *, path: Path | None = None
) -> Mapping[str, Any]:
    """Stop the VM and have QEMU write its state to ``fd``; the last ``query-migrate`` reply
    (``completed``, or why not: ``failed`` with QEMU's ``error-desc``, ``timeout``).

    :param path: the file ``fd`` is open on, for a QEMU that takes ``file:`` URIs (QEMU
        then opens it itself; ``fd`` is not passed).
    :raise QmpError: QMP failed.
    """
    with qmp_session(layout, name) as qmp:
        if str(qmp.execute("query-status").get("status")) == QemuRunState.RUNNING:
            qmp.execute("stop")
        try:
            qmp.execute("migrate-set-parameters", {"max-bandwidth": BANDWIDTH})
        except QmpError as err:  # a QEMU without the parameter: its default speed
            log.debug("migrate-set-parameters: %s", err)
        qmp.execute("migrate", {"uri": state_uri(qmp, fd, path)})
        deadline = time.monotonic() + timeout
        seen_active = False
        while True:
            info: Mapping[str, Any] = qmp.execute("query-migrate")
            status = migration_status(info)
            seen_active = seen_active or status in ACTIVE_MIGRATION
            if status == MigrationStatus.COMPLETED and completion_is_ours(qmp, info, seen_active):
                return info
            if status == MigrationStatus.COMPLETED:
                status = MigrationStatus.SETUP  # the incoming one that brought it: ours comes
            if status not in ACTIVE_MIGRATION:
                return info
            if time.monotonic() >= deadline:
                cancel_migration(qmp)
                return {**info, "status": TIMED_OUT}
            time.sleep(POLL_INTERVAL)


def file_uri_usable(runtime: KVMRuntime, caps: QemuCapabilities) -> bool:
    """Whether QEMU can be given the state file's path (``file:``) rather than a
    descriptor: a QEMU 8.2 or later that neither chroots nor drops to another user (it
    could not open a path under the state directory then; a descriptor still works)."""
    confined = any(word in _CONFINING for word in runtime.argv)
    return caps.version >= FILE_URI_SINCE and not confined


def state_uri(qmp: QmpSession, fd: int, path: Path | None) -> str:
    """The migration URI of a state file: ``file:PATH`` when ``path`` is given, else
    ``fd:`` with ``fd`` passed to QEMU (``getfd``) on this session."""
    if path is not None:
        return f"file:{path}"
    qmp.send_fd(fd)
    qmp.execute("getfd", {"fdname": STATE_FD_NAME})
    return f"fd:{STATE_FD_NAME}"


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
    quit_qemu(layout, name, timeout)
    with contextlib.suppress(OSError):
        release_nics(layout, name)
    clear_stale_files(layout, name)
