"""Getting a bootable kernel and its guest modules out of a package or the host.

A ``linux-image-*`` package holds the ``vmlinuz`` and about 100 MB of modules, of which the
guest needs a dozen; a bare ``vmlinuz`` finds its modules under ``/lib/modules/<release>``.
Either way the result is a :class:`Kernel`: the image plus the modules ``/init`` loads, in
load order. Unpacking a package takes seconds, so its result is kept in the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kvmlab.errors import GuestBuildError
from kvmlab.guest.archives import deb_data_tar, read_member
from kvmlab.guest.elf import bzimage_version
from kvmlab.guest.modules import (
    GUEST_MODULES,
    builtin_names,
    decompress_module,
    module_name,
    resolve_modules,
)

__all__ = ["Kernel", "kernel_from_deb", "kernel_from_vmlinuz"]

_MODULES_PATH = re.compile(r"^(?:\./)?(?:usr/)?lib/modules/([^/]+)/(.+)$")
_VMLINUZ_PATH = re.compile(r"^(?:\./)?boot/vmlinuz-(.+)$")


@dataclass(frozen=True)
class Kernel:
    """A kernel and the modules ``/init`` must load, in load order (dependencies first)."""

    vmlinuz: Path
    release: str
    modules: tuple[tuple[str, bytes], ...]
    origin: str


def kernel_from_deb(deb_path: Path, cache_dir: Path, progress: Callable[[str], None]) -> Kernel:
    """Unpack the kernel and the needed modules of a ``linux-image-*`` package, once.

    Decompressing the package takes seconds, so the result is kept in
    ``cache_dir/kernels/<package hash>-<module set hash>/`` and later builds read only that.
    """
    deb = deb_path.read_bytes()
    key = (
        hashlib.sha256(deb).hexdigest()[:16]
        + "-"
        + hashlib.sha256(json.dumps(GUEST_MODULES).encode()).hexdigest()[:8]
    )
    unpacked = cache_dir / "kernels" / key
    meta_path = unpacked / "meta.json"
    if meta_path.is_file():
        saved = json.loads(meta_path.read_text())
        kept = tuple((n, (unpacked / f"{n}.ko").read_bytes()) for n in saved["modules"])
        return Kernel(unpacked / "vmlinuz", str(saved["release"]), kept, str(deb_path))

    progress(f"unpacking {deb_path.name}")
    vmlinuz: bytes | None = None
    release = ""
    ko_files: dict[str, tuple[str, bytes]] = {}
    builtin_text = ""
    with deb_data_tar(deb, deb_path.name) as tar:
        for member in tar:
            if not member.isfile():
                continue
            if match := _VMLINUZ_PATH.match(member.name):
                vmlinuz = read_member(tar, member)
                release = match.group(1)
            elif match := _MODULES_PATH.match(member.name):
                rest = match.group(2)
                if rest == "modules.builtin":
                    builtin_text = read_member(tar, member).decode()
                elif name := module_name(rest):
                    # All modules are kept until the closure is known: dependencies can
                    # come before or after their users in the archive (about 100 MB here).
                    ko_files[name] = (rest, read_member(tar, member))
    if vmlinuz is None:
        raise GuestBuildError(
            f"{deb_path} holds no boot/vmlinuz-*: pass a linux-image-<version>-<flavour> "
            "package, not a metapackage"
        )
    modules = resolve_modules(
        GUEST_MODULES,
        {name: path for name, (path, _) in ko_files.items()},
        lambda path: decompress_module(path, ko_files[module_name(path) or ""][1]),
        builtin_names(builtin_text),
        progress,
    )
    ko_files.clear()

    unpacked.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=unpacked.parent))
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
    return Kernel(unpacked / "vmlinuz", release, tuple(modules), str(deb_path))


def kernel_from_vmlinuz(path: Path, progress: Callable[[str], None]) -> Kernel:
    """Use a bare ``vmlinuz``; its modules, if any, from ``/lib/modules/<release>``."""
    try:
        vmlinuz = path.read_bytes()
    except OSError as err:
        raise GuestBuildError(f"cannot read kernel {path}: {err.strerror}") from err
    release = bzimage_version(vmlinuz) or path.name.removeprefix("vmlinuz-")
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
        return Kernel(path, release, (), str(path))
    available: dict[str, str] = {}
    for dirpath, _, files in os.walk(moddir / "kernel"):
        for file in files:
            if name := module_name(file):
                available[name] = os.path.join(dirpath, file)
    builtin_file = moddir / "modules.builtin"
    builtin = builtin_names(builtin_file.read_text()) if builtin_file.is_file() else frozenset()
    modules = resolve_modules(
        GUEST_MODULES,
        available,
        lambda p: decompress_module(p, Path(p).read_bytes()),
        builtin,
        progress,
    )
    return Kernel(path, release, tuple(modules), str(path))
