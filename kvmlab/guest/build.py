"""Build the kvmlab test guest: a Debian kernel plus a busybox initramfs.

The real QEMU backend needs a guest that boots in seconds under TCG and tells the host what it
sees, so that the same assertions hold on the real and the fake backend (DESIGN.md, "Guest
facts protocol"). This module builds one from Debian packages, with no host tools beyond
``apt-get download`` and ``apt-cache``: the ``.deb`` files are unpacked in Python (``ar`` by
hand, then :mod:`tarfile`), and the initramfs is written as a ``newc`` cpio archive in Python.

Quick start::

    from kvmlab.guest.build import build_guest

    image = build_guest(progress=print)
    # qemu-system-x86_64 -accel tcg -m 256 -kernel image.kernel -initrd image.initrd \\
    #     -append console=ttyS0 -nographic ...

What the guest does (see :func:`render_init_script`): ``/init`` mounts ``/proc``, ``/sys`` and
``/dev``, loads the virtio and power-button modules, starts busybox ``acpid`` (so that QMP
``system_powerdown`` powers it off), then prints on the serial console::

    KVMLAB-BOOT-OK
    MEM <MemTotal kB>
    CPUS <online cpus>
    NIC eth0 52:54:00:12:34:56
    KVMLAB-FACTS-END

and offers a shell on the console.

Where the parts come from, in this order:

- kernel: the ``kernel`` argument (a ``vmlinuz`` file or a ``linux-image-*`` ``.deb``); a
  ``linux-image-*.deb`` already in the cache; ``apt-get download`` of the package that
  ``linux-image-cloud-amd64`` depends on; the host's ``/boot/vmlinuz-*`` (with its modules
  from ``/lib/modules/<version>``).
- busybox: a ``busybox-static`` ``.deb`` already in the cache; the host's ``/bin/busybox``
  when it is statically linked; ``apt-get download busybox-static``.

Everything lands in a cache directory (:func:`default_cache_dir`). The output names carry a
hash of the kernel, busybox, module and ``/init`` bytes, so a changed init script makes a new
image and an unchanged one is reused without being rewritten.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import gzip
import hashlib
import importlib
import io
import json
import logging
import lzma
import os
import re
import shutil
import stat
import struct
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from kvmlab.errors import GuestBuildError

__all__ = [
    "BOOT_KERNEL_ARGS",
    "BOOT_KVM_EXTRA",
    "BOOT_MACHINE",
    "GUEST_MODULES",
    "CpioEntry",
    "GuestBuildError",
    "GuestImage",
    "boot_hvparams",
    "build_guest",
    "default_cache_dir",
    "read_ar",
    "read_newc",
    "render_init_script",
    "write_newc",
]

log = logging.getLogger("kvmlab.guest.build")
cmdlog = logging.getLogger("kvmlab.commands")

#: Modules ``/init`` loads, before their dependencies are added. virtio_pci finds the
#: devices, virtio_net and virtio_blk drive them; ``button`` turns the ACPI power button
#: (QMP ``system_powerdown``) into an input event and ``evdev`` exposes it as
#: ``/dev/input/event*`` for busybox ``acpid``. Debian's cloud kernel builds all of them as
#: modules; a kernel that has them built in simply needs none.
GUEST_MODULES: tuple[str, ...] = ("virtio_pci", "virtio_net", "virtio_blk", "evdev", "button")

#: The Debian metapackage whose dependency names the kernel to download.
KERNEL_METAPACKAGE = "linux-image-cloud-amd64"
BUSYBOX_PACKAGE = "busybox-static"

# Bumped when the image layout changes in a way the hashed inputs do not show.
_FORMAT = 1
_APT_TIMEOUT = 600.0
_AR_MAGIC = b"!<arch>\n"
_ELF_MAGIC = b"\x7fELF"
_EM_X86_64 = 62
_PT_INTERP = 3
_MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.gz", ".ko.zst")
_MODULES_PATH = re.compile(r"^(?:\./)?(?:usr/)?lib/modules/([^/]+)/(.+)$")
_VMLINUZ_PATH = re.compile(r"^(?:\./)?boot/vmlinuz-(.+)$")
_BUSYBOX_PATHS = ("bin/busybox", "usr/bin/busybox")


@dataclass(frozen=True)
class GuestImage:
    """A built test guest: pass ``kernel`` to ``-kernel`` and ``initrd`` to ``-initrd``.

    Boot it with ``console=ttyS0`` on the kernel command line: the guest facts go to the
    first serial port.
    """

    kernel: Path
    initrd: Path

    def to_json(self) -> str:
        """Return ``{"kernel": ..., "initrd": ...}`` with absolute paths, for ``--json``."""
        return json.dumps({"kernel": str(self.kernel), "initrd": str(self.initrd)})

    def hvparams(self, **overrides: object) -> dict[str, object]:
        """The hvparams that boot this guest fast: :func:`boot_hvparams` for this image."""
        return boot_hvparams(self, **overrides)


# --------------------------------------------------------------------------- booting it
# What makes the test guest reach KVMLAB-BOOT-OK sooner under TCG, each measured on its
# own (benchmarks/bench_boot.py, docs/guest.md): they live in the instance's hvparams, not
# in the generator, so any other instance is generated exactly as before.

#: Kernel arguments (kvmlab's generator adds ``root=`` and ``console=ttyS0,SPEED``).
#: ``panic=-1``: a kernel panic reboots at once, and with ``-no-reboot`` QEMU exits.
#: ``quiet``: no boot messages over the emulated UART, where every byte is a trapped I/O
#: port write; /init prints the facts itself, so they are unchanged.
#: ``cryptomgr.notests``: Debian's kernel self-tests every crypto algorithm it registers
#: (0.3 s under TCG); the guest uses none of them.
BOOT_KERNEL_ARGS = "panic=-1 quiet cryptomgr.notests"
#: The machine type: Q35 (``q35`` is the alias of the newest ``pc-q35-X.Y`` of each QEMU).
#: Under TCG Linux probes virtio PCI devices on Q35's PCIe root far faster than on the
#: i440FX machine (20 ms against 240 ms for virtio_pci here), and its ACPI init is shorter.
BOOT_MACHINE = "q35"
#: Only the devices the instance asks for: no VGA, no default CD-ROM, floppy or parallel
#: port (kvmlab gives the serial port, monitor and NICs explicitly).
BOOT_KVM_EXTRA = "-nodefaults"


def boot_hvparams(image: GuestImage | None = None, **overrides: object) -> dict[str, object]:
    """The hvparams of an instance that boots the test guest fast (for ``HvParams``).

    Direct kernel boot of ``image`` (none for the fake kvm, which needs no kernel) with
    :data:`BOOT_KERNEL_ARGS` on the serial console at 115200 baud, the
    :data:`BOOT_MACHINE` machine, :data:`BOOT_KVM_EXTRA`, and no VNC. ``overrides`` win::

        Instance(name="vm1", hvparams=HvParams.model_validate(image.hvparams()))
    """
    params: dict[str, object] = {
        "kernel_path": str(image.kernel) if image is not None else "",
        "initrd_path": str(image.initrd) if image is not None else "",
        "kernel_args": BOOT_KERNEL_ARGS,
        "serial_speed": 115200,
        "vnc_bind_address": "",
        "machine_version": BOOT_MACHINE,
        "kvm_extra": BOOT_KVM_EXTRA,
    }
    params.update(overrides)
    return params


def default_cache_dir() -> Path:
    """Return where built guests and downloaded packages are kept.

    ``$XDG_CACHE_HOME/kvmlab/guest``, or ``~/.cache/kvmlab/guest`` when the variable is unset
    or empty (the XDG base directory rule).
    """
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kvmlab" / "guest"


# --------------------------------------------------------------------------- archives


def read_ar(data: bytes) -> dict[str, bytes]:
    """Return the members of a System V / GNU ``ar`` archive (a ``.deb``) by name.

    A ``.deb`` is an ``ar`` archive of ``debian-binary``, ``control.tar.*`` and
    ``data.tar.*``; reading it here spares a dependency on binutils or dpkg-deb.

    :param data: the whole archive.
    :return: member name (without the GNU trailing ``/``) to its bytes, in archive order.
    :raise GuestBuildError: the data is not an ``ar`` archive or is truncated.
    """
    if not data.startswith(_AR_MAGIC):
        raise GuestBuildError("not an ar archive (a .deb starts with '!<arch>')")
    members: dict[str, bytes] = {}
    pos = len(_AR_MAGIC)
    while pos < len(data):
        header = data[pos : pos + 60]
        if len(header) < 60 or header[58:60] != b"`\n":
            raise GuestBuildError(f"corrupt ar header at offset {pos}")
        name = header[:16].decode("ascii", "replace").rstrip()
        try:
            size = int(header[48:58].decode("ascii").strip())
        except ValueError:
            raise GuestBuildError(f"corrupt ar member size at offset {pos}") from None
        start = pos + 60
        if start + size > len(data):
            raise GuestBuildError(f"ar member {name!r} is truncated")
        if name.startswith("#1/"):  # BSD long name: stored before the data
            name_len = int(name[3:])
            name = data[start : start + name_len].rstrip(b"\0").decode()
            members[name] = data[start + name_len : start + size]
        else:
            members[name.removesuffix("/")] = data[start : start + size]
        pos = start + size + (size & 1)  # members are 2-byte aligned
    return members


def _zstd_decompress(data: bytes, what: str) -> bytes:
    """Decompress zstd data with whatever the interpreter offers, or say what is missing."""
    for module_name in ("compression.zstd", "zstandard"):  # Python 3.14+, then PyPI
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        if module_name == "zstandard":
            out = module.ZstdDecompressor().decompressobj().decompress(data)
        else:
            out = module.decompress(data)
        return bytes(out)
    raise GuestBuildError(
        f"{what} is zstd-compressed and this Python ({sys.version.split()[0]}) cannot read it: "
        "Python 3.14's compression.zstd or the 'zstandard' package is needed"
    )


def _deb_data_tar(deb: bytes, what: str) -> tarfile.TarFile:
    """Open the ``data.tar.*`` member of a ``.deb`` as a streaming tar reader.

    Debian 12 compresses it with xz; Ubuntu and newer dpkg may use zstd, which the standard
    library reads only from Python 3.14.
    """
    members = read_ar(deb)
    name = next((n for n in members if n.startswith("data.tar")), None)
    if name is None:
        raise GuestBuildError(f"{what} has no data.tar member: not a binary package")
    stream = io.BytesIO(members[name])
    if name == "data.tar.zst":
        return tarfile.open(fileobj=io.BytesIO(_zstd_decompress(stream.read(), f"{what}:{name}")))
    if name == "data.tar.xz":
        return tarfile.open(fileobj=stream, mode="r|xz")
    if name == "data.tar.gz":
        return tarfile.open(fileobj=stream, mode="r|gz")
    if name == "data.tar.bz2":
        return tarfile.open(fileobj=stream, mode="r|bz2")
    if name == "data.tar":
        return tarfile.open(fileobj=stream, mode="r|")
    raise GuestBuildError(f"{what}: unsupported member {name}")


# --------------------------------------------------------------------------- cpio newc


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


# --------------------------------------------------------------------------- ELF


def _elf_header(data: bytes) -> tuple[int, int, int, int, int, int, int] | None:
    """Return (e_machine, phoff, phentsize, phnum, shoff, shentsize, shnum) of an ELF64 LE."""
    if len(data) < 64 or not data.startswith(_ELF_MAGIC) or data[4] != 2 or data[5] != 1:
        return None
    (machine,) = struct.unpack_from("<H", data, 18)
    phoff, shoff = struct.unpack_from("<QQ", data, 32)
    phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", data, 54)
    return machine, phoff, phentsize, phnum, shoff, shentsize, shnum


def _is_static_x86_64(data: bytes) -> bool:
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


def _elf_section(data: bytes, wanted: str) -> bytes | None:
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


def _module_info(ko: bytes) -> dict[str, str]:
    """Return a module's ``.modinfo`` (``name``, ``depends``, ...) as a dict.

    The ``.deb`` ships no ``modules.dep`` (``depmod`` makes it at install time), but every
    module records its own dependencies in ``depends=``.
    """
    raw = _elf_section(ko, ".modinfo") or b""
    info: dict[str, str] = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.decode("utf-8", "replace").partition("=")
        if sep and key not in info:
            info[key] = value
    return info


def _module_deps(ko: bytes) -> tuple[str, ...]:
    return tuple(d for d in _module_info(ko).get("depends", "").split(",") if d)


def _module_name(path: str) -> str | None:
    """``kernel/drivers/virtio/virtio-rng.ko.xz`` -> ``virtio_rng`` (the kernel's spelling)."""
    base = path.rsplit("/", 1)[-1]
    for suffix in _MODULE_SUFFIXES:
        if base.endswith(suffix):
            return base.removesuffix(suffix).replace("-", "_")
    return None


def _decompress_module(path: str, data: bytes) -> bytes:
    """Return a module uncompressed, so that busybox ``insmod`` needs no decompressor."""
    if path.endswith(".xz"):
        return lzma.decompress(data)
    if path.endswith(".gz"):
        return gzip.decompress(data)
    if path.endswith(".zst"):
        return _zstd_decompress(data, path)
    return data


def _bzimage_version(vmlinuz: bytes) -> str | None:
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


# --------------------------------------------------------------------------- modules


@dataclass(frozen=True)
class _Kernel:
    """A kernel and the modules ``/init`` must load, in load order (dependencies first)."""

    vmlinuz: Path
    release: str
    modules: tuple[tuple[str, bytes], ...]
    origin: str


def _resolve_modules(
    wanted: Sequence[str],
    available: Mapping[str, str],
    load: Callable[[str], bytes],
    builtin: frozenset[str],
    progress: Callable[[str], None],
) -> list[tuple[str, bytes]]:
    """Close ``wanted`` over module dependencies and order it for ``insmod``.

    :param wanted: module names to load.
    :param available: module name to its path in the kernel's module tree.
    :param load: reads (and decompresses) a module by path.
    :param builtin: names compiled into the kernel: nothing to load.
    :return: ``(name, bytes)`` with every module after its dependencies.
    """
    blobs: dict[str, bytes] = {}
    deps: dict[str, tuple[str, ...]] = {}
    todo = list(wanted)
    while todo:
        name = todo.pop()
        if name in deps or name in builtin:
            continue
        if name not in available:
            progress(f"module {name} is neither built in nor shipped: skipped")
            deps[name] = ()
            continue
        blobs[name] = load(available[name])
        deps[name] = _module_deps(blobs[name])
        todo.extend(deps[name])

    order: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in order or name not in blobs:
            return
        if name in path:
            raise GuestBuildError(f"module dependency loop: {' -> '.join((*path, name))}")
        for dep in sorted(deps[name]):
            visit(dep, (*path, name))
        order.append(name)

    for name in sorted(blobs):
        visit(name, ())
    return [(name, blobs[name]) for name in order]


def _builtin_names(text: str) -> frozenset[str]:
    names = (_module_name(line.strip()) for line in text.splitlines())
    return frozenset(n for n in names if n)


def _kernel_from_deb(deb_path: Path, cache_dir: Path, progress: Callable[[str], None]) -> _Kernel:
    """Unpack the kernel and the needed modules of a ``linux-image-*`` package, once.

    Decompressing the package takes seconds, so the result is kept in
    ``cache_dir/kernels/<package hash>-<module set hash>/`` and later builds read only that.
    """
    deb = deb_path.read_bytes()
    key = _sha256(deb)[:16] + "-" + _sha256(json.dumps(GUEST_MODULES).encode())[:8]
    unpacked = cache_dir / "kernels" / key
    meta_path = unpacked / "meta.json"
    if meta_path.is_file():
        saved = json.loads(meta_path.read_text())
        kept = tuple((n, (unpacked / f"{n}.ko").read_bytes()) for n in saved["modules"])
        return _Kernel(unpacked / "vmlinuz", str(saved["release"]), kept, str(deb_path))

    progress(f"unpacking {deb_path.name}")
    vmlinuz: bytes | None = None
    release = ""
    ko_files: dict[str, tuple[str, bytes]] = {}
    builtin_text = ""
    with _deb_data_tar(deb, deb_path.name) as tar:
        for member in tar:
            if not member.isfile():
                continue
            if match := _VMLINUZ_PATH.match(member.name):
                vmlinuz = _read_member(tar, member)
                release = match.group(1)
            elif match := _MODULES_PATH.match(member.name):
                rest = match.group(2)
                if rest == "modules.builtin":
                    builtin_text = _read_member(tar, member).decode()
                elif name := _module_name(rest):
                    # All modules are kept until the closure is known: dependencies can
                    # come before or after their users in the archive (about 100 MB here).
                    ko_files[name] = (rest, _read_member(tar, member))
    if vmlinuz is None:
        raise GuestBuildError(
            f"{deb_path} holds no boot/vmlinuz-*: pass a linux-image-<version>-<flavour> "
            "package, not a metapackage"
        )
    modules = _resolve_modules(
        GUEST_MODULES,
        {name: path for name, (path, _) in ko_files.items()},
        lambda path: _decompress_module(path, ko_files[_module_name(path) or ""][1]),
        _builtin_names(builtin_text),
        progress,
    )
    ko_files.clear()

    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=_mkdir(unpacked.parent)))
    try:
        (tmp / "vmlinuz").write_bytes(vmlinuz)
        for name, blob in modules:
            (tmp / f"{name}.ko").write_bytes(blob)
        meta = {"release": release, "modules": [n for n, _ in modules], "source": deb_path.name}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        tmp.chmod(0o755)
        try:
            tmp.rename(unpacked)
        except OSError:
            if not meta_path.is_file():  # not a concurrent build that won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _Kernel(unpacked / "vmlinuz", release, tuple(modules), str(deb_path))


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    handle = tar.extractfile(member)
    if handle is None:
        raise GuestBuildError(f"cannot read {member.name} from the package")
    with handle:
        return handle.read()


