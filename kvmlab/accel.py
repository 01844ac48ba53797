"""Does KVM really work here? Probe it by booting the test guest, and fall back to TCG.

``/dev/kvm`` existing proves little: under nested virtualisation it opens, QEMU
starts, and a Linux guest then dies with "KVM internal error ... emulation
failure". So KVM is trusted only after the test guest boots under it to
``KVMLAB-BOOT-OK``. Without a built test guest there is nothing honest to probe
with, and kvmlab uses TCG and says why. Results are cached per binary (path,
mtime) and host boot, in memory and in ``$XDG_CACHE_HOME/kvmlab/accel.json``.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kvmlab.models import Accel

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
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kvmlab" / "accel.json"


def _cache_key(binary: str) -> str:
    real = os.path.realpath(binary)
    try:
        mtime = os.stat(real).st_mtime_ns
    except OSError:
        mtime = 0
    boot_id = ""
    with contextlib.suppress(OSError):
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    return f"{real}|{mtime}|{boot_id}"


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
    stored: dict[str, list[str]] = {}
    with contextlib.suppress(OSError, ValueError):
        stored = json.loads(cache.read_text())
    if key in stored and stored[key][0] in ("kvm", "tcg"):
        accel: Accel = "kvm" if stored[key][0] == "kvm" else "tcg"
        result: tuple[Accel | None, str] = (accel, stored[key][1] + " (cached)")
        _MEMORY[key] = result
        return result
    from kvmlab.guest import find_built_guest  # noqa: PLC0415

    guest = find_built_guest()
    if guest is None:
        return "tcg", "/dev/kvm exists but is unverified: no test guest built (kvmlab guest build)"
    works, detail = probe_kvm_boot(binary, guest.kernel, guest.initrd)
    result = ("kvm" if works else "tcg", detail)
    _MEMORY[key] = result
    stored[key] = [str(result[0]), detail]
    with contextlib.suppress(OSError):
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(stored, indent=1))
    return result
