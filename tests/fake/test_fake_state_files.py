"""State files: one fake VM writes its state with ``migrate fd:``, another loads it.

As QEMU 7.2 and 10.0 do (measured; ``tests/differential/test_differential_states.py``
checks the same points against the real binaries): the stream starts with QEMU's magic,
the writer ends ``postmigrate`` and ``cont`` runs it again; a reader started with the
same command line plus ``-incoming defer`` loads the state through ``getfd`` +
``migrate-incoming`` and carries the guest on (same boot id, files kept, no second
boot), ending ``paused`` (the writer was stopped) or running (it was not). The faults:
``KVMLAB_FAKE_STATE_TRUNCATE`` (the disk is full), ``KVMLAB_FAKE_MIGRATE_STALL``; and a
stream cut short makes the reader fail and exit 1. Waits poll, with generous limits.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import kvmlab

SOURCE_ROOT = str(Path(kvmlab.__file__).resolve().parents[1])
MAGIC = b"QEVM\x00\x00\x00\x03"
PROG = "kvmlab-fake-kvm"


def wait_until(predicate: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


class Vm:
    """One fake kvm in the foreground: QMP (with descriptor passing) and a command channel."""

    def __init__(
        self, folder: Path, name: str, profile: str, extra: list[str], env: dict[str, str]
    ):
        self.folder = folder
        self.name = name
        qmp = folder / f"{name}.qmp"
        self.log = folder / f"{name}.log"
        argv = [
            sys.executable, "-m", "kvmlab.fake", "--fake-profile", profile,
            "-nodefaults", "-display", "none", "-m", "256", "-machine", "pc,accel=tcg",
            "-qmp", f"unix:{qmp},server=on,wait=off",
            "-serial", f"unix:{folder / name}.console,server=on,wait=off,logfile={self.log}",
            "-serial", f"unix:{folder / name}.cmd,server=on,wait=off",
            *extra,
        ]  # fmt: skip
        clean = {k: v for k, v in os.environ.items() if not k.startswith("KVMLAB_FAKE_")}
        self.proc = subprocess.Popen(
            argv,
            env={**clean, "PYTHONPATH": SOURCE_ROOT, **env},
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
        assert wait_until(lambda: qmp.exists() or self.proc.poll() is not None)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        assert wait_until(lambda: self.sock.connect_ex(str(qmp)) == 0)
        self.file = self.sock.makefile("rb")
        self.events: list[str] = []
        self.file.readline()
        self.ok("qmp_capabilities")
        self.ok("migrate-set-capabilities", capabilities=[{"capability": "events", "state": True}])

    def cmd(self, command: str, fd: int | None = None, **arguments: Any) -> dict[str, Any]:
        data = json.dumps({"execute": command, "arguments": arguments}).encode()
        if fd is None:
            self.sock.sendall(data)
        else:
            socket.send_fds(self.sock, [data], [fd])
        while True:
            line = self.file.readline()
            if not line:
                raise EOFError("QMP connection closed")
            answer: dict[str, Any] = json.loads(line)
            if "event" not in answer:
                return answer
            status = answer.get("data", {}).get("status")
            self.events.append(answer["event"] + (f":{status}" if status else ""))

    def ok(self, command: str, **arguments: Any) -> Any:
        answer = self.cmd(command, **arguments)
        assert "return" in answer, answer
        return answer["return"]

    def status(self) -> str:
        return str(self.ok("query-status")["status"])

    def give(self, path: Path, flags: int) -> None:
        """Pass ``path`` opened with ``flags`` over QMP as ``st``."""
        fd = os.open(path, flags, 0o600)
        try:
            assert self.cmd("getfd", fd=fd, fdname="st") == {"return": {}}
        finally:
            os.close(fd)

    def write_state(self, path: Path) -> dict[str, Any]:
        """``getfd`` + ``migrate fd:st``; ``query-migrate`` once it has ended."""
        self.give(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        assert self.ok("migrate", uri="fd:st") == {}
        assert wait_until(lambda: self.ok("query-migrate").get("status") in ("completed", "failed"))
        return self.ok("query-migrate")  # type: ignore[no-any-return]

    def guest(self, command: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(str(self.folder / f"{self.name}.cmd"))
            sock.sendall(f"n1 5 {command}\n".encode())
            data = b""
            while b"KVMLAB-EXIT n1 " not in data:
                chunk = sock.recv(4096)
                assert chunk, data
                data += chunk
        return data.decode().partition("\nKVMLAB-EXIT n1 ")[0]

    def close(self) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.kill()
        _, err = self.proc.communicate(timeout=10)
        self.file.close()
        self.sock.close()
        return self.proc.returncode, err


@pytest.fixture(params=["qemu-7.2", "qemu-10.0"])
def lab(request: pytest.FixtureRequest) -> Iterator[Any]:
    folder = Path(tempfile.mkdtemp(prefix="ks", dir="/tmp"))
    started: list[Vm] = []

    def start(name: str, *extra: str, **env: str) -> Vm:
        vm = Vm(folder, name, request.param, list(extra), env)
        started.append(vm)
        return vm

    start.folder = folder  # type: ignore[attr-defined]
    start.profile = request.param  # type: ignore[attr-defined]
    try:
        yield start
    finally:
        for vm in started:
            vm.close()
        shutil.rmtree(folder, ignore_errors=True)


def booted(vm: Vm) -> str:
    """Wait for the guest's boot; its boot id, once a file has been written."""
    assert wait_until(lambda: vm.log.exists() and b"KVMLAB-BOOT-OK" in vm.log.read_bytes())
    vm.guest("echo kept > /root/before")
    return vm.guest("cat /proc/sys/kernel/random/boot_id").strip()


