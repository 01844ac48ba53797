"""PCI slots, for the command line's ``-device`` and QMP's ``device_add``.

Both place a NIC or a disk at an ``addr=`` slot, or at the lowest free one, and
refuse a taken slot with QEMU's words; one copy of those rules serves both (QEMU's
command line and its monitor create devices with the same code).

A device sits on the root bus (``pci.0``, q35's ``pcie.0``) or, with ``bus=ID``,
behind a ``pcie-root-port`` of that id: :func:`place` finds the bus (``Bus 'x' not
found``), refuses a hotplug onto q35's root bus (which has none: ``Bus 'pcie.0' does
not support hotplugging``), then the slot on that bus. Root ports are placed by
:func:`add_root_port` at their ``addr=SS.F`` on the root bus.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

    from kvmlab.fake.cmdline.config import BlockDevice, Nic
    from kvmlab.fake.profiles import Profile

__all__ = [
    "ADDR_ERROR",
    "ROOT_PORT",
    "PciError",
    "add_root_port",
    "device_dirs",
    "device_model",
    "first_free_slot",
    "parse_slot",
    "place",
    "root_address",
    "slot_taken",
]

#: QEMU's message for an ``addr`` that is not a slot number.
ADDR_ERROR = "Parameter 'addr' expects an Slot/device [and function] number"
#: Slots 0-2 hold the host bridge, the PIIX and VGA on the i440fx machine.
_FIRST_AUTO_SLOT = 3
_SLOTS = 32
#: QEMU's generic PCIe root port.
ROOT_PORT = "pcie-root-port"


class PciError(Exception):
    """A device that cannot be placed, in QEMU's words (the caller adds where)."""


def device_model(profile: Profile, driver: str) -> str | None:
    """The real name of ``-device``/``device_add``'s ``driver`` (an alias resolved), or
    ``None`` when the profile's ``-device help`` does not list it (QEMU: ``'x' is not a
    valid device model name``). Any name is taken when the profile recorded no list."""
    devices = profile.devices()
    if not devices:
        return driver
    return devices.get(driver)


def parse_slot(text: str) -> int | None:
    """The slot of ``addr=SS[.F]`` (``0x08``, ``8``, ``08.0``), or ``None`` when malformed."""
    try:
        return int(text.split(".", maxsplit=1)[0], 0)
    except ValueError:
        return None


def slot_taken(
    slot: int,
    driver: str,
    devices: Iterable[Nic | BlockDevice],
    *,
    bus: str | None = None,
    ports: dict[str, tuple[int, int]] | None = None,
    function: int = 0,
) -> str | None:
    """QEMU's refusal when a device already sits at ``slot`` (of ``bus``: ``None`` is the
    root bus, where the root ``ports`` sit too), else ``None``."""
    taken = f"PCI: slot {slot} function {function} not available for {driver}, in use by"
    user = next(
        (dev for dev in devices if dev.slot == slot and dev.bus == bus and function == 0), None
    )
    if user is not None:
        return f"{taken} {user.model},id={user.ident or ''}"
    if bus is None and ports:
        port = next((ident for ident, at in ports.items() if at == (slot, function)), None)
        if port is not None:
            return f"{taken} {ROOT_PORT},id={port}"
    return None


def first_free_slot(
    devices: Iterable[Nic | BlockDevice],
    ports: dict[str, tuple[int, int]] | None = None,
) -> int:
    """The slot QEMU gives a device without ``addr`` on the root bus: the lowest free one."""
    taken = {dev.slot for dev in devices if dev.bus is None}
    taken |= {slot for slot, _ in (ports or {}).values()}
    return next(s for s in range(_FIRST_AUTO_SLOT, _SLOTS) if s not in taken)


def _root_bus(machine: str | None) -> str:
    return "pcie.0" if "q35" in (machine or "") else "pci.0"


