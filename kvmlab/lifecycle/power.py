"""Stopping an instance: the stop policy of :mod:`kvmlab.host.stopping` with a lab's power
button, the ACPI powerdown pressed through QMP."""

from __future__ import annotations

import functools
import logging

from kvmlab.errors import QmpError
from kvmlab.host.stopping import PowerButton
from kvmlab.host.stopping import stop as stop_process
from kvmlab.runtime.saved import KVMRuntime
from kvmlab.spec.layout import StateLayout

__all__ = ["powerdown", "stop_instance"]

log = logging.getLogger("kvmlab")


def stop_instance(
    layout: StateLayout,
    name: str,
    runtime: KVMRuntime | None,
    *,
    force: bool,
    timeout: float,
    button: PowerButton | None = None,
) -> None:
    """Stop ``name``: the power button first, unless ``force`` or the machine has no ACPI.

    :param button: the power button (default: :func:`powerdown` of ``name``).
    :raise NotRunningError: it has no live process.
    :raise StopError: it survived SIGKILL.
    """
    acpi = runtime.hvparams.acpi if runtime is not None else True
    press: PowerButton | None = None
    if not force and acpi:
        press = button or functools.partial(powerdown, layout, name)
    stop_process(layout, name, press=press, timeout=timeout)


def powerdown(layout: StateLayout, name: str, timeout: float, quiet: bool = False) -> bool:
    """Press the ACPI power button of ``name`` through QMP; ``False`` when QMP failed."""
    from kvmlab.channels.qmp import qmp_execute  # noqa: PLC0415 - 50 ms import

    try:
        qmp_execute(layout.qmp_socket(name), "system_powerdown", timeout=timeout)
    except QmpError as err:
        if not quiet:
            log.warning("ACPI powerdown of %s failed (%s): terminating it", name, err)
        return False
    return True
