"""The record beside a machine state: what was written, by which QEMU, for which runtime.

A state file is QEMU's migration stream, valid only for the runtime it was taken from; its
record (``TAG.json`` beside ``TAG.state``, ``save/NAME.json`` beside ``save/NAME.state``)
carries that runtime, the state's size and SHA-256 and the QEMU that wrote it. The record
is written last, atomically: its presence means the state is complete. A state that does
not match its record is refused (:func:`verify_state`), never loaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from kvmlab.errors import SnapshotRefusedError
from kvmlab.host.store import atomic_write_json
from kvmlab.spec.layout import StateLayout

__all__ = [
    "RECORD_FORMAT",
    "STATE_MAGIC",
    "SnapshotInfo",
    "SnapshotRecord",
    "list_records",
    "load_record",
    "saved_record",
    "state_digest",
    "verify_state",
]

log = logging.getLogger("kvmlab")

#: The first bytes of every QEMU migration stream (``QEMU_VM_FILE_MAGIC``, version 3).
STATE_MAGIC = b"QEVM\x00\x00\x00\x03"
#: The record format this kvmlab writes.
RECORD_FORMAT = 1
_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    """One machine state as the API and ``kvmlab snapshots`` show it.

    :ivar tag: the snapshot's tag; ``None`` for the saved state of a saved instance.
    :ivar kind: ``"snapshot"`` or ``"save"``.
    :ivar size: the state file's size in bytes.
    :ivar created: when it was taken (UTC, ``%Y-%m-%dT%H:%M:%SZ``).
    :ivar qemu_version: the QEMU that wrote it (``"7.2.0"``).
    :ivar machine: the concrete machine type it ran (``pc-q35-7.2``).
    :ivar running: the VM was running when it was taken (loading it resumes it).
    :ivar elapsed_ms: how long taking it took (``None`` when listed).
    """

    name: str
    tag: str | None
    kind: str
    size: int
    sha256: str
    created: str
    qemu_version: str
    machine: str
    running: bool
    state_file: str
    elapsed_ms: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` object (every field)."""
        return asdict(self)

    def summary(self) -> dict[str, Any]:
        """What ``info --json`` lists: ``tag`` (snapshots only), size, when, QEMU, machine."""
        keys = ("tag", "size", "created", "qemu_version", "machine", "running")
        data = {key: getattr(self, key) for key in keys}
        if self.kind == "save":
            del data["tag"]
        return data


class SnapshotRecord(BaseModel):
    """The JSON record of one machine state (sorted keys; unknown keys ignored).

    :ivar lab: the state directory it was taken in (paths in ``runtime`` name it).
    :ivar runtime: the saved-runtime JSON when it was taken, as a string, byte for byte.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    format: int = RECORD_FORMAT
    name: str
    tag: str | None = None
    kind: Literal["snapshot", "save"]
    lab: str
    runtime: str
    size: int
    sha256: str
    created: str
    qemu_version: str
    machine: str
    running: bool

    def save(self, path: Path) -> None:
        """Write it atomically: the state it describes is complete from now on.

        :raise OperationError: the directory is read-only or full.
        """
        atomic_write_json(path, self.model_dump(mode="json"))

    @property
    def recorded_version(self) -> tuple[int, int, int]:
        """``qemu_version`` as numbers (``(7, 2, 0)``); missing parts are 0."""
        parts = [int(part) if part.isdigit() else 0 for part in self.qemu_version.split(".")[:3]]
        major, minor, micro = (*parts, 0, 0, 0)[:3]
        return major, minor, micro

    def info(self, state_file: Path, elapsed_ms: int | None = None) -> SnapshotInfo:
        return SnapshotInfo(
            name=self.name,
            tag=self.tag,
            kind=self.kind,
            size=self.size,
            sha256=self.sha256,
            created=self.created,
            qemu_version=self.qemu_version,
            machine=self.machine,
            running=self.running,
            state_file=str(state_file),
            elapsed_ms=elapsed_ms,
        )


def load_record(path: Path, what: str) -> SnapshotRecord:
    """The record at ``path``.

    :param what: the state it describes, for the refusal (``"snapshot 'base' of vm1"``).
    :raise SnapshotRefusedError: there is none, or it cannot be read.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SnapshotRefusedError(f"{what} does not exist") from None
    except OSError as err:
        raise SnapshotRefusedError(f"{what}: cannot read {path}: {err.strerror}") from None
    try:
        return SnapshotRecord.model_validate_json(data)
    except (ValidationError, ValueError) as err:
        first = str(err).splitlines()[0]
        raise SnapshotRefusedError(f"{what}: its record {path} is damaged ({first})") from None


def state_digest(path: Path) -> tuple[int, str, bytes]:
    """Size, SHA-256 (hex) and first bytes of the file at ``path``.

    :raise OSError: it cannot be read.
    """
    digest = hashlib.sha256()
    size = 0
    head = b""
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            if not head:
                head = chunk[: len(STATE_MAGIC)]
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest(), head


def verify_state(path: Path, record: SnapshotRecord, what: str) -> None:
    """Refuse a state file that is not the one its record describes (size, magic, digest).

    :raise SnapshotRefusedError: missing, another size, not a QEMU stream, another digest.
    """
    try:
        size = os.stat(path).st_size
    except OSError as err:
        raise SnapshotRefusedError(
            f"{what}: its state {path} cannot be read: {err.strerror}"
        ) from None
    if size != record.size:
        raise SnapshotRefusedError(
            f"{what}: its state {path} is {size} bytes, its record says {record.size}"
        )
    try:
        size, digest, head = state_digest(path)
    except OSError as err:
        raise SnapshotRefusedError(
            f"{what}: its state {path} cannot be read: {err.strerror}"
        ) from None
    if head != STATE_MAGIC:
        raise SnapshotRefusedError(f"{what}: {path} is not a QEMU machine state")
    if digest != record.sha256:
        raise SnapshotRefusedError(
            f"{what}: its state {path} does not match its record (SHA-256 {digest[:16]}...,"
            f" recorded {record.sha256[:16]}...): it is damaged and will not be loaded"
        )


def saved_record(layout: StateLayout, name: str) -> SnapshotRecord | None:
    """The record of ``name``'s saved state (``None``: none; a damaged one is logged)."""
    path = layout.saved_record(name)
    if not path.exists():
        return None
    try:
        return load_record(path, f"the saved state of {name}")
    except SnapshotRefusedError as err:
        log.warning("%s", err)
        return None


def list_records(layout: StateLayout, name: str) -> list[tuple[SnapshotRecord, Path]]:
    """The snapshots of ``name`` with their state files, oldest first (damaged records are
    logged and left out: ``revert`` to one names the damage)."""
    found: list[tuple[str, int, SnapshotRecord, Path]] = []
    for path in layout.snapshot_dir(name).glob("*.json"):
        tag = path.name.removesuffix(".json")
        try:
            record = load_record(path, f"snapshot {tag!r} of {name}")
        except SnapshotRefusedError as err:
            log.warning("%s", err)
            continue
        mtime = 0
        with contextlib.suppress(OSError):
            mtime = path.stat().st_mtime_ns
        found.append((record.created, mtime, record, layout.snapshot_state(name, tag)))
    found.sort(key=lambda item: (item[0], item[1]))
    return [(record, state) for _created, _mtime, record, state in found]
