"""QMP hotplug on the fake: ``netdev_add``, ``netdev_del``, ``device_add``, ``device_del``.

``netdev_add`` takes user networking, or a tap by descriptor (``fd=``, a ``getfd``
name: :mod:`kvmlab.fake.hotplug.fds`); ``netdev_del`` closes that descriptor.

NICs and virtio disks are modelled: a ``device_add`` of a NIC driver appends to
``Machine.devices`` (the guest shell's ``/sys/class/net`` shows it at once), of a
disk driver to ``Machine.disks`` (``/sys/block``, with its block node from
:mod:`kvmlab.fake.hotplug.disk`); a ``device_del`` removes it and, as a cooperative
guest does through ACPI PCI hotplug, ``DEVICE_DELETED`` follows the reply. The
slot rules are :mod:`kvmlab.fake.cmdline.pci`'s, shared with the command line. Errors
use QEMU's wording and error class.

The guest ejects a card only while it runs: on a guest paused (``-S``, ``stop``) the
device stays, as under QEMU, until a ``cont`` (:func:`device_deleted` runs again then),
and a second ``device_del`` is refused as QEMU refuses it. Imported on the first hotplug
command only (start-up stays flat).
"""

from __future__ import annotations

from kvmlab.fake.cmdline.config import Nic
from kvmlab.fake.cmdline.disk import DISK_DRIVERS
from kvmlab.fake.cmdline.net import NIC_DRIVERS
from kvmlab.fake.cmdline.pci import (
    PciError,
    device_model,
    first_free_slot,
    parse_slot,
    place,
)
from kvmlab.fake.errors import QmpCommandError
from kvmlab.fake.hotplug import disk as hotplug_disk

TYPE_CHECKING = False
if TYPE_CHECKING:
    from kvmlab.fake.cmdline.config import BlockDevice
    from kvmlab.fake.machine_view import MachineView

__all__ = [
    "device_add",
    "device_del",
    "device_deleted",
    "netdev_add",
    "netdev_del",
    "placed_devices",
]


#: The i440FX machine's own functions below the first free slot (QEMU's names).
_CHIPSET_SLOTS = {0: "i440FX", 1: "PIIX3", 2: "VGA"}
_SLOTS = 32


def _all_devices(m: MachineView) -> list[Nic | BlockDevice]:
    """Every device with a PCI slot and an id: the NICs and the virtio disks."""
    return [*m.devices, *m.disks]


def placed_devices(m: MachineView) -> list[Nic | BlockDevice]:
    """The devices, each given its slot: the command line's without ``addr=`` take the
    lowest free ones in order, as QEMU placed them at start-up."""
    devices = _all_devices(m)
    for device in devices:
        if device.slot is None and device.bus is None:
            device.slot = first_free_slot(devices, m.cfg.root_ports)
    return devices


def _netdevs(m: MachineView) -> dict[str, str]:
    """Netdev id -> kind, started from the command line's backends."""
    if m.netdevs is None:
        m.netdevs = {backend.id: backend.kind for backend in m.cfg.net_backends}
    return m.netdevs


def netdev_add(m: MachineView, arguments: dict[str, object]) -> object:
    kind = str(arguments["type"])
    ident = str(arguments["id"])
    netdevs = _netdevs(m)
    backends = m.profile.text("netdev").splitlines()[1:]
    if backends and kind not in backends:
        raise QmpCommandError(f"Parameter 'type' does not accept value '{kind}'")
    if kind not in ("user", "tap") or (kind == "tap" and "fd" not in arguments):
        what = "tap without fd=" if kind == "tap" else repr(kind)
        raise QmpCommandError(f"netdev_add type {what} is not simulated by kvmlab-fake")
    if kind == "user" and ("fd" in arguments or "vhost" in arguments):
        key = "fd" if "fd" in arguments else "vhost"
        raise QmpCommandError(f"Parameter '{key}' is unexpected")
    if ident in netdevs:
        raise QmpCommandError(f"Duplicate ID '{ident}'")  # QMP's words, not -netdev's
    if kind == "tap":
        from kvmlab.fake.hotplug import fds  # noqa: PLC0415 - a tap passed by descriptor

        fd = fds.take_fd(m, str(arguments["fd"]))
        fds.check_tap(fd)
        m.taps.passed[ident] = fd
        m.log("tap", netdev=ident, fd=fd)
    netdevs[ident] = kind
    return {}


def netdev_del(m: MachineView, arguments: dict[str, object]) -> object:
    ident = str(arguments["id"])
    netdevs = _netdevs(m)
    if ident not in netdevs:
        raise QmpCommandError(f"Device '{ident}' not found", "DeviceNotFound")
    for nic in m.devices:  # QEMU unplugs the backend; the card stays, with its link down
        if nic.netdev == ident:
            nic.netdev = None
    del netdevs[ident]
    m.taps.release(ident)
    return {}


