"""The pure half of execution: a saved runtime plus start-time facts become a command.

What only exists at start time is decided by the executor and handed in as
:class:`StartFacts`: how each NIC reaches the host (:class:`NicPlan`: user
networking, a tap with an up-script at a temp path the executor chose, or a tap
file descriptor it opened), and the QMP socket. :func:`plan_execution` turns the
runtime and those facts into an :class:`ExecutionPlan`: the final argv and the
temp files to write first. It touches nothing, and the runtime is frozen, so the
saved argv stays clean whatever happens (invariant 6); the final argv is the saved
argv followed by the start-time arguments only (invariant 7).

The up-script is Ganeti's idea (a shell script QEMU runs with the tap name); here
every value in it is validated by the models and still shell-quoted.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from kvmlab.errors import InvalidInputError
from kvmlab.runtime.ports import device_placement, has_root_ports
from kvmlab.runtime.saved import KVMRuntime
from kvmlab.spec.capabilities import QemuCapabilities
from kvmlab.spec.instance import Nic, NicMode

__all__ = [
    "ExecutionPlan",
    "NicPlan",
    "NicPlanKind",
    "StartFacts",
    "TempFile",
    "nic_device_args",
    "nic_device_model",
    "nic_ids",
    "plan_execution",
    "tap_up_script",
]

#: Device names for Ganeti's ``nic_type`` values (``-device`` and legacy ``-net nic,model=``).
_DEVICE_MODEL = {"paravirtual": "virtio-net-pci"}
_LEGACY_MODEL = {"paravirtual": "virtio"}
_SCRIPT_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


class NicPlanKind(StrEnum):
    """How one NIC is connected when QEMU starts."""

    #: QEMU's user networking: no privileges, no tap.
    USER = "user"
    #: QEMU creates a tap and runs an up-script (needs root).
    SCRIPT = "script"
    #: The executor opened the tap and passes its descriptor.
    FD = "fd"

    @property
    def writes_script(self) -> bool:
        return self is NicPlanKind.SCRIPT


@dataclass(frozen=True, slots=True)
class NicPlan:
    """The start-time decision for one NIC.

    :ivar script_path: where the up-script will be written (``SCRIPT``).
    :ivar fd: the open tap descriptor (``FD``).
    """

    kind: NicPlanKind
    script_path: str | None = None
    fd: int | None = None

    def __post_init__(self) -> None:
        if self.kind is NicPlanKind.SCRIPT and not self.script_path:
            raise InvalidInputError("a script NIC plan needs a script_path")
        if self.kind is NicPlanKind.FD and (self.fd is None or self.fd < 0):
            raise InvalidInputError(f"an fd NIC plan needs a descriptor, got {self.fd!r}")
        if self.script_path and any(char in self.script_path for char in ",\n\x00"):
            raise InvalidInputError(f"script path {self.script_path!r} has a comma or newline")


@dataclass(frozen=True, slots=True)
class StartFacts:
    """Everything that exists only when the instance starts."""

    nic_plans: tuple[NicPlan, ...] = ()
    qmp_socket: str | None = None
    #: Directory whose ``<seq>`` files receive each tap's name (``nic/<name>``).
    nic_dir: str | None = None
    caps: QemuCapabilities = field(default_factory=QemuCapabilities.default)
    #: ``-incoming URI`` for the target of a migration (``unix:PATH``, ``tcp:127.0.0.1:PORT``),
    #: or ``defer`` to load a saved machine state (``migrate-incoming`` follows): a start-time
    #: argument, never in the saved argv (docs/migration.md, docs/snapshots.md).
    incoming: str | None = None

    def __post_init__(self) -> None:
        if self.incoming is not None and (
            not (self.incoming == "defer" or self.incoming.startswith(("unix:/", "tcp:")))
            or any(char in self.incoming for char in ",\n\x00")
        ):
            raise InvalidInputError(f"incoming migration URI {self.incoming!r} is not usable")


@dataclass(frozen=True, slots=True)
class TempFile:
    """A file the executor writes before running, and removes afterwards."""

    path: str
    content: str
    mode: int = 0o700


@dataclass(frozen=True, slots=True)
class ExecutionPlan:
    """The command to run and the temp files it needs."""

    argv: tuple[str, ...]
    start_args: tuple[str, ...]
    temp_files: tuple[TempFile, ...]


def nic_device_model(nic_type: str, caps: QemuCapabilities) -> str:
    """``virtio-net-pci`` for ``-device``, ``virtio`` for the legacy ``-net nic``."""
    table = _DEVICE_MODEL if caps.has_netdev and caps.has_device else _LEGACY_MODEL
    return table.get(nic_type, nic_type)


def nic_ids(slot: int) -> tuple[str, str]:
    """The ``-netdev`` and ``-device`` ids of the NIC in PCI slot ``slot``.

    Named after the slot, not the NIC's position, so the ids stay the same when a
    NIC before it is detached (hotplug finds a NIC's device by them).
    """
    return f"net-s{slot:02x}", f"nic-s{slot:02x}"


def nic_device_args(model: str, mac: str, slot: int, *, root_ports: bool = False) -> dict[str, str]:
    """The properties of a NIC's ``-device`` (and of its QMP ``device_add``), in order.

    :param root_ports: the VM has PCIe root ports (q35): the NIC goes behind its
        slot's port (``bus=port-sSS,addr=0x0``), not at ``addr=0xSS`` on the root bus.
    """
    netdev, device = nic_ids(slot)
    props = {"driver": model, "netdev": netdev, "mac": mac, "id": device}
    if model != "ne2k_isa":  # the one ISA card: no PCI address
        props.update(device_placement(slot, root_ports))
    return props


def tap_up_script(
    instance: str, seq: int, nic: Nic, nic_dir: str | None, record: str | None = None
) -> str:
    """The script QEMU runs with the new tap's name as ``$1``.

    It brings the tap up, attaches it to the bridge (bridged) and records the tap
    name in ``nic_dir/<seq>`` (or ``nic_dir/<record>``) so that stop can find it.
    A hotplug runs the same script itself on the tap it opened (:mod:`kvmlab.host.tap`).
    """
    q = shlex.quote
    lines = [
        "#!/bin/sh",
        "# Written by kvmlab for one start of a QEMU; removed once it has started.",
        "set -eu",
        "umask 077",
        f"PATH={_SCRIPT_PATH}",
        'INTERFACE="$1"',
        f"INSTANCE={q(instance)}",
        f"MAC={q(nic.mac)}",
        f"MODE={q(str(nic.mode))}",
        f"LINK={q(nic.link)}",
        "export PATH INTERFACE INSTANCE MAC MODE LINK",
        'ip link set dev "$INTERFACE" up',
    ]
    if nic.mode is NicMode.BRIDGED:
        lines.append('ip link set dev "$INTERFACE" master "$LINK"')
    if nic_dir:
        path = Path(nic_dir) / (record if record is not None else str(seq))
        lines.append(f"printf '%s\\n' \"$INTERFACE\" > {q(str(path))}")
    return "\n".join(lines) + "\n"


def _nic_args(runtime: KVMRuntime, plans: Sequence[NicPlan], caps: QemuCapabilities) -> list[str]:
    if not runtime.nics:
        return ["-net", "none"]
    hv = runtime.hvparams
    model = nic_device_model(hv.nic_type, caps)
    modern = caps.has_netdev and caps.has_device
    root_ports = modern and has_root_ports(runtime.argv)
    args: list[str] = []
    for seq, (nic, plan, slot) in enumerate(
        zip(runtime.nics, plans, runtime.nic_slots, strict=True)
    ):
        if nic.mode is NicMode.USER and plan.kind is not NicPlanKind.USER:
            raise InvalidInputError(f"NIC {seq} is in user mode but planned as {plan.kind}")
        if nic.mode.needs_tap and plan.kind is NicPlanKind.USER:
            raise InvalidInputError(f"NIC {seq} is {nic.mode} and needs a tap, not user networking")
        if plan.kind is NicPlanKind.USER:
            backend = "user"
        elif plan.kind is NicPlanKind.SCRIPT:
            backend = f"tap,script={plan.script_path},downscript=no"
        else:
            backend = f"tap,fd={plan.fd}"
        # No vnet_hdr= with fd=: QEMU refuses it ("... are invalid with fd="); the
        # header is the descriptor's own flag (IFF_VNET_HDR, kvmlab.host.tap) instead.
        if plan.kind is not NicPlanKind.USER and hv.vhost_net and caps.has_vhost:
            backend += ",vhost=on"
        if modern:
            kind, _, options = backend.partition(",")
            props = nic_device_args(model, nic.mac, slot, root_ports=root_ports)
            netdev = f"{kind},id={props['netdev']}" + (f",{options}" if options else "")
            device = ",".join(
                [props["driver"]]
                + [f"{key}={value}" for key, value in props.items() if key != "driver"]
            )
            args += ["-netdev", netdev, "-device", device]
        else:
            kind, _, options = backend.partition(",")
            args += ["-net", f"nic,vlan={seq},macaddr={nic.mac},model={model}"]
            args += ["-net", f"{kind},vlan={seq}" + (f",{options}" if options else "")]
    return args


def plan_execution(runtime: KVMRuntime, facts: StartFacts) -> ExecutionPlan:
    """Complete a copy of the saved argv with the start-time arguments.

    :param runtime: the saved runtime; never modified (it is frozen).
    :param facts: one :class:`NicPlan` per NIC in order, the QMP socket, the capabilities.
    :return: the argv to run, the start-time part alone, and the temp files to write.
    :raise InvalidInputError: the plans do not match the NICs.
    """
    if len(facts.nic_plans) != len(runtime.nics):
        raise InvalidInputError(f"{len(runtime.nics)} NICs but {len(facts.nic_plans)} NIC plans")
    caps = facts.caps
    start = _nic_args(runtime, facts.nic_plans, caps)
    if facts.qmp_socket and caps.has_qmp:
        switches = "server=on,wait=off" if caps.uses_long_booleans else "server,nowait"
        start += ["-qmp", f"unix:{facts.qmp_socket},{switches}"]
    if facts.incoming is not None:
        start += ["-incoming", facts.incoming]
    temp_files = tuple(
        TempFile(plan.script_path, tap_up_script(runtime.name, seq, nic, facts.nic_dir))
        for seq, (nic, plan) in enumerate(zip(runtime.nics, facts.nic_plans, strict=True))
        if plan.kind.writes_script and plan.script_path
    )
    start_args = tuple(start)
    return ExecutionPlan(
        argv=runtime.argv + start_args, start_args=start_args, temp_files=temp_files
    )
