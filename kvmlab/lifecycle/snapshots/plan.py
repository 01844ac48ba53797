"""The refusals of the four operations, and the runtime a state is loaded into.

Everything that cannot work is refused here before anything changes
(:class:`~kvmlab.errors.SnapshotRefusedError`, exit 2): a bad, unknown or duplicate tag, a
VM that is not running, a pending hotplug or migration, a record or a state that is
damaged, a QEMU that cannot load the state, a guest-visible difference.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kvmlab.errors import (
    LayoutError,
    NotRunningError,
    RuntimeFormatError,
    SavedError,
    SnapshotRefusedError,
)
from kvmlab.golden.diff import rebase_changes
from kvmlab.host.backends import Backend
from kvmlab.host.inventory import running_pid
from kvmlab.lifecycle.snapshots.record import (
    SnapshotRecord,
    load_record,
    saved_record,
    verify_state,
)
from kvmlab.runtime.restore import restore_runtime
from kvmlab.runtime.saved import KVMRuntime
from kvmlab.spec.capabilities import QemuCapabilities
from kvmlab.spec.layout import StateLayout
from kvmlab.spec.names import SNAPSHOT_TAG_RULE, is_snapshot_tag
from kvmlab.states import InstanceState

__all__ = [
    "LoadPlan",
    "check_tag",
    "find_snapshot",
    "plan_load",
    "refuse_pending",
    "refuse_saved",
    "refuse_stopped",
    "snapshot_label",
]


@dataclass(frozen=True, slots=True)
class LoadPlan:
    """What a revert or restore loads: the record, its state file, the runtime to start."""

    record: SnapshotRecord
    state: Path
    runtime: KVMRuntime
    caps: QemuCapabilities


def snapshot_label(name: str, tag: str | None) -> str:
    """How messages name a state: ``snapshot 'base' of vm1``, ``the saved state of vm1``."""
    return f"the saved state of {name}" if tag is None else f"snapshot {tag!r} of {name}"


def check_tag(tag: str | None) -> None:
    """:raise SnapshotRefusedError: ``tag`` cannot name a snapshot (it becomes a file name);
    ``None`` (the saved state) passes."""
    if tag is None:
        return
    if not isinstance(tag, str) or not is_snapshot_tag(tag):
        raise SnapshotRefusedError(f"invalid snapshot tag {tag!r}: {SNAPSHOT_TAG_RULE}")


def find_snapshot(layout: StateLayout, name: str, tag: str) -> tuple[SnapshotRecord, Path]:
    """The record and state file of snapshot ``tag``.

    :raise SnapshotRefusedError: an invalid tag, no such snapshot, a damaged record.
    """
    check_tag(tag)
    path = layout.snapshot_record(name, tag)
    if not path.exists():
        raise SnapshotRefusedError(
            f"instance {name} has no snapshot {tag!r} (kvmlab snapshots {name} lists them)"
        )
    record = load_record(path, snapshot_label(name, tag))
    if record.name != name or record.tag != tag or record.kind != "snapshot":
        raise SnapshotRefusedError(
            f"{snapshot_label(name, tag)}: its record {path} describes another state"
        )
    return record, layout.snapshot_state(name, tag)


def refuse_stopped(layout: StateLayout, name: str, what: str) -> None:
    """:raise SnapshotRefusedError: the VM has no live process (``what``: ``"snapshot"``)."""
    if running_pid(layout, name) is None:
        raise SnapshotRefusedError(f"cannot {what} {name}: it is not running")


def refuse_saved(layout: StateLayout, name: str, *, stopping: bool = False) -> None:
    """Refuse what would throw away the saved state of ``name``, naming the way out.

    :param stopping: for ``stop``: there is nothing to stop (no process), which is a
        :class:`NotRunningError` as for any stopped instance, but one that says why.
    :raise SavedError: ``name`` waits in a saved state, which a start would throw away.
    :raise NotRunningError: (``stopping``, state ``saved``) it waits and has no process.
    """
    if not layout.saved_record(name).exists():
        return
    record = saved_record(layout, name)
    taken = f" (taken {record.created})" if record is not None else ""
    waits = (
        f"has a saved state{taken}: `kvmlab restore {name}` continues it,"
        f" `kvmlab cleanup {name}` discards it"
    )
    if not stopping:
        raise SavedError(f"instance {name} {waits}", name=name)
    if running_pid(layout, name) is None:
        raise NotRunningError(
            f"instance {name} is not running: it {waits}", name=name, state=InstanceState.SAVED
        )


def refuse_pending(layout: StateLayout, name: str, what: str) -> None:
    """:raise SnapshotRefusedError: a hotplug or a migration of ``name`` was interrupted
    (the VM may differ from its saved runtime, which the state would be recorded with)."""
    if layout.hotplug_intent(name).exists():
        raise SnapshotRefusedError(
            f"cannot {what} {name}: a hotplug was interrupted and its VM may differ from its"
            " saved runtime (kvmlab info shows it; restart it first)"
        )
    if layout.migration_journal(name).exists():
        raise SnapshotRefusedError(
            f"cannot {what} {name}: a migration of it is pending (kvmlab recover {name})"
        )


def plan_load(
    layout: StateLayout,
    backend: Backend,
    record: SnapshotRecord,
    state: Path,
    *,
    verify: bool = True,
) -> LoadPlan:
    """Check a state against its record and compute the runtime that loads it.

    The runtime is the one recorded with the state, rebased onto this lab and the backend's
    binary (:func:`kvmlab.runtime.restore.restore_runtime`), refused when the guest would
    see a difference (kvmlab's semantic diff, against the recorded runtime with its
    machine pinned as the restore pinned it: ``q35`` *is* ``pc-q35-7.2`` on QEMU 7.2).

    :param verify: ``False`` only when the caller has checked this very file against the
        record already (a template's state, at its first use in the process).
    :raise SnapshotRefusedError: the state does not match its record, its runtime is
        damaged or of another instance, the QEMU cannot load it, a guest-visible change.
    """
    what = snapshot_label(record.name, record.tag)
    if verify:
        verify_state(state, record, what)
    try:
        runtime = KVMRuntime.from_json(record.runtime)
        source = StateLayout(Path(record.lab))
    except (RuntimeFormatError, LayoutError) as err:
        raise SnapshotRefusedError(f"{what}: its record is damaged: {err}") from None
    if runtime.name != record.name:
        raise SnapshotRefusedError(f"{what}: its record holds the runtime of {runtime.name!r}")
    binary = backend.binary(runtime.hvparams)
    caps = backend.capabilities(binary)
    planned = restore_runtime(
        runtime,
        source=source,
        target=layout,
        recorded_version=record.recorded_version,
        recorded_machine=record.machine,
        caps=caps,
        binary=binary,
    )
    changes = rebase_changes(runtime, planned)
    if changes is not None:
        raise SnapshotRefusedError(
            f"cannot load {what}: the command line would change what the guest sees ({changes})"
        )
    return LoadPlan(record=record, state=state, runtime=planned, caps=caps)
