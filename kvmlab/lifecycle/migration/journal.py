"""The migration journal: what a migration in flight leaves in both labs for its recovery.

:func:`kvmlab.lifecycle.migration.transfer.migrate` writes ``conf/NAME.migration`` in the
source, then in the target (``role: target``), before anything changes, and removes both
when the migration has ended either way; a kvmlab killed in between leaves them, ``info``
reports them and :mod:`kvmlab.lifecycle.migration.recovery` resolves them.

On disk a journal is one JSON object with sorted keys (the format kvmlab has always
written: the target's runtime travels in it as a JSON *string*). Journals written by hand
or by an older kvmlab may lack fields: only ``source`` and ``target`` are required, and
unknown keys are ignored. A file that is no journal at all (half written, damaged) still
says that a migration died, so it loads as a :class:`DamagedJournal` instead of failing.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from kvmlab.errors import RuntimeFormatError
from kvmlab.host.store import atomic_write_json, load_record
from kvmlab.runtime.saved import KVMRuntime
from kvmlab.spec.layout import StateLayout

__all__ = [
    "DamagedJournal",
    "MigrationJournal",
    "MigrationOutcome",
    "MigrationStep",
    "incoming_runtime",
    "pending_migration",
]


class MigrationStep(StrEnum):
    """The points of a migration its journal records (``step``).

    The recovery does not trust it (it decides from what is there); it says how far the
    killed kvmlab had come, for ``info`` and for a human reading the file.
    """

    #: Journals written, the target being started with ``-incoming``.
    STARTING_TARGET = "starting-target"
    #: The target waits in ``inmigrate``; the source was told to (or is about to) send.
    TRANSFERRING = "transferring"


class MigrationOutcome(StrEnum):
    """How an interrupted migration was resolved (``kvmlab recover`` prints it)."""

    #: The target keeps the VM: its runtime saved, the source quit and forgotten.
    COMPLETED = "completed"
    #: The source keeps the VM: the target killed, the source resumed if it ran.
    ROLLED_BACK = "rolled back"


class MigrationJournal(BaseModel):
    """One lab's journal of a migration of instance ``name`` from ``source`` to ``target``.

    :ivar live: the guest ran during the transfer (``migrate`` without ``--offline``).
    :ivar resume_source: the source was ``running`` before: a roll back resumes it, and a
        roll forward resumes the target after an offline migration.
    :ivar uri: where the target listens (``unix:TARGET/ctrl/NAME.migrate``).
    :ivar started: when the migration began (UTC, ``%Y-%m-%dT%H:%M:%SZ``).
    :ivar role: ``"target"`` in the target's journal, absent in the source's.
    :ivar target_runtime: the target's runtime (its saved-runtime JSON), which the target lab
        shows while the instance arrives and a roll forward saves.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    op: Literal["migrate"] = "migrate"
    name: str | None = None
    source: str
    target: str
    live: bool = True
    resume_source: bool = True
    uri: str | None = None
    step: MigrationStep | None = None
    started: str | None = None
    role: Literal["target"] | None = None
    target_runtime: str | None = None

    @classmethod
    def load(cls, path: Path) -> MigrationJournal | DamagedJournal | None:
        """The journal at ``path``: ``None`` when there is none, a :class:`DamagedJournal`
        when the file is not a journal (it still says that a migration died).

        :raise OSError: the file exists but cannot be read.
        """

        def parse(data: bytes) -> MigrationJournal | DamagedJournal:
            # Decoded first, with replacement: a journal is read whatever bytes a crash left.
            return cls.model_validate_json(data.decode("utf-8", errors="replace"))

        def damaged(raw: str) -> MigrationJournal | DamagedJournal:
            return DamagedJournal(raw=raw)

        return load_record(path, parse, damaged)

    def save(self, path: Path) -> None:
        """Write it atomically (a crash leaves the old journal or the new one, whole).

        :raise OperationError: the directory is read-only, full, or missing.
        """
        data = self.model_dump(mode="json", exclude_none=True)
        atomic_write_json(path, data)

    def record(self) -> dict[str, Any]:
        """What ``info`` shows (``migration_pending``): the keys the file has, without the
        runtime it carries."""
        data = self.model_dump(mode="json", exclude_unset=True, exclude={"target_runtime"})
        return dict(sorted(data.items()))

    def planned_runtime(self) -> KVMRuntime | None:
        """The target's runtime it carries (``None``: it carries none).

        :raise RuntimeFormatError: the runtime in it is damaged.
        """
        if self.target_runtime is None:
            return None
        return KVMRuntime.from_json(self.target_runtime)


class DamagedJournal(BaseModel):
    """A journal file that is not one (half written by hand, damaged, not JSON): a
    migration died, but nothing says where to or from."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    raw: str

    def record(self) -> dict[str, Any]:
        """What ``info`` shows: ``{"op": "unknown", "raw": ...}``, as for a hotplug intent."""
        return {"op": "unknown", "raw": self.raw}


def pending_migration(layout: StateLayout, name: str) -> dict[str, Any] | None:
    """The journal a migration left in ``layout`` as ``info`` shows it (``None``: none)."""
    journal = MigrationJournal.load(layout.migration_journal(name))
    return None if journal is None else journal.record()


def incoming_runtime(layout: StateLayout, name: str) -> KVMRuntime | None:
    """The runtime an incoming migration into ``layout`` runs, before it is saved there
    (``info`` in the target lab shows the instance while it arrives)."""
    journal = MigrationJournal.load(layout.migration_journal(name))
    if not isinstance(journal, MigrationJournal) or journal.role != "target":
        return None
    try:
        return journal.planned_runtime()
    except RuntimeFormatError:
        return None
