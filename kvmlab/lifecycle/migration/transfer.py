"""Live migration between two labs: the saved runtime travels, the guest never notices.

Ganeti's KVM driver migrates by handing the *saved runtime* to the target node,
which starts it with ``-incoming``; the source then runs ``migrate`` and polls
``query-migrate`` until it completes. Here two state directories stand for the two
nodes. :func:`migrate` runs with both instance locks held (the caller,
:meth:`kvmlab.lifecycle.hypervisor.Hypervisor.migrate`, takes the source's, then the target's)
and does, in Ganeti's order:

1. (before: :func:`kvmlab.lifecycle.migration.prepare.prepare` refuses what cannot work,
   nothing touched);
2. write the journal (:mod:`kvmlab.lifecycle.migration.journal`) in the source, then in
   the target;
3. start the target from the rebased runtime (:mod:`kvmlab.runtime.rebase`) with the
   start-time ``-incoming unix:TARGET/ctrl/NAME.migrate``, and wait until its QMP
   says ``inmigrate``;
4. on the source: ``migrate-set-capabilities events``, the bandwidth, ``stop`` when
   not live, ``migrate``; poll ``query-migrate`` (``migrate_cancel`` at the timeout);
5. failure: roll back (:mod:`kvmlab.lifecycle.migration.endings`): the source runs on
   with its runtime untouched;
6. success: roll forward: the target's runtime saved, the source quit and forgotten.

A kvmlab killed at any step leaves the journals, which
:mod:`kvmlab.lifecycle.migration.recovery` resolves; an error or an interrupt during steps
3-4 is resolved the same way, from what is there. Design and measurements: docs/migration.md.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from kvmlab.channels.qemu_state import ACTIVE_MIGRATION, MigrationStatus, QemuRunState
from kvmlab.errors import KvmlabError, MigrationError, MigrationRefusedError, QmpError
from kvmlab.host.backends import Backend
from kvmlab.host.executor import execute
from kvmlab.host.inventory import running_pid
from kvmlab.host.process import remove_quietly
from kvmlab.lifecycle.migration.endings import roll_back, roll_forward
from kvmlab.lifecycle.migration.endpoints import (
    POLL_INTERVAL,
    TARGET_TIMEOUT,
    cancel_migration,
    completion_is_ours,
    migration_status,
    qmp_session,
    run_state,
    wait_run_state,
)
from kvmlab.lifecycle.migration.journal import MigrationJournal, MigrationOutcome, MigrationStep
from kvmlab.lifecycle.migration.prepare import refuse_states
from kvmlab.lifecycle.migration.recovery import resolve
from kvmlab.lifecycle.migration.result import MigrationResult, migration_figures
from kvmlab.runtime.saved import KVMRuntime
from kvmlab.spec.capabilities import QemuCapabilities
from kvmlab.spec.layout import StateLayout

if TYPE_CHECKING:
    from kvmlab.channels.qmp import QmpSession

__all__ = ["BANDWIDTH", "DEFAULT_TIMEOUT", "ProgressCallback", "migrate"]

log = logging.getLogger("kvmlab")

#: Seconds a transfer may take before it is cancelled (``migrate --timeout``).
DEFAULT_TIMEOUT = 300.0
#: ``max-bandwidth`` in bytes/s: both ends are on this machine (QEMU's default is
#: 32 MiB/s in 7.2 and 128 MiB/s in 10.0, made for a network between two hosts).
BANDWIDTH = 1 << 30
#: The status :func:`_transfer` reports for a transfer it cancelled at the timeout
#: (kvmlab's word, not QEMU's).
TIMED_OUT = "timeout"

ProgressCallback = Callable[[Mapping[str, Any]], None]


def _wait_incoming(target: StateLayout, name: str, timeout: float) -> None:
    # Any answer ends the wait: QEMU is in inmigrate from its start until the transfer.
    status = wait_run_state(target, name, lambda _state: True, timeout)
    if status != QemuRunState.INMIGRATE:
        why = "exited" if running_pid(target, name) is None else f"is {status or 'silent'}"
        raise MigrationError(f"the target of {name} {why} instead of waiting for the migration")


def _transfer(
    qmp: QmpSession,
    target: StateLayout,
    name: str,
    uri: str,
    *,
    live: bool,
    timeout: float,
    progress: ProgressCallback | None,
) -> Mapping[str, Any]:
    """Send the VM; the last ``query-migrate`` reply (``completed`` or why not)."""
    qmp.execute(
        "migrate-set-capabilities", {"capabilities": [{"capability": "events", "state": True}]}
    )
    try:
        qmp.execute("migrate-set-parameters", {"max-bandwidth": BANDWIDTH})
    except QmpError as err:  # a QEMU (or fake) without the parameter: its default speed
        log.debug("migrate-set-parameters: %s", err)
    if not live:
        qmp.execute("stop")
    qmp.execute("migrate", {"uri": uri})
    deadline = time.monotonic() + timeout
    seen_active = False
    while True:
        info: Mapping[str, Any] = qmp.execute("query-migrate")
        status = migration_status(info)
        if progress is not None:
            progress(info)
        seen_active = seen_active or status in ACTIVE_MIGRATION
        if status == MigrationStatus.COMPLETED and completion_is_ours(qmp, info, seen_active):
            return _settled(qmp, info)
        if status == MigrationStatus.COMPLETED:
            status = MigrationStatus.SETUP  # the incoming one that brought it: ours is coming
        if status not in ACTIVE_MIGRATION:
            return info
        if time.monotonic() >= deadline or running_pid(target, name) is None:
            timed_out = time.monotonic() >= deadline
            info = cancel_migration(qmp)
            status = migration_status(info)
            if status == MigrationStatus.COMPLETED and completion_is_ours(qmp, info, seen_active):
                return info  # it finished while being cancelled
            return {**info, "status": TIMED_OUT if timed_out else status}
        time.sleep(POLL_INTERVAL)


def _settled(qmp: QmpSession, info: Mapping[str, Any]) -> Mapping[str, Any]:
    """The final figures of a completed transfer.

    QEMU sets the state to ``completed`` a moment before its migration thread computes
    ``total-time`` and ``downtime`` (QEMU 7.2 and 10.0: ``migration_calculate_complete``
    runs after ``migration_completion``): a reply in between says 0 ms for both.
    """
    for _ in range(10):  # microseconds apart in QEMU; a fake may really report 0 ms
        if info.get("total-time"):
            break
        time.sleep(0.01)
        info = qmp.execute("query-migrate")
    return info


def migrate(
    runtime: KVMRuntime,
    planned: KVMRuntime,
    *,
    source: StateLayout,
    target: StateLayout,
    target_backend: Backend,
    source_caps: QemuCapabilities,
    target_caps: QemuCapabilities,
    live: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
    start_timeout: float = 30.0,
    progress: ProgressCallback | None = None,
) -> MigrationResult:
    """Move the running ``runtime`` from ``source`` to ``target`` as ``planned``
    (from :func:`kvmlab.lifecycle.migration.prepare.prepare`); the caller holds both
    instance locks.

    :raise MigrationRefusedError: the source is not running, the target has the
        instance, a hotplug is pending; nothing changed.
    :raise MigrationError: it failed or timed out; the target is gone, the source
        runs with its runtime untouched.
    """
    name = runtime.name
    refuse_states(source, target, name)
    began = time.monotonic()
    uri = f"unix:{target.migration_socket(name)}"
    status = run_state(source, name)
    if status is None:
        raise MigrationRefusedError(f"cannot migrate {name}: its QMP does not answer")
    resume = status == QemuRunState.RUNNING
    journal = MigrationJournal(
        op="migrate",
        name=name,
        source=str(source.root),
        target=str(target.root),
        live=live,
        resume_source=resume,
        uri=uri,
        step=MigrationStep.STARTING_TARGET,
        started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        target_runtime=planned.to_json(),
    )
    journal.save(source.migration_journal(name))
    journal.model_copy(update={"role": "target"}).save(target.migration_journal(name))
    try:
        remove_quietly(target.migration_socket(name))
        execute(planned, target, target_backend, target_caps, timeout=start_timeout, incoming=uri)
        _wait_incoming(target, name, TARGET_TIMEOUT)
        journal.model_copy(update={"step": MigrationStep.TRANSFERRING}).save(
            source.migration_journal(name)
        )
        with qmp_session(source, name) as qmp:
            info = _transfer(qmp, target, name, uri, live=live, timeout=timeout, progress=progress)
    except KvmlabError as err:
        # Decided from what is there, as after a crash: QMP failing after QEMU completed
        # the transfer must not kill a target that already runs the guest.
        if resolve(source, target, name) == MigrationOutcome.COMPLETED:
            info = {"status": MigrationStatus.COMPLETED}  # the figures were not read
        else:
            if isinstance(err, MigrationError):
                raise
            raise MigrationError(f"migration of {name} failed: {err}") from err
    except BaseException:
        resolve(source, target, name)
        raise
    else:
        final = migration_status(info)
        if final != MigrationStatus.COMPLETED:
            roll_back(source, target, name, resume)
            detail = info.get("error-desc")
            why = (
                f"did not complete within {timeout:g} s (cancelled)"
                if final == TIMED_OUT
                else f"ended {final}" + (f": {detail}" if detail else "")
            )
            raise MigrationError(
                f"migration of {name} to {target.root} {why}; it still runs in {source.root}",
                status=final,
            )
        try:
            target_state = roll_forward(source, target, name, planned, resume)
        except QmpError as err:  # the journals stay: the next command finishes the job
            raise MigrationError(f"migration of {name} completed but not finished: {err}") from err
        if target_state is None:
            raise MigrationError(
                f"the target of {name} did not take over after the transfer; it still runs in"
                f" {source.root}",
                status=MigrationStatus.COMPLETED,
            )
    log.info("migrated %s to %s", name, target.root)
    return MigrationResult(
        name=name,
        source=str(source.root),
        target=str(target.root),
        status=MigrationStatus.COMPLETED,
        live=live,
        elapsed_ms=round((time.monotonic() - began) * 1000),
        source_version=source_caps.version_string,
        target_version=target_caps.version_string,
        **migration_figures(info),
    )
