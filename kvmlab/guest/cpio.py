"""The ``newc`` cpio format of an initramfs: writing one, and reading it back.

The kernel unpacks its initramfs from a ``newc`` (``070701``) cpio archive. Writing it in
Python needs no ``cpio`` tool and no root (device nodes are just records), and fixed inode
numbers and times make the same files give the same bytes, so the image hash is stable.
"""

from __future__ import annotations

import stat
from collections.abc import Iterable
from dataclasses import dataclass

from kvmlab.errors import GuestBuildError

__all__ = ["CpioEntry", "read_newc", "write_newc"]


@dataclass(frozen=True)
class CpioEntry:
    """One file of an initramfs.

    :ivar name: path inside the archive, without a leading ``/``.
    :ivar mode: full ``st_mode``: type bits (``stat.S_IFREG``...) and permissions.
    :ivar data: file contents; for a symlink, its target.
    :ivar rdev: ``(major, minor)`` of a device node.
    """

    name: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)
    uid: int = 0
    gid: int = 0
    mtime: int = 0


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


def write_newc(entries: Iterable[CpioEntry]) -> bytes:
    """Serialise entries as a ``newc`` (``070701``) cpio archive, the format initramfs uses.

    Inode numbers are assigned in order and times default to 0, so the same entries always
    give the same bytes (and the same cache hash).

    :param entries: files, directories, symlinks and device nodes; parents before children.
    :return: the archive, ending with the ``TRAILER!!!`` record.
    """
    out = bytearray()

    def record(ino: int, entry: CpioEntry, nlink: int) -> None:
        name = entry.name.encode() + b"\0"
        fields = (
            ino,
            entry.mode,
            entry.uid,
            entry.gid,
            nlink,
            entry.mtime,
            len(entry.data),
            0,
            0,
            entry.rdev[0],
            entry.rdev[1],
            len(name),
            0,
        )
        out.extend(b"070701" + b"".join(b"%08X" % f for f in fields))
        out.extend(name + _pad4(110 + len(name)))
        out.extend(entry.data + _pad4(len(entry.data)))

    for ino, entry in enumerate(entries, start=1):
        record(ino, entry, 2 if stat.S_ISDIR(entry.mode) else 1)
    record(0, CpioEntry("TRAILER!!!", 0), 1)
    return bytes(out)


def read_newc(data: bytes) -> list[CpioEntry]:
    """Parse a ``newc`` cpio archive (uncompressed) written by :func:`write_newc`.

    Used by the tests and handy for looking inside a built initramfs.

    :param data: the archive.
    :return: its entries, without the trailer.
    :raise GuestBuildError: a record has a bad magic number or is truncated.
    """
    entries: list[CpioEntry] = []
    pos = 0
    while True:
        header = data[pos : pos + 110]
        if len(header) < 110 or header[:6] != b"070701":
            raise GuestBuildError(f"bad cpio newc header at offset {pos}")
        f = [int(header[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
        namesize, filesize = f[11], f[6]
        name_start = pos + 110
        name = data[name_start : name_start + namesize - 1].decode()
        data_start = name_start + namesize + (-(110 + namesize) % 4)
        body = data[data_start : data_start + filesize]
        if len(body) != filesize:
            raise GuestBuildError(f"cpio member {name!r} is truncated")
        pos = data_start + filesize + (-filesize % 4)
        if name == "TRAILER!!!":
            return entries
        entries.append(CpioEntry(name, f[1], body, (f[9], f[10]), f[2], f[3], f[5]))
