"""Where the kernel and busybox come from: the documented order of places to look.

Kernel: the ``kernel`` argument, a package already in the cache, ``apt-get download``, the
host's ``/boot``. Busybox: a cached package, the host's static ``/bin/busybox``, ``apt-get
download``. Each step says on ``progress`` why it was skipped, so a failed build tells the
user what to install or pass.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from kvmlab.errors import GuestBuildError
from kvmlab.guest.apt import BUSYBOX_PACKAGE, apt_download, cached_deb, kernel_package
from kvmlab.guest.archives import AR_MAGIC, deb_data_tar, read_member
from kvmlab.guest.elf import is_static_x86_64
from kvmlab.guest.kernel import Kernel, kernel_from_deb, kernel_from_vmlinuz

__all__ = ["find_busybox", "find_kernel", "host_kernels"]

_BUSYBOX_PATHS = ("bin/busybox", "usr/bin/busybox")


def find_kernel(kernel: Path | None, cache_dir: Path, progress: Callable[[str], None]) -> Kernel:
    """Pick the kernel by the documented order: argument, cache, download, host."""
    if kernel is not None:
        kernel = Path(kernel).expanduser()
        if not kernel.is_file():
            raise GuestBuildError(f"kernel {kernel} is not a file")
        with kernel.open("rb") as fh:
            is_deb = fh.read(len(AR_MAGIC)) == AR_MAGIC
        if is_deb:
            return kernel_from_deb(kernel, cache_dir, progress)
        return kernel_from_vmlinuz(kernel, progress)

    downloads = cache_dir / "downloads"
    cached = cached_deb(downloads, "linux-image-*.deb")
    if cached is not None:
        return kernel_from_deb(cached, cache_dir, progress)

    apt_problem = "apt-get not found"
    if shutil.which("apt-get") and shutil.which("apt-cache"):
        try:
            deb = apt_download(kernel_package(), downloads, progress)
            return kernel_from_deb(deb, cache_dir, progress)
        except GuestBuildError as err:
            apt_problem = str(err)
            progress(f"kernel download failed ({err}); trying the host's /boot")

    for candidate in host_kernels():
        if os.access(candidate, os.R_OK):
            progress(f"using the host kernel {candidate}")
            return kernel_from_vmlinuz(candidate, progress)
        progress(f"{candidate} is not readable (root only?)")
    raise GuestBuildError(
        f"{apt_problem} and no kernel given: pass kernel=PATH (a vmlinuz or a linux-image-*.deb)"
    )


def host_kernels() -> list[Path]:
    """The host's ``/boot/vmlinuz-*``, the running kernel's first."""
    running = Path("/boot") / f"vmlinuz-{os.uname().release}"
    others = sorted(Path("/boot").glob("vmlinuz-*"), reverse=True)
    return [running] * running.is_file() + [p for p in others if p != running]


def find_busybox(cache_dir: Path, progress: Callable[[str], None]) -> tuple[bytes, str]:
    """Return a statically linked x86-64 busybox and where it came from."""
    downloads = cache_dir / "downloads"
    deb = cached_deb(downloads, f"{BUSYBOX_PACKAGE}_*.deb")
    if deb is not None:
        return _busybox_from_deb(deb), str(deb)
    for host in (Path("/bin/busybox"), Path("/usr/bin/busybox")):
        try:
            data = host.read_bytes()
        except OSError:
            continue
        if is_static_x86_64(data):
            progress(f"using busybox from {host}")
            return data, str(host)
        progress(f"{host} is dynamically linked: not usable in the initramfs")
    if not shutil.which("apt-get"):
        raise GuestBuildError(
            "no statically linked busybox: apt-get not found and /bin/busybox is missing or "
            f"dynamic (install {BUSYBOX_PACKAGE})"
        )
    deb = apt_download(BUSYBOX_PACKAGE, downloads, progress)
    return _busybox_from_deb(deb), str(deb)


def _busybox_from_deb(deb: Path) -> bytes:
    with deb_data_tar(deb.read_bytes(), deb.name) as tar:
        for member in tar:
            if member.isfile() and member.name.removeprefix("./") in _BUSYBOX_PATHS:
                data = read_member(tar, member)
                if not is_static_x86_64(data):
                    raise GuestBuildError(f"busybox in {deb.name} is not a static x86-64 binary")
                return data
    raise GuestBuildError(f"{deb.name} has no bin/busybox")
