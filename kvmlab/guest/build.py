"""Build the kvmlab test guest: a Debian kernel plus a busybox initramfs.

The real QEMU backend needs a guest that boots in seconds under TCG and tells the host what it
sees, so that the same assertions hold on the real and the fake backend (the guest facts
protocol, docs/guest.md). This module builds one from Debian packages, with no host tools beyond
``apt-get download`` and ``apt-cache``: the ``.deb`` files are unpacked in Python (``ar`` by
hand, then :mod:`tarfile`), and the initramfs is written as a ``newc`` cpio archive in Python.
It holds the public names (the image, its boot options, the build and its cache key); the
steps live in the modules beside it: :mod:`~kvmlab.guest.sources` picks the kernel and
busybox (:mod:`~kvmlab.guest.apt`, :mod:`~kvmlab.guest.kernel`, :mod:`~kvmlab.guest.modules`,
:mod:`~kvmlab.guest.archives`, :mod:`~kvmlab.guest.elf`), :mod:`~kvmlab.guest.init` writes
``/init`` and :mod:`~kvmlab.guest.cpio` the archive.

Quick start::

    from kvmlab.guest.build import build_guest

    image = build_guest(progress=print)
    # qemu-system-x86_64 -accel tcg -m 256 -kernel image.kernel -initrd image.initrd \\
    #     -append console=ttyS0 -nographic ...

What the guest does (see :func:`~kvmlab.guest.init.render_init_script`): ``/init`` mounts
``/proc``, ``/sys`` and ``/dev``, loads the virtio and power-button modules, starts busybox
``acpid`` (so that QMP ``system_powerdown`` powers it off), then prints on the serial
console::

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
import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from kvmlab.errors import GuestBuildError
from kvmlab.files import atomic_write
from kvmlab.guest.archives import read_ar
from kvmlab.guest.cpio import CpioEntry, read_newc, write_newc
from kvmlab.guest.init import POWER_HANDLER, initramfs_entries, render_init_script
from kvmlab.guest.modules import GUEST_MODULES
from kvmlab.guest.sources import find_busybox, find_kernel
from kvmlab.guest.unpack import unpack_vmlinux
from kvmlab.spec.layout import kvmlab_cache_dir

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

# Bumped when the image layout changes in a way the hashed inputs do not show
# (2: the kernel is the unpacked ELF vmlinux when it can boot through PVH).
_FORMAT = 2
# The built files are readable by all, like any cache (a temp file alone would be 0600); the
# cache can be rebuilt, so they are not fsynced.
_IMAGE_MODE = 0o644


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
#: (0.3 s under TCG); the guest uses none of them. ``initcall_blacklist=``: two more
#: start-up routines the guest has no use for, 0.1 s together under TCG (the kprobe trace
#: events and the KDF108 self-test, which ``cryptomgr.notests`` does not cover).
#: ``noapictimer``: the kernel times its local APIC timer against the PIT for 0.1 s of guest
#: time before using it (0.25 s under TCG); without it the HPET drives the clock events.
#: ``pcie_ports=compat``: no AER or PME services on the 24 root ports (0.1 s); hotplug
#: on them is QEMU's ACPI hotplug, which does not use those services.
#: ``mitigations=off``: no speculative-execution workarounds (retpolines, return thunks,
#: buffer clearing on each kernel exit); a disposable test guest has no secrets to keep
#: from its own processes, and TCG does not speculate. 0.1 s of every boot (7 %).
BOOT_KERNEL_ARGS = (
    "panic=-1 quiet cryptomgr.notests noapictimer pcie_ports=compat mitigations=off"
    " initcall_blacklist=init_kprobe_trace,crypto_kdf108_init"
)
#: The machine type: Q35 (``q35`` is the alias of the newest ``pc-q35-X.Y`` of each QEMU).
#: Under TCG Linux probes virtio PCI devices on Q35's PCIe root far faster than on the
#: i440FX machine (20 ms against 240 ms for virtio_pci here), and its ACPI init is shorter.
BOOT_MACHINE = "q35"
#: Only the devices the instance asks for: no VGA, no default CD-ROM, floppy or parallel
#: port (kvmlab gives the serial port, monitor and NICs explicitly). And qboot, the
#: minimal firmware every QEMU ships (found in its data directory by name), instead of
#: SeaBIOS: it loads the kernel without walking the 24 PCIe root ports of a Q35 VM
#: (2.13 s against 2.39 s to the marker on 7.2; hotplug, reboot and ACPI power-off work
#: the same, on Q35 and i440FX, 7.2 and 10.0).
BOOT_KVM_EXTRA = "-nodefaults -bios qboot.rom"


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
    return kvmlab_cache_dir() / "guest"


# --------------------------------------------------------------------------- build


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


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
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    with _build_lock(cache, report):
        return _build_locked(cache, kernel, report)


def _build_locked(cache: Path, kernel: Path | None, report: Callable[[str], None]) -> GuestImage:
    kern = find_kernel(kernel, cache, report)
    busybox, busybox_origin = find_busybox(cache, report)
    init = render_init_script([name for name, _ in kern.modules])

    vmlinuz = kern.vmlinuz.read_bytes()
    key = json.dumps(
        {
            "format": _FORMAT,
            "kernel": _sha256(vmlinuz),
            "busybox": _sha256(busybox),
            "modules": [[name, _sha256(blob)] for name, blob in kern.modules],
            "init": init,
            "power_handler": POWER_HANDLER,
        },
        sort_keys=True,
    )
    digest = _sha256(key.encode())[:16]
    built = _built(cache, digest)
    if built is not None:
        report(f"reusing guest {digest} (kernel {kern.release})")
        return built

    vmlinux = unpack_vmlinux(vmlinuz, report)
    image = GuestImage(
        kernel=(cache / f"{'vmlinuz' if vmlinux is None else 'vmlinux'}-{digest}").resolve(),
        initrd=(cache / f"initrd-{digest}.cpio.gz").resolve(),
    )
    entries = initramfs_entries(busybox, init, kern.modules)
    report(f"writing initramfs ({len(entries)} files, kernel {kern.release})")
    archive = gzip.compress(write_newc(entries), compresslevel=6, mtime=0)
    atomic_write(image.initrd, archive, _IMAGE_MODE, fsync=False)
    atomic_write(image.kernel, vmlinuz if vmlinux is None else vmlinux, _IMAGE_MODE, fsync=False)
    manifest = {
        "kernel_source": kern.origin,
        "kernel_release": kern.release,
        "busybox_source": busybox_origin,
        "kernel_boot": "bzImage" if vmlinux is None else "vmlinux (PVH)",
        "modules": [name for name, _ in kern.modules],
        **dataclasses.asdict(image),
    }
    atomic_write(
        cache / f"guest-{digest}.json",
        json.dumps(manifest, indent=2, default=str) + "\n",
        _IMAGE_MODE,
        fsync=False,
    )
    return image


def find_built_guest(cache_dir: Path | None = None) -> GuestImage | None:
    """The most recently built guest in the cache, without building or downloading.

    Used by the accelerator probe, which must not trigger a download on its own.
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    manifests = sorted(cache.glob("guest-*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for manifest in manifests:
        image = _built(cache, manifest.stem.removeprefix("guest-"))
        if image is not None:
            return image
    return None


def _built(cache: Path, digest: str) -> GuestImage | None:
    """The image ``digest`` when both its files are in ``cache``: the kernel is an unpacked
    ``vmlinux`` (PVH boot) or, for a kernel that cannot boot that way, the ``vmlinuz``."""
    initrd = (cache / f"initrd-{digest}.cpio.gz").resolve()
    for kernel in (cache / f"vmlinux-{digest}", cache / f"vmlinuz-{digest}"):
        if kernel.is_file() and initrd.is_file():
            return GuestImage(kernel=kernel.resolve(), initrd=initrd)
    return None
