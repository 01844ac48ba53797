"""The QMP commands the fake answers: one handler and one table row each.

:class:`~kvmlab.fake.monitor.qmp.QmpMonitor` checks a request's arguments against a
row's ``allowed`` and ``required`` names, calls its ``run`` for the ``return``
value and, once the reply is sent, its ``after`` (for work that ends or resets
the machine, which QEMU also does after replying). Commands for hotplug or
migration are new rows here, whatever module their handlers live in.
"""

from __future__ import annotations

import os

from kvmlab.fake.errors import QmpCommandError
from kvmlab.fake.monitor.hmp import cont_refusal, run_command

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Container
    from types import ModuleType
    from typing import Any

    from kvmlab.fake.machine_view import MachineView
    from kvmlab.fake.profiles import Profile

__all__ = ["COMMANDS", "QmpCommand", "version_info"]


class QmpCommand:
    """One row of the command table.

    :param run: ``run(machine, arguments)``: the reply's ``return`` value.
    :param allowed: argument names the command takes.
    :param required: argument names it cannot do without.
    :param after: ``after(machine)``, called once the reply has been sent.
    :param types: argument name -> the JSON type QEMU's schema gives it (``string``,
        ``boolean``), checked as QEMU's input visitor does before the command runs.
    """

    __slots__ = ("after", "allowed", "required", "run", "types")

    def __init__(
        self,
        run: Callable[[MachineView, dict[str, object]], object],
        allowed: Container[str] = frozenset(),
        required: tuple[str, ...] = (),
        after: Callable[[MachineView], None] | None = None,
        types: dict[str, str] | None = None,
    ) -> None:
        self.run = run
        self.allowed = allowed
        self.required = required
        self.after = after
        self.types = types or {}


def version_info(profile: Profile) -> dict[str, object]:
    """``query-version``'s answer (and the greeting's ``version``) for a profile."""
    major, minor, micro = profile.version
    qemu = {"major": major, "minor": minor, "micro": micro}
    return {"qemu": qemu, "package": "kvmlab-fake"}


def _empty(m: MachineView, arguments: dict[str, object]) -> object:
    return {}


def _query_status(m: MachineView, arguments: dict[str, object]) -> object:
    status: dict[str, object] = {"status": m.status}
    if m.profile.version < (9, 0, 0):
        status["singlestep"] = False
    status["running"] = m.status == "running"
    return status


def _query_version(m: MachineView, arguments: dict[str, object]) -> object:
    return version_info(m.profile)


def _query_name(m: MachineView, arguments: dict[str, object]) -> object:
    return {"name": m.cfg.name} if m.cfg.name is not None else {}


def _query_kvm(m: MachineView, arguments: dict[str, object]) -> object:
    return {"enabled": m.cfg.accel == "kvm", "present": True}


def _query_cpus_fast(m: MachineView, arguments: dict[str, object]) -> object:
    # Every vCPU reports the process's own pid: a fake thread id could name
    # another process, and a test pinning vCPUs would then pin that.
    pid = os.getpid()
    return [
        {
            "thread-id": pid,
            "props": {"core-id": index, "thread-id": 0, "socket-id": 0},
            "qom-path": f"/machine/unattached/device[{index}]",
            "cpu-index": index,
            "target": "x86_64",
        }
        for index in range(m.cfg.cpus)
    ]


def _query_memory_size_summary(m: MachineView, arguments: dict[str, object]) -> object:
    return {"base-memory": m.cfg.memory, "plugged-memory": 0}


def _query_commands(m: MachineView, arguments: dict[str, object]) -> object:
    return [{"name": name} for name in sorted(COMMANDS)]


def _cont(m: MachineView, arguments: dict[str, object]) -> object:
    refusal = cont_refusal(m)
    if refusal is not None:
        raise QmpCommandError(refusal)
    return {}


def _stop(m: MachineView, arguments: dict[str, object]) -> object:
    m.stop()
    return {}


def _system_powerdown(m: MachineView, arguments: dict[str, object]) -> object:
    m.powerdown()
    return {}


def _quit(m: MachineView, arguments: dict[str, object]) -> object:
    # QEMU 7.2 sends SHUTDOWN before quit's reply, then exits.
    m.event("SHUTDOWN", {"guest": False, "reason": "host-qmp-quit"})
    return {}


def _human_monitor_command(m: MachineView, arguments: dict[str, object]) -> object:
    return run_command(m, str(arguments["command-line"]))


# Hotplug and migration handlers live in modules most VMs never load: each row below
# imports its module on first use, so the fake starts without them.