def _kernel_from_vmlinuz(path: Path, progress: Callable[[str], None]) -> _Kernel:
    """Use a bare ``vmlinuz``; its modules, if any, from ``/lib/modules/<release>``."""
    try:
        vmlinuz = path.read_bytes()
    except OSError as err:
        raise GuestBuildError(f"cannot read kernel {path}: {err.strerror}") from err
    release = _bzimage_version(vmlinuz) or path.name.removeprefix("vmlinuz-")
    moddir = next(
        (
            d
            for d in (Path("/lib/modules") / release, Path("/usr/lib/modules") / release)
            if d.is_dir()
        ),
        None,
    )
    if moddir is None:
        progress(f"no modules for kernel {release}: assuming virtio is built in")
        return _Kernel(path, release, (), str(path))
    available: dict[str, str] = {}
    for dirpath, _, files in os.walk(moddir / "kernel"):
        for file in files:
            if name := _module_name(file):
                available[name] = os.path.join(dirpath, file)
    builtin_file = moddir / "modules.builtin"
    builtin = _builtin_names(builtin_file.read_text()) if builtin_file.is_file() else frozenset()
    modules = _resolve_modules(
        GUEST_MODULES,
        available,
        lambda p: _decompress_module(p, Path(p).read_bytes()),
        builtin,
        progress,
    )
    return _Kernel(path, release, tuple(modules), str(path))


