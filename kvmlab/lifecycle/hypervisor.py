"""The :class:`Hypervisor` facade: start, stop, soft reboot, info, list, console, guest, cleanup.

This is where the seed's promise is kept. ``start`` generates a fresh runtime,
saves it and executes it; ``reboot`` (soft) stops the process and executes the
*saved* runtime again, so memory or NICs changed since the start are not applied,
none of them, and the guest never sees half a change; a hard restart
(``restart``: stop + start) generates anew::

    lab = Hypervisor("/tmp/lab", backend="fake")
    lab.start(Instance(name="vm1", memory=256, nics=[Nic(mac="52:54:00:00:00:01", mode="user")]))
    lab.console("vm1").expect("KVMLAB-BOOT-OK")
    lab.reboot("vm1")            # same argv as before, whatever vm1 looks like now
    lab.stop("vm1")              # ACPI powerdown, then SIGTERM/SIGKILL after the timeout

The state directory follows Ganeti's layout (see :class:`~kvmlab.spec.layout.StateLayout`);
each operation on an instance holds its lock, so concurrent commands on one
instance never interleave: one wins, the others get :class:`LockedError`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import shutil
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from kvmlab.channels.console import Console
from kvmlab.channels.guest_channel import GuestChannel
from kvmlab.errors import (
    AlreadyRunningError,
    GuestChannelError,
    InstanceError,
    NotRunningError,
    RuntimeFormatError,
    UnknownInstanceError,
)
from kvmlab.host.backends import Backend, resolve_backend
from kvmlab.host.executor import DEFAULT_START_TIMEOUT, clear_stale_files, execute
from kvmlab.host.inventory import (
    InstanceInfo,
    InstanceState,
    RuntimeSummary,
    running_pid,
    summarize,
)
from kvmlab.host.inventory import list_instances as inventory_list
from kvmlab.host.process import remove_quietly
from kvmlab.host.store import atomic_write, load_runtime
from kvmlab.lifecycle.locking import HELD_LOCKS, locked
from kvmlab.lifecycle.power import powerdown, stop_instance
from kvmlab.lifecycle.queries import incoming_runtime, pending_records, query_qemu, state_records
from kvmlab.runtime.generator import generate_runtime
from kvmlab.runtime.saved import KVMRuntime
from kvmlab.spec.inputs import check_seconds, state_dir_path
from kvmlab.spec.instance import Disk, Instance, Nic
from kvmlab.spec.layout import StateLayout, default_state_dir
from kvmlab.spec.names import is_instance_name

if TYPE_CHECKING:
    from kvmlab.lifecycle.migration.result import MigrationResult
    from kvmlab.lifecycle.snapshots.operations import Lab
    from kvmlab.lifecycle.snapshots.record import SnapshotInfo
    from kvmlab.spec.capabilities import QemuCapabilities

# InstanceInfo lives in host.inventory, InstanceState in kvmlab.states: re-exported here.
__all__ = ["Hypervisor", "InstanceInfo", "InstanceState"]

log = logging.getLogger("kvmlab")
T = TypeVar("T")

DEFAULT_STOP_TIMEOUT = 30.0


class Hypervisor:
    """A lab of instances under one state directory, on one backend.

    :param state_dir: the state directory; ``$KVMLAB_STATE_DIR`` or
        ``$XDG_STATE_HOME/kvmlab`` when omitted. Created (mode 0700) on first start.
        Resolved once (relative, ``..``, symlinks), so two spellings are one lab.
    :param backend: ``"auto"`` (real QEMU when installed, else the fake), ``"qemu"``,
        ``"fake"``, or a :class:`~kvmlab.host.backends.Backend`.
    :param start_timeout: seconds the binary may take to daemonize.
    :param stop_timeout: seconds a guest gets to power off before it is killed.
    :raise InvalidInputError: an empty state directory or a file there; a timeout out of
        range (:func:`~kvmlab.spec.inputs.check_seconds`: this and every method's).
    """

    def __init__(
        self,
        state_dir: str | os.PathLike[str] | None = None,
        backend: str | Backend = "auto",
        *,
        start_timeout: float = DEFAULT_START_TIMEOUT,
        stop_timeout: float = DEFAULT_STOP_TIMEOUT,
    ) -> None:
        root = state_dir_path(state_dir) if state_dir is not None else default_state_dir()
        self.start_timeout = check_seconds("start_timeout", start_timeout)
        self.stop_timeout = check_seconds("stop_timeout", stop_timeout)
        self.layout = StateLayout(root.absolute())
        self.backend = resolve_backend(backend)

    def __repr__(self) -> str:
        return f"Hypervisor({str(self.layout.root)!r}, backend={self.backend.describe()!r})"

    # -- generation -----------------------------------------------------------------

    def generate(self, instance: Instance) -> KVMRuntime:
        """The runtime ``start`` would save for ``instance`` now (probes the binary)."""
        binary = self.backend.binary(instance.hvparams)
        caps = self.backend.capabilities(binary)
        accel = None
        if not instance.hvparams.kvm_flag:
            accel, reason = self.backend.accelerator(binary, instance.hvparams)
            log.info("accelerator for %s: %s (%s)", instance.name, accel, reason)
        return generate_runtime(instance, caps, layout=self.layout, accel=accel, binary=binary)

    # -- life cycle -----------------------------------------------------------------

    def start(self, instance: Instance) -> InstanceInfo:
        """Generate, save and execute a fresh runtime.

        :raise AlreadyRunningError: the instance is running (its saved runtime is untouched).
        :raise LockedError: another command is operating on it.
        :raise LaunchError: the binary failed; no temp file is left behind.
        """
        runtime = self.generate(instance)
        name = instance.name
        try:  # everything that can refuse the input, before the state dir is touched
            document = runtime.to_json() + "\n"
        except ValueError as err:  # a string that is not valid Unicode text
            raise InstanceError(f"instance {name} cannot be saved: {err}") from None
        with self._locked(name):
            pid = running_pid(self.layout, name)
            if pid is not None:
                raise AlreadyRunningError(
                    f"instance {name} is already running (pid {pid})",
                    name=name,
                    state=InstanceState.RUNNING,
                )
            self._refuse_saved(name)
            atomic_write(self.layout.runtime_file(name), document)
            self._execute(runtime)
        return self.info(name, query_guest=False)

    def stop(self, name: str, force: bool = False, timeout: float | None = None) -> None:
        """Stop the instance: ACPI powerdown via QMP unless ``force`` or no ACPI,
        then SIGTERM and SIGKILL. The saved runtime stays until :meth:`cleanup`.

        :raise NotRunningError: it has no live process (a saved one: how to continue it).
        :raise UnknownInstanceError: no such instance.
        """
        timeout = self.stop_timeout if timeout is None else check_seconds("timeout", timeout)
        self._check_name(name)
        self._require_known(name)
        with self._locked(name):
            runtime = self._load_if_known(name)
            self._refuse_saved(name, stopping=True)
            self._stop(name, runtime, force, timeout)

    def reboot(self, name: str, timeout: float | None = None) -> InstanceInfo:
        """Soft reboot: stop the process and execute the *saved* runtime again.

        :raise NotRunningError: it is not running (start it instead).
        """
        timeout = self.stop_timeout if timeout is None else check_seconds("timeout", timeout)
        self._check_name(name)
        self._require_known(name)
        with self._locked(name):
            runtime = self._load(name)
            self._refuse_saved(name)
            self._stop(name, runtime, False, timeout)
            self._execute(runtime)
        return self.info(name, query_guest=False)

    def restart(self, instance: Instance, force: bool = False) -> InstanceInfo:
        """Hard restart: stop (if running), then start with a freshly generated runtime."""
        with contextlib.suppress(NotRunningError, UnknownInstanceError):
            self.stop(instance.name, force=force)
        return self.start(instance)

    def cleanup(self, name: str) -> None:
        """Forget a stopped instance: saved runtime, logs, NICs, lock, snapshots, saved state.

        :raise AlreadyRunningError: it is still running (stop it first).
        """
        self._check_name(name)
        self._require_known(name)
        with self._locked(name):
            pid = running_pid(self.layout, name)
            if pid is not None:
                raise AlreadyRunningError(
                    f"instance {name} is running (pid {pid}): stop it before cleanup",
                    name=name,
                    state=InstanceState.RUNNING,
                )
            self._load_if_known(name)
            clear_stale_files(self.layout, name)
            for path in self.layout.instance_files(name):
                remove_quietly(path)
            shutil.rmtree(self.layout.nic_dir(name), ignore_errors=True)
            shutil.rmtree(self.layout.snapshot_dir(name), ignore_errors=True)
        remove_quietly(self.layout.lock_file(name))

    # -- hotplug (docs/hotplug.md) ---------------------------------------------------

    def attach_nic(self, name: str, nic: Nic) -> KVMRuntime:
        """Plug a user-mode NIC into the running ``name`` and save it in its runtime,
        so a soft reboot keeps it (at the same PCI slot).

        :return: the runtime now saved.
        :raise HotplugRefusedError: (exit 2, nothing changed) stopped VM, duplicate MAC,
            q35, a QEMU without the commands, a tap NIC.
        """
        from kvmlab.lifecycle.hotplug import nic as hotplug_nic  # noqa: PLC0415 - only for hotplug

        with self._hotplug_guard(name, "attach a NIC") as (runtime, caps):
            return hotplug_nic.attach_nic(self.layout, runtime, nic, caps)

    def detach_nic(self, name: str, mac: str) -> KVMRuntime:
        """Unplug the NIC with ``mac`` from the running ``name`` and save the runtime
        without it.

        :raise HotplugRefusedError: (exit 2, nothing changed) no NIC with that MAC, stopped VM.
        """
        from kvmlab.lifecycle.hotplug import nic as hotplug_nic  # noqa: PLC0415

        with self._hotplug_guard(name, "detach a NIC") as (runtime, caps):
            return hotplug_nic.detach_nic(self.layout, runtime, mac, caps)

    def attach_disk(self, name: str, disk: Disk) -> KVMRuntime:
        """Plug a virtio disk into the running ``name`` and save it in its runtime,
        so a soft reboot keeps it (at the same PCI slot).

        :return: the runtime now saved.
        :raise HotplugRefusedError: (exit 2, nothing changed) stopped VM, a path already
            attached, a missing image, q35, a QEMU without the commands.
        """
        from kvmlab.lifecycle.hotplug import disk as hotplug_disk  # noqa: PLC0415 - only for hotplug

        with self._hotplug_guard(name, "attach a disk") as (runtime, caps):
            return hotplug_disk.attach_disk(self.layout, runtime, disk, caps)

    def detach_disk(self, name: str, path: str) -> KVMRuntime:
        """Unplug the disk ``path`` from the running ``name`` and save the runtime
        without it.

        :raise HotplugRefusedError: (exit 2, nothing changed) no such disk, stopped VM.
        """
        from kvmlab.lifecycle.hotplug import disk as hotplug_disk  # noqa: PLC0415

        with self._hotplug_guard(name, "detach a disk") as (runtime, caps):
            return hotplug_disk.detach_disk(self.layout, runtime, path, caps)

    @contextlib.contextmanager
    def _hotplug_guard(self, name: str, what: str) -> Iterator[tuple[KVMRuntime, QemuCapabilities]]:
        """The one preamble of every hotplug, as QEMU's python guards a method with
        ``@require(Runstate.RUNNING)``: a valid and known name, the instance lock (held
        for the whole change), the saved runtime, its binary's capabilities, and a
        running VM. Yields the runtime and the capabilities.

        :param what: the change, for the refusal (``"attach a NIC"``).
        :raise HotplugNotRunningError: (exit 2) the VM is stopped; nothing changed.
        """
        from kvmlab.lifecycle.hotplug.nic import check_running  # noqa: PLC0415 - only for hotplug

        self._check_name(name)
        self._require_known(name)
        with self._locked(name):
            runtime = self._load(name)
            caps = self.backend.capabilities(runtime.binary)
            check_running(self.layout, name, what)
            yield runtime, caps

    # -- migration (docs/migration.md) -----------------------------------------------

    def migrate(
        self,
        name: str,
        target_lab: Hypervisor,
        live: bool = True,
        timeout: float | None = None,
        progress: Callable[[Mapping[str, Any]], None] | None = None,
    ) -> MigrationResult:
        """Move the running ``name`` into ``target_lab`` (another state directory) while
        the guest runs (``live``) or paused (``live=False``), as Ganeti migrates.

        The target starts the source's saved runtime, rebased onto its own state
        directory and binary, with ``-incoming``; on success the source is quit and its
        runtime removed after the target saved its own. Locks: this lab's, then the
        target's, each taken without waiting (a busy one is ``LockedError`` at once, so
        two migrations in opposite directions cannot deadlock).

        :param timeout: seconds the transfer may take (default 300) before it is cancelled.
        :param progress: called with each ``query-migrate`` reply while it runs.
        :raise MigrationRefusedError: (exit 2, nothing changed) not running here, the
            target has the instance, an older target QEMU, a machine type it lacks.
        :raise MigrationError: (exit 1) it failed or timed out: the target was killed,
            the source still runs with its runtime untouched.
        """
        from kvmlab.lifecycle.migration import transfer  # noqa: PLC0415 - only for migrations
        from kvmlab.lifecycle.migration.prepare import plan_migration  # noqa: PLC0415

        timeout = transfer.DEFAULT_TIMEOUT if timeout is None else check_seconds("timeout", timeout)
        self._check_name(name)
        self._require_known(name)
        runtime = self._load(name)

        def plan(runtime: KVMRuntime) -> tuple[KVMRuntime, QemuCapabilities, QemuCapabilities]:
            return plan_migration(
                runtime, self.layout, self.backend, target_lab.layout, target_lab.backend
            )

        plan(runtime)  # every refusal the files allow, before a state dir is touched
        with self._locked(name), target_lab._locked(name, undo=True):
            runtime = self._load(name)  # what the lock now guarantees
            planned, source_caps, target_caps = plan(runtime)
            return transfer.migrate(
                runtime,
                planned,
                source=self.layout,
                target=target_lab.layout,
                target_backend=target_lab.backend,
                source_caps=source_caps,
                target_caps=target_caps,
                live=live,
                timeout=timeout,
                start_timeout=target_lab.start_timeout,
                progress=progress,
            )

    def recover_migration(self, name: str) -> str | None:
        """Finish or undo a migration of ``name`` that a killed kvmlab left (from either
        lab); every locked command does this first, this one does only that.

        :return: ``"completed"`` (the target has it), ``"rolled back"`` (the source
            has it), or ``None`` when nothing was pending.
        :raise UnknownInstanceError: no such instance (and no migration of it pending).
        """
        from kvmlab.lifecycle.migration.recovery import recover  # noqa: PLC0415

        self._check_name(name)
        if not self.layout.migration_journal(name).exists():
            self._require_known(name)
            return None
        with self._locked(name, recover=False):
            return recover(self.layout, name, held=HELD_LOCKS)

    def recover_snapshot(self, name: str) -> str | None:
        """Resolve a snapshot, save, revert or restore that a killed kvmlab left, as every
        locked command does first: ``"completed"``, ``"rolled back"``, ``"stopped"`` (a
        revert that could not be finished), ``None`` (nothing was pending)."""
        self._check_name(name)
        if not self.layout.snapshot_journal(name).exists():
            self._require_known(name)
            return None
        with self._locked(name, recover=False):
            return self._snapshot_lab(name).recover()

    # -- snapshots (docs/snapshots.md) -----------------------------------------------

    def snapshot(self, name: str, tag: str, timeout: float | None = None) -> SnapshotInfo:
        """Write the machine state of the running ``name`` as snapshot ``tag``, with its
        saved runtime; the VM pauses for the write and runs on.

        :raise SnapshotRefusedError: (exit 2) an invalid or duplicate tag, a stopped VM,
            a pending hotplug or migration; nothing changed.
        :raise SnapshotError: (exit 1) the write failed or timed out; the VM runs as before.
        """
        from kvmlab.lifecycle.snapshots import operations as ops  # noqa: PLC0415

        return self._snapshots(name, timeout, lambda lab, t: ops.take(lab, tag, t), tag=tag)

    def save(self, name: str, timeout: float | None = None) -> SnapshotInfo:
        """Write the machine state of the running ``name`` and end its process: it is
        saved until :meth:`restore` continues it (errors: as :meth:`snapshot`)."""
        from kvmlab.lifecycle.snapshots import operations as ops  # noqa: PLC0415

        return self._snapshots(name, timeout, lambda lab, t: ops.take(lab, None, t))

    def revert(self, name: str, tag: str, timeout: float | None = None) -> InstanceInfo:
        """Make ``name`` (running or not) snapshot ``tag`` again: its process is replaced
        by one started from the snapshot's runtime and state, and that runtime is saved.

        :raise SnapshotRefusedError: (exit 2) no such snapshot, a damaged one, an older QEMU.
        :raise SavedError: the instance is saved (restore or clean it up first).
        :raise SnapshotError: loading failed: it is left stopped with the snapshot's runtime.
        """
        from kvmlab.lifecycle.snapshots import operations as ops  # noqa: PLC0415

        self._snapshots(name, timeout, lambda lab, t: ops.revert(lab, tag, t), tag=tag)
        return self.info(name, query_guest=False)

    def restore(self, name: str, timeout: float | None = None) -> InstanceInfo:
        """Continue the saved ``name`` from its saved state, which is then removed.

        :raise SnapshotRefusedError: (exit 2) nothing saved, a damaged state, an older QEMU.
        :raise SnapshotError: loading failed; it stays saved.
        """
        from kvmlab.lifecycle.snapshots import operations as ops  # noqa: PLC0415

        self._snapshots(name, timeout, ops.restore)
        return self.info(name, query_guest=False)

    def delete_snapshot(self, name: str, tag: str) -> None:
        """Remove snapshot ``tag`` of ``name`` (:class:`SnapshotRefusedError`: no such tag)."""
        from kvmlab.lifecycle.snapshots import operations as ops  # noqa: PLC0415

        self._snapshots(name, None, lambda lab, _t: ops.delete(lab, tag), tag=tag)

    def snapshots(self, name: str) -> list[SnapshotInfo]:
        """The snapshots of ``name``, oldest first."""
        return self._snapshots(name, None, lambda lab, _t: lab.snapshots(), lock=False)

    def saved_state(self, name: str) -> SnapshotInfo | None:
        """The saved state of ``name`` (``None``: it is not saved)."""
        return self._snapshots(name, None, lambda lab, _t: lab.saved(), lock=False)

    def _snapshots(
        self, name: str, timeout: float | None, run: Callable[[Lab, float], T], **how: Any
    ) -> T:
        """The preamble of the snapshot operations (the timeout, ``tag=`` and the name
        checked, a known instance, its lock held unless ``lock=False``), then ``run``."""
        from kvmlab.lifecycle.snapshots.operations import check_tag, check_timeout  # noqa: PLC0415

        seconds = check_timeout(timeout)
        check_tag(how.get("tag"))
        self._check_name(name)
        self._require_known(name)
        if not how.get("lock", True):
            return run(self._snapshot_lab(name), seconds)
        with self._locked(name):
            return run(self._snapshot_lab(name), seconds)

    def _snapshot_lab(self, name: str) -> Lab:
        from kvmlab.lifecycle.snapshots.operations import Lab  # noqa: PLC0415

        return Lab(self.layout, name, self.backend, self.start_timeout, self.stop_timeout)

    def _refuse_saved(self, name: str, stopping: bool = False) -> None:
        if self.layout.saved_record(name).exists():
            from kvmlab.lifecycle.snapshots.plan import refuse_saved  # noqa: PLC0415

            refuse_saved(self.layout, name, stopping=stopping)

    # -- inspection -----------------------------------------------------------------

    def load_runtime(self, name: str) -> KVMRuntime:
        """The saved runtime of ``name``.

        :raise UnknownInstanceError: none is saved.
        :raise RuntimeFormatError: the file is damaged (it is left as it is).
        """
        self._check_name(name)
        return self._load(name)

    def info(self, name: str, query_guest: bool = True) -> InstanceInfo:
        """State, pid, the live argv, memory and vCPUs (from QMP while running).

        ``extra`` holds the snapshots and the saved state (``snapshots``, ``saved``) and
        the record of any interrupted operation (``hotplug_pending``...).

        :raise UnknownInstanceError: no such instance.
        :raise RuntimeFormatError: its saved runtime is damaged.
        """
        self._check_name(name)
        try:
            runtime = self._load(name)
        except UnknownInstanceError:
            # An instance arriving by migration has no saved runtime yet (docs/migration.md).
            arriving = incoming_runtime(self.layout, name)
            if arriving is None:
                raise
            runtime = arriving
        nics = tuple(nic.model_dump(mode="json") for nic in runtime.nics)
        base = summarize(self.layout, name, RuntimeSummary(name, runtime.argv, nics))
        extra = {**pending_records(self.layout, name), **state_records(self.layout, name)}
        base = dataclasses.replace(base, extra={**base.extra, **extra})
        if base.pid is None or not query_guest:
            return base
        memory, vcpus, extra = query_qemu(self.layout, name, base.memory, base.vcpus)
        return dataclasses.replace(base, memory=memory, vcpus=vcpus, extra={**base.extra, **extra})

    def list_instances(self) -> list[InstanceInfo]:
        """Every instance with a saved runtime, sorted by name (no QMP, no validation)."""
        return inventory_list(self.layout)

    def guest(self, name: str) -> GuestChannel:
        """Run commands inside ``name``: ``lab.guest("vm1").run(["cat", "/proc/meminfo"])``.

        Each ``run`` checks that the instance is running (:class:`NotRunningError`).

        :raise UnknownInstanceError: no such instance.
        :raise GuestChannelError: its runtime has no command channel (no serial console).
        """
        self._check_name(name)
        runtime = self._load(name)
        path = self.layout.cmd_socket(name)
        if not any(str(path) in word for word in runtime.argv):
            raise GuestChannelError(
                f"instance {name} has no command channel (it needs serial_console, and a"
                " runtime generated by a kvmlab that has the channel: restart it)"
            )

        def check() -> None:
            if running_pid(self.layout, name) is None:
                raise NotRunningError(
                    f"instance {name} is not running", name=name, state=InstanceState.STOPPED
                )

        return GuestChannel(name, path, check)

    def console(self, name: str) -> Console:
        """The serial console of ``name`` (readable while running and after)."""
        self._check_name(name)
        self._load(name)
        return Console(name, self.layout.serial_log(name), self.layout.serial_socket(name))

    # -- internals ------------------------------------------------------------------

    def _check_name(self, name: str) -> None:
        # Names reach paths: anything but a DNS label cannot be an instance.
        if not is_instance_name(name):
            raise UnknownInstanceError(f"no instance named {name!r} (not a valid instance name)")

    def _require_known(self, name: str) -> None:
        """Refuse an unknown instance before anything is created (no state dir, no lock)."""
        if not self.layout.runtime_file(name).exists() and not self.layout.pidfile(name).exists():
            raise UnknownInstanceError(f"no instance named {name!r} in {self.layout.root}")

    @contextlib.contextmanager
    def _locked(self, name: str, recover: bool = True, undo: bool = False) -> Iterator[None]:
        """Hold ``name``'s lock (:func:`kvmlab.lifecycle.locking.locked`), resolving first
        what a killed kvmlab left pending; ``undo``: a failure removes the directories
        created."""
        with locked(
            self.layout, name, resolve=self._resolver(name) if recover else None, undo=undo
        ):
            yield

    def _resolver(self, name: str) -> Callable[[], None]:
        def resolve() -> None:
            if self.layout.migration_journal(name).exists():
                from kvmlab.lifecycle.migration import recovery as migration  # noqa: PLC0415

                migration.recover(self.layout, name, held=HELD_LOCKS)
            if self.layout.snapshot_journal(name).exists():
                self._snapshot_lab(name).recover()

        return resolve

    def _load(self, name: str) -> KVMRuntime:
        path = self.layout.runtime_file(name)
        if not path.exists():
            raise UnknownInstanceError(f"no instance named {name!r} in {self.layout.root}")
        runtime = load_runtime(path)
        if runtime.name != name:
            # Replaying it would start another instance under this one's name.
            raise RuntimeFormatError(f"{path}: holds the runtime of {runtime.name!r}, not {name!r}")
        return runtime

    def _load_if_known(self, name: str) -> KVMRuntime | None:
        path = self.layout.runtime_file(name)
        if path.exists():
            try:
                return self._load(name)
            except RuntimeFormatError as err:
                if running_pid(self.layout, name) is None:
                    raise
                # A damaged runtime must not keep a VM running: stop it without one.
                log.warning("%s; stopping %s without it", err, name)
                return None
        if running_pid(self.layout, name) is None:
            raise UnknownInstanceError(f"no instance named {name!r} in {self.layout.root}")
        return None

    def _execute(self, runtime: KVMRuntime) -> None:
        caps = self.backend.capabilities(runtime.binary)
        started = execute(runtime, self.layout, self.backend, caps, timeout=self.start_timeout)
        log.info("started %s, pid %d", runtime.name, started.pid)

    def _stop(self, name: str, runtime: KVMRuntime | None, force: bool, timeout: float) -> None:
        button = functools.partial(self._powerdown, name)
        stop_instance(self.layout, name, runtime, force=force, timeout=timeout, button=button)

    def _powerdown(self, name: str, timeout: float, quiet: bool = False) -> bool:
        """Press the ACPI power button of ``name`` (:func:`kvmlab.lifecycle.power.powerdown`)."""
        return powerdown(self.layout, name, timeout, quiet)
