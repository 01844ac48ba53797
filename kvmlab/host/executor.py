"""The side-effect half of starting a VM: run a saved runtime.

``execute`` is Ganeti's ``_ExecuteKVMRuntime`` made safe:

1. refuse when the instance's process is alive (a stale pidfile, or one whose pid
   now belongs to another program, does not count);
2. decide the start-time facts (a tap up-script per bridged/routed NIC, in a
   private temp directory; user networking otherwise; the QMP socket);
3. let :func:`kvmlab.runtime.plan.plan_execution` build the final argv from a *copy*
   of the saved one (the runtime is frozen: nothing here can change it);
4. write the temp files, run the binary (it daemonizes; the parent exits once the
   VM is set up) with a deadline, check that the pidfile names a live process of
   this instance;
5. remove every temp file, whatever happened.

The caller holds the instance lock (see :mod:`kvmlab.lifecycle.hypervisor`). The stop,
the other half, is :mod:`kvmlab.host.stopping`.
"""

from __future__ import annotations

import logging
import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from kvmlab.errors import AlreadyRunningError, LaunchError
from kvmlab.host.backends import Backend
from kvmlab.host.inventory import running_pid
from kvmlab.host.process import (
    adopt,
    become_subreaper,
    is_alive,
    owns_pidfile,
    parent_of,
    read_pidfile,
    reap_adopted,
    reap_zombie_child,
    remove_quietly,
    session_of,
    signal_process,
    wait_for_exit,
)
from kvmlab.runtime.plan import NicPlan, NicPlanKind, StartFacts, TempFile, plan_execution
from kvmlab.runtime.saved import KVMRuntime
from kvmlab.spec.capabilities import QemuCapabilities
from kvmlab.spec.instance import NicMode
from kvmlab.spec.layout import StateLayout
from kvmlab.states import InstanceState

__all__ = ["TEMP_PREFIX", "Started", "clear_stale_files", "execute", "sweep_stale_temp_dirs"]

log = logging.getLogger("kvmlab.commands")

#: Prefix of the private temp directory of one start; tests look for leftovers by it.
TEMP_PREFIX = "kvmlab-start-"
DEFAULT_START_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class Started:
    """A started instance: its pid and the argv that was run."""

    pid: int
    argv: tuple[str, ...]


def clear_stale_files(layout: StateLayout, name: str) -> None:
    """Remove the pidfile and sockets a dead process left behind."""
    for path in (
        layout.pidfile(name),
        layout.monitor_socket(name),
        layout.serial_socket(name),
        layout.qmp_socket(name),
        layout.cmd_socket(name),
        layout.migration_socket(name),
    ):
        remove_quietly(path)


def _nic_plans(runtime: KVMRuntime, backend: Backend, temp_dir: Path) -> tuple[NicPlan, ...]:
    plans = []
    for seq, nic in enumerate(runtime.nics):
        if nic.mode is NicMode.USER:
            plans.append(NicPlan(NicPlanKind.USER))
            continue
        if not backend.can_create_taps:
            raise LaunchError(
                f"NIC {seq} of {runtime.name} is {nic.mode} and needs a tap device, which"
                " needs root; use mode 'user' or run as root"
            )
        plans.append(NicPlan(NicPlanKind.SCRIPT, script_path=str(temp_dir / f"up-{seq}")))
    return tuple(plans)


def _write_temp_file(temp: TempFile) -> None:
    fd = os.open(temp.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, temp.mode)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(temp.content)


def _read_from(path: Path, offset: int) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            return handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


#: QEMU's (and the fake's) words when a tap's up-script exits non-zero.
_SCRIPT_FAILED = re.compile(r"network script (?P<script>\S+) failed with status \d+")


def _last_line(text: str) -> str:
    """The binary's reason, from the last line it printed.

    When that line is QEMU's ``network script PATH failed with status N`` (a raw wait
    status, and a temp path already removed), the script's own last line of stderr
    (``ip``'s "Cannot find device ...") is the reason: it is added, and the path named
    by its file name.
    """
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return "no output"
    last = lines[-1]
    match = _SCRIPT_FAILED.search(last)
    if match is None:
        return last
    script = match["script"]
    last = last.replace(script, Path(script).name)
    # The script's stderr comes before QEMU's line and is not prefixed like QEMU's.
    prefix = last.split(":", 1)[0] + ":"
    said = [line for line in lines[:-1] if not line.startswith(prefix)]
    return f"{last}: {said[-1]}" if said else last


def _run_to_exit(argv: tuple[str, ...], log_fd: int, env: dict[str, str], timeout: float) -> int:
    """Run the (daemonizing) binary and wait for its first process to exit.

    ``subprocess.run(timeout=...)`` polls with sleeps of up to 50 ms; a pidfd wakes
    us as soon as the parent exits, which is most of a fake start's latency.

    :raise subprocess.TimeoutExpired: it did not exit in time (it is killed).
    """
    process = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=log_fd,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    try:
        pidfd = os.pidfd_open(process.pid)
    except (AttributeError, OSError):
        pidfd = None
    try:
        if pidfd is not None:
            ready, _, _ = select.select([pidfd], [], [], timeout)
            if not ready:
                raise subprocess.TimeoutExpired(argv, timeout)
        return process.wait(timeout=None if pidfd is not None else timeout)
    except BaseException:
        process.kill()
        process.wait()
        raise
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _kill_leftover(layout: StateLayout, name: str) -> None:
    pid = read_pidfile(layout.pidfile(name))
    if owns_pidfile(pid, layout.pidfile(name)) and pid is not None:
        adopt(pid)
        signal_process(pid, signal.SIGKILL)
        wait_for_exit(pid, 1.0)
        reap_adopted()