def _place(m: MachineView, driver: str, arguments: dict[str, object]) -> tuple[str | None, int]:
    """The bus and slot of a new device: its ``bus`` (a root port, or the root bus) and
    its ``addr`` if free, else the lowest free slot. An ``addr`` on i440FX's root bus is
    checked first, in the words QEMU's monitor uses for it (a property error, and the
    chipset's own functions below the first free slot)."""
    opts: dict[str, str] = {key: str(arguments[key]) for key in ("bus", "addr") if key in arguments}
    root_bus = "pcie.0" if "q35" in (m.cfg.machine or "") else "pci.0"
    if "addr" in opts and opts.get("bus", root_bus) == root_bus == "pci.0":
        text = opts["addr"]
        slot = parse_slot(text)
        if slot is None or not 0 <= slot < _SLOTS:
            raise QmpCommandError(f"Property '{driver}.addr' doesn't take value '{text}'")
        if slot in _CHIPSET_SLOTS:
            raise QmpCommandError(
                f"PCI: slot {slot} function 0 not available for {driver},"
                f" in use by {_CHIPSET_SLOTS[slot]},id=(null)"
            )
    try:
        bus, slot = place(
            driver,
            opts,
            placed_devices(m),
            machine=m.cfg.machine,
            ports=m.cfg.root_ports,
            hotplug=True,
        )
    except PciError as err:
        raise QmpCommandError(str(err)) from None
    assert slot is not None  # a hotplugged device always gets one
    return bus, slot


def _nic(m: MachineView, driver: str, arguments: dict[str, object]) -> Nic:
    netdev = arguments.get("netdev")
    if netdev is not None:
        if str(netdev) not in _netdevs(m):
            raise QmpCommandError(f"Property '{driver}.netdev' can't find value '{netdev}'")
        if any(nic.netdev == netdev for nic in m.devices):
            owner = "virtio-net-device" if driver == "virtio-net-pci" else driver  # QEMU's proxy
            raise QmpCommandError(
                f"Property '{owner}.netdev' can't take value '{netdev}', it's in use"
            )
    mac = str(arguments.get("mac", "52:54:00:12:34:56")).lower()
    return Nic(driver, mac, None if netdev is None else str(netdev), "device_add")


def device_add(m: MachineView, arguments: dict[str, object]) -> object:
    driver = str(arguments["driver"])
    ident = str(arguments.get("id", ""))
    if not isinstance(arguments["driver"], str) and m.profile.version >= (10, 0, 0):
        raise QmpCommandError("Parameter 'driver' is missing")  # 10.0 reads it as a string
    model = device_model(m.profile, driver)
    if model is None:
        raise QmpCommandError(f"'{driver}' is not a valid device model name")
    driver = model
    if driver not in NIC_DRIVERS and driver not in DISK_DRIVERS:
        raise QmpCommandError(f"device_add of {driver!r} is not simulated by kvmlab-fake")
    if ident and any(dev.ident == ident for dev in _all_devices(m)):
        raise QmpCommandError(f"Duplicate device ID '{ident}'")
    if driver in DISK_DRIVERS:
        disk = hotplug_disk.new_disk(m, driver, arguments)
        disk.ident = ident or None
        disk.bus, disk.slot = _place(m, driver, arguments)
        m.disks.append(disk)
        m.log("hotplug", action="add", id=ident, slot=disk.slot, drive=disk.drive)
        return {}
    nic = _nic(m, driver, arguments)
    nic.ident = ident or None
    nic.bus, nic.slot = _place(m, driver, arguments)
    m.devices.append(nic)
    m.log("hotplug", action="add", id=ident, slot=nic.slot, mac=nic.mac)
    return {}


def device_del(m: MachineView, arguments: dict[str, object]) -> object:
    ident = str(arguments["id"])
    if not any(dev.ident == ident for dev in _all_devices(m)):
        raise QmpCommandError(f"Device '{ident}' not found", "DeviceNotFound")
    if ident in m.pending_unplug:
        raise QmpCommandError(f"Device {ident} is already in the process of unplug")
    m.pending_unplug.append(ident)
    return {}


def device_deleted(m: MachineView) -> None:
    """After ``device_del``'s reply (or ``cont``): a running guest ejects the card, and QEMU
    says ``DEVICE_DELETED``; a paused one leaves it plugged until it runs."""
    if m.status != "running":
        return
    while m.pending_unplug:
        ident = m.pending_unplug.pop(0)
        nic = next((nic for nic in m.devices if nic.ident == ident), None)
        disk = next((disk for disk in m.disks if disk.ident == ident), None)
        if nic is not None:
            m.devices.remove(nic)
            slot = nic.slot
        elif disk is not None:
            hotplug_disk.unplugged(m, disk)
            slot = disk.slot
        else:
            continue
        m.log("hotplug", action="del", id=ident, slot=slot)
        m.event("DEVICE_DELETED", {"device": ident, "path": f"/machine/peripheral/{ident}"})
