"""QMP hotplug on the fake: ``netdev_add``, ``netdev_del``, ``device_add``, ``device_del``.

Only NICs are modelled: a ``device_add`` of a NIC driver appends to
``Machine.devices`` (the guest shell's ``/sys/class/net`` shows it at once), a
``device_del`` removes it and, as a cooperative guest does through ACPI PCI
hotplug, ``DEVICE_DELETED`` follows the reply. Errors use QEMU's wording. Imported
on the first hotplug command only (start-up stays flat).
"""

from __future__ import annotations

from kvmlab.fake.cmdline_net import NIC_DRIVERS
from kvmlab.fake.config import Nic
from kvmlab.fake.errors import QmpCommandError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from kvmlab.fake.machine_view import MachineView

__all__ = ["device_add", "device_del", "device_deleted", "netdev_add", "netdev_del"]


def _netdevs(m: MachineView) -> dict[str, str]:
    """Netdev id -> kind, started from the command line's backends."""
    if m.netdevs is None:
        m.netdevs = {backend.id: backend.kind for backend in m.cfg.net_backends}
    return m.netdevs


def netdev_add(m: MachineView, arguments: dict[str, object]) -> object:
    kind = str(arguments["type"])
    ident = str(arguments["id"])
    netdevs = _netdevs(m)
    if kind != "user":
        raise QmpCommandError(f"netdev_add type {kind!r} is not simulated by kvmlab-fake")
    if ident in netdevs:
        raise QmpCommandError(f"Duplicate ID '{ident}' for netdev")
    netdevs[ident] = kind
    return {}


def netdev_del(m: MachineView, arguments: dict[str, object]) -> object:
    ident = str(arguments["id"])
    netdevs = _netdevs(m)
    if ident not in netdevs:
        raise QmpCommandError(f"Device '{ident}' not found")
    if any(nic.netdev == ident for nic in m.devices):
        raise QmpCommandError(f"Device '{ident}' is in use")  # pragma: no cover - kvmlab never
    del netdevs[ident]
    return {}


def _slot(text: str) -> int:
    try:
        return int(text.split(".", maxsplit=1)[0], 0)
    except ValueError:
        raise QmpCommandError(
            f"Parameter 'addr' expects an Slot/device [and function] number, got {text!r}"
        ) from None


def device_add(m: MachineView, arguments: dict[str, object]) -> object:
    driver = str(arguments["driver"])
    ident = str(arguments.get("id", ""))
    devices = m.profile.devices()
    if devices and driver not in devices:
        raise QmpCommandError(f"'{driver}' is not a valid device model name")
    driver = devices.get(driver, driver)
    if driver not in NIC_DRIVERS:
        raise QmpCommandError(f"device_add of {driver!r} is not simulated by kvmlab-fake")
    if ident and any(nic.ident == ident for nic in m.devices):
        raise QmpCommandError(f"Duplicate device ID '{ident}'")
    netdev = arguments.get("netdev")
    if netdev is not None:
        if str(netdev) not in _netdevs(m):
            raise QmpCommandError(f"Property '{driver}.netdev' can't find value '{netdev}'")
        if any(nic.netdev == netdev for nic in m.devices):
            raise QmpCommandError(
                f"Property '{driver}.netdev' can't take value '{netdev}', it's in use"
            )
    slot = _slot(str(arguments["addr"])) if "addr" in arguments else None
    if slot is not None:
        user = next((nic for nic in m.devices if nic.slot == slot), None)
        if user is not None:
            raise QmpCommandError(
                f"PCI: slot {slot} function 0 not available for {driver},"
                f" in use by {user.model},id={user.ident or ''}"
            )
    else:
        taken = {nic.slot for nic in m.devices}
        slot = next(s for s in range(3, 32) if s not in taken)
    mac = str(arguments.get("mac", "52:54:00:12:34:56")).lower()
    nic = Nic(driver, mac, None if netdev is None else str(netdev), "device_add")
    nic.ident = ident or None
    nic.slot = slot
    m.devices.append(nic)
    m.log("hotplug", action="add", id=ident, slot=slot, mac=mac)
    return {}


def device_del(m: MachineView, arguments: dict[str, object]) -> object:
    ident = str(arguments["id"])
    if not any(nic.ident == ident for nic in m.devices):
        raise QmpCommandError(f"Device '{ident}' not found")
    m.pending_unplug.append(ident)
    return {}


def device_deleted(m: MachineView) -> None:
    """After ``device_del``'s reply: the guest ejects the card, QEMU says ``DEVICE_DELETED``."""
    while m.pending_unplug:
        ident = m.pending_unplug.pop(0)
        nic = next((nic for nic in m.devices if nic.ident == ident), None)
        if nic is None:
            continue
        m.devices.remove(nic)
        m.log("hotplug", action="del", id=ident, slot=nic.slot)
        m.event("DEVICE_DELETED", {"device": ident, "path": f"/machine/peripheral/{ident}"})