def test_a_state_moves_the_guest_to_a_new_process(lab: Any) -> None:
    source = lab("src")
    boot_id = booted(source)
    source.ok("stop")
    state = lab.folder / "vm.state"
    info = source.write_state(state)
    assert info["status"] == "completed"
    assert info["ram"]["remaining"] == 0
    assert source.status() == "postmigrate"
    assert state.read_bytes()[:8] == MAGIC
    assert state.stat().st_size > 2 * 1024 * 1024  # stands for the guest's RAM
    expected = ["STOP", "MIGRATION:setup", "MIGRATION_PASS", "MIGRATION:active"]
    if lab.profile == "qemu-10.0":
        expected.append("MIGRATION:device")
    assert source.events == [*expected, "MIGRATION_PASS", "MIGRATION:completed"]
    # The descriptor was taken by migrate, and closed: the name is gone.
    assert "not found" in source.cmd("closefd", fdname="st")["error"]["desc"]
    source.ok("cont")  # QEMU allows cont from postmigrate
    assert source.status() == "running"
    source.close()

    target = lab("dst", "-incoming", "defer")
    assert target.status() == "inmigrate"
    target.give(state, os.O_RDONLY)
    assert target.ok("migrate-incoming", uri="fd:st") == {}
    assert wait_until(lambda: target.status() != "inmigrate")
    assert target.status() == "paused"  # the writer was stopped
    assert target.ok("query-migrate") == {"status": "completed"}
    assert target.events[-3:] == ["MIGRATION:setup", "MIGRATION:active", "MIGRATION:completed"]
    target.ok("cont")
    assert target.guest("cat /root/before") == "kept\n"
    assert target.guest("cat /proc/sys/kernel/random/boot_id").strip() == boot_id
    log = target.log.read_bytes() if target.log.exists() else b""
    assert b"KVMLAB-BOOT-OK" not in log  # no second boot


def test_a_state_of_a_running_vm_runs_on_and_one_never_started_stays_prelaunch(lab: Any) -> None:
    live = lab("live")
    booted(live)
    state = lab.folder / "live.state"
    assert live.write_state(state)["status"] == "completed"  # not stopped first
    assert live.status() == "postmigrate"
    target = lab("dst", "-incoming", "defer")
    target.give(state, os.O_RDONLY)
    target.ok("migrate-incoming", uri="fd:st")
    assert wait_until(lambda: target.status() == "running")
    assert "RESUME" in target.events

    fresh = lab("fresh", "-S")
    paused = lab.folder / "fresh.state"
    assert fresh.write_state(paused)["status"] == "completed"
    second = lab("dst2", "-incoming", "defer")
    second.give(paused, os.O_RDONLY)
    second.ok("migrate-incoming", uri="fd:st")
    assert wait_until(lambda: second.status() != "inmigrate")
    assert second.status() == "prelaunch"


def test_a_full_disk_fails_the_write_and_leaves_the_vm_stopped(lab: Any) -> None:
    vm = lab("src", KVMLAB_FAKE_STATE_TRUNCATE="100000")
    booted(vm)
    vm.ok("stop")
    state = lab.folder / "vm.state"
    info = vm.write_state(state)
    assert info == {
        "status": "failed",
        "error-desc": "Unable to write to file: No space left on device",
    }
    assert state.stat().st_size == 100000
    assert vm.status() == "paused"
    assert vm.events[-1] == "MIGRATION:failed"
    vm.ok("cont")
    assert vm.status() == "running"
    _, err = vm.close()
    section = 1 if lab.profile == "qemu-10.0" else 2
    assert f"{PROG}: failed to save SaveStateEntry with id(name): {section}(ram): -5\n" in err
    assert f"{PROG}: Unable to write to file: No space left on device\n" in err


def test_a_full_disk_from_the_first_byte(lab: Any) -> None:
    vm = lab("src", "-S", KVMLAB_FAKE_STATE_TRUNCATE="0")
    desc = vm.write_state(lab.folder / "vm.state")["error-desc"]
    if lab.profile == "qemu-10.0":
        assert desc == "ram_save_setup failed: Input/output error"
    else:
        assert desc == "Unable to write to file: No space left on device"
    assert vm.status() == "prelaunch"


