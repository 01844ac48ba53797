"""Crash recovery: resolving the journal of a snapshot, save, revert or restore.

QEMU carries on alone after kvmlab dies (a write in flight may still complete), so the
decision is taken from what is *there*, the migration journal's way:

- snapshot, save: the record is there and its state matches it -> complete (save: the
  process is quit; snapshot: the VM resumed if it ran). Otherwise roll back: a write still
  going is cancelled, the temp and any unrecorded state removed, the VM resumed if it ran.
- restore: the new QEMU is live and past ``inmigrate`` -> complete (``cont``, runtime
  saved, the saved state removed). Otherwise it is killed and the instance stays saved.
- revert: before the old process was stopped, nothing changed (roll back). After, there
  is no way back: it is finished (the state loaded again if the new QEMU is missing or
  still ``inmigrate``); if even that fails, the instance is left stopped with the
  snapshot's runtime saved, the snapshot kept.

Never two VMs, never a record whose state cannot be loaded. Every locked command on the
instance runs :func:`recover` first; ``kvmlab recover`` does only that.
"""

from __future__ import annotations

import contextlib
import logging
from enum import StrEnum

from kvmlab.channels.qemu_state import ACTIVE_MIGRATION, QemuRunState
from kvmlab.errors import KvmlabError, QmpError, SnapshotRefusedError
from kvmlab.host.backends import Backend
from kvmlab.host.inventory import running_pid
from kvmlab.host.process import remove_quietly
from kvmlab.host.store import remove_stale_writes, save_runtime
from kvmlab.lifecycle.migration.endpoints import (
    cancel_migration,
    kill_target,
    migration_status,
    qmp_session,
    resume,
    run_state,
)
from kvmlab.lifecycle.snapshots import load, write
from kvmlab.lifecycle.snapshots.journal import (
    DamagedSnapshotJournal,
    SnapshotJournal,
    SnapshotOp,
    SnapshotStep,
)
from kvmlab.lifecycle.snapshots.plan import find_snapshot, plan_load, snapshot_label
from kvmlab.lifecycle.snapshots.record import load_record, verify_state
from kvmlab.lifecycle.snapshots.write import DEFAULT_TIMEOUT, file_uri_usable
from kvmlab.spec.layout import StateLayout

__all__ = ["SnapshotOutcome", "recover", "resolve"]

log = logging.getLogger("kvmlab")


class SnapshotOutcome(StrEnum):
    """How an interrupted (or failed) operation was resolved (``kvmlab recover`` prints it)."""

    #: The operation's result stands: the state recorded, or the VM loaded from it.
    COMPLETED = "completed"
    #: Everything is as before the operation.
    ROLLED_BACK = "rolled back"
    #: A revert that could not be finished: the instance is stopped, its runtime the snapshot's.
    STOPPED = "stopped"


def _cancel_write(layout: StateLayout, name: str) -> None:
    """Cancel a write QEMU may still be doing (kvmlab died, QEMU carried on)."""
    if running_pid(layout, name) is None:
        return
    try:
        with qmp_session(layout, name) as qmp:
            if migration_status(qmp.execute("query-migrate")) in ACTIVE_MIGRATION:
                cancel_migration(qmp)
    except (QmpError, AttributeError) as err:
        log.debug("cancelling the write of %s: %s", name, err)


def _resolve_write(
    layout: StateLayout, journal: SnapshotJournal, stop_timeout: float
) -> SnapshotOutcome:
    name = journal.name
    save = journal.op == SnapshotOp.SAVE
    if save:
        final, record_path = layout.saved_state(name), layout.saved_record(name)
    elif journal.tag is not None:
        final = layout.snapshot_state(name, journal.tag)
        record_path = layout.snapshot_record(name, journal.tag)
    else:  # a snapshot journal without a tag: nothing of it can be recorded
        _cancel_write(layout, name)
        if journal.resume:
            resume(layout, name)
        return SnapshotOutcome.ROLLED_BACK
    complete = False
    if record_path.exists():
        what = snapshot_label(name, None if save else journal.tag)
        try:
            verify_state(final, load_record(record_path, what), what)
            complete = True
        except SnapshotRefusedError as err:
            log.warning("%s: removing it", err)
    remove_stale_writes(final)
    if complete:
        if save:
            write.quit_vm(layout, name, stop_timeout)
        elif journal.resume:
            resume(layout, name)
        return SnapshotOutcome.COMPLETED
    _cancel_write(layout, name)
    remove_stale_writes(final)
    remove_quietly(record_path)
    remove_quietly(final)
    if journal.resume:
        resume(layout, name)
    return SnapshotOutcome.ROLLED_BACK