def place(
    driver: str,
    opts: dict[str, str],
    devices: list[Nic | BlockDevice],
    *,
    machine: str | None,
    ports: dict[str, tuple[int, int]],
    hotplug: bool,
) -> tuple[str | None, int | None]:
    """``(bus, slot)`` of a new NIC or disk from its ``bus=`` and ``addr=``, checked as
    QEMU checks them: the bus exists, takes hotplug (``device_add``), the slot is free.

    The slot is ``None`` for a command-line device without ``addr`` on the root bus
    (QEMU picks one; the fake needs none). ``bus`` is ``None`` on the root bus.

    :raise PciError: QEMU's refusal.
    """
    root = _root_bus(machine)
    wanted = opts.get("bus", root)
    if wanted != root and wanted not in ports:
        raise PciError(f"Bus '{wanted}' not found")
    bus = None if wanted == root else wanted
    if hotplug and bus is None and root == "pcie.0":
        raise PciError(f"Bus '{root}' does not support hotplugging")
    if "addr" not in opts:
        if bus is not None:
            if slot_taken(0, driver, devices, bus=bus) is not None:
                raise PciError(f"PCI: no slot/function available for {driver}, all in use")
            return bus, 0
        return None, first_free_slot(devices, ports) if hotplug else None
    text = opts["addr"]
    slot = parse_slot(text)
    if slot is None:  # the monitor quotes the value, the command line does not
        raise PciError(f"{ADDR_ERROR}, got {text!r}" if hotplug else ADDR_ERROR)
    taken = slot_taken(slot, driver, devices, bus=bus, ports=ports)
    if taken is not None:
        raise PciError(taken)
    return bus, slot


def add_root_port(
    opts: dict[str, str],
    devices: list[Nic | BlockDevice],
    *,
    machine: str | None,
    ports: dict[str, tuple[int, int]],
) -> None:
    """A ``-device pcie-root-port`` on the root bus: record it in ``ports`` by its id.

    :raise PciError: a bus other than the root bus, a malformed or taken ``addr``.
    """
    root = _root_bus(machine)
    wanted = opts.get("bus", root)
    if wanted != root:
        raise PciError(
            f"Bus '{wanted}' not found"
            if wanted not in ports
            else f"kvmlab-fake simulates {ROOT_PORT} on the root bus only"
        )
    text = opts.get("addr")
    slot = first_free_slot(devices, ports) if text is None else parse_slot(text)
    function = 0
    if slot is None:
        raise PciError(ADDR_ERROR)
    if text is not None:
        _, dot, rest = text.partition(".")
        try:
            function = int(rest, 16) if dot else 0
        except ValueError:
            raise PciError(ADDR_ERROR) from None
    taken = slot_taken(slot, ROOT_PORT, devices, ports=ports, function=function)
    if taken is not None:
        raise PciError(taken)
    ident = opts.get("id") or f"{ROOT_PORT}.{len(ports)}"
    ports[ident] = (slot, function)


def root_address(dev: Nic | BlockDevice, ports: dict[str, tuple[int, int]]) -> tuple[int, int]:
    """Where the guest finds ``dev`` on the root bus, ``(slot, function)``: its own slot,
    or its root port's (the guest probes the bus in this order)."""
    if dev.bus is not None and dev.bus in ports:
        return ports[dev.bus]
    return (dev.slot or 0, 0)


def device_dirs(dev: Nic | BlockDevice, ports: dict[str, tuple[int, int]]) -> list[str]:
    """The guest's sysfs directories of ``dev`` (``dev.slot`` set), as Linux shows them.

    On the root bus ``/sys/bus/pci/devices/0000:00:SS.0``; behind a root port at
    ``PP.F`` the device is on the port's secondary bus ``BB`` (the ports numbered from
    1 in address order, as the firmware numbers them when nothing else bridges), seen
    both as ``0000:BB:00.0`` and under the port, ``0000:00:PP.F/0000:BB:00.0``.
    """
    top = "/sys/bus/pci/devices"
    if dev.bus is None or dev.bus not in ports:
        return [f"{top}/0000:00:{dev.slot or 0:02x}.0"]
    slot, function = ports[dev.bus]
    number = 1 + sorted(ports.values()).index((slot, function))
    own = f"0000:{number:02x}:{dev.slot or 0:02x}.0"
    return [f"{top}/{own}", f"{top}/0000:00:{slot:02x}.{function:x}/{own}"]
