"""Helpers shared by the reliability suite (imported by name: tests have no packages).

Every test here works in a short private folder under ``/tmp`` (unix socket paths must
fit in 108 bytes) and runs ``kvmlab`` with a private ``TMPDIR``, so "no temp file left
behind" is checked against a directory nobody else writes to.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from pathlib import Path
from typing import Any

from kvmlab.channels.qmp import qmp_execute
from kvmlab.errors import QmpError
from kvmlab.host.backends import FakeBackend, QemuBackend
from kvmlab.lifecycle.hypervisor import Hypervisor
from kvmlab.spec.instance import Instance, Nic
from kvmlab.testing.templates import default_instance

PYTHON = sys.executable
KVMLAB = str(Path(sys.executable).with_name("kvmlab"))
MAC1 = "52:54:00:6b:09:01"
MAC2 = "52:54:00:6b:09:02"

#: The only failures a valid command may report (exit 1), by the words of their message.
CLEAR_FAILURES = ("already running", "not running", "busy")


def instance_data(name: str = "vm1", **overrides: Any) -> dict[str, Any]:
    """A valid instance for the fake kvm: no kernel, no VNC, one user NIC."""
    data: dict[str, Any] = {
        "name": name,
        "memory": 128,
        "vcpus": 1,
        "nics": [{"mac": MAC1, "mode": "user"}],
        "hvparams": {"kernel_path": "", "vnc_bind_address": ""},
    }
    data.update(overrides)
    return data


def write_instance(path: Path, **data: Any) -> Path:
    path.write_text(json.dumps(instance_data(**data)), encoding="utf-8")
    return path


def run_kvmlab(
    state_dir: Path,
    *args: str,
    tmpdir: Path | None = None,
    env: dict[str, str] | None = None,
    backend: str = "fake",
    timeout: float = 60,
    umask: int = -1,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """``kvmlab --state-dir STATE --backend BACKEND ARGS...`` in a subprocess."""
    full_env = {**os.environ, **(env or {})}
    if tmpdir is not None:
        full_env["TMPDIR"] = str(tmpdir)
    return subprocess.run(
        [KVMLAB, "--state-dir", str(state_dir), "--backend", backend, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        check=False,
        umask=umask,
        cwd=cwd,
    )


def one_line_error(stderr: str) -> str:
    """The single ``kvmlab: error: ...`` line; fails on tracebacks and multi-line output."""
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("kvmlab: error: "), stderr
    return lines[0]


def snapshot(root: Path) -> dict[str, tuple[int, bytes | None]]:
    """Every path under ``root`` with its mode and (for files) its bytes."""
    if not root.exists():
        return {}
    found: dict[str, tuple[int, bytes | None]] = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        data = path.read_bytes() if path.is_file() and not path.is_symlink() else None
        found[str(path.relative_to(root))] = (st.st_mode, data)
    return found


def read_cmdline(pid: int) -> list[bytes] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return raw.rstrip(b"\0").split(b"\0") if raw else None


def proc_stat(pid: int) -> tuple[str, int] | None:
    """``(state, ppid)`` of a process, or ``None`` when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    fields = text.rsplit(")", 1)[-1].split()
    return fields[0], int(fields[1])


def all_pids() -> list[int]:
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]


def processes_naming(path: Path | str, *, under: bool = False) -> list[int]:
    """Live (non-zombie) pids, not ours, whose command line holds ``path`` as one argument.

    With ``under``, an argument naming anything below ``path`` (or with it inside an
    option value, like ``unix:PATH/ctrl/x.qmp,server=on``) counts too.
    """
    target = os.fsencode(path)
    found = []
    for pid in all_pids():
        if pid == os.getpid():
            continue
        argv = read_cmdline(pid)
        if not argv:
            continue
        hit = any(target in arg for arg in argv) if under else target in argv
        if not hit:
            continue
        stat = proc_stat(pid)
        if stat is not None and stat[0] not in ("Z", "X"):
            found.append(pid)
    return found


def vm_processes(pidfile: Path, launchers: Collection[int] = ()) -> list[int]:
    """The daemonized VM processes of one instance.

    A start shows up to three processes naming the pidfile: the first one (a child of
    the kvmlab process that launched it), the intermediate fork, and the VM. Only
    processes whose parent is neither a launcher nor a process naming the same pidfile
    are VMs, so two of them at once means two live VMs for one instance.
    """
    return vm_processes_of([pidfile], launchers)[str(pidfile)]


