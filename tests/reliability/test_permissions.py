"""Nobody but kvmlab's user can read a state directory: modes of everything a cycle creates.

Every directory must be 0700 and every file kvmlab writes 0600, whatever kvmlab's umask
(000, 022, 077); files the binary creates itself (the pidfile, the serial log, the NIC
record its up-script writes) must at least not be group/world readable. Unix sockets are
created by the binary with its own umask (027 after daemonizing: 0750), so what protects
them is their directory: ``ctrl/`` is 0700, and a socket must never be world-accessible.

The tap up-script is watched while the start is in progress (the fake's slow start keeps
it there): 0700, owned by kvmlab's user, in a 0700 ``kvmlab-start-*`` folder, gone after.
"""

from __future__ import annotations

import json
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers_reliability import MAC1, run_kvmlab, wait_until, write_instance

#: Files kvmlab itself writes (exactly 0600).
KVMLAB_FILES = {"conf/vm1.runtime", "log/vm1.log", "lock/vm1.lock"}
#: Files the binary (or its up-script) creates with its own umask.
BINARY_FILES = {"pid/vm1", "log/vm1.serial.log", "nic/vm1/0"}
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="taps and up-scripts need root")


def modes(root: Path) -> dict[str, tuple[str, int]]:
    found = {".": ("d", stat.S_IMODE(root.stat().st_mode))}
    for path in root.rglob("*"):
        st = path.lstat()
        kind = "d" if stat.S_ISDIR(st.st_mode) else "s" if stat.S_ISSOCK(st.st_mode) else "f"
        found[str(path.relative_to(root))] = (kind, stat.S_IMODE(st.st_mode))
    return found


def check_modes(root: Path, *, binary_files_strict: bool = False) -> list[str]:
    """Every violation, as ``path: mode``; the binary's own files only when asked."""
    bad = []
    for rel, (kind, mode) in sorted(modes(root).items()):
        if kind == "d" and mode != 0o700:
            bad.append(f"{rel}/ {mode:04o}")
        elif kind == "s" and (mode & 0o007 or modes(root)[str(Path(rel).parent)][1] != 0o700):
            bad.append(f"{rel} (socket) {mode:04o}")
        elif kind == "f" and rel in KVMLAB_FILES and mode != 0o600:
            bad.append(f"{rel} {mode:04o}")
        elif kind == "f" and rel not in KVMLAB_FILES:
            strict = binary_files_strict or rel not in BINARY_FILES
            if mode & 0o077 if strict else mode & 0o007:
                bad.append(f"{rel} {mode:04o}")
    return bad


def routed_instance(workdir: Path) -> Path:
    nics = [{"mac": MAC1, "mode": "routed", "link": "rt0"}] if os.geteuid() == 0 else None
    return write_instance(workdir / "vm1.json", **({"nics": nics} if nics else {}))


TAP_RUN = {"KVMLAB_FAKE_TAP": "run"}
#: As root the tests with TAP_RUN create host taps: under the host_taps lock
#: (tests/conftest.py), so the tests that count taps do not see them.
HOST_TAPS = pytest.mark.usefixtures("host_taps")


@HOST_TAPS
@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077], ids=lambda m: f"umask{m:03o}")
def test_fake_cycle_creates_nothing_others_can_read(
    workdir: Path, state_dir: Path, private_tmp: Path, umask: int
) -> None:
    vm = routed_instance(workdir)
    started = run_kvmlab(state_dir, "start", str(vm), tmpdir=private_tmp, env=TAP_RUN, umask=umask)
    assert started.returncode == 0, started.stderr
    running = modes(state_dir)
    assert set(KVMLAB_FILES) | {"pid/vm1", "log/vm1.serial.log"} <= set(running)
    assert {"ctrl/vm1.qmp", "ctrl/vm1.serial", "ctrl/vm1.monitor"} <= set(running)
    assert check_modes(state_dir) == [], running
    stopped = run_kvmlab(state_dir, "stop", "vm1", tmpdir=private_tmp, umask=umask)
    assert stopped.returncode == 0, stopped.stderr
    assert check_modes(state_dir) == [], modes(state_dir)
    assert list(private_tmp.iterdir()) == []


