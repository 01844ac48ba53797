"""Does KVM really work here? Probe it by booting the test guest, and fall back to TCG.

``/dev/kvm`` existing proves little: under nested virtualisation it opens, QEMU
starts, and a Linux guest then dies with "KVM internal error ... emulation
failure". So KVM is trusted only after the test guest boots under it to
``KVMLAB-BOOT-OK``. Without a built test guest there is nothing honest to probe
with, and kvmlab uses TCG and says why. Results are cached per binary (real path,
mtime, size) and host boot, in memory and in ``$XDG_CACHE_HOME/kvmlab/accel.json``.

The file is shared by every kvmlab process of the user (parallel test workers, CLI
commands): a miss takes an ``flock`` on ``accel.json.lock``, looks again (another
process may have probed meanwhile), probes, and replaces the file atomically (a
temporary file renamed over it), so a reader sees the old file or the new one and
two probes never lose each other's entries. Each write drops the stale entries:
those of a binary that no longer exists or whose mtime or size changed, those of
another host boot, and those in an older key format.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from kvmlab.errors import OperationError
from kvmlab.host.store import atomic_write
from kvmlab.spec.layout import kvmlab_cache_dir

if TYPE_CHECKING:
    from kvmlab.spec.instance import Accel

__all__ = ["KVM_FAILURE_MARKERS", "probe_accelerator", "probe_kvm_boot"]

#: What QEMU prints when KVM cannot run a guest here. Seen on these machines: an
#: abort after "failed to set MSR" (-cpu host/max), and with the default CPU a
#: "host doesn't support requested feature" warning followed by a guest that
#: never prints a kernel line (caught by the timeout).
KVM_FAILURE_MARKERS = (
    "KVM internal error",
    "emulation failure",
    "kvm run failed",
    "failed to set MSR",
    "Assertion",
)
#: A KVM boot of the test guest reaches KVMLAB-BOOT-OK in well under this; TCG
#: takes about 5 s here.
PROBE_TIMEOUT = 12.0
_MEMORY: dict[str, tuple[Accel | None, str]] = {}


def _cache_file() -> Path:
    return kvmlab_cache_dir() / "accel.json"


def _boot_id() -> str:
    with contextlib.suppress(OSError):
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    return ""


def _binary_key(real: str) -> str:
    """``real|mtime_ns|size`` of a resolved binary (``real|0|0`` when it is gone)."""
    try:
        st = os.stat(real)
    except OSError:
        return f"{real}|0|0"
    return f"{real}|{st.st_mtime_ns}|{st.st_size}"


def _cache_key(binary: str) -> str:
    """The cache key of ``binary``: real path, mtime, size and the host's boot id."""
    return f"{_binary_key(os.path.realpath(binary))}|{_boot_id()}"


def _is_stale(key: str, boot_id: str) -> bool:
    """Whether a stored entry no longer describes this host: another boot, a binary that
    is gone or changed (mtime or size), or a key in an older format."""
    parts = key.rsplit("|", 3)
    if len(parts) != 4 or parts[3] != boot_id:
        return True
    now = _binary_key(parts[0])
    return now.endswith("|0|0") or now != "|".join(parts[:3])


def _read_cache(cache: Path) -> dict[str, list[str]]:
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(cache.read_text())
        if isinstance(data, dict):
            return {
                k: v
                for k, v in data.items()
                if isinstance(v, list) and len(v) == 2 and all(isinstance(x, str) for x in v)
            }
    return {}


