"""Which kernel modules the guest loads, and in which order: the ``insmod`` list.

``/init`` loads the virtio and power-button drivers with busybox ``insmod``, which neither
resolves dependencies nor decompresses. So the builder closes the wanted set over each
module's own ``depends=`` (a kernel package ships no ``modules.dep``), skips what the kernel
has built in, orders dependencies first and stores every module uncompressed.
"""

from __future__ import annotations

import gzip
import lzma
from collections.abc import Callable, Mapping, Sequence

from kvmlab.errors import GuestBuildError
from kvmlab.guest.archives import zstd_decompress
from kvmlab.guest.elf import elf_section

__all__ = [
    "GUEST_MODULES",
    "builtin_names",
    "decompress_module",
    "module_deps",
    "module_name",
    "resolve_modules",
]

#: Modules ``/init`` loads, before their dependencies are added. virtio_pci finds the
#: devices, virtio_net and virtio_blk drive them; ``button`` turns the ACPI power button
#: (QMP ``system_powerdown``) into an input event and ``evdev`` exposes it as
#: ``/dev/input/event*`` for busybox ``acpid``. Debian's cloud kernel builds all of them as
#: modules; a kernel that has them built in simply needs none.
GUEST_MODULES: tuple[str, ...] = ("virtio_pci", "virtio_net", "virtio_blk", "evdev", "button")

_MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.gz", ".ko.zst")


def _module_info(ko: bytes) -> dict[str, str]:
    """Return a module's ``.modinfo`` (``name``, ``depends``, ...) as a dict.

    The ``.deb`` ships no ``modules.dep`` (``depmod`` makes it at install time), but every
    module records its own dependencies in ``depends=``.
    """
    raw = elf_section(ko, ".modinfo") or b""
    info: dict[str, str] = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.decode("utf-8", "replace").partition("=")
        if sep and key not in info:
            info[key] = value
    return info


def module_deps(ko: bytes) -> tuple[str, ...]:
    """The modules ``ko`` needs loaded first, from its ``.modinfo`` ``depends=``."""
    return tuple(d for d in _module_info(ko).get("depends", "").split(",") if d)


def module_name(path: str) -> str | None:
    """``kernel/drivers/virtio/virtio-rng.ko.xz`` -> ``virtio_rng`` (the kernel's spelling)."""
    base = path.rsplit("/", 1)[-1]
    for suffix in _MODULE_SUFFIXES:
        if base.endswith(suffix):
            return base.removesuffix(suffix).replace("-", "_")
    return None


def decompress_module(path: str, data: bytes) -> bytes:
    """Return a module uncompressed, so that busybox ``insmod`` needs no decompressor."""
    if path.endswith(".xz"):
        return lzma.decompress(data)
    if path.endswith(".gz"):
        return gzip.decompress(data)
    if path.endswith(".zst"):
        return zstd_decompress(data, path)
    return data


def resolve_modules(
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
        deps[name] = module_deps(blobs[name])
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


def builtin_names(text: str) -> frozenset[str]:
    """The module names listed in a ``modules.builtin`` file: compiled in, never loaded."""
    names = (module_name(line.strip()) for line in text.splitlines())
    return frozenset(n for n in names if n)