@HOST_TAPS
def test_files_the_fake_binary_creates_are_not_group_readable(
    workdir: Path, state_dir: Path, private_tmp: Path
) -> None:
    vm = routed_instance(workdir)
    started = run_kvmlab(state_dir, "start", str(vm), tmpdir=private_tmp, env=TAP_RUN, umask=0o077)
    assert started.returncode == 0, started.stderr
    assert check_modes(state_dir, binary_files_strict=True) == []


@HOST_TAPS
@as_root
def test_up_script_is_0700_in_a_0700_folder_while_it_exists_and_then_removed(
    workdir: Path, state_dir: Path, private_tmp: Path
) -> None:
    vm = routed_instance(workdir)
    log = workdir / "fake.log"
    seen: dict[str, tuple[int, int, int]] = {}

    def watch() -> None:
        def look() -> bool:
            for script in private_tmp.glob("kvmlab-start-*/up-0"):
                try:
                    st, dst = script.stat(), script.parent.stat()
                except FileNotFoundError:
                    return False
                seen["script"] = (stat.S_IMODE(st.st_mode), st.st_uid, stat.S_IMODE(dst.st_mode))
                return True
            return False

        wait_until(look, 10, 0.002)

    watcher = threading.Thread(target=watch)
    watcher.start()
    env = {**TAP_RUN, "KVMLAB_FAKE_SLOW_START": "0.5", "KVMLAB_FAKE_LOG": str(log)}
    started = run_kvmlab(state_dir, "start", str(vm), tmpdir=private_tmp, env=env, umask=0)
    watcher.join()
    assert started.returncode == 0, started.stderr
    assert seen.get("script") == (0o700, os.geteuid(), 0o700), seen
    events = [json.loads(line) for line in log.read_text().splitlines()]
    runs = [e for e in events if e["event"] == "script"]
    assert [(e["action"], e.get("status")) for e in runs] == [("run", 0)]
    assert not Path(runs[0]["script"]).exists()
    assert list(private_tmp.iterdir()) == []
    assert run_kvmlab(state_dir, "stop", "vm1").returncode == 0


# -- real QEMU ----------------------------------------------------------------------------


@pytest.fixture
def qemu_vm(request: pytest.FixtureRequest, workdir: Path) -> Callable[[], Path]:
    from kvmlab.testing.plugin import require_qemu  # noqa: PLC0415

    require_qemu()
    guest = request.getfixturevalue("test_guest")

    def make() -> Path:
        return write_instance(
            workdir / "vm1.json",
            memory=192,
            hvparams=guest.hvparams(kvm_flag="disabled"),
        )

    return make


@pytest.mark.qemu
def test_real_qemu_cycle_creates_nothing_others_can_read(
    state_dir: Path, private_tmp: Path, qemu_vm: Callable[[], Path]
) -> None:
    vm = qemu_vm()
    started = run_kvmlab(state_dir, "start", str(vm), tmpdir=private_tmp, backend="qemu", umask=0)
    assert started.returncode == 0, started.stderr
    running = modes(state_dir)
    assert running["pid/vm1"] == ("f", 0o600)  # QEMU writes its pidfile 0600 itself
    assert {"ctrl/vm1.qmp", "ctrl/vm1.serial", "ctrl/vm1.monitor"} <= set(running)
    assert check_modes(state_dir) == [], running
    stopped = run_kvmlab(state_dir, "stop", "vm1", "--force", backend="qemu", umask=0)
    assert stopped.returncode == 0, stopped.stderr
    assert check_modes(state_dir) == [], modes(state_dir)


@pytest.mark.qemu
def test_real_qemu_serial_log_is_not_group_readable(
    state_dir: Path, private_tmp: Path, qemu_vm: Callable[[], Path]
) -> None:
    vm = qemu_vm()
    started = run_kvmlab(
        state_dir, "start", str(vm), tmpdir=private_tmp, backend="qemu", umask=0o077
    )
    assert started.returncode == 0, started.stderr
    try:
        assert check_modes(state_dir, binary_files_strict=True) == []
    finally:
        run_kvmlab(state_dir, "stop", "vm1", "--force", backend="qemu")
