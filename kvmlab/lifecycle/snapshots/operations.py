"""The four operations, step by step under a journal: snapshot, save, revert, restore.

The caller (:class:`~kvmlab.lifecycle.hypervisor.Hypervisor`) holds the instance lock and
has resolved any journal left before. Each operation refuses what cannot work first
(:mod:`.plan`), then writes the journal, then changes things; a failure or an interrupt is
resolved the way the recovery of a killed kvmlab would (:mod:`.recovery`), so the two never
disagree.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from kvmlab.channels.qemu_state import MigrationStatus, QemuRunState
from kvmlab.errors import KvmlabError, SnapshotError, SnapshotRefusedError
from kvmlab.host.backends import Backend
from kvmlab.host.inventory import running_pid
from kvmlab.host.process import remove_quietly
from kvmlab.host.stopping import stop as stop_process
from kvmlab.host.store import load_runtime, remove_stale_writes, save_runtime
from kvmlab.lifecycle.migration.endpoints import run_state
from kvmlab.lifecycle.snapshots import load, write
from kvmlab.lifecycle.snapshots.journal import SnapshotJournal, SnapshotOp, SnapshotStep, now
from kvmlab.lifecycle.snapshots.plan import (
    check_tag,
    find_snapshot,
    plan_load,
    refuse_pending,
    refuse_saved,
    refuse_stopped,
    snapshot_label,
)
from kvmlab.lifecycle.snapshots.record import (
    SnapshotInfo,
    list_records,
    load_record,
    saved_record,
)
from kvmlab.lifecycle.snapshots.recovery import SnapshotOutcome, recover, resolve
from kvmlab.lifecycle.snapshots.write import DEFAULT_TIMEOUT
from kvmlab.runtime.rebase import concrete_machine, machine_of
from kvmlab.runtime.saved import KVMRuntime
from kvmlab.spec.inputs import check_seconds
from kvmlab.spec.layout import StateLayout

__all__ = ["Lab", "check_tag", "check_timeout", "delete", "restore", "revert", "take"]


class Lab:
    """The instance ``name`` of a :class:`~kvmlab.lifecycle.hypervisor.Hypervisor`, as the
    operations need it: its layout, backend and timeouts."""

    def __init__(
        self,
        layout: StateLayout,
        name: str,
        backend: Backend,
        start_timeout: float,
        stop_timeout: float,
    ) -> None:
        self.layout = layout
        self.name = name
        self.backend = backend
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout

    def recover(self) -> SnapshotOutcome | None:
        """Resolve the journal a killed kvmlab left (``None``: none)."""
        return recover(
            self.layout,
            self.name,
            backend=self.backend,
            start_timeout=self.start_timeout,
            stop_timeout=self.stop_timeout,
        )

    def resolve(self, journal: SnapshotJournal) -> SnapshotOutcome:
        """Resolve the operation ``journal`` started, from what is there (and the step its
        journal on disk reached), and remove the journal."""
        with contextlib.suppress(OSError):
            on_disk = SnapshotJournal.load(self.layout.snapshot_journal(journal.name))
            if isinstance(on_disk, SnapshotJournal) and on_disk.op == journal.op:
                journal = on_disk
        try:
            return resolve(
                self.layout,
                journal,
                backend=self.backend,
                start_timeout=self.start_timeout,
                stop_timeout=self.stop_timeout,
            )
        finally:
            remove_quietly(self.layout.snapshot_journal(journal.name))

    def snapshots(self) -> list[SnapshotInfo]:
        """The snapshots, oldest first."""
        return [record.info(path) for record, path in list_records(self.layout, self.name)]

    def saved(self) -> SnapshotInfo | None:
        """The saved state (``None``: not saved)."""
        record = saved_record(self.layout, self.name)
        return None if record is None else record.info(self.layout.saved_state(self.name))


@contextlib.contextmanager
def _journaled(
    lab: Lab, journal: SnapshotJournal, failed: Callable[[SnapshotOutcome], str]
) -> Iterator[None]:
    """Run the body under ``journal``; a failure is resolved as a crash would be, and
    raised as :class:`SnapshotError` (``failed(outcome)`` says what became of it) unless
    the resolution completed the operation anyway."""
    path = lab.layout.snapshot_journal(journal.name)
    journal.save(path)
    try:
        yield
    except (KvmlabError, OSError) as err:
        outcome = lab.resolve(journal)
        if outcome != SnapshotOutcome.COMPLETED:
            if isinstance(err, SnapshotError):
                raise SnapshotError(f"{err}; {failed(outcome)}", status=err.status) from err
            detail = err.strerror if isinstance(err, OSError) and err.strerror else err
            raise SnapshotError(f"{detail}; {failed(outcome)}") from err
    except BaseException:
        lab.resolve(journal)
        raise
    else:
        remove_quietly(path)


def check_timeout(timeout: float | None) -> float:
    """``timeout`` checked (:func:`~kvmlab.spec.inputs.check_seconds`), or the default.

    :raise OptionValueError: out of range.
    """
    return DEFAULT_TIMEOUT if timeout is None else check_seconds("timeout", timeout)


def take(lab: Lab, tag: str | None, timeout: float) -> SnapshotInfo:
    """Snapshot (``tag``) or save (``tag=None``) the running VM.

    :raise SnapshotRefusedError: (nothing changed) an invalid or duplicate tag, a VM that is
        not running, a pending hotplug or migration.
    :raise SnapshotError: the write failed or timed out; the VM runs as before.
    """
    layout, name = lab.layout, lab.name
    kind = "save" if tag is None else "snapshot"
    if tag is None:
        final, record_path = layout.saved_state(name), layout.saved_record(name)
    else:
        final, record_path = layout.snapshot_state(name, tag), layout.snapshot_record(name, tag)
    refuse_pending(layout, name, kind)
    refuse_stopped(layout, name, kind)
    if record_path.exists():
        raise SnapshotRefusedError(
            f"instance {name} already has a snapshot {tag!r} (delete it first)"
            if tag is not None
            else f"instance {name} already has a saved state"
        )
    status = run_state(layout, name)
    if status is None:
        raise SnapshotRefusedError(f"cannot {kind} {name}: its QMP does not answer")
    running = status == QemuRunState.RUNNING
    runtime = load_runtime(layout.runtime_file(name))
    caps = lab.backend.capabilities(runtime.binary)
    try:  # exactly what is saved, byte for byte
        document = layout.runtime_file(name).read_text(encoding="utf-8").rstrip("\n")
    except OSError as err:
        raise SnapshotError(f"cannot read the runtime of {name}: {err.strerror}") from err
    fields = {
        "name": name,
        "tag": tag,
        "kind": kind,
        "lab": str(layout.root),
        "runtime": document,
        "qemu_version": caps.version_string,
        "machine": concrete_machine(machine_of(runtime), caps),
        "running": running,
    }
    began = time.monotonic()
    remove_stale_writes(final)
    temp = write.temp_path(final)
    journal = SnapshotJournal(
        op=SnapshotOp.SAVE if tag is None else SnapshotOp.SNAPSHOT,
        name=name,
        tag=tag,
        step=SnapshotStep.WRITING,
        temp=str(temp),
        resume=running,
        started=now(),
    )

    def failed(_outcome: SnapshotOutcome) -> str:
        return f"{name} runs as before" if running else f"{name} is as before"

    with _journaled(lab, journal, failed):
        fd = write.open_temp(temp)  # after the journal: a kill leaves no unnamed temp
        try:
            info = write.write_state(layout, name, fd, timeout)
        finally:
            os.close(fd)
        final_status = str(info.get("status", MigrationStatus.NONE))
        if final_status != MigrationStatus.COMPLETED:
            detail = info.get("error-desc")
            why = (
                f"did not end within {timeout:g} s (cancelled)"
                if final_status == "timeout"
                else f"ended {final_status}" + (f": {detail}" if detail else "")
            )
            raise SnapshotError(f"writing the state of {name} {why}", status=final_status)
        journal = journal.at(SnapshotStep.COMMITTING, layout.snapshot_journal(name))
        record = write.commit_state(temp, final, record_path, fields=fields)
        if tag is None:
            journal = journal.at(SnapshotStep.QUITTING, layout.snapshot_journal(name))
            write.quit_vm(layout, name, lab.stop_timeout)
        else:
            journal = journal.at(SnapshotStep.RESUMING, layout.snapshot_journal(name))
            write.resume_vm(layout, name, running)
    elapsed = round((time.monotonic() - began) * 1000)
    record = load_record(record_path, snapshot_label(name, tag))
    return record.info(final, elapsed)


def _load(
    lab: Lab,
    journal: SnapshotJournal,
    runtime: KVMRuntime,
    state: Path,
    *,
    timeout: float,
    running: bool,
) -> None:
    """Start ``runtime`` with ``-incoming defer``, load ``state``, resume if it ran."""
    layout = lab.layout
    load.start_incoming(
        layout, lab.backend, runtime, lab.backend.capabilities(runtime.binary), lab.start_timeout
    )
    journal.at(SnapshotStep.LOADING, layout.snapshot_journal(runtime.name))
    load.load_state(layout, runtime.name, state, timeout)
    load.finish_load(layout, runtime, running)


def revert(lab: Lab, tag: str, timeout: float) -> None:
    """Replace the VM of ``name`` (running or not) by snapshot ``tag``; the snapshot stays.

    :raise SnapshotRefusedError: (nothing changed) no such snapshot, a damaged one, a QEMU
        that cannot load it.
    :raise SavedError: the instance is saved.
    :raise SnapshotError: loading failed; the instance is left stopped with the
        snapshot's runtime saved.
    """
    layout, name = lab.layout, lab.name
    refuse_saved(layout, name)
    record, state = find_snapshot(layout, name, tag)
    plan = plan_load(layout, lab.backend, record, state)
    journal = SnapshotJournal(
        op=SnapshotOp.REVERT,
        name=name,
        tag=tag,
        step=SnapshotStep.STOPPING,
        resume=record.running,
        started=now(),
    )

    def failed(outcome: SnapshotOutcome) -> str:
        if outcome == SnapshotOutcome.ROLLED_BACK:
            return f"{name} is as before"
        return f"{name} is stopped, with the runtime of snapshot {tag!r} saved"

    with _journaled(lab, journal, failed):
        if running_pid(layout, name) is not None:
            # Its guest state is being thrown away: no reason to ask the guest first.
            stop_process(layout, name, press=None, timeout=lab.stop_timeout)
        journal = journal.at(SnapshotStep.STARTING, layout.snapshot_journal(name))
        save_runtime(layout.runtime_file(name), plan.runtime)
        _load(lab, journal, plan.runtime, state, timeout=timeout, running=record.running)
    # The VM and its saved runtime are the snapshot's now: an interrupted hotplug is moot.
    remove_quietly(layout.hotplug_intent(name))


def restore(lab: Lab, timeout: float) -> None:
    """Continue the saved instance ``name``; its saved state is removed once it runs.

    :raise SnapshotRefusedError: (nothing changed) nothing saved, a damaged state, a QEMU
        that cannot load it, the instance is running.
    :raise SnapshotError: loading failed; it stays saved.
    """
    layout, name = lab.layout, lab.name
    path = layout.saved_record(name)
    if not path.exists():
        raise SnapshotRefusedError(f"instance {name} has no saved state to restore")
    if running_pid(layout, name) is not None:
        raise SnapshotRefusedError(f"cannot restore {name}: it is running")
    record = load_record(path, snapshot_label(name, None))
    state = layout.saved_state(name)
    plan = plan_load(layout, lab.backend, record, state)
    journal = SnapshotJournal(
        op=SnapshotOp.RESTORE,
        name=name,
        step=SnapshotStep.STARTING,
        resume=record.running,
        started=now(),
    )

    def failed(_outcome: SnapshotOutcome) -> str:
        return f"{name} stays saved"

    with _journaled(lab, journal, failed):
        _load(lab, journal, plan.runtime, state, timeout=timeout, running=record.running)
        remove_quietly(path)
        remove_quietly(state)


def delete(lab: Lab, tag: str) -> None:
    """Remove snapshot ``tag`` of ``name`` (its record first: an unrecorded state is no
    snapshot, whatever is left of it).

    :raise SnapshotRefusedError: an invalid tag, no such snapshot.
    """
    layout, name = lab.layout, lab.name
    check_tag(tag)
    record_path = layout.snapshot_record(name, tag)
    if not record_path.exists():
        raise SnapshotRefusedError(
            f"instance {name} has no snapshot {tag!r} (kvmlab snapshots {name} lists them)"
        )
    remove_quietly(record_path)
    remove_quietly(layout.snapshot_state(name, tag))
    with contextlib.suppress(OSError):  # the last one: the directory goes too
        layout.snapshot_dir(name).rmdir()
