"""The pure half of a migration: the source's saved runtime, as the target must run it.

Ganeti migrates by sending the *saved runtime* to the target node, which starts it
with ``-incoming``. On one machine the two "nodes" are two state directories, so the
runtime cannot be replayed as it is: its pidfile, sockets and logs name the source's
directory. :func:`target_runtime` makes the target's copy:

- every path under the source state directory becomes the same relative path under
  the target's (a word-boundary match: ``/tmp/kl-a`` does not rebase ``/tmp/kl-ab``);
- ``argv[0]`` becomes the target lab's binary;
- a machine *alias* (``pc``, ``q35``, or no machine at all) is pinned to the concrete
  type the source runs (``pc-q35-7.2``) when the two QEMUs differ in version, because
  the alias means another machine on the newer QEMU and the transfer would fail
  (``hvparams.machine_version`` is pinned with it, so a later soft reboot on the
  target boots the same machine);
- nothing else changes: NICs stay data (expanded by the target's executor at start),
  ``-incoming`` is a start-time argument (:mod:`kvmlab.runtime.plan`), never saved.

Refusals (:class:`~kvmlab.errors.MigrationRefusedError`, exit 2) come from here too,
before any state directory is touched: a target QEMU older than the source's, or one
without the machine type. Everything here is pure (no files, no processes).
"""

from __future__ import annotations

import re
from pathlib import Path

from kvmlab.errors import MigrationRefusedError
from kvmlab.runtime.saved import KVMRuntime
from kvmlab.spec.capabilities import QemuCapabilities
from kvmlab.spec.layout import StateLayout

__all__ = [
    "MACHINE_ALIASES",
    "concrete_machine",
    "machine_of",
    "moved",
    "pin_machine",
    "rebase_paths",
    "target_runtime",
]

#: The aliases QEMU resolves to its own newest versioned type (``q35`` -> ``pc-q35-10.0``).
MACHINE_ALIASES = {"pc": "pc-i440fx", "q35": "pc-q35"}
_MACHINE_OPTIONS = ("-machine", "-M")


def _version(caps: QemuCapabilities) -> str:
    return f"{caps.version[0]}.{caps.version[1]}"


def machine_of(runtime: KVMRuntime) -> str:
    """The machine type the saved argv asks for (``""``: none, QEMU's default)."""
    argv = runtime.argv
    for index, word in enumerate(argv[:-1]):
        if word in _MACHINE_OPTIONS:
            head = argv[index + 1].split(",", 1)[0]
            return "" if "=" in head else head
    return ""


def concrete_machine(machine: str, caps: QemuCapabilities) -> str:
    """The versioned type ``machine`` means on the QEMU of ``caps`` (itself when concrete)."""
    if machine in MACHINE_ALIASES:
        return f"{MACHINE_ALIASES[machine]}-{_version(caps)}"
    if not machine:
        return caps.default_machine or f"pc-i440fx-{_version(caps)}"
    return machine


def pin_machine(runtime: KVMRuntime, machine: str) -> KVMRuntime:
    """``runtime`` with its machine alias replaced by ``machine`` (argv and hvparams).

    A runtime without ``-machine`` gets none added: that only happens for QEMUs
    without ``-machine`` (Ganeti's oldest), which kvmlab cannot migrate anyway.
    """
    argv = list(runtime.argv)
    for index, word in enumerate(argv[:-1]):
        if word in _MACHINE_OPTIONS:
            value = argv[index + 1]
            head, sep, rest = value.partition(",")
            if "=" in head:  # "-machine accel=tcg": the type was left to QEMU
                argv[index + 1] = f"{machine},{value}"
            else:
                argv[index + 1] = machine + sep + rest
            break
    hvparams = runtime.hvparams.model_copy(update={"machine_version": machine})
    # A copy, so every other field (NIC and disk slots...) travels as it is.
    return runtime.model_copy(update={"argv": tuple(argv), "hvparams": hvparams})


def rebase_paths(word: str, source: Path, target: Path) -> str:
    """``word`` with each path under ``source`` moved under ``target``.

    A path starts the word or follows ``=``, ``:`` or ``,`` (QEMU's option syntax:
    ``unix:/x/ctrl/vm1.qmp,server=on``, ``logfile=/x/log/vm1.serial.log``).
    """
    pattern = re.compile(r"(?<![^=:,])" + re.escape(str(source)) + r"(?=/|$|,)")
    return pattern.sub(lambda _match: str(target), word)


def moved(
    runtime: KVMRuntime, *, source: StateLayout, target: StateLayout, binary: str
) -> KVMRuntime:
    """``runtime`` run by ``binary`` from the ``target`` lab: every path under ``source``
    moved under ``target``, nothing else changed (a migration's and a state load's last step)."""
    argv = (binary, *(rebase_paths(word, source.root, target.root) for word in runtime.argv[1:]))
    return runtime.model_copy(update={"argv": argv})


def target_runtime(
    runtime: KVMRuntime,
    *,
    source: StateLayout,
    target: StateLayout,
    source_caps: QemuCapabilities,
    target_caps: QemuCapabilities,
    binary: str,
) -> KVMRuntime:
    """The runtime the target lab starts with ``-incoming``, and saves once it has the VM.

    :raise MigrationRefusedError: the target QEMU is older, or lacks the machine type.
    :raise LayoutError: a target socket path would be too long.
    """
    name = runtime.name
    if target_caps.version[:2] < source_caps.version[:2]:
        raise MigrationRefusedError(
            f"cannot migrate {name} from QEMU {source_caps.version_string} to the older QEMU"
            f" {target_caps.version_string}: QEMU migrates to the same or a newer version only"
        )
    target.instance_paths(name)  # LayoutError before anything else, as start would
    target.migration_socket(name)
    machine = machine_of(runtime)
    pinned = runtime
    if target_caps.version[:2] != source_caps.version[:2]:
        concrete = concrete_machine(machine, source_caps)
        if concrete != machine:
            pinned = pin_machine(runtime, concrete)
        machine = concrete
    effective = concrete_machine(machine, target_caps)
    if target_caps.machines and effective not in target_caps.machines:
        raise MigrationRefusedError(
            f"cannot migrate {name}: the target QEMU {target_caps.version_string} has no"
            f" machine type {effective!r}"
        )
    return moved(pinned, source=source, target=target, binary=binary)
