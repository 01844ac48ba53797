"""What ``info`` adds to the inventory's view: the records of interrupted operations, the
snapshots and the saved state, the arriving runtime of a migration, and QEMU's own figures.
"""

from __future__ import annotations

import logging
from typing import Any

from kvmlab.errors import QmpError
from kvmlab.runtime.saved import KVMRuntime
from kvmlab.spec.layout import StateLayout

__all__ = ["incoming_runtime", "pending_records", "query_qemu", "state_records"]

log = logging.getLogger("kvmlab")


def pending_records(layout: StateLayout, name: str) -> dict[str, Any]:
    """``hotplug_pending``, ``migration_pending``, ``snapshot_pending``: the record each
    interrupted operation left (absent keys: none)."""
    found: dict[str, Any] = {}
    if layout.hotplug_intent(name).exists():
        from kvmlab.lifecycle.hotplug.intent import pending_hotplug  # noqa: PLC0415

        pending = pending_hotplug(layout, name)
        if pending is not None:
            found["hotplug_pending"] = pending
    if layout.migration_journal(name).exists():
        from kvmlab.lifecycle.migration.journal import pending_migration  # noqa: PLC0415

        migrating = pending_migration(layout, name)
        if migrating is not None:
            found["migration_pending"] = migrating
    if layout.snapshot_journal(name).exists():
        from kvmlab.lifecycle.snapshots.journal import pending_snapshot  # noqa: PLC0415

        snapshot = pending_snapshot(layout, name)
        if snapshot is not None:
            found["snapshot_pending"] = snapshot
    return found


def state_records(layout: StateLayout, name: str) -> dict[str, Any]:
    """``snapshots`` (tag, size, when, QEMU, machine, running; oldest first) and ``saved``
    (the same without the tag, or ``None``)."""
    snapshots: list[dict[str, Any]] = []
    saved = None
    if layout.snapshot_dir(name).is_dir() or layout.saved_record(name).exists():
        from kvmlab.lifecycle.snapshots.record import list_records, saved_record  # noqa: PLC0415

        snapshots = [record.info(path).summary() for record, path in list_records(layout, name)]
        record = saved_record(layout, name)
        if record is not None:
            saved = record.info(layout.saved_state(name)).summary()
    return {"snapshots": snapshots, "saved": saved}


def incoming_runtime(layout: StateLayout, name: str) -> KVMRuntime | None:
    """The runtime of an instance arriving by migration (``None``: none arrives)."""
    if not layout.migration_journal(name).exists():
        return None
    from kvmlab.lifecycle.migration.journal import incoming_runtime as arriving  # noqa: PLC0415

    return arriving(layout, name)


def query_qemu(
    layout: StateLayout, name: str, memory: int | None, vcpus: int | None
) -> tuple[int | None, int | None, dict[str, Any]]:
    """Memory (MiB), vCPUs and the run state (``status``) as QEMU reports them; the given
    figures and nothing more when QMP does not answer."""
    from kvmlab.channels.qmp import QmpSession  # noqa: PLC0415

    try:
        with QmpSession(layout.qmp_socket(name), timeout=2.0) as qmp:
            summary = qmp.execute("query-memory-size-summary")
            cpus = qmp.execute("query-cpus-fast")
            status = qmp.execute("query-status")
    except QmpError as err:
        log.debug("QMP query of %s failed: %s", name, err)
        return memory, vcpus, {}
    memory = int(summary["base-memory"]) // (1024 * 1024)
    return memory, len(cpus), {"status": status.get("status")}
