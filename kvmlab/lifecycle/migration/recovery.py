"""Crash recovery: resolving the journal of a migration that a killed kvmlab left.

QEMU carries on alone after kvmlab dies (a transfer in flight may still complete), so the
decision is taken from what is *there*, not from the step the journal recorded:

- the target saved its runtime: roll forward (quit the source, remove its runtime);
- else a transfer still active on the source is cancelled first; if the source says
  ``completed`` (or is gone) and the target is out of ``inmigrate``: roll forward (save the
  target's runtime from the journal, then as above);
- anything else: roll back (kill the target, resume the source if it was running).

Every locked command on the instance runs :func:`recover` first, in either lab
(:meth:`kvmlab.lifecycle.hypervisor.Hypervisor._locked`); ``kvmlab recover`` does only that.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Collection
from pathlib import Path

from kvmlab.channels.qemu_state import ACTIVE_MIGRATION, MigrationStatus, QemuRunState
from kvmlab.errors import LayoutError, MigrationError, QmpError, RuntimeFormatError
from kvmlab.host.inventory import running_pid
from kvmlab.host.process import remove_quietly
from kvmlab.host.store import instance_lock
from kvmlab.lifecycle.migration.endings import roll_back, roll_forward
from kvmlab.lifecycle.migration.endpoints import (
    TARGET_TIMEOUT,
    cancel_migration,
    completion_is_ours,
    kill_target,
    migration_status,
    qmp_session,
    run_state,
    wait_run_state,
)
from kvmlab.lifecycle.migration.journal import (
    DamagedJournal,
    MigrationJournal,
    MigrationOutcome,
)
from kvmlab.runtime.saved import KVMRuntime
from kvmlab.spec.layout import StateLayout

__all__ = ["recover", "resolve"]

log = logging.getLogger("kvmlab")


def _source_outcome(source: StateLayout, name: str) -> str | None:
    """Stop a transfer still going (kvmlab died, QEMU carried on) and say how it ended:
    ``completed``, ``cancelled``, ``failed``... (a :class:`MigrationStatus` value) or
    ``None`` (no source, or QMP silent)."""
    if running_pid(source, name) is None:
        return None
    try:
        with qmp_session(source, name) as qmp:
            info = qmp.execute("query-migrate")
            status = migration_status(info)
            seen_active = status in ACTIVE_MIGRATION
            if status in ACTIVE_MIGRATION:
                info = cancel_migration(qmp)
                status = migration_status(info)
            if status == MigrationStatus.COMPLETED and not completion_is_ours(
                qmp, info, seen_active
            ):
                return MigrationStatus.NONE  # the migration that brought it here, not one from it
            return status
    except (QmpError, AttributeError):
        return None


def resolve(source: StateLayout, target: StateLayout, name: str) -> MigrationOutcome:
    """Finish or undo the migration of ``name`` from ``source`` to ``target``, from what is
    there; both instance locks are held.

    :raise MigrationError: the source's journal carries a damaged runtime.
    """
    journal = MigrationJournal.load(source.migration_journal(name))
    planned = None
    if isinstance(journal, MigrationJournal):
        try:
            planned = journal.planned_runtime()
        except RuntimeFormatError as err:
            raise MigrationError(f"the migration journal of {name} is damaged: {err}") from None
    if not isinstance(journal, MigrationJournal) or planned is None:
        # Only the target's journal (or a damaged one): nothing says the target has the VM
        # unless it saved its runtime.
        if not target.runtime_file(name).exists():
            kill_target(target, name)
        remove_quietly(source.migration_journal(name))
        remove_quietly(target.migration_journal(name))
        return MigrationOutcome.ROLLED_BACK
    resume = journal.resume_source
    if target.runtime_file(name).exists():
        return _forward_or_back(source, target, name, planned, resume)
    outcome = _source_outcome(source, name)
    if outcome == MigrationStatus.COMPLETED:
        status = wait_run_state(
            target, name, lambda state: state != QemuRunState.INMIGRATE, TARGET_TIMEOUT
        )
    else:
        status = run_state(target, name)
    if (
        status is not None
        and status != QemuRunState.INMIGRATE
        and outcome in (MigrationStatus.COMPLETED, None)
    ):
        return _forward_or_back(source, target, name, planned, resume)
    roll_back(source, target, name, resume)
    return MigrationOutcome.ROLLED_BACK


def _forward_or_back(
    source: StateLayout, target: StateLayout, name: str, planned: KVMRuntime, resume: bool
) -> MigrationOutcome:
    if roll_forward(source, target, name, planned, resume):
        return MigrationOutcome.COMPLETED
    return MigrationOutcome.ROLLED_BACK


def _labs(journal: MigrationJournal | DamagedJournal) -> tuple[StateLayout, StateLayout] | None:
    """The source and target labs a journal names (``None``: it names none usable)."""
    if isinstance(journal, DamagedJournal):
        return None
    try:
        return StateLayout(Path(journal.source)), StateLayout(Path(journal.target))
    except LayoutError:
        return None


def recover(layout: StateLayout, name: str, held: Collection[Path] = ()) -> MigrationOutcome | None:
    """Resolve a journal left in ``layout`` by a killed kvmlab; the caller holds its lock.

    The other lab's lock is taken here unless it is in ``held`` (the caller has it).

    :return: how it was resolved, or ``None`` when there was no journal.
    :raise LockedError: the other lab's instance is busy.
    """
    journal = MigrationJournal.load(layout.migration_journal(name))
    if journal is None:
        return None
    labs = _labs(journal)
    if labs is None:
        log.warning("removing the unreadable migration journal of %s in %s", name, layout.root)
        remove_quietly(layout.migration_journal(name))
        return MigrationOutcome.ROLLED_BACK
    source, target = labs
    if layout.root not in (source.root, target.root):
        remove_quietly(layout.migration_journal(name))
        return MigrationOutcome.ROLLED_BACK
    other = target if layout.root == source.root else source
    lock = other.lock_file(name)
    with contextlib.ExitStack() as stack:
        if lock not in held:
            lock.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            stack.enter_context(instance_lock(lock, name))
        outcome = resolve(source, target, name)
    log.warning("%s: an interrupted migration to %s was %s", name, target.root, outcome)
    return outcome
