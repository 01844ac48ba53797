"""NIC hotplug kept by the saved runtime: QMP change, then the runtime rewrite.

A NIC attached to or detached from a running VM must also be in the saved
runtime, or the next soft reboot silently undoes it. :func:`attach_nic` and
:func:`detach_nic` run on a running VM under the instance lock (the caller's guard,
:meth:`Hypervisor._hotplug_guard <kvmlab.lifecycle.hypervisor.Hypervisor._hotplug_guard>`,
takes the lock and refuses a stopped VM with :func:`check_running`) and:

1. refuse, with :class:`~kvmlab.errors.HotplugRefusedError` (exit 2) and nothing
   changed, a duplicate MAC or a MAC not attached, a q35 machine without PCIe root
   ports (a runtime of an older kvmlab), a QEMU without the commands, a tap NIC
   (bridged, routed) when not root;
2. write an *intent* file (``conf/<name>.hotplug``, a
   :class:`~kvmlab.lifecycle.hotplug.intent.HotplugIntent`) naming the change;
3. ``netdev_add`` + ``device_add`` (or ``device_del``, wait for ``DEVICE_DELETED``,
   ``netdev_del``); a failed ``device_add`` is undone (``netdev_del``) and leaves
   the runtime untouched. A tap NIC's tap is opened and configured by kvmlab first
   (:mod:`kvmlab.host.tap`: the start's up-script), passed with ``getfd`` and named in
   ``netdev_add type=tap,fd=NAME``; a failure deletes it again (``closefd`` too);
   a detach deletes it and its record;
4. rewrite the runtime atomically with the new NIC list and slots;
5. remove the intent file.

A crash between 3 and 5 leaves the intent file: ``info`` reports it
(``hotplug_pending``), as the running VM and its saved runtime may now differ.
Disks take the same steps in :mod:`kvmlab.lifecycle.hotplug.disk`, with the checks here.
Design and measurements: docs/hotplug.md.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

from kvmlab.errors import HotplugNotRunningError, HotplugRefusedError, QmpError, TapError
from kvmlab.host.inventory import running_pid
from kvmlab.host.store import save_runtime
from kvmlab.host.tap import configure_tap, delete_tap, open_tap, tap_record
from kvmlab.lifecycle.hotplug.intent import HotplugIntent, HotplugOp
from kvmlab.runtime.plan import nic_device_args, nic_device_model, nic_ids
from kvmlab.runtime.ports import has_root_ports
from kvmlab.runtime.saved import KVMRuntime, free_nic_slot
from kvmlab.spec.capabilities import QemuCapabilities
from kvmlab.spec.instance import Nic
from kvmlab.spec.layout import StateLayout
from kvmlab.states import InstanceState

__all__ = [
    "NIC_COMMANDS",
    "TAP_COMMANDS",
    "attach_nic",
    "check_commands",
    "check_machine",
    "check_running",
    "detach_nic",
    "session",
]

log = logging.getLogger("kvmlab")

#: QMP commands NIC hotplug needs (QEMU 7.2 and 10.0 both have them).
NIC_COMMANDS = ("netdev_add", "netdev_del", "device_add", "device_del")
#: And for a tap NIC, whose descriptor kvmlab passes (7.2 and 10.0 have them too).
TAP_COMMANDS = ("getfd", "closefd")
#: Seconds the guest gets to eject a card after ``device_del`` (ACPI PCI hotplug).
UNPLUG_TIMEOUT = 30.0
QMP_TIMEOUT = 10.0


def check_running(layout: StateLayout, name: str, what: str) -> None:
    """Refuse a hotplug of a VM that is not running: the state check of the hotplug guard.

    :param what: the change, for the message (``"attach a NIC"``).
    :raise HotplugNotRunningError: (exit 2) it has no live process.
    """
    if running_pid(layout, name) is None:
        raise HotplugNotRunningError(
            f"cannot {what} on {name}: it is not running (change its instance file and"
            " start it instead)",
            name=name,
            state=InstanceState.STOPPED,
        )


def check_machine(runtime: KVMRuntime) -> None:
    """Refuse a machine the guest cannot hotplug PCI devices on: no ACPI, or q35
    without kvmlab's PCIe root ports (:mod:`kvmlab.runtime.ports`)."""
    if not runtime.hvparams.acpi:
        raise HotplugRefusedError(
            f"{runtime.name} runs without acpi: the guest learns of PCI hotplug through ACPI"
        )
    machine = runtime.hvparams.machine_version
    if "q35" in machine and not has_root_ports(runtime.argv):
        raise HotplugRefusedError(
            f"{runtime.name} uses machine {machine!r} without PCIe root ports (its runtime"
            " was saved by an older kvmlab): q35's root bus pcie.0 has no hotplug; restart"
            " it (stop, start) to get the root ports"
        )


