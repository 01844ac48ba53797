"""Command-line virtio disks: ``-device virtio-blk-pci,drive=ID`` on a ``-drive if=none``.

kvmlab writes each virtio disk as a named drive and a device at its PCI slot
(``kvmlab.generator.disk_args``); the guest shell lists them as ``vda``,
``vdb``... and QMP disk hotplug (:mod:`kvmlab.fake.hotplug.disk`) adds and removes
the same :class:`~kvmlab.fake.cmdline.config.BlockDevice` rows.
"""

from __future__ import annotations

from kvmlab.fake.cmdline.config import BlockDevice, Config
from kvmlab.fake.cmdline.pci import PciError, place
from kvmlab.fake.errors import FakeError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from kvmlab.fake.cmdline.parse_state import ParseState

__all__ = ["DISK_DRIVERS", "add_disk_device"]

#: ``-device`` drivers that are disks the guest sees as ``vdX``.
DISK_DRIVERS = frozenset({"virtio-blk-pci"})


def add_disk_device(p: ParseState, driver: str, opts: dict[str, str], where: str) -> None:
    """A ``-device virtio-blk-pci``: its drive must be a ``-drive if=none`` not in use."""
    cfg = p.cfg
    drive = opts.get("drive")
    if not drive:
        raise FakeError(f"{driver}: drive property not set", where)
    if drive not in cfg.named_drives:
        raise FakeError(f"Property '{driver}.drive' can't find value '{drive}'", where)
    if any(disk.drive == drive for disk in cfg.disks):
        raise FakeError(
            f"Property '{driver}.drive' can't take value '{drive}': Drive '{drive}' is"
            " already in use by another device",
            where,
        )
    path, writable = cfg.named_drives[drive]
    disk = BlockDevice(path, writable, drive, where)
    disk.ident = opts.get("id")
    disk.bus, disk.slot = place_at_start(cfg, driver, opts, where)
    cfg.disks.append(disk)


def place_at_start(
    cfg: Config, driver: str, opts: dict[str, str], where: str
) -> tuple[str | None, int | None]:
    """``(bus, slot)`` of a command-line NIC or disk (``-device``), QEMU's refusal as a
    command-line error naming ``where``."""
    try:
        return place(
            driver,
            opts,
            [*cfg.nics, *cfg.disks],
            machine=cfg.machine,
            ports=cfg.root_ports,
            hotplug=False,
        )
    except PciError as err:
        raise FakeError(str(err), where) from None
