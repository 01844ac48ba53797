"""Live migration between two labs (issue 12): the saved runtime travels, the guest never notices.

Ganeti's KVM driver migrates by handing the *saved runtime* to the target node,
which starts it with ``-incoming``; the source then runs ``migrate`` and polls
``query-migrate`` until it completes. Here two state directories stand for the two
nodes. :func:`migrate` runs with both instance locks held (the caller,
:meth:`kvmlab.lifecycle.hypervisor.Hypervisor.migrate`, takes the source's, then the target's)
and does, in Ganeti's order:

1. (before: :func:`prepare` refuses what cannot work, nothing touched);
2. write the *journal* ``conf/NAME.migration`` in the source, then in the target;
3. start the target from the rebased runtime (:mod:`kvmlab.runtime.rebase`) with the
   start-time ``-incoming unix:TARGET/ctrl/NAME.migrate``, and wait until its QMP
   says ``inmigrate``;
4. on the source: ``migrate-set-capabilities events``, the bandwidth, ``stop`` when
   not live, ``migrate``; poll ``query-migrate`` (``migrate_cancel`` at the timeout);
5. failure: kill the target, remove its files, resume the source if it was paused,
   remove the journals: the source runs on with its runtime untouched;
6. success: wait for the target to leave ``inmigrate`` (``cont`` it after an offline
   migration), save its runtime atomically, ``quit`` the source, remove the source's
   runtime, then the journals (source first).

A kvmlab killed at any step leaves the journals. :func:`recover` (which every locked
command on the instance runs first, in either lab) decides from what is *there*, not
from the step recorded: a target runtime saved, or a target out of ``inmigrate``
whose source agrees the transfer completed, means roll forward (finish step 6);
anything else means roll back (step 5). ``info`` reports a journal as
``migration_pending``. Design and measurements: docs/migration.md.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import shutil
import signal
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kvmlab.errors import (
    KvmlabError,
    LayoutError,
    MigrationError,
    MigrationRefusedError,
    RuntimeFormatError,
)
from kvmlab.golden.diff import diff_runtimes
from kvmlab.host.backends import Backend
from kvmlab.host.executor import clear_stale_files, execute
from kvmlab.host.inventory import running_pid
from kvmlab.host.process import (
    adopt,
    read_cmdline,
    reap_adopted,
    remove_quietly,
    signal_process,
    wait_for_exit,
)
from kvmlab.host.store import atomic_write, instance_lock, read_record, save_runtime
from kvmlab.runtime.rebase import machine_of, pin_machine, target_runtime
from kvmlab.runtime.saved import KVMRuntime
from kvmlab.spec.capabilities import QemuCapabilities
from kvmlab.spec.layout import StateLayout

__all__ = [
    "DEFAULT_TIMEOUT",
    "MigrationResult",
    "incoming_runtime",
    "migrate",
    "pending_migration",
    "prepare",
    "recover",
]

log = logging.getLogger("kvmlab")

#: Seconds a transfer may take before it is cancelled (``migrate --timeout``).
DEFAULT_TIMEOUT = 300.0
#: ``max-bandwidth`` in bytes/s: both ends are on this machine (QEMU's default is
#: 32 MiB/s in 7.2 and 128 MiB/s in 10.0, made for a network between two hosts).
BANDWIDTH = 1 << 30
QMP_TIMEOUT = 10.0
POLL_INTERVAL = 0.05
#: Seconds the target gets to answer QMP with ``inmigrate`` once started, and to
#: leave ``inmigrate`` once the source says ``completed``.
TARGET_TIMEOUT = 30.0
#: ``query-migrate`` states of a transfer still going (QEMU's MigrationStatus).
ACTIVE = frozenset(
    {
        "setup",
        "active",
        "pre-switchover",
        "device",
        "wait-unplug",
        "cancelling",
        "postcopy-active",
        "postcopy-paused",
        "postcopy-recover",
        "postcopy-recover-setup",
    }
)
#: Run states in which the guest does not execute and ``cont`` may resume it.
_PAUSED = frozenset({"paused", "postmigrate", "finish-migrate", "prelaunch"})

ProgressCallback = Callable[[Mapping[str, Any]], None]


@dataclass(frozen=True, slots=True)
class MigrationResult:
    """What one migration did, as QEMU's ``query-migrate`` reported it at the end.

    :ivar total_time_ms: from ``migrate`` to completion (QEMU's ``total-time``).
    :ivar downtime_ms: how long the guest was paused (``downtime``); for an offline
        migration QEMU counts only the final switch-over, the guest was paused
        throughout the transfer.
    :ivar transferred_bytes: RAM bytes sent (``ram.transferred``).
    :ivar elapsed_ms: the whole operation as kvmlab saw it (target start to source quit).
    """

    name: str
    source: str
    target: str
    status: str
    live: bool
    total_time_ms: int | None
    downtime_ms: int | None
    setup_time_ms: int | None
    transferred_bytes: int | None
    elapsed_ms: int
    source_version: str
    target_version: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- journal ------------------------------------------------------------------------------


def pending_migration(layout: StateLayout, name: str) -> dict[str, Any] | None:
    """The journal a migration left in ``layout`` (without the runtime it carries)."""
    data = _read_journal(layout, name)
    if data is None:
        return None
    return {key: value for key, value in data.items() if key != "target_runtime"}


def incoming_runtime(layout: StateLayout, name: str) -> KVMRuntime | None:
    """The runtime an incoming migration into ``layout`` runs, before it is saved there
    (``info`` in the target lab shows the instance while it arrives)."""
    data = _read_journal(layout, name)
    if data is None or data.get("role") != "target" or "target_runtime" not in data:
        return None
    try:
        return KVMRuntime.from_json(str(data["target_runtime"]))
    except RuntimeFormatError:
        return None


def _read_journal(layout: StateLayout, name: str) -> dict[str, Any] | None:
    return read_record(layout.migration_journal(name))


def _write_journal(layout: StateLayout, name: str, data: Mapping[str, Any]) -> None:
    atomic_write(layout.migration_journal(name), json.dumps(data, sort_keys=True) + "\n")


# -- the pure part, checked ---------------------------------------------------------------


def prepare(
    runtime: KVMRuntime,
    *,
    source: StateLayout,
    target: StateLayout,
    source_caps: QemuCapabilities,
    target_caps: QemuCapabilities,
    binary: str,
) -> KVMRuntime:
    """The target's runtime, refused unless the guest would see exactly the source's VM.

    The guest-visible part of the two argvs is compared with kvmlab's semantic diff
    (:mod:`kvmlab.golden.diff`), against the source with its machine alias pinned when
    :mod:`kvmlab.runtime.rebase` had to pin it (``q35`` *is* ``pc-q35-7.2`` on QEMU 7.2).

    :raise MigrationRefusedError: same state directory, older target QEMU, missing
        machine type, or a guest-visible difference.
    """
    if source.root == target.root:
        raise MigrationRefusedError(
            f"cannot migrate {runtime.name} to {target.root}: that is its own state directory"
        )
    planned = target_runtime(
        runtime,
        source=source,
        target=target,
        source_caps=source_caps,
        target_caps=target_caps,
        binary=binary,
    )
    machine = machine_of(planned)
    reference = runtime if machine == machine_of(runtime) else pin_machine(runtime, machine)
    visible = diff_runtimes(reference, planned).guest_visible
    if visible:
        changes = "; ".join(str(change) for change in visible[:3])
        raise MigrationRefusedError(
            f"cannot migrate {runtime.name}: the target's command line would change what the"
            f" guest sees ({changes})"
        )
    return planned


# -- QMP helpers --------------------------------------------------------------------------


@contextlib.contextmanager
def _qmp(layout: StateLayout, name: str, timeout: float = QMP_TIMEOUT) -> Iterator[Any]:
    from kvmlab.channels.qmp import QmpSession  # noqa: PLC0415 - 50 ms import

    with QmpSession(layout.qmp_socket(name), timeout=timeout) as session:
        yield session


def _status(layout: StateLayout, name: str, timeout: float = 2.0) -> str | None:
    """The run state of the instance's QEMU (``None``: not running, or QMP silent)."""
    from kvmlab.errors import QmpError  # noqa: PLC0415

    if running_pid(layout, name) is None:
        return None
    try:
        with _qmp(layout, name, timeout) as qmp:
            return str(qmp.execute("query-status")["status"])
    except (QmpError, KeyError, TypeError):
        return None


def _wait_status(
    layout: StateLayout, name: str, accept: Callable[[str], bool], timeout: float
) -> str | None:
    """Poll the run state until ``accept`` takes it; the last state seen (``None``: dead)."""
    deadline = time.monotonic() + timeout
    while True:
        status = _status(layout, name)
        if status is not None and accept(status):
            return status
        if running_pid(layout, name) is None or time.monotonic() >= deadline:
            return status
        time.sleep(POLL_INTERVAL)


def _migration_numbers(info: Mapping[str, Any]) -> dict[str, int | None]:
    def number(value: object) -> int | None:
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    ram = info.get("ram")
    return {
        "total_time_ms": number(info.get("total-time")),
        "downtime_ms": number(info.get("downtime")),
        "setup_time_ms": number(info.get("setup-time")),
        "transferred_bytes": number(ram.get("transferred")) if isinstance(ram, dict) else None,
    }


# -- the two endings ----------------------------------------------------------------------


def _incoming_pids(target: StateLayout, name: str) -> list[int]:
    """Processes started with the target's pidfile: the incoming QEMU, and its launcher
    if a kvmlab killed mid-start left one still daemonizing."""
    wanted = str(target.pidfile(name))
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        argv = read_cmdline(int(entry))
        if argv and any(a == "-pidfile" and b == wanted for a, b in itertools.pairwise(argv)):
            found.append(int(entry))
    return found


def _kill_target(target: StateLayout, name: str) -> None:
    """Kill the incoming VM (it never ran the guest) and remove every file it had."""
    for pid in _incoming_pids(target, name):
        adopt(pid)
        signal_process(pid, signal.SIGKILL)
        wait_for_exit(pid, 5.0)
    reap_adopted()
    clear_stale_files(target, name)
    shutil.rmtree(target.nic_dir(name), ignore_errors=True)


def _resume(layout: StateLayout, name: str) -> None:
    from kvmlab.errors import QmpError  # noqa: PLC0415

    status = _status(layout, name)
    if status in _PAUSED:
        try:
            with _qmp(layout, name) as qmp:
                qmp.execute("cont")
        except QmpError as err:
            log.warning("cannot resume %s in %s: %s", name, layout.root, err)


def _roll_back(source: StateLayout, target: StateLayout, name: str, resume: bool) -> None:
    """The source keeps the VM: the target is killed, the source resumed if we paused it."""
    _kill_target(target, name)
    remove_quietly(target.migration_journal(name))
    if resume:
        _resume(source, name)
    remove_quietly(source.migration_journal(name))
    log.info("migration of %s to %s rolled back: the source keeps it", name, target.root)


def _quit_source(source: StateLayout, name: str) -> None:
    from kvmlab.errors import QmpError  # noqa: PLC0415

    pid = running_pid(source, name)
    if pid is None:
        return
    adopt(pid)
    try:
        with _qmp(source, name) as qmp:
            qmp.execute("quit")
    except QmpError as err:
        log.debug("quit of the source %s: %s", name, err)
    if not wait_for_exit(pid, 10.0):
        signal_process(pid, signal.SIGKILL)
        wait_for_exit(pid, 5.0)
    reap_adopted()


def _roll_forward(
    source: StateLayout, target: StateLayout, name: str, planned: KVMRuntime, resume: bool
) -> str | None:
    """The target keeps the VM: its runtime saved, then the source quit and forgotten.

    A target that died after the transfer (or never left ``inmigrate``) cannot keep it:
    then it is a roll back (its runtime removed, the source resumed) and ``None``.
    """
    status = _wait_status(target, name, lambda state: state != "inmigrate", TARGET_TIMEOUT)
    if status is None or status == "inmigrate":
        remove_quietly(target.runtime_file(name))
        _roll_back(source, target, name, resume)
        return None
    if resume and status in _PAUSED:
        _resume(target, name)
    if not target.runtime_file(name).exists():
        save_runtime(target.runtime_file(name), planned)
    _quit_source(source, name)
    clear_stale_files(source, name)
    shutil.rmtree(source.nic_dir(name), ignore_errors=True)
    remove_quietly(source.runtime_file(name))
    remove_quietly(source.migration_journal(name))
    remove_quietly(target.migration_journal(name))
    remove_quietly(target.migration_socket(name))
    return status


# -- recovery -----------------------------------------------------------------------------


def _source_outcome(source: StateLayout, name: str) -> str | None:
    """Stop a transfer still going (kvmlab died, QEMU carried on) and say how it ended:
    ``completed``, ``cancelled``, ``failed``... or ``None`` (no source, or QMP silent)."""
    from kvmlab.errors import QmpError  # noqa: PLC0415

    if running_pid(source, name) is None:
        return None
    try:
        with _qmp(source, name) as qmp:
            info = qmp.execute("query-migrate")
            status = str(info.get("status", "none"))
            seen_active = status in ACTIVE
            if status in ACTIVE:
                qmp.execute("migrate_cancel")
                deadline = time.monotonic() + TARGET_TIMEOUT
                while status in ACTIVE and time.monotonic() < deadline:
                    time.sleep(POLL_INTERVAL)
                    info = qmp.execute("query-migrate")
                    status = str(info.get("status", "none"))
            if status == "completed" and not _ours(qmp, info, seen_active):
                return "none"  # the migration that brought it here, not one from it
            return status
    except (QmpError, AttributeError):
        return None


def _resolve(source: StateLayout, target: StateLayout, name: str) -> str:
    """Finish or undo the migration a dead kvmlab left; both locks are held."""
    journal = _read_journal(source, name)
    if journal is None or "target_runtime" not in journal:
        # Only the target's journal (or a damaged one): nothing says the target has the VM
        # unless it saved its runtime.
        if not target.runtime_file(name).exists():
            _kill_target(target, name)
        remove_quietly(source.migration_journal(name))
        remove_quietly(target.migration_journal(name))
        return "rolled back"
    try:
        planned = KVMRuntime.from_json(journal["target_runtime"])
    except (RuntimeFormatError, TypeError) as err:
        raise MigrationError(f"the migration journal of {name} is damaged: {err}") from None
    resume = bool(journal.get("resume_source", True))
    if target.runtime_file(name).exists():
        return (
            "completed" if _roll_forward(source, target, name, planned, resume) else "rolled back"
        )
    outcome = _source_outcome(source, name)
    if outcome == "completed":
        status = _wait_status(target, name, lambda state: state != "inmigrate", TARGET_TIMEOUT)
    else:
        status = _status(target, name)
    if status is not None and status != "inmigrate" and outcome in ("completed", None):
        return (
            "completed" if _roll_forward(source, target, name, planned, resume) else "rolled back"
        )
    _roll_back(source, target, name, resume)
    return "rolled back"


def recover(layout: StateLayout, name: str, held: Collection[Path] = ()) -> str | None:
    """Resolve a journal left in ``layout`` by a killed kvmlab; the caller holds its lock.

    The other lab's lock is taken here unless it is in ``held`` (the caller has it).

    :return: ``"completed"``, ``"rolled back"``, or ``None`` when there was no journal.
    :raise LockedError: the other lab's instance is busy.
    """
    data = _read_journal(layout, name)
    if data is None:
        return None
    try:
        source = StateLayout(Path(str(data["source"])))
        target = StateLayout(Path(str(data["target"])))
    except (KeyError, LayoutError):
        log.warning("removing the unreadable migration journal of %s in %s", name, layout.root)
        remove_quietly(layout.migration_journal(name))
        return "rolled back"
    if layout.root not in (source.root, target.root):
        remove_quietly(layout.migration_journal(name))
        return "rolled back"
    other = target if layout.root == source.root else source
    lock = other.lock_file(name)
    with contextlib.ExitStack() as stack:
        if lock not in held:
            lock.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            stack.enter_context(instance_lock(lock, name))
        outcome = _resolve(source, target, name)
    log.warning("%s: an interrupted migration to %s was %s", name, target.root, outcome)
    return outcome


# -- the migration ------------------------------------------------------------------------


def _refuse_states(source: StateLayout, target: StateLayout, name: str) -> None:
    if running_pid(source, name) is None:
        raise MigrationRefusedError(f"cannot migrate {name}: it is not running in {source.root}")
    if target.runtime_file(name).exists() or running_pid(target, name) is not None:
        raise MigrationRefusedError(
            f"cannot migrate {name}: {target.root} already has an instance of that name"
        )
    if source.hotplug_intent(name).exists():
        raise MigrationRefusedError(
            f"cannot migrate {name}: a hotplug was interrupted and its VM may differ from its"
            " saved runtime (kvmlab info shows it; restart it first)"
        )


def _wait_incoming(target: StateLayout, name: str, timeout: float) -> None:
    # Any answer ends the wait: QEMU is in inmigrate from its start until the transfer.
    status = _wait_status(target, name, lambda _state: True, timeout)
    if status != "inmigrate":
        why = "exited" if running_pid(target, name) is None else f"is {status or 'silent'}"
        raise MigrationError(f"the target of {name} {why} instead of waiting for the migration")


def _transfer(
    qmp: Any,
    target: StateLayout,
    name: str,
    uri: str,
    *,
    live: bool,
    timeout: float,
    progress: ProgressCallback | None,
) -> Mapping[str, Any]:
    """Send the VM; the last ``query-migrate`` reply (``completed`` or why not)."""
    from kvmlab.errors import QmpError  # noqa: PLC0415

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
        status = str(info.get("status", "none"))
        if progress is not None:
            progress(info)
        seen_active = seen_active or status in ACTIVE
        if status == "completed" and _ours(qmp, info, seen_active):
            return _settled(qmp, info)
        if status == "completed":
            status = "setup"
        if status not in ACTIVE:
            return info
        if time.monotonic() >= deadline or running_pid(target, name) is None:
            timed_out = time.monotonic() >= deadline
            qmp.execute("migrate_cancel")
            cancel_deadline = time.monotonic() + TARGET_TIMEOUT
            while status in ACTIVE and time.monotonic() < cancel_deadline:
                time.sleep(POLL_INTERVAL)
                info = qmp.execute("query-migrate")
                status = str(info.get("status", "none"))
            if status == "completed" and _ours(qmp, info, seen_active):
                return info  # it finished while being cancelled
            return {**info, "status": "timeout" if timed_out else status}
        time.sleep(POLL_INTERVAL)


def _ours(qmp: Any, info: Mapping[str, Any], seen_active: bool) -> bool:
    """Whether a ``completed`` reply is this transfer's end.

    A VM that arrived by migration answers ``query-migrate`` with that *incoming*
    migration (``completed``, no ``ram`` figures) until its own outgoing state shows;
    QEMU replaces it as soon as ``migrate`` ran (so does the fake kvm), but a reply read
    before that is the old one. The source's run state settles it: ``postmigrate`` only
    follows an outgoing migration that completed.
    """
    if seen_active or "ram" in info:
        return True
    return str(qmp.execute("query-status").get("status")) == "postmigrate"


def _settled(qmp: Any, info: Mapping[str, Any]) -> Mapping[str, Any]:
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
    (from :func:`prepare`); the caller holds both instance locks.

    :raise MigrationRefusedError: the source is not running, the target has the
        instance, a hotplug is pending; nothing changed.
    :raise MigrationError: it failed or timed out; the target is gone, the source
        runs with its runtime untouched.
    """
    from kvmlab.errors import QmpError  # noqa: PLC0415

    name = runtime.name
    _refuse_states(source, target, name)
    began = time.monotonic()
    uri = f"unix:{target.migration_socket(name)}"
    status = _status(source, name)
    if status is None:
        raise MigrationRefusedError(f"cannot migrate {name}: its QMP does not answer")
    resume = status == "running"
    journal = {
        "op": "migrate",
        "name": name,
        "source": str(source.root),
        "target": str(target.root),
        "live": live,
        "resume_source": resume,
        "uri": uri,
        "step": "starting-target",
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    _write_journal(source, name, {**journal, "target_runtime": planned.to_json()})
    _write_journal(target, name, {**journal, "role": "target", "target_runtime": planned.to_json()})
    try:
        remove_quietly(target.migration_socket(name))
        execute(planned, target, target_backend, target_caps, timeout=start_timeout, incoming=uri)
        _wait_incoming(target, name, TARGET_TIMEOUT)
        _write_journal(
            source, name, {**journal, "step": "transferring", "target_runtime": planned.to_json()}
        )
        with _qmp(source, name) as qmp:
            info = _transfer(qmp, target, name, uri, live=live, timeout=timeout, progress=progress)
    except KvmlabError as err:
        # Decided from what is there, as after a crash: QMP failing after QEMU completed
        # the transfer must not kill a target that already runs the guest.
        if _resolve(source, target, name) == "completed":
            info = {"status": "completed"}  # the figures were not read
        else:
            if isinstance(err, MigrationError):
                raise
            raise MigrationError(f"migration of {name} failed: {err}") from err
    except BaseException:
        _resolve(source, target, name)
        raise
    else:
        final = str(info.get("status", "none"))
        if final != "completed":
            _roll_back(source, target, name, resume)
            detail = info.get("error-desc")
            why = (
                f"did not complete within {timeout:g} s (cancelled)"
                if final == "timeout"
                else f"ended {final}" + (f": {detail}" if detail else "")
            )
            raise MigrationError(
                f"migration of {name} to {target.root} {why}; it still runs in {source.root}",
                status=final,
            )
        try:
            target_state = _roll_forward(source, target, name, planned, resume)
        except QmpError as err:  # the journals stay: the next command finishes the job
            raise MigrationError(f"migration of {name} completed but not finished: {err}") from err
        if target_state is None:
            raise MigrationError(
                f"the target of {name} did not take over after the transfer; it still runs in"
                f" {source.root}",
                status="completed",
            )
    log.info("migrated %s to %s", name, target.root)
    return MigrationResult(
        name=name,
        source=str(source.root),
        target=str(target.root),
        status="completed",
        live=live,
        elapsed_ms=round((time.monotonic() - began) * 1000),
        source_version=source_caps.version_string,
        target_version=target_caps.version_string,
        **_migration_numbers(info),
    )
