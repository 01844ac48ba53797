"""PCIe root ports on q35: one per reserved slot, where each NIC and virtio disk plugs in.

The i440fx ``pc`` machine hotplugs on its root bus, so there a NIC or a disk sits at
its reserved slot on ``pci.0`` (``addr=0xSS``). q35's root bus ``pcie.0`` has no
hotplug: a device must sit behind a PCIe root port, one device per port (as libvirt
does for q35). So on q35 the generated argv reserves a root port for every reserved
slot, :data:`~kvmlab.runtime.saved.DISK_SLOTS` and
:data:`~kvmlab.runtime.saved.NIC_SLOTS` (0x08-0x1f, 24 ports), and the device of
slot ``SS`` goes into port ``port-sSS`` (``bus=port-sSS,addr=0x0``).

The slot numbers stay the runtime's (``nic_slots``, ``disk_slots``, format 3): slot
``SS`` *names* a port instead of a root-bus address, so a NIC or disk comes back
behind the same port (and the guest sees it at the same address) after a soft
reboot. The ports are packed eight to a slot of ``pcie.0`` as multifunction
devices, as libvirt packs them: the port of slot ``SS`` is at ``pcie.0`` slot
``SS & 0x18``, function ``SS & 7`` (0x08.0-0x08.7 for the disks, 0x10.0-0x10.7 and
0x18.0-0x18.7 for the NICs). Those are the slots a ``pc`` machine gives its disks
and NICs, so the devices QEMU places by itself (VGA, balloon, sound, a SCSI
controller...) keep the lowest free slots, and q35's fixed devices (00:00.0 the host
bridge, 00:1f the ICH9 LPC/SATA/SMBus, 00:1d the ICH9 USB controllers with ``-usb``)
are clear of them. ``chassis`` and ``port`` are the slot number: unique per port, as
QEMU requires of ``chassis``.

A runtime saved before the ports existed (a q35 runtime of an older kvmlab) has none
in its argv; :func:`has_root_ports` tells it apart, and such a runtime keeps its
devices on the root bus (and cannot hotplug) until a hard restart regenerates it.
"""

from __future__ import annotations

from typing import Final

from kvmlab.runtime.saved import DISK_SLOTS, NIC_SLOTS
from kvmlab.spec.capabilities import QemuCapabilities
from kvmlab.spec.instance import HvParams

__all__ = [
    "ROOT_PORT_DRIVER",
    "ROOT_PORT_SLOTS",
    "device_placement",
    "guest_sysfs_dir",
    "has_root_ports",
    "root_port_address",
    "root_port_args",
    "root_port_id",
    "uses_root_ports",
]

#: QEMU's generic PCIe root port (QEMU >= 2.9).
ROOT_PORT_DRIVER: Final = "pcie-root-port"
#: Every reserved slot gets a port: the disks' and the NICs'.
ROOT_PORT_SLOTS: Final = range(DISK_SLOTS.start, NIC_SLOTS.stop)
_ROOT_PORT_SINCE = (2, 9, 0)
_PORT_PREFIX: Final = f"{ROOT_PORT_DRIVER},id=port-s"


def root_port_id(slot: int) -> str:
    """The id of the root port of reserved slot ``slot`` (``port-s10``)."""
    return f"port-s{slot:02x}"


def root_port_address(slot: int) -> tuple[int, int]:
    """``(pcie.0 slot, function)`` of the root port of reserved slot ``slot``."""
    return slot & 0x18, slot & 0x07


def uses_root_ports(hv: HvParams, caps: QemuCapabilities) -> bool:
    """Whether a VM with ``hv`` on this QEMU gets root ports: a q35 machine with
    ``-device`` and ``pcie-root-port``."""
    machine = hv.machine_version or caps.default_machine or ""
    return "q35" in machine and caps.has_device and caps.version >= _ROOT_PORT_SINCE


def root_port_args() -> tuple[str, ...]:
    """The ``-device pcie-root-port`` of every reserved slot, in slot order."""
    args: list[str] = []
    for slot in ROOT_PORT_SLOTS:
        pci_slot, function = root_port_address(slot)
        where = (
            f"addr={pci_slot:#04x},multifunction=on"
            if function == 0
            else f"addr={pci_slot:#04x}.{function:#x}"
        )
        args += (
            "-device",
            f"{ROOT_PORT_DRIVER},id={root_port_id(slot)},bus=pcie.0,chassis={slot},"
            f"port={slot:#04x},{where}",
        )
    return tuple(args)


def has_root_ports(argv: tuple[str, ...]) -> bool:
    """Whether a saved argv has kvmlab's root ports (a q35 runtime of this kvmlab)."""
    return any(word.startswith(_PORT_PREFIX) for word in argv)


def device_placement(slot: int, root_ports: bool) -> dict[str, str]:
    """Where the device of reserved slot ``slot`` goes: its ``bus``/``addr`` properties.

    ``{"addr": "0xSS"}`` on the root bus, or ``{"bus": "port-sSS", "addr": "0x0"}``
    behind the slot's root port.
    """
    if root_ports:
        return {"bus": root_port_id(slot), "addr": "0x0"}
    return {"addr": f"{slot:#04x}"}


def guest_sysfs_dir(slot: int, root_ports: bool) -> str:
    """Where a Linux guest shows the PCI function of the device of reserved slot ``slot``.

    ``/sys/bus/pci/devices/0000:00:SS.0`` on the root bus; behind a root port at
    ``PP.F``, ``/sys/bus/pci/devices/0000:00:PP.F/0000:*:00.0``: a shell glob, as the
    port's secondary bus number is the firmware's choice. The guest-side proofs of
    hotplug (tests, docs/hotplug.md) read the device's MAC or disk under it.
    """
    if not root_ports:
        return f"/sys/bus/pci/devices/0000:00:{slot:02x}.0"
    pci_slot, function = root_port_address(slot)
    return f"/sys/bus/pci/devices/0000:00:{pci_slot:02x}.{function:x}/0000:*:00.0"
