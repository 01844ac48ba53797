"""``-drive``: the interface, cache mode and format QEMU knows, and the image behind it.

What is valid comes from the profile's ``drive.txt`` (the formats QEMU lists, the
``if=`` and ``cache=`` values the binary was seen to accept), so a typo such as
``cache=writebak`` fails as on the real host. QEMU opens each drive's image while it
reads the drives, before it sets up the CPUs (:data:`~kvmlab.fake.cmdline.parser.PHASES`),
so a ``format=qcow2`` image must start with qcow2's magic then.
An interface no controller of the machine takes (``if=scsi`` on a PC without a SCSI
adapter) is refused later, when the board is built.
"""

from __future__ import annotations

import os

from kvmlab.fake.cmdline.config import BlockDevice
from kvmlab.fake.cmdline.qemuopts import parse_bool, parse_opts
from kvmlab.fake.errors import FakeError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from kvmlab.fake.cmdline.parse_state import ParseState

__all__ = ["drive_option"]

#: The ``if=`` names QEMU's ``if_name`` table has (others: ``unsupported bus type``).
_KNOWN_INTERFACES = frozenset(
    {"none", "ide", "scsi", "floppy", "pflash", "mtd", "sd", "virtio", "xen"}
)
#: Image formats whose header the fake reads: format name -> its magic bytes.
_MAGIC = {"qcow2": b"QFI\xfb"}
#: When QEMU builds the board and finds drives nobody took (``PHASES``).
_ORPHAN_PHASE = 9
#: When the board's IDE controller takes its disks, just before.
_IDE_PHASE = 8.5


def _read_only_ide() -> None:
    raise FakeError("Block node is read-only")


def drive_option(p: ParseState, value: str, where: str) -> None:
    """``-drive file=PATH[,if=][,cache=][,format=][,readonly=][,id=]``."""
    opts = parse_opts(value, where)
    ident = opts.get("id")
    if ident is not None and ident in p.cfg.named_drives:
        raise FakeError(f"Duplicate ID '{ident}' for drive", where)
    caches = p.profile.drive_values("cache")
    if "cache" in opts and caches and opts["cache"] not in caches:
        raise FakeError("invalid cache option", where)
    interface = opts.get("if", "ide")
    accepted = p.profile.drive_values("if")
    if accepted and interface not in _KNOWN_INTERFACES | accepted:
        raise FakeError(f"unsupported bus type '{interface}'", where)
    formats = p.profile.drive_values("formats")
    fmt = opts.get("format")
    if fmt is not None and formats and fmt not in formats:
        raise FakeError(f"Unknown driver '{fmt}'", where)
    if not opts.get("file"):
        return
    readonly = parse_bool(opts, "readonly", False, where)
    path = opts["file"]
    if fmt is not None and (formats or fmt in _MAGIC):
        _check_image(path, fmt, not readonly, where)
    p.cfg.drives.append((where, path, not readonly))
    if accepted and interface not in accepted:
        _defer_orphan(p, interface, where)
    if interface == "ide" and readonly and opts.get("media", "disk") == "disk":
        p.defer(_IDE_PHASE, _read_only_ide)
    if interface == "virtio" and opts.get("media", "disk") == "disk":
        p.cfg.disks.append(BlockDevice(path, not readonly, None, where))
    elif interface == "none" and ident is not None:
        # A drive for a -device (virtio-blk-pci, scsi-hd) to name.
        p.cfg.named_drives[ident] = (path, not readonly)


def _check_image(path: str, fmt: str, writable: bool, where: str) -> None:
    """An image that opens has its format's header. One that does not open is left to
    the VM process's file checks (``Could not open``), where the fake has always made
    them, so parsing a command line never needs its files."""
    try:
        fd = os.open(path, os.O_RDWR if writable else os.O_RDONLY)
    except OSError:
        return
    try:
        head = os.read(fd, 4)
    finally:
        os.close(fd)
    magic = _MAGIC.get(fmt)
    if magic is not None and head != magic:
        raise FakeError(f"Image is not in {fmt} format", where)


def _defer_orphan(p: ParseState, interface: str, where: str) -> None:
    """A drive on an interface the machine has no controller for, refused when the board
    is built: ``machine type does not support if=scsi,bus=0,unit=0``."""
    unit = sum(1 for known, _ in p.orphans if known == interface)
    p.orphans.append((interface, where))
    message = f"machine type does not support if={interface},bus=0,unit={unit}"

    def refuse() -> None:
        raise FakeError(message, where)

    p.defer(_ORPHAN_PHASE, refuse)