def _resolve_restore(
    layout: StateLayout, backend: Backend, journal: SnapshotJournal
) -> SnapshotOutcome:
    name = journal.name
    status = run_state(layout, name)
    if status is not None and status != QemuRunState.INMIGRATE:
        path = layout.saved_record(name)
        if path.exists():
            try:
                record = load_record(path, snapshot_label(name, None))
                plan = plan_load(layout, backend, record, layout.saved_state(name))
            except SnapshotRefusedError as err:
                log.warning("%s: the restored VM of %s is killed", err, name)
            else:
                load.finish_load(layout, plan.runtime, record.running)
                remove_quietly(path)
                remove_quietly(layout.saved_state(name))
                return SnapshotOutcome.COMPLETED
        else:  # only the removal of the saved state was left to do
            remove_quietly(layout.saved_state(name))
            return SnapshotOutcome.COMPLETED
    kill_target(layout, name)
    return SnapshotOutcome.ROLLED_BACK


def _resolve_revert(
    layout: StateLayout,
    backend: Backend,
    journal: SnapshotJournal,
    start_timeout: float,
) -> SnapshotOutcome:
    name = journal.name
    old_alive = running_pid(layout, name) is not None
    if journal.step in (None, SnapshotStep.STOPPING) and old_alive:
        return SnapshotOutcome.ROLLED_BACK  # the old VM was not touched
    try:
        if journal.tag is None:
            raise SnapshotRefusedError(f"the revert journal of {name} names no snapshot")
        record, state = find_snapshot(layout, name, journal.tag)
        plan = plan_load(layout, backend, record, state)
        status = run_state(layout, name)
        if status is None or status == QemuRunState.INMIGRATE:
            kill_target(layout, name)
            save_runtime(layout.runtime_file(name), plan.runtime)
            load.start_incoming(layout, backend, plan.runtime, plan.caps, start_timeout)
            by_path = file_uri_usable(plan.runtime, plan.caps)
            load.load_state(layout, name, state, DEFAULT_TIMEOUT, by_path=by_path)
        load.finish_load(layout, plan.runtime, record.running)
    except KvmlabError as err:
        log.warning("the revert of %s cannot be finished (%s): it is left stopped", name, err)
        kill_target(layout, name)
        return SnapshotOutcome.STOPPED
    return SnapshotOutcome.COMPLETED


def resolve(
    layout: StateLayout,
    journal: SnapshotJournal,
    *,
    backend: Backend,
    start_timeout: float,
    stop_timeout: float,
) -> SnapshotOutcome:
    """Finish or undo the operation ``journal`` records, from what is there; the caller
    holds the instance lock and removes the journal afterwards."""
    if journal.op in (SnapshotOp.SNAPSHOT, SnapshotOp.SAVE):
        return _resolve_write(layout, journal, stop_timeout)
    if journal.op == SnapshotOp.RESTORE:
        return _resolve_restore(layout, backend, journal)
    return _resolve_revert(layout, backend, journal, start_timeout)


def recover(
    layout: StateLayout,
    name: str,
    *,
    backend: Backend,
    start_timeout: float,
    stop_timeout: float,
) -> SnapshotOutcome | None:
    """Resolve the journal a killed kvmlab left for ``name``; the caller holds its lock.

    :return: how it was resolved (``None``: there was no journal).
    """
    path = layout.snapshot_journal(name)
    journal = SnapshotJournal.load(path)
    if journal is None:
        return None
    if isinstance(journal, DamagedSnapshotJournal) or journal.name != name:
        log.warning("removing the unreadable snapshot journal of %s in %s", name, layout.root)
        remove_stale_writes(layout.saved_state(name))
        with contextlib.suppress(OSError):
            for stale in layout.snapshot_dir(name).glob(".*.tmp"):
                remove_quietly(stale)
        remove_quietly(path)
        return SnapshotOutcome.ROLLED_BACK
    outcome = resolve(
        layout, journal, backend=backend, start_timeout=start_timeout, stop_timeout=stop_timeout
    )
    remove_quietly(path)
    log.warning("%s: an interrupted %s was %s", name, journal.op, outcome)
    return outcome