def _adopt_daemon(pid: int) -> None:
    """Record the daemon for reaping, and reap the launcher's middle process now.

    QEMU's ``-daemonize`` forks twice: the middle process calls ``setsid`` and exits at
    once, and nobody waits for it; it reaches us (the subreaper) as a zombie when the
    launcher exits. The daemon's session id names it.
    """
    adopt(pid)
    middle = session_of(pid)
    if (
        middle is not None
        and middle not in (pid, os.getpid())
        and parent_of(middle) == os.getpid()
        and not is_alive(middle)
    ):
        reap_zombie_child(middle)


def execute(
    runtime: KVMRuntime,
    layout: StateLayout,
    backend: Backend,
    caps: QemuCapabilities,
    *,
    timeout: float = DEFAULT_START_TIMEOUT,
    incoming: str | None = None,
) -> Started:
    """Start the saved runtime.

    :param incoming: start it as the target of a migration (``-incoming URI``, a
        start-time argument; see :mod:`kvmlab.lifecycle.migration.transfer`). QEMU listens before it
        daemonizes, so the URI accepts a connection once this returns.

    :raise AlreadyRunningError: the instance's process is alive.
    :raise LaunchError: taps without root, the binary failed or timed out, or it
        exited right after starting; ``.output`` holds what it printed.
    """
    name = runtime.name
    pidfile = layout.pidfile(name)
    if running_pid(layout, name) is not None:
        raise AlreadyRunningError(
            f"instance {name} is already running (pid {read_pidfile(pidfile)})",
            name=name,
            state=InstanceState.RUNNING,
        )
    clear_stale_files(layout, name)
    nic_dir = layout.nic_dir(name)
    shutil.rmtree(nic_dir, ignore_errors=True)
    nic_dir.mkdir(mode=0o700, parents=True, exist_ok=True)

    # The owner's pid in the name lets a later command remove it if we get killed.
    temp_dir = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-"))
    log_path = layout.log_file(name)
    try:
        # QEMU truncates the serial log it is given (logappend=off) but creates it with
        # its own umask: create it first, private.
        fd = os.open(layout.serial_log(name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        os.close(fd)
        facts = StartFacts(
            nic_plans=_nic_plans(runtime, backend, temp_dir),
            qmp_socket=str(layout.qmp_socket(name)),
            nic_dir=str(nic_dir),
            caps=caps,
            incoming=incoming,
        )
        plan = plan_execution(runtime, facts)
        for temp in plan.temp_files:
            _write_temp_file(temp)
        # The daemon outlives its launcher: be the one it is reparented to, so it can be
        # reaped (see kvmlab.host.process) rather than left a zombie of a PID 1 that never reaps.
        become_subreaper()
        return _run(
            plan.argv,
            runtime=runtime,
            layout=layout,
            backend=backend,
            log_path=log_path,
            timeout=timeout,
        )
    except OSError as err:
        where = f" ({err.filename})" if err.filename else ""
        raise LaunchError(f"cannot start {name}: {err.strerror}{where}") from err
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)


def sweep_stale_temp_dirs() -> None:
    """Remove start-time temp directories whose kvmlab process is gone (killed mid-start)."""
    for path in Path(tempfile.gettempdir()).glob(f"{TEMP_PREFIX}*-*"):
        owner = path.name.removeprefix(TEMP_PREFIX).split("-", 1)[0]
        if owner.isdigit() and int(owner) != os.getpid() and not is_alive(int(owner)):
            shutil.rmtree(path, ignore_errors=True)


def _run(
    argv: tuple[str, ...],
    *,
    runtime: KVMRuntime,
    layout: StateLayout,
    backend: Backend,
    log_path: Path,
    timeout: float,
) -> Started:
    name = runtime.name
    env = {**os.environ, **backend.environment()}
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "ab") as log_file:
        offset = log_file.seek(0, os.SEEK_END)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        log_file.write(f"--- {stamp} kvmlab start: {shlex.join(argv)}\n".encode())
        log_file.flush()
        log.info("starting %s: %s", name, shlex.join(argv))
        started = time.monotonic()
        try:
            returncode = _run_to_exit(argv, log_file.fileno(), env, timeout)
        except subprocess.TimeoutExpired:
            _kill_leftover(layout, name)
            clear_stale_files(layout, name)
            output = _read_from(log_path, offset)
            raise LaunchError(
                f"{argv[0]} did not start {name} within {timeout:g} s",
                argv=argv,
                exitcode=None,
                output=output,
            ) from None
        except OSError as err:
            clear_stale_files(layout, name)
            raise LaunchError(
                f"cannot run {argv[0]!r}: {err.strerror}", argv=argv, exitcode=None
            ) from err
    output = _read_from(log_path, offset)
    # What the binary printed, without kvmlab's own "--- ... kvmlab start:" header line.
    binary_output = output.split("\n", 1)[1] if "\n" in output else ""
    log.debug("%s returned %d after %.3f s", argv[0], returncode, time.monotonic() - started)
    if returncode != 0:
        _kill_leftover(layout, name)
        clear_stale_files(layout, name)
        raise LaunchError(
            f"{Path(argv[0]).name} failed to start {name} (exit {returncode}):"
            f" {_last_line(binary_output)}",
            argv=argv,
            exitcode=returncode,
            output=output,
        )
    pid = running_pid(layout, name)
    if pid is None:
        clear_stale_files(layout, name)
        raise LaunchError(
            f"{Path(argv[0]).name} exited right after starting {name}: {_last_line(binary_output)}",
            argv=argv,
            exitcode=returncode,
            output=output,
        )
    _adopt_daemon(pid)
    return Started(pid=pid, argv=argv)