def _check_device(runtime: KVMRuntime, caps: QemuCapabilities) -> None:
    if not (caps.has_device and caps.has_netdev and caps.has_qmp):
        raise HotplugRefusedError(
            f"{runtime.binary} (QEMU {'.'.join(map(str, caps.version))}) has no"
            " -device/-netdev/QMP: NIC hotplug needs them"
        )


def session(layout: StateLayout, name: str) -> Any:
    """A QMP session to ``name`` (``kvmlab.channels.qmp`` is imported on first use: 50 ms)."""
    from kvmlab.channels.qmp import QmpSession  # noqa: PLC0415 - 50 ms import

    return QmpSession(layout.qmp_socket(name), timeout=QMP_TIMEOUT)


def check_commands(
    qmp: Any, name: str, commands: tuple[str, ...] | None = None, what: str = "NIC hotplug"
) -> None:
    """Refuse a QEMU whose ``query-commands`` lacks one of ``commands``, naming its version.

    ``commands`` defaults to :data:`NIC_COMMANDS` (read at call time).
    """
    needed = NIC_COMMANDS if commands is None else commands
    available = {entry["name"] for entry in qmp.execute("query-commands")}
    missing = [command for command in needed if command not in available]
    if missing:
        version = qmp.execute("query-version")["qemu"]
        numbers = f"{version['major']}.{version['minor']}.{version['micro']}"
        raise HotplugRefusedError(
            f"QEMU {numbers} of {name} has no {', '.join(missing)}: {what} needs"
            f" {', '.join(needed)}"
        )


def _with_nics(runtime: KVMRuntime, nics: tuple[Nic, ...], slots: tuple[int, ...]) -> KVMRuntime:
    # A copy: every field not named here (disks, their slots...) stays as it is.
    return runtime.model_copy(update={"nics": nics, "nic_slots": slots})


def _plug_tap(
    qmp: Any,
    layout: StateLayout,
    runtime: KVMRuntime,
    nic: Nic,
    slot: int,
    *,
    caps: QemuCapabilities,
) -> str:
    """Open and configure the tap of ``nic``, hand it to QEMU as netdev ``net-sSS``; its name.

    On any failure nothing is left: the netdev is not there, the descriptor name is
    closed, the tap and its record are deleted.
    """
    hv = runtime.hvparams
    netdev_id, _ = nic_ids(slot)
    nic_dir = layout.nic_dir(runtime.name)
    nic_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    record = nic_dir / tap_record(slot)
    # As a start: vnet_hdr for a virtio NIC (QEMU probes the flag on the descriptor).
    fd, tap = open_tap(vnet_hdr=hv.vnet_hdr and hv.nic_type == "paravirtual")
    fdname = f"tap-{netdev_id}"
    try:
        configure_tap(runtime.name, nic, nic_dir, record.name, tap)
        backend: dict[str, object] = {"type": "tap", "id": netdev_id, "fd": fdname}
        if hv.vhost_net and caps.has_vhost:
            backend["vhost"] = True
        qmp.send_fd(fd)
        qmp.execute("getfd", {"fdname": fdname})
        try:
            qmp.execute("netdev_add", backend)
        except QmpError:
            # QEMU took the name out of its table if it got that far: a closefd may fail.
            with contextlib.suppress(QmpError):
                qmp.execute("closefd", {"fdname": fdname})
            raise
    except (QmpError, TapError):
        delete_tap(tap, record)
        raise
    finally:
        os.close(fd)  # QEMU has its own copy now (or none)
    return tap