# --------------------------------------------------------------------------- apt


def _run(argv: Sequence[str], *, cwd: Path | None = None) -> str:
    """Run a command to completion and return its stdout, or fail with its stderr."""
    cmdlog.debug("running %s", " ".join(argv))
    try:
        proc = subprocess.run(
            list(argv),
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=_APT_TIMEOUT,
            check=False,
        )
    except FileNotFoundError as err:
        raise GuestBuildError(f"{argv[0]} not found") from err
    except subprocess.TimeoutExpired as err:
        raise GuestBuildError(f"{argv[0]} took more than {_APT_TIMEOUT:.0f} s") from err
    if proc.returncode != 0:
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        raise GuestBuildError(f"{' '.join(argv)} failed ({proc.returncode}): {tail}")
    return proc.stdout


def _kernel_package() -> str:
    """Name the real kernel package behind the metapackage (its first ``Depends``)."""
    out = _run(["apt-cache", "depends", "--important", KERNEL_METAPACKAGE])
    for line in out.splitlines():
        kind, _, value = line.strip().partition(":")
        if kind.lstrip("|") == "Depends" and value.strip().startswith("linux-image-"):
            return value.strip()
    raise GuestBuildError(
        f"apt-cache knows no kernel behind {KERNEL_METAPACKAGE} (run apt-get update?)"
    )


