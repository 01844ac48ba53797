"""The side-effect half of stopping a VM: the power button, then signals, within deadlines.

:func:`stop` is the start's counterpart (:mod:`kvmlab.host.executor`):

1. refuse an instance without a live process (its stale pidfile and sockets go);
2. unless told not to, press the ACPI power button and wait for the guest to power
   off, pressing again every :data:`POWERDOWN_RETRY` s (a guest still booting misses
   the first press, as real guests do; Ganeti's shutdown retries every 5 s too);
3. when the guest did not power off by the deadline, or the button could not be
   pressed: SIGTERM with a short grace, then SIGKILL;
4. reap the daemon, delete the taps that outlived it, remove its pidfile and sockets.

The power button is a callable the caller passes in, not a QMP call made here: the
host layer does not speak QMP (:mod:`kvmlab.channels` sits beside it, not below), and
a policy that only needs "press it; did QEMU take it?" stays testable without a socket.
The caller holds the instance lock (see :mod:`kvmlab.lifecycle.hypervisor`).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from kvmlab.errors import NotRunningError, StopError
from kvmlab.host.executor import clear_stale_files
from kvmlab.host.inventory import running_pid
from kvmlab.host.process import reap_adopted, remove_quietly, signal_process, wait_for_exit
from kvmlab.spec.layout import StateLayout
from kvmlab.states import InstanceState

__all__ = [
    "POWERDOWN_RETRY",
    "PRESS_TIMEOUT",
    "TERM_TIMEOUT",
    "PowerButton",
    "release_nics",
    "stop",
    "terminate",
]

log = logging.getLogger("kvmlab")

TERM_TIMEOUT = 5.0
#: One press of the power button gets at most this long (a frozen QEMU never answers).
PRESS_TIMEOUT = 5.0
#: A graceful stop presses the ACPI power button again after this long while the guest
#: runs: a guest still booting (no ACPI button driver yet) misses the first press.
POWERDOWN_RETRY = 2.0

#: Press the power button once: ``press(timeout, quiet)`` is ``True`` when QEMU took the
#: press, ``False`` when it could not be pressed (logged as a warning unless ``quiet``).
PowerButton = Callable[[float, bool], bool]


def stop(layout: StateLayout, name: str, *, press: PowerButton | None, timeout: float) -> None:
    """Stop the live process of ``name`` within ``timeout`` seconds (plus the kill's grace).

    :param press: the power button; ``None`` skips the graceful part (a forced stop,
        or a machine without ACPI).
    :raise NotRunningError: it has no live process (stale files are removed).
    :raise StopError: it survived SIGKILL.
    """
    pid = running_pid(layout, name)
    if pid is None:
        clear_stale_files(layout, name)
        raise NotRunningError(
            f"instance {name} is not running", name=name, state=InstanceState.STOPPED
        )
    deadline = time.monotonic() + timeout
    if press is not None and powerdown_until_exit(name, pid, deadline, press):
        log.info("%s powered off", name)
    else:
        # The guest had its chance: SIGTERM gets a short grace, bounded by the timeout.
        terminate(name, pid, min(TERM_TIMEOUT, max(timeout, 0.5)))
    reap_adopted()  # the exited daemon, when this process started it
    release_nics(layout, name)
    clear_stale_files(layout, name)


def powerdown_until_exit(name: str, pid: int, deadline: float, press: PowerButton) -> bool:
    """Press the power button every :data:`POWERDOWN_RETRY` s until ``pid`` exits
    (``True``) or the deadline passes or a press fails (``False``)."""
    first = True
    while True:
        left = max(deadline - time.monotonic(), 0.0)
        if not press(min(PRESS_TIMEOUT, left), not first):
            if first:
                return False
            # After a press that QEMU took, a failed one most likely found QEMU closing
            # its socket on the way out: give it the rest of the deadline to exit.
            if wait_for_exit(pid, left):
                return True
            log.warning("ACPI powerdown of %s failed again: terminating it", name)
            return False
        first = False
        left = max(deadline - time.monotonic(), 0.0)
        if wait_for_exit(pid, min(POWERDOWN_RETRY, left)):
            return True
        if time.monotonic() >= deadline:
            return False


def terminate(name: str, pid: int, grace: float = 5.0) -> None:
    """SIGTERM, ``grace`` seconds to exit, then SIGKILL.

    :raise StopError: it survived SIGKILL for :data:`TERM_TIMEOUT` seconds.
    """
    if signal_process(pid, signal.SIGTERM) and wait_for_exit(pid, grace):
        return
    signal_process(pid, signal.SIGKILL)
    if not wait_for_exit(pid, TERM_TIMEOUT):
        raise StopError(f"instance {name} (pid {pid}) survived SIGKILL")


def release_nics(layout: StateLayout, name: str) -> None:
    """The down half of the up-scripts: delete taps that outlived their QEMU."""
    nic_dir = layout.nic_dir(name)
    if not nic_dir.is_dir():
        return
    for record in sorted(nic_dir.iterdir()):
        tap = record.read_text(encoding="utf-8", errors="replace").strip()
        valid = bool(tap) and set(tap) <= set("abcdefghijklmnopqrstuvwxyz0123456789_.-")
        if valid and Path("/sys/class/net", tap).exists() and os.geteuid() == 0:
            subprocess.run(["ip", "link", "delete", tap], check=False, capture_output=True)
        remove_quietly(record)