def _hotplug() -> ModuleType:
    from kvmlab.fake.hotplug import devices  # noqa: PLC0415 - only when a VM is hotplugged

    return devices


def _hotplug_disk() -> ModuleType:
    from kvmlab.fake.hotplug import disk  # noqa: PLC0415 - only when a disk is hotplugged

    return disk


def _fds() -> ModuleType:
    from kvmlab.fake.hotplug import fds  # noqa: PLC0415 - only when a descriptor is passed

    return fds


def _migration() -> ModuleType:
    from kvmlab.fake.migration import outgoing  # noqa: PLC0415 - only when a VM is migrated

    return outgoing


def _to_file() -> ModuleType:
    from kvmlab.fake.migration import fdout  # noqa: PLC0415 - only when a state is written

    return fdout


def _to_file_uri(m: MachineView, uri: object) -> bool:
    """A descriptor (``fd:NAME``) or, on QEMU 10.0, a file (``file:PATH``): a state."""
    if not isinstance(uri, str):
        return False
    return uri.startswith("fd:") or (uri.startswith("file:") and m.profile.version >= (9, 0, 0))


def _migrate(m: MachineView, arguments: dict[str, object]) -> object:
    """``migrate``: into a descriptor or file, else to a target."""
    uri = arguments.get("uri")
    if isinstance(uri, str) and _to_file_uri(m, uri):
        return _to_file().migrate_to_file(m, uri, lambda: _fds().open_uri(m, uri, True))
    return _migration().migrate(m, arguments)


def _migrate_incoming(m: MachineView, arguments: dict[str, object]) -> object:
    """``migrate-incoming``: from a descriptor or file (taken here), else from a socket."""
    uri = arguments.get("uri")
    if isinstance(uri, str) and _to_file_uri(m, uri):
        return _incoming().migrate_incoming(m, arguments, lambda: _fds().open_uri(m, uri, False))
    return _incoming().migrate_incoming(m, arguments)


def _incoming() -> ModuleType:
    from kvmlab.fake.migration import incoming  # noqa: PLC0415

    return incoming


def _migration_params() -> ModuleType:
    from kvmlab.fake.migration import params  # noqa: PLC0415

    return params


def _lazy(load: Callable[[], ModuleType], name: str) -> Callable[..., Any]:
    """The handler ``name`` of the module ``load`` imports, imported when first called."""

    def run(*args: Any) -> Any:
        return getattr(load(), name)(*args)

    return run


class _AnyName:
    """``allowed`` for a command whose handler checks its own argument names."""

    def __contains__(self, name: object) -> bool:
        return True


def _resume(m: MachineView) -> None:
    m.resume()
    if m.pending_unplug:  # the guest runs again and ejects what device_del asked for
        _hotplug().device_deleted(m)


#: What sits on the root bus before any ``-device``: (slot, function, class, vendor, device).
_BUILTIN_PCI = {
    "pc": (
        (0, 0, 0x0600, 0x8086, 0x1237),
        (1, 0, 0x0601, 0x8086, 0x7000),
        (1, 1, 0x0101, 0x8086, 0x7010),
        (1, 3, 0x0680, 0x8086, 0x7113),
    ),
    "q35": (
        (0, 0, 0x0600, 0x8086, 0x29C0),
        (31, 0, 0x0601, 0x8086, 0x2918),
        (31, 2, 0x0106, 0x8086, 0x2922),
        (31, 3, 0x0C05, 0x8086, 0x2930),
    ),
}
#: The fake's PCI devices: (class, vendor, device) of each model.
_PCI_IDS = {
    "virtio-net-pci": (0x0200, 0x1AF4, 0x1000),
    "e1000": (0x0200, 0x8086, 0x100E),
    "rtl8139": (0x0200, 0x10EC, 0x8139),
    "virtio-blk-pci": (0x0100, 0x1AF4, 0x1001),
}


def _query_pci(m: MachineView, arguments: dict[str, object]) -> object:
    """``query-pci``: the root bus, with each NIC and virtio disk at its slot (by ``qdev_id``).

    The built-in functions are the chipset's; only the ids and slots are what kvmlab reads.
    """
    machine = "q35" if "q35" in m.profile.machine_alias(m.cfg.machine or "") else "pc"
    rows = [(*row, "") for row in _BUILTIN_PCI[machine]]
    for device in _hotplug().placed_devices(m):
        klass, vendor, ident = _PCI_IDS.get(device.model, (0x0200, 0x1AF4, 0x1000))
        rows.append((device.slot or 0, 0, klass, vendor, ident, device.ident or ""))
    devices = [
        {
            "bus": 0,
            "slot": slot,
            "function": function,
            "class_info": {"class": klass},
            "id": {"vendor": vendor, "device": ident},
            "regions": [],
            "qdev_id": qdev_id,
        }
        for slot, function, klass, vendor, ident, qdev_id in sorted(rows)
    ]
    return [{"bus": 0, "devices": devices}]