def _apt_download(package: str, downloads: Path, progress: Callable[[str], None]) -> Path:
    """``apt-get download`` one package into ``downloads`` and return the ``.deb``.

    The download goes to a private temporary directory first, so a half-downloaded file
    never looks like a cached package.
    """
    progress(f"downloading {package}")
    argv = ["apt-get", "download", "-q"]
    if os.geteuid() == 0:
        # As root apt drops to the _apt user, which cannot write our (private) directory;
        # it would fall back with a warning anyway.
        argv += ["-o", "APT::Sandbox::User=root"]
    tmp = Path(tempfile.mkdtemp(prefix=".download.", dir=_mkdir(downloads)))
    try:
        _run([*argv, package], cwd=tmp)
        debs = sorted(tmp.glob("*.deb"))
        if not debs:
            raise GuestBuildError(f"apt-get download {package} produced no .deb")
        target = downloads / debs[0].name
        os.replace(debs[0], target)
        return target
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _cached_deb(downloads: Path, pattern: str) -> Path | None:
    """The newest downloaded package matching ``pattern`` (never the kernel metapackage)."""
    found = sorted(
        (p for p in downloads.glob(pattern) if not p.name.startswith(f"{KERNEL_METAPACKAGE}_")),
        key=lambda p: (p.stat().st_mtime, p.name),
    )
    return found[-1] if found else None