def attach_nic(
    layout: StateLayout, runtime: KVMRuntime, nic: Nic, caps: QemuCapabilities
) -> KVMRuntime:
    """Plug ``nic`` into the running VM and save the runtime with it; the caller holds the
    lock and has checked that the VM runs.

    :return: the runtime saved.
    :raise HotplugRefusedError: refused, nothing changed.
    :raise QmpError: QEMU refused the device (its netdev is removed again); the
        runtime is untouched.
    """
    name = runtime.name
    check_machine(runtime)
    if any(existing.mac == nic.mac for existing in runtime.nics):
        raise HotplugRefusedError(f"{name} already has a NIC with MAC {nic.mac}")
    if nic.mode.needs_tap and os.geteuid() != 0:
        raise HotplugRefusedError(
            f"hotplug of a {nic.mode} NIC needs root: kvmlab opens its tap device"
            " (/dev/net/tun) and passes it to QEMU with getfd; run as root, or attach a"
            " user-mode NIC"
        )
    _check_device(runtime, caps)
    slot = free_nic_slot(runtime.nic_slots)
    if slot is None:
        raise HotplugRefusedError(f"{name} has no free NIC slot (all 16 are used)")

    with session(layout, name) as qmp:
        check_commands(qmp, name, (*NIC_COMMANDS, *TAP_COMMANDS) if nic.mode.needs_tap else None)
        model = nic_device_model(runtime.hvparams.nic_type, caps)
        props = nic_device_args(model, nic.mac, slot, root_ports=has_root_ports(runtime.argv))
        netdev_id, _ = nic_ids(slot)
        intent = layout.hotplug_intent(name)
        change = HotplugIntent(op=HotplugOp.ATTACH_NIC, mac=nic.mac, slot=slot)
        change.save(intent)
        tap: str | None = None
        record = layout.nic_dir(name) / tap_record(slot)
        try:
            if nic.mode.needs_tap:
                tap = _plug_tap(qmp, layout, runtime, nic, slot, caps=caps)
                change.model_copy(update={"tap": tap}).save(intent)
            else:
                qmp.execute("netdev_add", {"type": "user", "id": netdev_id})
            try:
                qmp.execute("device_add", props)
            except QmpError:
                qmp.execute("netdev_del", {"id": netdev_id})
                raise
        except (QmpError, TapError):
            if tap is not None:
                delete_tap(tap, record)
            intent.unlink(missing_ok=True)
            raise
        saved = _with_nics(runtime, (*runtime.nics, nic), (*runtime.nic_slots, slot))
        save_runtime(layout.runtime_file(name), saved)
        intent.unlink(missing_ok=True)
    log.info("attached NIC %s to %s at slot %#04x", nic.mac, name, slot)
    return saved


def _release_tap(layout: StateLayout, name: str, slot: int) -> None:
    """After a ``netdev_del``: delete the tap hotplugged at ``slot``, and forget its record.

    QEMU closed its descriptor, which removes the tap; a start-time tap's record
    (``nic_dir/<seq>``) is dropped once its tap is gone, for stop not to look for it.
    """
    nic_dir = layout.nic_dir(name)
    if not nic_dir.is_dir():
        return
    hotplugged = nic_dir / tap_record(slot)
    if hotplugged.exists():
        delete_tap(hotplugged.read_text(encoding="utf-8", errors="replace").strip(), hotplugged)
    for record in nic_dir.iterdir():
        tap = record.read_text(encoding="utf-8", errors="replace").strip()
        if not os.path.exists(f"/sys/class/net/{tap}") or not tap:
            record.unlink(missing_ok=True)


def detach_nic(
    layout: StateLayout, runtime: KVMRuntime, mac: str, caps: QemuCapabilities
) -> KVMRuntime:
    """Unplug the NIC with ``mac`` and save the runtime without it; the caller holds the
    lock and has checked that the VM runs.

    :raise HotplugRefusedError: no such NIC; nothing changed.
    :raise QmpError: QEMU refused, or the guest did not eject the card in time (the
        intent file stays: ``info`` reports it).
    """
    name = runtime.name
    check_machine(runtime)
    wanted = mac.lower()
    index = next((i for i, nic in enumerate(runtime.nics) if nic.mac == wanted), None)
    if index is None:
        raise HotplugRefusedError(f"{name} has no NIC with MAC {mac}")
    _check_device(runtime, caps)
    slot = runtime.nic_slots[index]
    netdev_id, device_id = nic_ids(slot)
    with session(layout, name) as qmp:
        check_commands(qmp, name)
        intent = layout.hotplug_intent(name)
        HotplugIntent(op=HotplugOp.DETACH_NIC, mac=wanted, slot=slot).save(intent)
        qmp.execute_and_wait(
            "device_del", {"id": device_id}, "DEVICE_DELETED", {"device": device_id}, UNPLUG_TIMEOUT
        )
        qmp.execute("netdev_del", {"id": netdev_id})
        _release_tap(layout, name, slot)
        keep = [i for i in range(len(runtime.nics)) if i != index]
        saved = _with_nics(
            runtime,
            tuple(runtime.nics[i] for i in keep),
            tuple(runtime.nic_slots[i] for i in keep),
        )
        save_runtime(layout.runtime_file(name), saved)
        intent.unlink(missing_ok=True)
    log.info("detached NIC %s from %s (slot %#04x)", wanted, name, slot)
    return saved
