"""The snapshot journal: what a snapshot, save, revert or restore in flight leaves behind.

:mod:`kvmlab.lifecycle.snapshots.operations` writes ``conf/NAME.snapshot`` before anything
changes and removes it when the operation has ended either way; a kvmlab killed in between
leaves it, ``info`` reports it (``snapshot_pending``) and
:mod:`kvmlab.lifecycle.snapshots.recovery` resolves it. One JSON object with sorted keys; a
file that is no journal at all still says that an operation died (:class:`DamagedSnapshotJournal`).
"""

from __future__ import annotations

import time
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from kvmlab.host.store import atomic_write_json, load_record
from kvmlab.spec.layout import StateLayout

__all__ = [
    "DamagedSnapshotJournal",
    "SnapshotJournal",
    "SnapshotOp",
    "SnapshotStep",
    "now",
    "pending_snapshot",
]


class SnapshotOp(StrEnum):
    """The four operations that share the journal (``op``)."""

    SNAPSHOT = "snapshot"
    SAVE = "save"
    REVERT = "revert"
    RESTORE = "restore"


class SnapshotStep(StrEnum):
    """How far the operation had come (``step``); the recovery decides from what is there,
    this is for ``info`` and for a human reading the file."""

    #: QEMU writes the state into the temp file.
    WRITING = "writing"
    #: The state is checked, renamed and recorded.
    COMMITTING = "committing"
    #: The snapshot is complete, the VM is being resumed.
    RESUMING = "resuming"
    #: The save is complete, the VM is being quit.
    QUITTING = "quitting"
    #: The old process of a revert is being stopped.
    STOPPING = "stopping"
    #: The process that loads the state is being started (``-incoming defer``).
    STARTING = "starting"
    #: The state is being loaded (``migrate-incoming``).
    LOADING = "loading"


def now() -> str:
    """The current UTC time as records and journals write it."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class SnapshotJournal(BaseModel):
    """The journal of one operation on instance ``name``.

    :ivar tag: the snapshot's tag (``None`` for save and restore).
    :ivar temp: the temp state file being written (snapshot, save).
    :ivar resume: the VM ran before (a snapshot resumes it, a roll back too); for a revert
        or a restore: the state was taken from a running VM (loading it resumes it).
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    op: SnapshotOp
    name: str
    tag: str | None = None
    step: SnapshotStep | None = None
    temp: str | None = None
    resume: bool = False
    started: str | None = None

    @classmethod
    def load(cls, path: Path) -> SnapshotJournal | DamagedSnapshotJournal | None:
        """The journal at ``path`` (``None``: none; damaged: a :class:`DamagedSnapshotJournal`).

        :raise OSError: the file exists but cannot be read.
        """

        def parse(data: bytes) -> SnapshotJournal | DamagedSnapshotJournal:
            return cls.model_validate_json(data.decode("utf-8", errors="replace"))

        def damaged(raw: str) -> SnapshotJournal | DamagedSnapshotJournal:
            return DamagedSnapshotJournal(raw=raw)

        return load_record(path, parse, damaged)

    def save(self, path: Path) -> None:
        """Write it atomically.

        :raise OperationError: the directory is read-only, full, or missing.
        """
        data = self.model_dump(mode="json", exclude_none=True)
        atomic_write_json(path, data)

    def at(self, step: SnapshotStep, path: Path) -> SnapshotJournal:
        """Record that the operation reached ``step``; the journal now on disk."""
        journal = self.model_copy(update={"step": step})
        journal.save(path)
        return journal

    def record(self) -> dict[str, Any]:
        """What ``info`` shows (``snapshot_pending``)."""
        return dict(sorted(self.model_dump(mode="json", exclude_none=True).items()))


class DamagedSnapshotJournal(BaseModel):
    """A journal file that is not one: an operation died, nothing says which."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    raw: str

    def record(self) -> dict[str, Any]:
        return {"op": "unknown", "raw": self.raw}


def pending_snapshot(layout: StateLayout, name: str) -> dict[str, Any] | None:
    """The journal left in ``layout`` as ``info`` shows it (``None``: none)."""
    journal = SnapshotJournal.load(layout.snapshot_journal(name))
    return None if journal is None else journal.record()