# --------------------------------------------------------------------------- sources


def _find_kernel(kernel: Path | None, cache_dir: Path, progress: Callable[[str], None]) -> _Kernel:
    """Pick the kernel by the documented order: argument, cache, download, host."""
    if kernel is not None:
        kernel = Path(kernel).expanduser()
        if not kernel.is_file():
            raise GuestBuildError(f"kernel {kernel} is not a file")
        with kernel.open("rb") as fh:
            is_deb = fh.read(len(_AR_MAGIC)) == _AR_MAGIC
        if is_deb:
            return _kernel_from_deb(kernel, cache_dir, progress)
        return _kernel_from_vmlinuz(kernel, progress)

    downloads = cache_dir / "downloads"
    cached = _cached_deb(downloads, "linux-image-*.deb")
    if cached is not None:
        return _kernel_from_deb(cached, cache_dir, progress)

    apt_problem = "apt-get not found"
    if shutil.which("apt-get") and shutil.which("apt-cache"):
        try:
            deb = _apt_download(_kernel_package(), downloads, progress)
            return _kernel_from_deb(deb, cache_dir, progress)
        except GuestBuildError as err:
            apt_problem = str(err)
            progress(f"kernel download failed ({err}); trying the host's /boot")

    for candidate in _host_kernels():
        if os.access(candidate, os.R_OK):
            progress(f"using the host kernel {candidate}")
            return _kernel_from_vmlinuz(candidate, progress)
        progress(f"{candidate} is not readable (root only?)")
    raise GuestBuildError(
        f"{apt_problem} and no kernel given: pass kernel=PATH (a vmlinuz or a linux-image-*.deb)"
    )


