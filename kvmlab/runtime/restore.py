"""The pure half of a restore: the runtime a machine state was taken with, as it runs now.

A machine state (a snapshot, a saved instance) is only valid for the runtime it was taken
from, so the two travel together: a restore or a revert always runs the *recorded* runtime,
whatever the instance file or the saved runtime say now. Like a migration's target
(:mod:`kvmlab.runtime.rebase`), it cannot always run it as it is:

- every path under the lab the state was taken in becomes the same path under this lab
  (unchanged in the same lab);
- ``argv[0]`` becomes the binary the backend runs now;
- when that QEMU's version (major.minor) is not the recorded one, a machine alias is
  pinned to the recorded concrete type (``q35`` means ``pc-q35-10.0`` on 10.0, and a
  7.2 state only loads into ``pc-q35-7.2``).

Refused (:class:`~kvmlab.errors.SnapshotRefusedError`, exit 2) before anything starts: a
binary older than the recorded version (QEMU loads states of its own or older versions
only), or one without the machine type. Pure: no files, no processes.
"""

from __future__ import annotations

from kvmlab.errors import SnapshotRefusedError
from kvmlab.runtime.rebase import concrete_machine, machine_of, moved, pin_machine
from kvmlab.runtime.saved import KVMRuntime
from kvmlab.spec.capabilities import QemuCapabilities
from kvmlab.spec.layout import StateLayout

__all__ = ["restore_runtime"]


def _dotted(version: tuple[int, ...]) -> str:
    return ".".join(str(part) for part in version)


def restore_runtime(
    runtime: KVMRuntime,
    *,
    source: StateLayout,
    target: StateLayout,
    recorded_version: tuple[int, int, int],
    recorded_machine: str,
    caps: QemuCapabilities,
    binary: str,
) -> KVMRuntime:
    """The runtime to start (with ``-incoming``) to load a state taken with ``runtime``.

    :param source: the lab the state was taken in (its record's ``lab``).
    :param target: this lab.
    :param recorded_version: the QEMU version that wrote the state.
    :param recorded_machine: the concrete machine type it ran (``pc-q35-7.2``).
    :param caps: the capabilities of ``binary``, the QEMU that would load it.
    :raise SnapshotRefusedError: ``binary`` is older than the recorded QEMU, or lacks the
        machine type.
    :raise LayoutError: a socket path of this lab would be too long.
    """
    name = runtime.name
    if caps.version[:2] < recorded_version[:2]:
        raise SnapshotRefusedError(
            f"cannot load the state of {name}: it was written by QEMU"
            f" {_dotted(recorded_version)}, and QEMU {caps.version_string} is older (QEMU"
            " loads states of its own or an older version only)"
        )
    target.instance_paths(name)  # LayoutError before anything else, as start would
    pinned = runtime
    machine = machine_of(runtime)
    if caps.version[:2] != recorded_version[:2] and recorded_machine:
        if concrete_machine(machine, caps) != recorded_machine:
            pinned = pin_machine(runtime, recorded_machine)
        machine = recorded_machine
    effective = concrete_machine(machine, caps)
    if caps.machines and effective not in caps.machines:
        raise SnapshotRefusedError(
            f"cannot load the state of {name}: QEMU {caps.version_string} has no machine"
            f" type {effective!r}"
        )
    return moved(pinned, source=source, target=target, binary=binary)
