"""The key a template is kept under: what makes a machine state loadable into a runtime.

A state only loads into the runtime it was taken with, on a QEMU that can read it, so the
key (hex SHA-256) covers the QEMU binary's identity, the guest image's kernel and initramfs,
each disk image's size and content, and the runtime the instance is generated into in a fixed
placeholder lab (:mod:`kvmlab.testing.templates` says why each is there).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path

from kvmlab.errors import InvalidInputError
from kvmlab.host.backends import Backend
from kvmlab.lifecycle.hypervisor import Hypervisor
from kvmlab.spec.instance import Disk, Instance

__all__ = ["KEY_FORMAT", "disks_at", "file_digest", "template_key", "with_disk_paths"]

#: Bumped when what a template holds changes in a way the key's inputs do not show
#: (2: disk images in the key, copies of them in the template).
KEY_FORMAT = 2
#: The fixed lab a runtime is generated into for its key (never created).
_KEY_LAB = Path("/kvmlab-template-lab")
#: Where the key's runtime puts disk ``N`` (never created): the key holds each image's
#: content, not its path.
_KEY_DISKS = Path("/kvmlab-template-disks")


def disks_at(disks: tuple[Disk, ...], paths: list[str]) -> tuple[Disk, ...]:
    """``disks`` with disk ``i`` at ``paths[i]`` (its mode kept)."""
    return tuple(
        disk.model_copy(update={"path": path}) for disk, path in zip(disks, paths, strict=True)
    )


def with_disk_paths(instance: Instance, paths: list[str]) -> Instance:
    """``instance`` with disk ``i`` at ``paths[i]`` (its mode kept)."""
    return instance.model_copy(update={"disks": disks_at(instance.disks, paths)})


def _disk_identity(instance: Instance) -> list[dict[str, object]]:
    """Size and SHA-256 of each of ``instance``'s disk images.

    :raise InvalidInputError: an image cannot be read.
    """
    identity: list[dict[str, object]] = []
    for disk in instance.disks:
        try:
            identity.append({"size": os.stat(disk.path).st_size, "sha256": file_digest(disk.path)})
        except OSError as err:
            raise InvalidInputError(
                f"disk {disk.path!r} of instance {instance.name}: {err.strerror}"
            ) from None
    return identity


@functools.cache
def _cached_digest(path: str, size: int, mtime_ns: int) -> str:
    """SHA-256 of one file, once per process for one (size, mtime)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def file_digest(path: str) -> str:
    """SHA-256 of the file at ``path`` (computed once per process while it is unchanged)."""
    stat = os.stat(path)
    return _cached_digest(os.path.realpath(path), stat.st_size, stat.st_mtime_ns)


def _binary_identity(backend: Backend, binary: str) -> dict[str, object]:
    """What tells one QEMU binary from another: path, size, mtime and version (for the
    fake kvm, also its sources: the program is a small entry point)."""
    resolved = os.path.realpath(binary)
    stat = os.stat(resolved)
    identity: dict[str, object] = {
        "backend": backend.describe(),
        "path": resolved,
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "version": backend.capabilities(binary).version_string,
    }
    if backend.name == "fake":
        sources = Path(__file__).resolve().parents[1] / "fake"
        identity["sources"] = sorted(
            (str(path.relative_to(sources)), path.stat().st_size, path.stat().st_mtime_ns)
            for path in sources.rglob("*.py")
        )
    return identity


def template_key(instance: Instance, backend: Backend) -> str:
    """The key of ``instance``'s template on ``backend`` (hex SHA-256; see the module doc).

    :raise InvalidInputError: a disk image of ``instance`` cannot be read.
    """
    disks = _disk_identity(instance)
    placeholders = [str(_KEY_DISKS / f"disk-{i}") for i in range(len(instance.disks))]
    keyed = with_disk_paths(instance, placeholders)
    runtime = Hypervisor(_KEY_LAB, backend=backend).generate(keyed)
    hv = instance.hvparams
    material = {
        "format": KEY_FORMAT,
        "qemu": _binary_identity(backend, runtime.binary),
        "image": {
            "kernel": file_digest(hv.kernel_path) if hv.kernel_path else "",
            "initrd": file_digest(hv.initrd_path) if hv.initrd_path else "",
        },
        "disks": disks,
        "runtime": json.loads(runtime.to_json()) | {"argv": list(runtime.argv[1:])},
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()