def _host_kernels() -> list[Path]:
    """The host's ``/boot/vmlinuz-*``, the running kernel's first."""
    running = Path("/boot") / f"vmlinuz-{os.uname().release}"
    others = sorted(Path("/boot").glob("vmlinuz-*"), reverse=True)
    return [running] * running.is_file() + [p for p in others if p != running]


def _find_busybox(cache_dir: Path, progress: Callable[[str], None]) -> tuple[bytes, str]:
    """Return a statically linked x86-64 busybox and where it came from."""
    downloads = cache_dir / "downloads"
    deb = _cached_deb(downloads, f"{BUSYBOX_PACKAGE}_*.deb")
    if deb is not None:
        return _busybox_from_deb(deb), str(deb)
    for host in (Path("/bin/busybox"), Path("/usr/bin/busybox")):
        try:
            data = host.read_bytes()
        except OSError:
            continue
        if _is_static_x86_64(data):
            progress(f"using busybox from {host}")
            return data, str(host)
        progress(f"{host} is dynamically linked: not usable in the initramfs")
    if not shutil.which("apt-get"):
        raise GuestBuildError(
            "no statically linked busybox: apt-get not found and /bin/busybox is missing or "
            f"dynamic (install {BUSYBOX_PACKAGE})"
        )
    deb = _apt_download(BUSYBOX_PACKAGE, downloads, progress)
    return _busybox_from_deb(deb), str(deb)


def _busybox_from_deb(deb: Path) -> bytes:
    with _deb_data_tar(deb.read_bytes(), deb.name) as tar:
        for member in tar:
            if member.isfile() and member.name.removeprefix("./") in _BUSYBOX_PATHS:
                data = _read_member(tar, member)
                if not _is_static_x86_64(data):
                    raise GuestBuildError(f"busybox in {deb.name} is not a static x86-64 binary")
                return data
    raise GuestBuildError(f"{deb.name} has no bin/busybox")


# --------------------------------------------------------------------------- /init

