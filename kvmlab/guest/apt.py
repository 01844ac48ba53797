"""Fetching Debian packages with apt: the kernel and busybox ``.deb`` files, cached.

The builder needs no root and no package installation: ``apt-cache depends`` names the
kernel package behind the cloud-kernel metapackage and ``apt-get download`` fetches a
``.deb`` into the cache, where later builds find it without apt or a network.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from kvmlab.errors import GuestBuildError

__all__ = [
    "BUSYBOX_PACKAGE",
    "KERNEL_METAPACKAGE",
    "apt_download",
    "cached_deb",
    "kernel_package",
]

cmdlog = logging.getLogger("kvmlab.commands")

#: The Debian metapackage whose dependency names the kernel to download.
KERNEL_METAPACKAGE = "linux-image-cloud-amd64"
BUSYBOX_PACKAGE = "busybox-static"

_APT_TIMEOUT = 600.0


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


def kernel_package() -> str:
    """Name the real kernel package behind the metapackage (its first ``Depends``)."""
    out = _run(["apt-cache", "depends", "--important", KERNEL_METAPACKAGE])
    for line in out.splitlines():
        kind, _, value = line.strip().partition(":")
        if kind.lstrip("|") == "Depends" and value.strip().startswith("linux-image-"):
            return value.strip()
    raise GuestBuildError(
        f"apt-cache knows no kernel behind {KERNEL_METAPACKAGE} (run apt-get update?)"
    )


def apt_download(package: str, downloads: Path, progress: Callable[[str], None]) -> Path:
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
    downloads.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".download.", dir=downloads))
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


def cached_deb(downloads: Path, pattern: str) -> Path | None:
    """The newest downloaded package matching ``pattern`` (never the kernel metapackage)."""
    found = sorted(
        (p for p in downloads.glob(pattern) if not p.name.startswith(f"{KERNEL_METAPACKAGE}_")),
        key=lambda p: (p.stat().st_mtime, p.name),
    )
    return found[-1] if found else None