def _reset(m: MachineView) -> None:
    m.reset()


def _exit(m: MachineView) -> None:
    m.quit()


COMMANDS: dict[str, QmpCommand] = {
    "qmp_capabilities": QmpCommand(_empty, frozenset({"enable"})),
    "query-status": QmpCommand(_query_status),
    "query-version": QmpCommand(_query_version),
    "query-name": QmpCommand(_query_name),
    "query-kvm": QmpCommand(_query_kvm),
    "query-cpus-fast": QmpCommand(_query_cpus_fast),
    "query-memory-size-summary": QmpCommand(_query_memory_size_summary),
    "query-commands": QmpCommand(_query_commands),
    "query-pci": QmpCommand(_query_pci),
    "stop": QmpCommand(_stop),
    "cont": QmpCommand(_cont, after=_resume),
    "system_powerdown": QmpCommand(_system_powerdown),
    "system_reset": QmpCommand(_empty, after=_reset),
    "quit": QmpCommand(_quit, after=_exit),
    "netdev_add": QmpCommand(
        _lazy(_hotplug, "netdev_add"),
        frozenset({"type", "id", "hostfwd", "net", "ipv6", "fd", "vhost"}),
        ("type", "id"),
        types={"type": "string", "id": "string", "fd": "string"},
    ),
    "getfd": QmpCommand(
        _lazy(_fds, "getfd"), frozenset({"fdname"}), ("fdname",), types={"fdname": "string"}
    ),
    "closefd": QmpCommand(
        _lazy(_fds, "closefd"), frozenset({"fdname"}), ("fdname",), types={"fdname": "string"}
    ),
    "netdev_del": QmpCommand(
        _lazy(_hotplug, "netdev_del"), frozenset({"id"}), ("id",), types={"id": "string"}
    ),
    "device_add": QmpCommand(
        _lazy(_hotplug, "device_add"),
        frozenset({"driver", "id", "bus", "addr", "netdev", "mac", "romfile", "drive"})
        | frozenset({"write-cache"}),
        ("driver",),
    ),
    "device_del": QmpCommand(
        _lazy(_hotplug, "device_del"),
        frozenset({"id"}),
        ("id",),
        after=_lazy(_hotplug, "device_deleted"),
        types={"id": "string"},
    ),
    "blockdev-add": QmpCommand(
        _lazy(_hotplug_disk, "blockdev_add"),
        frozenset({"driver", "node-name", "file", "read-only", "cache", "discard"})
        | frozenset({"auto-read-only", "detect-zeroes", "force-share"}),
        ("driver",),
        types={"driver": "string", "node-name": "string", "file": "object", "read-only": "boolean"},
    ),
    "blockdev-del": QmpCommand(
        _lazy(_hotplug_disk, "blockdev_del"),
        frozenset({"node-name"}),
        ("node-name",),
        types={"node-name": "string"},
    ),
    "query-named-block-nodes": QmpCommand(
        _lazy(_hotplug_disk, "query_named_block_nodes"), frozenset({"flat"})
    ),
    "migrate": QmpCommand(
        _migrate,
        frozenset({"uri", "blk", "inc", "detach", "resume", "channels"}),
        ("uri",),
    ),
    "migrate_cancel": QmpCommand(_lazy(_migration, "migrate_cancel")),
    "query-migrate": QmpCommand(_lazy(_migration, "query_migrate")),
    "migrate-incoming": QmpCommand(
        _migrate_incoming,
        frozenset({"uri", "channels", "exit-on-error"}),
        ("uri",),
    ),
    "migrate-set-capabilities": QmpCommand(
        _lazy(_migration_params, "set_capabilities"),
        frozenset({"capabilities"}),
        ("capabilities",),
    ),
    "query-migrate-capabilities": QmpCommand(_lazy(_migration_params, "query_capabilities")),
    "migrate-set-parameters": QmpCommand(_lazy(_migration_params, "set_parameters"), _AnyName()),
    "query-migrate-parameters": QmpCommand(_lazy(_migration_params, "query_parameters")),
    "human-monitor-command": QmpCommand(
        _human_monitor_command, frozenset({"command-line", "cpu-index"}), ("command-line",)
    ),
}
