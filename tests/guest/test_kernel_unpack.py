"""The builder boots the ``vmlinux`` inside a bzImage when it can (:mod:`kvmlab.guest.unpack`).

Each case builds a bzImage around a real compressed payload (the kernel's own framing: the
compressed stream, then the unpacked size as a 32-bit LE number) of a small ELF that has, or
lacks, the PVH entry note; the real Debian kernel is unpacked and booted by
``tests/guest/test_guest_build.py``.
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import struct
from collections.abc import Callable
from pathlib import Path

import lz4.block
import pytest
from test_guest_build import RELEASE, fake_kernel_deb, make_deb, make_elf

from kvmlab.guest.build import build_guest
from kvmlab.guest.elf import has_pvh_entry
from kvmlab.guest.unpack import bzimage_payload, unpack_vmlinux


def elf_with_notes(*notes: tuple[bytes, int, bytes]) -> bytes:
    """An ELF64 x86-64 file whose one program header is a ``PT_NOTE`` over ``notes``."""
    body = b""
    for name, kind, desc in notes:
        named = name + b"\0"
        body += struct.pack("<III", len(named), len(desc), kind)
        body += named.ljust((len(named) + 3) // 4 * 4, b"\0")
        body += desc.ljust((len(desc) + 3) // 4 * 4, b"\0")
    ehdr, phdr = 64, 56
    header = b"\x7fELF\x02\x01\x01" + b"\0" * 9
    header += struct.pack(
        "<HHIQQQIHHHHHH", 2, 62, 1, 0x1000000, ehdr, 0, 0, ehdr, phdr, 1, 64, 0, 0
    )
    note = struct.pack("<IIQQQQQQ", 4, 4, ehdr + phdr, 0, 0, len(body), len(body), 4)
    return header + note + body + b"\x90" * 4096  # some "code" after the notes


PVH_NOTE = (b"Xen", 18, struct.pack("<I", 0x1000850))
VMLINUX = elf_with_notes((b"Xen", 6, b"linux\0"), PVH_NOTE)
NO_PVH = elf_with_notes((b"Xen", 6, b"linux\0"), (b"GNU", 3, b"\1" * 20))


def lz4_legacy(data: bytes) -> bytes:
    """The framing of the kernel's ``lz4 -l``: magic, then (size, block) per 8 MiB."""
    out = struct.pack("<I", 0x184C2102)
    for start in range(0, len(data), 8 << 20):
        block = lz4.block.compress(data[start : start + (8 << 20)], store_size=False)
        out += struct.pack("<I", len(block)) + block
    return out


COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    "lz4": lz4_legacy,
    "gzip": lambda data: gzip.compress(data, mtime=0),
    "xz": lambda data: lzma.compress(data, lzma.FORMAT_XZ),
    "lzma": lambda data: lzma.compress(data, lzma.FORMAT_ALONE),
    "bzip2": bz2.compress,
}


def bzimage(payload: bytes, setup_sectors: int = 3) -> bytes:
    """A bzImage (boot protocol 2.15) whose payload is ``payload`` (size word included)."""
    setup = bytearray((setup_sectors + 1) * 512)
    setup[0x1F1] = setup_sectors
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, 0x20F)
    decompressor = b"\xcc" * 300  # the protected-mode stub before the payload
    struct.pack_into("<II", setup, 0x248, len(decompressor), len(payload))
    return bytes(setup) + decompressor + payload + b"\0" * 64


def packed(elf: bytes, compress: Callable[[bytes], bytes]) -> bytes:
    return bzimage(compress(elf) + struct.pack("<I", len(elf)))


@pytest.mark.parametrize("compression", list(COMPRESSORS))
def test_each_compression_unpacks_to_the_very_elf(compression: str) -> None:
    messages: list[str] = []
    vmlinuz = packed(VMLINUX, COMPRESSORS[compression])
    assert unpack_vmlinux(vmlinuz, messages.append) == VMLINUX
    assert messages == [f"kernel: unpacked its {compression} payload (0 MiB ELF, PVH boot)"]


def test_the_pvh_note_is_what_makes_a_kernel_bootable_unpacked() -> None:
    assert has_pvh_entry(VMLINUX)
    assert not has_pvh_entry(NO_PVH)
    assert not has_pvh_entry(b"\x7fELF" + b"\0" * 100)
    messages: list[str] = []
    assert unpack_vmlinux(packed(NO_PVH, gzip.compress), messages.append) is None
    assert messages == ["kernel: its vmlinux has no PVH entry point; booting the bzImage"]


@pytest.mark.parametrize(
    ("vmlinuz", "says"),
    [
        (b"MZ" + b"\0" * 4096, "not a bzImage"),
        (bzimage(b"\x89LZO" + b"\0" * 60 + struct.pack("<I", 64)), "compressed as 894c5a4f"),
        (bzimage(b"\x1f\x8b" + b"garbage" * 10 + struct.pack("<I", 99)), "cannot unpack its gzip"),
        # A payload that unpacks to another length than the size word says is not trusted.
        (bzimage(gzip.compress(VMLINUX) + struct.pack("<I", len(VMLINUX) + 1)), "where it says"),
    ],
    ids=["not-a-bzimage", "lzo", "corrupt", "wrong-size"],
)
def test_anything_else_boots_the_bzimage_and_says_why(vmlinuz: bytes, says: str) -> None:
    messages: list[str] = []
    assert unpack_vmlinux(vmlinuz, messages.append) is None
    assert len(messages) == 1 and says in messages[0], messages


def test_the_payload_is_found_from_the_setup_header() -> None:
    payload = gzip.compress(VMLINUX) + struct.pack("<I", len(VMLINUX))
    for sectors in (1, 4, 30):
        assert bzimage_payload(bzimage(payload, setup_sectors=sectors)) == payload
    old = bytearray(bzimage(payload))
    struct.pack_into("<H", old, 0x206, 0x207)  # before payload_offset existed
    assert bzimage_payload(bytes(old)) is None
    cut = bzimage(payload)[: 4 * 512 + 300 + 10]
    assert bzimage_payload(cut) is None


def test_the_build_keeps_the_unpacked_kernel_and_says_so(tmp_path: Path) -> None:
    deb = tmp_path / "linux-image-test.deb"
    deb.write_bytes(fake_kernel_deb({f"./boot/vmlinuz-{RELEASE}": packed(VMLINUX, lz4_legacy)}))
    cache = tmp_path / "cache"
    (cache / "downloads").mkdir(parents=True)  # a busybox package, so the host's is not used
    busybox = make_deb({"./bin/busybox": make_elf(sections={".text": b"fake busybox"})})
    (cache / "downloads" / "busybox-static_1.35.0-4_amd64.deb").write_bytes(busybox)
    image = build_guest(cache, deb)
    assert image.kernel.name.startswith("vmlinux-")
    assert image.kernel.read_bytes() == VMLINUX
    digest = image.kernel.name.removeprefix("vmlinux-")
    manifest = json.loads((cache / f"guest-{digest}.json").read_text())
    assert manifest["kernel_boot"] == "vmlinux (PVH)"
    messages: list[str] = []
    assert build_guest(cache, deb, progress=messages.append) == image  # found again, not redone
    assert not any(m.startswith("kernel: unpacked") for m in messages)