def vm_processes_of(
    pidfiles: Iterable[Path], launchers: Collection[int] = ()
) -> dict[str, list[int]]:
    """:func:`vm_processes` for several pidfiles, in one scan of ``/proc``."""
    targets = {os.fsencode(p): str(p) for p in pidfiles}
    naming: dict[str, dict[int, int]] = {name: {} for name in targets.values()}
    for pid in all_pids():
        argv = read_cmdline(pid)
        if not argv or b"-pidfile" not in argv:
            continue
        for option, value in itertools.pairwise(argv):
            if option == b"-pidfile" and value in targets:
                stat = proc_stat(pid)
                if stat is not None and stat[0] not in ("Z", "X"):
                    naming[targets[value]][pid] = stat[1]
    return {
        pidfile: sorted(
            pid for pid, ppid in procs.items() if ppid not in procs and ppid not in launchers
        )
        for pidfile, procs in naming.items()
    }


def matrix_instance(guest: Any) -> Instance:
    """The instance the kill matrices run (``guest``: the test guest on QEMU, ``None`` on
    the fake kvm): one for both, so both restore copies of one template. The default test
    guest with one vCPU and this module's MAC."""
    return default_instance(guest).model_copy(
        update={"vcpus": 1, "nics": (Nic(mac=MAC1, mode="user"),)}
    )


def matrix_lab(root: Path, kind: str) -> Hypervisor:
    """A lab of a kill matrix on ``kind`` (``fake`` or ``qemu``), quick to stop."""
    backend = FakeBackend() if kind == "fake" else QemuBackend()
    return Hypervisor(root, backend=backend, stop_timeout=5)


def run_status(lab: Hypervisor, name: str = "vm1") -> str | None:
    """QEMU's run state of ``name`` in ``lab`` (``query-status``), ``None`` when QMP is silent."""
    try:
        return str(qmp_execute(lab.layout.qmp_socket(name), "query-status")["status"])
    except QmpError:
        return None


def run_instance(lab: Any, instance: Any, booted_vm_factory: Callable[[Any], Any]) -> None:
    """Have ``instance`` running in ``lab`` for a kill matrix. On QEMU a copy restored
    from its template: what those tests kill is kvmlab operating on a running guest, not
    its boot, and a TCG boot each was most of their time. The fake kvm boots in no time,
    so there the matrix runs on a started VM, and the two backends cover both kinds."""
    if lab.backend.name == "qemu":
        booted_vm_factory(instance)
    else:
        lab.start(instance)


def kill_all_under(root: Path) -> None:
    """SIGKILL every process whose command line names something under ``root``."""
    for _ in range(3):
        pids = processes_naming(root, under=True)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return True


def mounts_under(root: Path) -> list[str]:
    """Mount points at or below ``root``, deepest first."""
    points = []
    prefix = str(root)
    for line in Path("/proc/self/mounts").read_text().splitlines():
        point = line.split()[1].replace("\\040", " ")
        if point == prefix or point.startswith(prefix + "/"):
            points.append(point)
    return sorted(points, key=len, reverse=True)


def _mount(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", *args], capture_output=True, text=True, check=False)


def unmount_all_under(root: Path) -> None:
    for point in mounts_under(root):
        result = subprocess.run(["umount", point], capture_output=True, check=False)
        if result.returncode != 0:
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "64k") -> Iterator[Path]:
    """A small tmpfs on ``path`` (mode 0700), unmounted afterwards; skip if we cannot mount."""
    import pytest  # noqa: PLC0415

    path.mkdir(parents=True, exist_ok=True)
    result = _mount("-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path))
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root/CAP_SYS_ADMIN): {result.stderr}")
    try:
        yield path
    finally:
        unmount_all_under(path)


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[Path]:
    """``path`` bind-mounted read-only onto itself, restored afterwards."""
    import pytest  # noqa: PLC0415

    result = _mount("--bind", str(path), str(path))
    if result.returncode != 0:
        pytest.skip(f"cannot bind-mount here (needs root/CAP_SYS_ADMIN): {result.stderr}")
    try:
        result = _mount("-o", "remount,bind,ro", str(path))
        assert result.returncode == 0, result.stderr
        yield path
    finally:
        subprocess.run(["umount", str(path)], capture_output=True, check=False)


def fill(directory: Path) -> None:
    """Fill the file system holding ``directory`` (a small tmpfs) to the last block."""
    with (directory / "filler").open("wb", buffering=0) as handle:
        for size in (65536, 4096, 1):  # big blocks, then the last page byte by byte
            with contextlib.suppress(OSError):
                while True:
                    handle.write(b"\0" * size)