_INIT_TEMPLATE = r"""#!/bin/busybox sh
# kvmlab test guest /init, written by kvmlab.guest.build (the image name hashes this text).
# Prints the guest facts protocol on the serial console, powers off on the ACPI power
# button (QMP system_powerdown) and offers a shell on the console.
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root
# Kernel messages from here on would interleave with the facts on the same serial line.
echo 1 > /proc/sys/kernel/printk
for m in @MODULES@; do
    insmod /lib/modules/$m.ko || echo "kvmlab-init: insmod $m failed" >&2
done
ip link set lo up
# The power button: acpid runs /etc/acpi/PWRF/00000080 (poweroff -f). Started before the
# facts so that a host which powers down right after KVMLAB-FACTS-END is heard.
acpid -c /etc/acpi -l /tmp/acpid.log
# The command channel on ttyS1 (kvmlab.channels.guest_channel, docs/guest.md): each request line
# "<nonce> <seconds> <command line>" runs under sh -c, stdin /dev/null, killed after
# <seconds>; the reply is its output (stdout and stderr), a newline, then
# "KVMLAB-EXIT <nonce> <status>". The tty is raw: no echo, no CR/LF rewriting; the
# output goes through a pipe, so commands see no tty (ls prints one name a line).
# Without a second serial port the open fails; stderr stays off the console.
(
    set -o pipefail
    while true; do
        {
            stty raw -echo 115200
            while IFS= read -r req; do
                nonce=${req%% *}
                rest=${req#* }
                secs=${rest%% *}
                cmd=${rest#* }
                timeout -s KILL "$secs" sh -c "$cmd" </dev/null 2>&1 | cat
                printf '\nKVMLAB-EXIT %s %s\n' "$nonce" "$?"
            done
        } </dev/ttyS1 >/dev/ttyS1
        sleep 1
    done
) 2>/dev/null &
out=/dev/console
[ -c /dev/ttyS0 ] && out=/dev/ttyS0
facts="KVMLAB-BOOT-OK
MEM $(sed -n 's/^MemTotal: *\([0-9]*\) kB$/\1/p' /proc/meminfo)
CPUS $(nproc)"
for n in $(ls /sys/class/net | sed -n 's/^eth\([0-9][0-9]*\)$/\1/p' | sort -n); do
    facts="$facts
NIC eth$n $(cat /sys/class/net/eth$n/address)"
done
# One write, so nothing can land in the middle of the block.
printf '%s\nKVMLAB-FACTS-END\n' "$facts" > $out
while true; do
    setsid cttyhack sh -l
    sleep 1
done
"""

_POWER_HANDLER = """#!/bin/sh
# Run by busybox acpid on the ACPI power button (QMP system_powerdown).
echo KVMLAB-POWEROFF > /dev/console
poweroff -f
"""


def render_init_script(modules: Sequence[str]) -> str:
    """Return the ``/init`` text that loads ``modules`` in the given order.

    The script is part of the image's cache key, so any change to it builds a new image.

    :param modules: module names, dependencies first (each is ``/lib/modules/<name>.ko``).
    """
    for name in modules:
        if not re.fullmatch(r"[A-Za-z0-9_]+", name):
            raise GuestBuildError(f"unexpected module name {name!r}")
    return _INIT_TEMPLATE.replace("@MODULES@", " ".join(modules) or "")


def _initramfs_entries(
    busybox: bytes, init: str, modules: Sequence[tuple[str, bytes]]
) -> list[CpioEntry]:
    dirs = [
        "bin",
        "dev",
        "etc",
        "etc/acpi",
        "etc/acpi/PWRF",
        "lib",
        "lib/modules",
        "proc",
        "root",
        "run",
        "sbin",
        "sys",
        "tmp",
        "usr",
        "usr/bin",
        "usr/sbin",
        "var",
        "var/log",
    ]
    entries = [CpioEntry(d, stat.S_IFDIR | 0o755) for d in dirs]
    # The kernel opens /dev/console for init's stdio before /init mounts devtmpfs.
    entries.append(CpioEntry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)))
    entries.append(CpioEntry("bin/busybox", stat.S_IFREG | 0o755, busybox))
    entries.append(CpioEntry("bin/sh", stat.S_IFLNK | 0o777, b"busybox"))
    entries.append(CpioEntry("init", stat.S_IFREG | 0o755, init.encode()))
    entries.append(
        CpioEntry("etc/acpi/PWRF/00000080", stat.S_IFREG | 0o755, _POWER_HANDLER.encode())
    )
    entries.extend(
        CpioEntry(f"lib/modules/{name}.ko", stat.S_IFREG | 0o644, blob) for name, blob in modules
    )
    return entries


