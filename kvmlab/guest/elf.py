"""Facts read from binary headers: static ELF programs, module sections, the kernel release.

The builder must tell, without running anything, whether a busybox can run alone in the
initramfs (a static x86-64 ELF), what a kernel module depends on (its ``.modinfo`` ELF
section) and which release a bare ``vmlinuz`` is (its bzImage setup header), so that no
``file``, ``readelf`` or ``modinfo`` tool is needed.
"""

from __future__ import annotations

import struct

__all__ = ["bzimage_version", "elf_section", "has_pvh_entry", "is_static_x86_64"]

_ELF_MAGIC = b"\x7fELF"
_EM_X86_64 = 62
_PT_INTERP = 3
_PT_NOTE = 4
#: ``XEN_ELFNOTE_PHYS32_ENTRY``: the 32-bit entry point of the PVH boot protocol, which QEMU's
#: ``-kernel`` loader uses to start an ELF ``vmlinux`` directly.
_XEN_ELFNOTE_PHYS32_ENTRY = 18


def _elf_header(data: bytes) -> tuple[int, int, int, int, int, int, int] | None:
    """Return (e_machine, phoff, phentsize, phnum, shoff, shentsize, shnum) of an ELF64 LE."""
    if len(data) < 64 or not data.startswith(_ELF_MAGIC) or data[4] != 2 or data[5] != 1:
        return None
    (machine,) = struct.unpack_from("<H", data, 18)
    phoff, shoff = struct.unpack_from("<QQ", data, 32)
    phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", data, 54)
    return machine, phoff, phentsize, phnum, shoff, shentsize, shnum


def is_static_x86_64(data: bytes) -> bool:
    """Tell whether an executable can run alone in the initramfs.

    A dynamically linked program has a ``PT_INTERP`` program header naming its loader, which
    the initramfs does not have; a static one has none.
    """
    header = _elf_header(data)
    if header is None or header[0] != _EM_X86_64:
        return False
    _, phoff, phentsize, phnum, *_ = header
    for i in range(phnum):
        (p_type,) = struct.unpack_from("<I", data, phoff + i * phentsize)
        if p_type == _PT_INTERP:
            return False
    return phnum > 0


def has_pvh_entry(data: bytes) -> bool:
    """Tell whether an ELF kernel can be booted by QEMU's ``-kernel`` as it is.

    QEMU starts an uncompressed ``vmlinux`` only through the PVH entry point that the kernel
    declares in a ``Xen`` ELF note (``CONFIG_PVH``); without that note it needs the bzImage.
    """
    header = _elf_header(data)
    if header is None or header[0] != _EM_X86_64:
        return False
    _, phoff, phentsize, phnum, *_ = header
    for i in range(phnum):
        base = phoff + i * phentsize
        (p_type,) = struct.unpack_from("<I", data, base)
        if p_type != _PT_NOTE:
            continue
        offset, _, _, size = struct.unpack_from("<QQQQ", data, base + 8)
        pos, end = offset, min(offset + size, len(data))
        while pos + 12 <= end:
            namesz, descsz, kind = struct.unpack_from("<III", data, pos)
            name = data[pos + 12 : pos + 12 + namesz].rstrip(b"\0")
            if name == b"Xen" and kind == _XEN_ELFNOTE_PHYS32_ENTRY:
                return True
            pos += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    return False


def elf_section(data: bytes, wanted: str) -> bytes | None:
    """Return the bytes of the named section of an ELF64 file (a kernel module), if any."""
    header = _elf_header(data)
    if header is None:
        return None
    *_, shoff, shentsize, shnum = header
    (shstrndx,) = struct.unpack_from("<H", data, 62)

    def section(i: int) -> tuple[int, int, int]:
        base = shoff + i * shentsize
        (name,) = struct.unpack_from("<I", data, base)
        offset, size = struct.unpack_from("<QQ", data, base + 24)
        return name, offset, size

    _, str_off, str_size = section(shstrndx)
    names = data[str_off : str_off + str_size]
    for i in range(shnum):
        name_off, offset, size = section(i)
        end = names.find(b"\0", name_off)
        if names[name_off:end].decode("ascii", "replace") == wanted:
            return data[offset : offset + size]
    return None


def bzimage_version(vmlinuz: bytes) -> str | None:
    """Read the kernel release (``6.1.0-56-cloud-amd64``) from a bzImage's setup header.

    Needed to find ``/lib/modules/<release>`` for a ``vmlinuz`` given without a package.
    """
    if len(vmlinuz) < 0x210 or vmlinuz[0x202:0x206] != b"HdrS":
        return None
    (offset,) = struct.unpack_from("<H", vmlinuz, 0x20E)
    start = 0x200 + offset
    end = vmlinuz.find(b"\0", start, start + 256)
    if not offset or end < 0:
        return None
    return vmlinuz[start:end].decode("ascii", "replace").split(" ", 1)[0] or None