@contextlib.contextmanager
def _cache_lock(cache: Path) -> Iterator[bool]:
    """Hold ``accel.json.lock`` (exclusive ``flock``); yields ``False`` when the cache
    directory cannot be written, so there is nothing to lock."""
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(
            cache.with_name(cache.name + ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644
        )
    except OSError as err:
        if err.errno not in (errno.EACCES, errno.EROFS, errno.EPERM, errno.ENOSPC):
            raise
        yield False
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield True
    finally:
        os.close(fd)


def _write_cache(cache: Path, entries: dict[str, list[str]]) -> None:
    """Replace ``cache`` atomically with ``entries`` minus the stale ones (lock held).

    :raise OperationError: the cache directory cannot be written.
    """
    boot_id = _boot_id()
    kept = {k: v for k, v in sorted(entries.items()) if not _is_stale(k, boot_id)}
    atomic_write(cache, json.dumps(kept, indent=1) + "\n")


def probe_kvm_boot(
    binary: str, kernel: Path, initrd: Path, timeout: float = PROBE_TIMEOUT
) -> tuple[bool, str]:
    """Boot the test guest under KVM; ``(True, detail)`` when it reaches ``KVMLAB-BOOT-OK``."""
    argv = [
        binary, "-accel", "kvm", "-m", "128", "-smp", "1", "-nodefaults", "-no-reboot",
        "-display", "none", "-serial", "stdio", "-kernel", str(kernel), "-initrd", str(initrd),
        "-append", "console=ttyS0 panic=-1",
    ]  # fmt: skip
    started = time.monotonic()
    try:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
    except OSError as err:
        return False, f"cannot run {binary}: {err.strerror}"
    seen = b""
    assert process.stdout is not None
    try:
        os.set_blocking(process.stdout.fileno(), False)
        while time.monotonic() - started < timeout:
            chunk = process.stdout.read(65536) or b""
            seen += chunk
            text = seen.decode("utf-8", errors="replace")
            if "KVMLAB-BOOT-OK" in text:
                return (
                    True,
                    f"the test guest booted under KVM in {time.monotonic() - started:.1f} s",
                )
            marker = next((m for m in KVM_FAILURE_MARKERS if m in text), None)
            if marker is not None:
                line = next(line for line in text.splitlines() if marker in line)
                return False, f"KVM fails here: {line.strip()}"
            if process.poll() is not None and not chunk:
                last = text.strip().splitlines()[-1:] or ["no output"]
                return False, f"QEMU exited with {process.returncode} under KVM: {last[0]}"
            if not chunk:
                time.sleep(0.05)
        return False, f"the test guest did not boot under KVM within {timeout:g} s"
    finally:
        process.kill()
        process.wait()
        process.stdout.close()


def probe_accelerator(binary: str) -> tuple[Accel | None, str]:
    """``("kvm", why)`` when KVM demonstrably boots a guest, else ``("tcg", why)``."""
    if not os.path.exists("/dev/kvm"):
        return "tcg", "no /dev/kvm"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg", "/dev/kvm is not accessible to this user"
    key = _cache_key(binary)
    if key in _MEMORY:
        return _MEMORY[key]
    cache = _cache_file()
    cached = _from_cache(key, _read_cache(cache))  # no lock: the file is replaced whole
    if cached is not None:
        return cached
    from kvmlab.guest.build import find_built_guest  # noqa: PLC0415

    guest = find_built_guest()
    if guest is None:
        return "tcg", "/dev/kvm exists but is unverified: no test guest built (kvmlab guest build)"
    # One probe at a time per user: the others wait, then find its verdict.
    with _cache_lock(cache) as writable:
        stored = _read_cache(cache)
        cached = _from_cache(key, stored)
        if cached is not None:
            return cached
        works, detail = probe_kvm_boot(binary, guest.kernel, guest.initrd)
        result: tuple[Accel | None, str] = ("kvm" if works else "tcg", detail)
        _MEMORY[key] = result
        if writable:
            stored[key] = [str(result[0]), detail]
            with contextlib.suppress(OperationError):  # the verdict stays in memory
                _write_cache(cache, stored)
    return result


def _from_cache(key: str, stored: dict[str, list[str]]) -> tuple[Accel | None, str] | None:
    if key not in stored or stored[key][0] not in ("kvm", "tcg"):
        return None
    accel: Accel = "kvm" if stored[key][0] == "kvm" else "tcg"
    result: tuple[Accel | None, str] = (accel, stored[key][1] + " (cached)")
    _MEMORY[key] = result
    return result
