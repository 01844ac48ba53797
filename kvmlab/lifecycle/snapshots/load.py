"""Loading a machine state: a new QEMU started with ``-incoming defer``, fed the file.

The steps, each a module-level function so that a test can kill kvmlab between any two:

1. :func:`start_incoming`: execute the runtime to run (:mod:`.plan`) with the start-time
   ``-incoming defer`` (never in the saved argv);
2. :func:`load_state`: pass a read-only descriptor of the state (``getfd``), then
   ``migrate-incoming fd:``; wait until the run state leaves ``inmigrate`` (QEMU exits
   when the stream is bad, as it does for a failed migration);
3. :func:`finish_load`: ``cont`` when the state was taken from a running VM (it was
   stopped for the write, so QEMU ends ``paused``), and save the runtime that runs.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from kvmlab.channels.qemu_state import MigrationStatus, QemuRunState
from kvmlab.errors import QmpError, SnapshotError
from kvmlab.host.backends import Backend
from kvmlab.host.executor import execute
from kvmlab.host.inventory import running_pid
from kvmlab.host.store import save_runtime
from kvmlab.lifecycle.migration.endpoints import POLL_INTERVAL, qmp_session, resume, run_state
from kvmlab.lifecycle.snapshots.write import STATE_FD_NAME
from kvmlab.runtime.saved import KVMRuntime
from kvmlab.spec.capabilities import QemuCapabilities
from kvmlab.spec.layout import StateLayout

__all__ = ["finish_load", "load_state", "start_incoming"]

log = logging.getLogger("kvmlab")


def start_incoming(
    layout: StateLayout,
    backend: Backend,
    runtime: KVMRuntime,
    caps: QemuCapabilities,
    start_timeout: float,
) -> None:
    """Start ``runtime`` waiting for a state (``-incoming defer``).

    :raise AlreadyRunningError: the instance's process is alive.
    :raise LaunchError: the binary failed.
    """
    started = execute(runtime, layout, backend, caps, timeout=start_timeout, incoming="defer")
    log.info("started %s to load a state, pid %d", runtime.name, started.pid)


def load_state(layout: StateLayout, name: str, state: Path, timeout: float) -> str:
    """Feed ``state`` to the waiting QEMU and wait until it is loaded; its run state then.

    :raise SnapshotError: the load failed (QEMU exits, as on a failed migration) or did not
        end within ``timeout``.
    :raise QmpError: QMP failed.
    """
    fd = os.open(state, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with qmp_session(layout, name) as qmp:
            qmp.send_fd(fd)
            qmp.execute("getfd", {"fdname": STATE_FD_NAME})
            os.close(fd)
            fd = -1
            qmp.execute("migrate-incoming", {"uri": f"fd:{STATE_FD_NAME}"})
    finally:
        if fd >= 0:
            os.close(fd)
    deadline = time.monotonic() + timeout
    while True:
        status = run_state(layout, name)
        if status is not None and status != QemuRunState.INMIGRATE:
            return status
        if running_pid(layout, name) is None:
            raise SnapshotError(
                f"QEMU could not load {state} into {name} and exited (its log:"
                f" {layout.log_file(name)})",
                status=MigrationStatus.FAILED,
            )
        if time.monotonic() >= deadline:
            raise SnapshotError(
                f"loading {state} into {name} did not end within {timeout:g} s", status="timeout"
            )
        time.sleep(POLL_INTERVAL)


def finish_load(layout: StateLayout, runtime: KVMRuntime, running: bool) -> None:
    """``cont`` the loaded VM if its state was taken running; save ``runtime`` as the
    instance's runtime (a soft reboot replays it).

    :raise SnapshotError: the VM would not resume.
    """
    name = runtime.name
    if running:
        resume(layout, name)
        status = run_state(layout, name)
        if status is not None and status != QemuRunState.RUNNING:
            try:
                with qmp_session(layout, name) as qmp:
                    qmp.execute("cont")
            except QmpError as err:
                raise SnapshotError(f"{name} was loaded but does not resume: {err}") from err
    save_runtime(layout.runtime_file(name), runtime)