def test_a_stalled_write_stays_active_until_cancelled(lab: Any) -> None:
    vm = lab("src", "-S", KVMLAB_FAKE_MIGRATE_STALL="1")
    state = lab.folder / "vm.state"
    vm.give(state, os.O_WRONLY | os.O_CREAT)
    vm.ok("migrate", uri="fd:st")
    assert wait_until(lambda: vm.ok("query-migrate")["status"] == "active")
    assert vm.ok("query-migrate")["status"] == "active"
    vm.ok("migrate_cancel")
    assert wait_until(lambda: vm.ok("query-migrate")["status"] == "cancelled")
    assert vm.status() == "prelaunch"


def test_a_slow_finalization_refuses_cont_until_the_run_state_moves_on(lab: Any) -> None:
    vm = lab("src", KVMLAB_FAKE_FINALIZE_DELAY="1")
    booted(vm)
    assert vm.write_state(lab.folder / "vm.state")["status"] == "completed"
    assert vm.status() == "finish-migrate"  # QEMU 7.2's migration thread has not ended
    refused = vm.cmd("cont")["error"]
    assert refused == {"class": "GenericError", "desc": "Migration is not finalized yet"}
    hmp = vm.ok("human-monitor-command", **{"command-line": "cont"})
    assert hmp == "Error: Migration is not finalized yet\r\n"
    assert wait_until(lambda: vm.status() == "postmigrate")
    vm.ok("cont")
    assert vm.status() == "running"


@pytest.mark.parametrize("keep", [8, 100, 1_000_000])
def test_a_truncated_state_fails_the_load_and_the_process_exits(lab: Any, keep: int) -> None:
    source = lab("src", "-S")
    whole = lab.folder / "whole.state"
    assert source.write_state(whole)["status"] == "completed"
    cut = lab.folder / "cut.state"
    cut.write_bytes(whole.read_bytes()[:keep])
    target = lab("dst", "-incoming", "defer")
    target.give(cut, os.O_RDONLY)
    target.ok("migrate-incoming", uri="fd:st")
    assert wait_until(lambda: target.proc.poll() is not None)
    code, err = target.close()
    assert code == 1
    lines = [line.removeprefix(f"{PROG}: ") for line in err.splitlines()]
    lines = [line for line in lines if not line.startswith("warning: ")]
    if keep < 200:
        assert lines == [
            "Configuration section missing",
            "load of migration failed: Invalid argument",
        ]
    elif lab.profile == "qemu-10.0":
        assert lines == [
            "Getting RAM address failed",
            "error while loading state section id 1(ram)",
            "load of migration failed: Input/output error",
        ]
    else:
        assert lines == [
            "error while loading state section id 2(ram)",
            "load of migration failed: Input/output error",
        ]


def test_a_state_of_another_machine_is_refused(lab: Any) -> None:
    source = lab("src", "-S")
    state = lab.folder / "vm.state"
    assert source.write_state(state)["status"] == "completed"
    target = lab("dst", "-incoming", "defer", "-m", "512")
    target.give(state, os.O_RDONLY)
    target.ok("migrate-incoming", uri="fd:st")
    assert wait_until(lambda: target.proc.poll() is not None)
    code, err = target.close()
    assert code == 1
    assert "Size mismatch: pc.ram: 0x10000000 != 0x20000000: Invalid argument" in err


def test_uris_and_descriptor_names(lab: Any) -> None:
    vm = lab("src", "-S")
    unknown = vm.cmd("migrate", uri="fd:nope")["error"]["desc"]
    assert unknown == "File descriptor named 'nope' has not been found"
    assert vm.ok("query-migrate") == {"status": "failed", "error-desc": unknown}
    path = lab.folder / "file.state"
    answer = vm.cmd("migrate", uri=f"file:{path}")
    if lab.profile == "qemu-7.2":
        assert answer["error"]["desc"] == "Parameter 'uri' expects a valid migration protocol"
        assert vm.ok("query-migrate") == {"status": "failed"}
        return
    assert answer == {"return": {}}
    assert wait_until(lambda: vm.ok("query-migrate")["status"] == "completed")
    assert path.read_bytes()[:8] == MAGIC
    target = lab("dst", "-incoming", "defer")
    target.ok("migrate-incoming", uri=f"file:{path}")
    assert wait_until(lambda: target.status() != "inmigrate")
    assert target.status() == "prelaunch"


def test_a_bad_truncate_value_is_a_start_error(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": SOURCE_ROOT, "KVMLAB_FAKE_STATE_TRUNCATE": "lots"}
    result = subprocess.run(
        [sys.executable, "-m", "kvmlab.fake", "-display", "none", "-S"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    assert "KVMLAB_FAKE_STATE_TRUNCATE='lots': expected a number of bytes" in result.stderr