# --------------------------------------------------------------------------- build


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _atomic_write(path: Path, chunks: Iterator[bytes]) -> None:
    """Write a file under a temporary name in the same directory, then rename it.

    A reader (or a concurrent build) sees either no file or the whole file.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            for chunk in chunks:
                fh.write(chunk)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


#: The lock file in the cache directory: held by every build (or reuse) of the guest.
LOCK_NAME = ".build.lock"


@contextlib.contextmanager
def _build_lock(cache: Path, progress: Callable[[str], None]) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``CACHE/.build.lock`` while a build runs.

    Parallel test workers (pytest-xdist) and concurrent ``kvmlab guest build`` commands
    then build, or download, once: the first one holds the lock, the others wait for it
    and find the finished image. A cache directory where the lock file cannot be created
    (read-only) is used without a lock: nothing can be written there anyway.
    """
    try:
        fd = os.open(cache / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as err:
        if err.errno not in (errno.EACCES, errno.EROFS, errno.EPERM):
            raise
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress(f"waiting for another build of the test guest ({cache / LOCK_NAME})")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            yield chunk


def build_guest(
    cache_dir: Path | None = None,
    kernel: Path | None = None,
    *,
    progress: Callable[[str], None] | None = None,
) -> GuestImage:
    """Build the test guest (or find it already built) and return its kernel and initrd.

    The first build downloads two Debian packages (about 28 MB) and unpacks them; later
    builds hash the inputs and return the existing files. Builds sharing a cache
    directory take turns (an ``flock`` on ``CACHE/.build.lock``), so parallel test
    workers build and download once.

    :param cache_dir: where downloads, unpacked kernels and images live; defaults to
        :func:`default_cache_dir`.
    :param kernel: a ``vmlinuz`` or a ``linux-image-*`` ``.deb`` to use instead of the cached
        or downloaded Debian cloud kernel.
    :param progress: called with short human-readable messages (``"downloading ..."``), for
        a notebook or the CLI to show; nothing is printed otherwise.
    :return: the paths of the kernel and the gzip-compressed initramfs.
    :raise GuestBuildError: a part is missing (no apt-get and no kernel given, no static
        busybox, an unreadable package) or a download failed.
    """
    report: Callable[[str], None] = progress or (lambda message: log.info("%s", message))
    cache = _mkdir(Path(cache_dir) if cache_dir is not None else default_cache_dir())
    with _build_lock(cache, report):
        return _build_locked(cache, kernel, report)


def _build_locked(cache: Path, kernel: Path | None, report: Callable[[str], None]) -> GuestImage:
    kern = _find_kernel(kernel, cache, report)
    busybox, busybox_origin = _find_busybox(cache, report)
    init = render_init_script([name for name, _ in kern.modules])

    kernel_hash = _sha256(kern.vmlinuz.read_bytes())
    key = json.dumps(
        {
            "format": _FORMAT,
            "kernel": kernel_hash,
            "busybox": _sha256(busybox),
            "modules": [[name, _sha256(blob)] for name, blob in kern.modules],
            "init": init,
            "power_handler": _POWER_HANDLER,
        },
        sort_keys=True,
    )
    digest = _sha256(key.encode())[:16]
    image = GuestImage(
        kernel=(cache / f"vmlinuz-{digest}").resolve(),
        initrd=(cache / f"initrd-{digest}.cpio.gz").resolve(),
    )
    if image.kernel.is_file() and image.initrd.is_file():
        report(f"reusing guest {digest} (kernel {kern.release})")
        return image

    entries = _initramfs_entries(busybox, init, kern.modules)
    report(f"writing initramfs ({len(entries)} files, kernel {kern.release})")
    archive = gzip.compress(write_newc(entries), compresslevel=6, mtime=0)
    _atomic_write(image.initrd, iter([archive]))
    _atomic_write(image.kernel, _file_chunks(kern.vmlinuz))
    manifest = {
        "kernel_source": kern.origin,
        "kernel_release": kern.release,
        "busybox_source": busybox_origin,
        "modules": [name for name, _ in kern.modules],
        **dataclasses.asdict(image),
    }
    _atomic_write(
        cache / f"guest-{digest}.json",
        iter([json.dumps(manifest, indent=2, default=str).encode() + b"\n"]),
    )
    return image


def find_built_guest(cache_dir: Path | None = None) -> GuestImage | None:
    """The most recently built guest in the cache, without building or downloading.

    Used by the accelerator probe, which must not trigger a download on its own.
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    manifests = sorted(cache.glob("guest-*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for manifest in manifests:
        digest = manifest.stem.removeprefix("guest-")
        image = GuestImage(
            kernel=cache / f"vmlinuz-{digest}", initrd=cache / f"initrd-{digest}.cpio.gz"
        )
        if image.kernel.is_file() and image.initrd.is_file():
            return image
    return None
