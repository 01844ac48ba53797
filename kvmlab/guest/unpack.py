"""The kernel the test guest boots: the ``vmlinux`` inside a distribution's ``vmlinuz``.

A bzImage carries the kernel compressed, and its first act is to decompress it: under TCG
that took 0.46 s of the test guest's 2.2 s boot (Debian's LZ4 image, 53 MB unpacked), every
boot, in emulated instructions. QEMU's ``-kernel`` also starts an uncompressed ELF
``vmlinux`` through the PVH entry point (``CONFIG_PVH``, which Debian's kernels have), after
copying it into guest memory at host speed. So the builder unpacks the payload once, here,
in Python, and the guest boots the same kernel without the decompressor. A kernel without
the PVH note, or in a compression this module does not read, stays a bzImage (slower to
boot, otherwise the same).
"""

from __future__ import annotations

import bz2
import lzma
import struct
import zlib
from collections.abc import Callable

import lz4.block

from kvmlab.errors import GuestBuildError
from kvmlab.guest.archives import zstd_decompress
from kvmlab.guest.elf import has_pvh_entry

__all__ = ["bzimage_payload", "unpack_vmlinux"]

#: The legacy LZ4 frame the kernel's build writes (``lz4 -l``): this magic, then blocks of a
#: little-endian 32-bit compressed size and the data, each unpacking to at most 8 MiB.
_LZ4_LEGACY_MAGIC = 0x184C2102
_LZ4_LEGACY_BLOCK = 8 << 20


def bzimage_payload(vmlinuz: bytes) -> bytes | None:
    """The compressed kernel of a bzImage (boot protocol 2.08+), or ``None``.

    The setup header gives where the payload starts (``payload_offset``, after the setup
    sectors) and its length; the payload ends with the unpacked size, a 32-bit LE number.
    """
    if len(vmlinuz) < 0x250 or vmlinuz[0x202:0x206] != b"HdrS":
        return None
    (version,) = struct.unpack_from("<H", vmlinuz, 0x206)
    if version < 0x208:
        return None
    setup_sectors = vmlinuz[0x1F1] or 4
    offset, length = struct.unpack_from("<II", vmlinuz, 0x248)
    start = (setup_sectors + 1) * 512 + offset
    if length < 4 or start + length > len(vmlinuz):
        return None
    return vmlinuz[start : start + length]


def _lz4_legacy(data: bytes) -> bytes:
    """Unpack the kernel's legacy LZ4 frame (python-lz4 reads blocks, not this framing)."""
    out = bytearray()
    pos = 4
    while pos + 4 <= len(data):
        (block,) = struct.unpack_from("<I", data, pos)
        if block == _LZ4_LEGACY_MAGIC:  # concatenated frames
            pos += 4
            continue
        out += lz4.block.decompress(
            data[pos + 4 : pos + 4 + block], uncompressed_size=_LZ4_LEGACY_BLOCK
        )
        pos += 4 + block
    return bytes(out)


#: The payload's first bytes and how to unpack it (the payload without its size word); LZO
#: has no reader in Python here.
_UNPACKERS: tuple[tuple[bytes, str, Callable[[bytes], bytes]], ...] = (
    (struct.pack("<I", _LZ4_LEGACY_MAGIC), "lz4", _lz4_legacy),
    (b"\x1f\x8b", "gzip", lambda data: zlib.decompressobj(wbits=31).decompress(data)),
    (b"\xfd7zXZ\x00", "xz", lambda data: lzma.LZMADecompressor(lzma.FORMAT_XZ).decompress(data)),
    (
        b"\x5d\x00\x00",
        "lzma",
        lambda data: lzma.LZMADecompressor(lzma.FORMAT_ALONE).decompress(data),
    ),
    (b"BZh", "bzip2", lambda data: bz2.BZ2Decompressor().decompress(data)),
    (b"\x28\xb5\x2f\xfd", "zstd", lambda data: zstd_decompress(data, "the kernel")),
)


def unpack_vmlinux(vmlinuz: bytes, progress: Callable[[str], None]) -> bytes | None:
    """The ELF ``vmlinux`` of a bzImage when QEMU can boot it directly, else ``None``.

    ``None`` (with the reason through ``progress``) means: boot the bzImage as it is.
    """
    payload = bzimage_payload(vmlinuz)
    if payload is None:
        progress("kernel: not a bzImage this builder can open; booting it as it is")
        return None
    compressed, size_word = payload[:-4], payload[-4:]
    (size,) = struct.unpack("<I", size_word)
    found = next((entry for entry in _UNPACKERS if compressed.startswith(entry[0])), None)
    if found is None:
        progress(
            f"kernel: compressed as {compressed[:4].hex()}, not read here; booting the bzImage"
        )
        return None
    _, name, unpack = found
    try:
        vmlinux = unpack(compressed)
    except (GuestBuildError, lz4.block.LZ4BlockError, lzma.LZMAError, zlib.error, OSError) as err:
        progress(f"kernel: cannot unpack its {name} payload ({err}); booting the bzImage")
        return None
    if len(vmlinux) != size:
        progress(f"kernel: unpacked {len(vmlinux)} bytes where it says {size}; booting the bzImage")
        return None
    if not has_pvh_entry(vmlinux):
        progress("kernel: its vmlinux has no PVH entry point; booting the bzImage")
        return None
    progress(f"kernel: unpacked its {name} payload ({size >> 20} MiB ELF, PVH boot)")
    return vmlinux
