"""Live migration between two fake kvm processes, as between two QEMUs.

Each test starts a source and a target (``-incoming``) in the foreground in a short
folder under /tmp, drives them through QMP on plain sockets and through the guest
command channel, and checks what QEMU 7.2/10.0 do: the states and events on both
sides, ``query-migrate``'s fields, QEMU's errors, what moves (the guest's files and
boot id, its having booted) and what must match (machine type, RAM, devices).
No assertion depends on timing: waits poll for a state, with a generous limit.
"""

from __future__ import annotations

import itertools
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
FAKE = [sys.executable, "-m", "kvmlab.fake"]
PROG = "kvmlab-fake-kvm"
TERMINAL = ("completed", "failed", "cancelled")


# --------------------------------------------------------------------------- helpers


def wait_until(predicate: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


class Qmp:
    """A minimal QMP client: commands, replies, and the events read on the way."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        # The socket file exists from bind(); listen() follows a moment later.
        assert wait_until(lambda: self.sock.connect_ex(str(path)) == 0)
        self.file = self.sock.makefile("rb")
        self.events: list[dict[str, Any]] = []
        self.read()
        assert self.cmd("qmp_capabilities") == {"return": {}}

    def read(self) -> dict[str, Any]:
        line = self.file.readline()
        if not line:
            raise EOFError("QMP connection closed")
        return json.loads(line)  # type: ignore[no-any-return]

    def cmd(self, command: str, **arguments: Any) -> dict[str, Any]:
        message: dict[str, Any] = {"execute": command}
        if arguments:
            message["arguments"] = arguments
        self.sock.sendall(json.dumps(message).encode())
        while True:
            answer = self.read()
            if "event" not in answer:
                return answer
            self.events.append(answer)

    def ok(self, command: str, **arguments: Any) -> Any:
        answer = self.cmd(command, **arguments)
        assert "return" in answer, answer
        return answer["return"]

    def event(self, name: str, **data: Any) -> dict[str, Any]:
        """The first event ``name`` (with that data), reading on until it comes."""
        index = 0
        while True:
            while index < len(self.events):
                event = self.events[index]
                index += 1
                if event["event"] == name and all(
                    event.get("data", {}).get(k) == v for k, v in data.items()
                ):
                    return event
            self.events.append(self.read())

    def migration_statuses(self) -> list[str]:
        return [e["data"]["status"] for e in self.events if e["event"] == "MIGRATION"]

    def close(self) -> None:
        self.file.close()
        self.sock.close()


class Fake:
    """One fake kvm process in the foreground, with QMP, a console and a command channel."""

    def __init__(self, folder: Path, name: str, extra: list[str], env: dict[str, str]) -> None:
        self.folder = folder
        self.name = name
        self.qmp_path = folder / f"{name}.qmp"
        base = folder / name
        self.argv = [
            *FAKE,
            "-name", name, "-nodefaults", "-display", "none", "-m", "512",
            "-machine", "pc,accel=tcg",
            "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
            "-serial", f"unix:{base}.console,server=on,wait=off,logfile={base}.log",
            "-serial", f"unix:{folder / name}.cmd,server=on,wait=off",
            *extra,
        ]  # fmt: skip
        full_env = {**os.environ, "PYTHONPATH": SOURCE_ROOT, **env}
        self.proc = subprocess.Popen(
            self.argv, env=full_env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
        )
        try:
            assert wait_until(lambda: self.qmp_path.exists() or self.proc.poll() is not None)
            if self.proc.poll() is not None:
                pytest.fail(f"{name} did not start: {self.proc.communicate()[1]}")
            self.qmp = Qmp(self.qmp_path)
        except BaseException:
            self.proc.kill()
            self.proc.wait()
            raise
        self.nonce = 0

    def guest(self, command: str) -> str:
        """Run a command through the guest command channel; its output."""
        self.nonce += 1
        nonce = f"n{self.nonce}"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(str(self.folder / f"{self.name}.cmd"))
            sock.sendall(f"{nonce} 5 {command}\n".encode())
            data = b""
            while f"KVMLAB-EXIT {nonce} ".encode() not in data:
                chunk = sock.recv(4096)
                assert chunk, data
                data += chunk
        output, _, _ = data.decode().partition(f"\nKVMLAB-EXIT {nonce} ")
        return output

    def console(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        sock.connect(str(self.folder / f"{self.name}.console"))
        return sock

    def status(self) -> str:
        return str(self.qmp.ok("query-status")["status"])

    def exit_status(self) -> tuple[int, str]:
        _, err = self.proc.communicate(timeout=10)
        return self.proc.returncode, err


@pytest.fixture(autouse=True)
def _no_fault_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("KVMLAB_FAKE_"):
            monkeypatch.delenv(key)


@pytest.fixture
def lab() -> Iterator[Any]:
    """Starts fakes in a private short folder; kills them all at teardown."""
    folder = Path(tempfile.mkdtemp(prefix="km", dir="/tmp"))
    started: list[Fake] = []

    def start(name: str, *extra: str, **env: str) -> Fake:
        fake = Fake(folder, name, list(extra), env)
        started.append(fake)
        return fake

    start.folder = folder  # type: ignore[attr-defined]
    try:
        yield start
    finally:
        for fake in started:
            if fake.proc.poll() is None:
                fake.proc.kill()
            fake.proc.communicate(timeout=10)
            fake.qmp.close()
        shutil.rmtree(folder, ignore_errors=True)


def pair(lab: Any, *target_extra: str, events: bool = True, **env: str) -> tuple[Fake, Fake, str]:
    """A booted source and a listening target; the migration URI."""
    uri = f"unix:{lab.folder / 'mig'}"
    source = lab("src", **{k: v for k, v in env.items() if not k.startswith("T_")})
    target_env = {k[2:]: v for k, v in env.items() if k.startswith("T_")}
    target = lab("dst", "-incoming", uri, *target_extra, **target_env)
    if events:
        for side in (source, target):
            caps = [{"capability": "events", "state": True}]
            side.qmp.ok("migrate-set-capabilities", capabilities=caps)
    return source, target, uri


def wait_done(fake: Fake) -> dict[str, Any]:
    """Poll ``query-migrate`` until the migration ends; every answer seen, last first."""
    while True:
        info: dict[str, Any] = fake.qmp.ok("query-migrate")
        if info.get("status") in TERMINAL:
            return info
        time.sleep(0.005)


# --------------------------------------------------------------------------- success


def test_migration_moves_the_guest(lab: Any) -> None:
    source, target, uri = pair(lab)
    source.guest("echo token-123 > /root/token")
    boot_id = source.guest("cat /proc/sys/kernel/random/boot_id")
    assert target.status() == "inmigrate"
    assert target.qmp.ok("query-status")["running"] is False
    hmp = target.qmp.ok("human-monitor-command", **{"command-line": "info status"})
    assert hmp == "VM status: paused (inmigrate)\r\n"
    with target.console() as console:
        assert source.qmp.ok("migrate", uri=uri) == {}
        info = wait_done(source)
        assert info["status"] == "completed", info
        target.qmp.event("MIGRATION", status="completed")
        assert source.status() == "postmigrate"
        assert target.status() == "running"
        assert target.guest("cat /root/token") == "token-123\n"
        assert target.guest("cat /proc/sys/kernel/random/boot_id") == boot_id
        # The guest had booted on the source: the target prints no boot of its own.
        console.setblocking(False)
        try:
            printed = console.recv(65536)
        except BlockingIOError:
            printed = b""
        assert b"KVMLAB-BOOT-OK" not in printed
    # Nor did it print anything before (the console log has all it ever printed).
    assert (lab.folder / "dst.log").read_bytes() == b""
    assert (lab.folder / "src.log").read_bytes().count(b"KVMLAB-BOOT-OK") == 1
    assert source.proc.poll() is None  # postmigrate: paused, alive until quit
    hmp = source.qmp.ok("human-monitor-command", **{"command-line": "info status"})
    assert hmp == "VM status: paused (postmigrate)\r\n"
    assert source.qmp.ok("query-migrate")["status"] == "completed"
    assert target.qmp.ok("query-migrate") == {"status": "completed"}


def test_events_and_run_states_on_both_sides(lab: Any) -> None:
    source, target, uri = pair(lab)
    source.qmp.ok("migrate", uri=uri)
    wait_done(source)
    source.qmp.event("MIGRATION", status="completed")
    target.qmp.event("MIGRATION", status="completed")
    assert source.qmp.migration_statuses() == ["setup", "active", "completed"]
    assert target.qmp.migration_statuses() == ["active", "completed"]
    names = [e["event"] for e in source.qmp.events]
    assert names.index("STOP") < len(names) - 1  # STOP before completed
    assert [e["data"]["pass"] for e in source.qmp.events if e["event"] == "MIGRATION_PASS"] == [
        1,
        2,
    ]
    resume = [e for e in target.qmp.events if e["event"] == "RESUME"]
    assert len(resume) == 1


def test_no_events_without_the_capability(lab: Any) -> None:
    source, target, uri = pair(lab, events=False)
    source.qmp.ok("migrate", uri=uri)
    assert wait_done(source)["status"] == "completed"
    target.qmp.event("RESUME")
    assert source.qmp.migration_statuses() == []
    assert target.qmp.migration_statuses() == []


def test_query_migrate_fields_at_each_stage(lab: Any) -> None:
    source, target, uri = pair(lab, KVMLAB_FAKE_MIGRATE_TIME="0.5")
    assert source.qmp.ok("query-migrate") == {}
    assert target.qmp.ok("query-migrate") == {
        "socket-address": [{"path": str(lab.folder / "mig"), "type": "unix"}]
    }
    source.qmp.ok("migrate", uri=uri)
    seen: dict[str, dict[str, Any]] = {}
    while True:
        info = source.qmp.ok("query-migrate")
        seen.setdefault(info["status"], info)
        if info["status"] in TERMINAL:
            break
        time.sleep(0.01)
    active, done = seen["active"], seen["completed"]
    assert set(active) == {"expected-downtime", "status", "setup-time", "total-time", "ram"}
    assert set(done) == {"status", "setup-time", "downtime", "total-time", "ram"}
    ram = done["ram"]
    assert ram["remaining"] == 0
    assert ram["total"] > 512 * 1024 * 1024
    assert 0 < ram["transferred"] < ram["total"]
    assert ram["normal-bytes"] == ram["normal"] * ram["page-size"]
    assert active["ram"]["remaining"] > 0
    assert active["ram"]["transferred"] <= ram["transferred"]
    assert done["total-time"] >= done["downtime"] + done["setup-time"]
    assert done["total-time"] >= 500  # KVMLAB_FAKE_MIGRATE_TIME: the active phase's length


def test_migration_over_tcp(lab: Any) -> None:
    source = lab("src")
    target = lab("dst", "-incoming", "tcp:127.0.0.1:0")
    address = target.qmp.ok("query-migrate")["socket-address"][0]
    assert address["type"] == "inet"
    assert address["host"] == "127.0.0.1"
    assert int(address["port"]) > 0
    source.qmp.ok("migrate", uri=f"tcp:127.0.0.1:{address['port']}")
    assert wait_done(source)["status"] == "completed"
    assert wait_until(lambda: target.status() == "running")


def test_incoming_defer(lab: Any) -> None:
    source = lab("src")
    target = lab("dst", "-incoming", "defer")
    assert target.qmp.ok("query-migrate") == {}
    uri = f"unix:{lab.folder / 'later'}"
    assert target.qmp.ok("migrate-incoming", uri=uri) == {}
    again = target.qmp.cmd("migrate-incoming", uri=uri)
    assert again["error"]["desc"] == "The incoming migration has already been started"
    wrong = source.qmp.cmd("migrate-incoming", uri=uri)
    assert wrong["error"]["desc"] == "'-incoming' was not specified on the command line"
    source.qmp.ok("migrate", uri=uri)
    assert wait_done(source)["status"] == "completed"


def test_target_paused_with_dash_s_until_cont(lab: Any) -> None:
    source, target, uri = pair(lab, "-S")
    token = "kept"
    source.guest(f"echo {token} > /tmp/t")
    source.qmp.ok("migrate", uri=uri)
    assert wait_done(source)["status"] == "completed"
    target.qmp.event("MIGRATION", status="completed")
    assert target.status() == "paused"
    target.qmp.ok("cont")
    assert target.status() == "running"
    assert target.guest("cat /tmp/t") == f"{token}\n"


def test_daemonized_target_listens_before_the_parent_exits(lab: Any) -> None:
    folder: Path = lab.folder
    sock = folder / "d.mig"
    argv = [*FAKE, "-display", "none", "-daemonize", "-pidfile", str(folder / "d.pid")]
    argv += ["-incoming", f"unix:{sock}"]
    env = {**os.environ, "PYTHONPATH": SOURCE_ROOT}
    assert subprocess.run(argv, env=env, check=False).returncode == 0
    pid = int((folder / "d.pid").read_text())
    try:
        assert sock.exists()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(str(sock))
    finally:
        os.kill(pid, 9)


# --------------------------------------------------------------------------- errors


def test_qemu_errors(lab: Any) -> None:
    # A one-second active phase: the second migrate surely finds the first one running.
    source, target, uri = pair(lab, KVMLAB_FAKE_MIGRATE_TIME="1")
    missing = f"unix:{lab.folder / 'nothing'}"
    assert source.qmp.ok("migrate", uri=missing) == {}
    info = wait_done(source)
    assert info == {
        "status": "failed",
        "error-desc": f"Failed to connect to '{lab.folder / 'nothing'}': No such file or directory",
    }
    assert source.status() == "running"
    bad = source.qmp.cmd("migrate", uri="foo:bar")
    assert bad["error"]["desc"] == "Parameter 'uri' expects a valid migration protocol"
    inmigrate = target.qmp.cmd("migrate", uri=missing)
    assert inmigrate["error"]["desc"] == "Guest is waiting for an incoming migration"
    source.qmp.ok("migrate", uri=uri)
    busy = source.qmp.cmd("migrate", uri=uri)
    assert busy["error"]["desc"] == "There's a migration process in progress"
    assert wait_done(source)["status"] == "completed"
    after = source.qmp.cmd("migrate", uri=uri)
    assert after["error"]["desc"] == (
        "Can't migrate the vm that was paused due to previous migration"
    )


@pytest.mark.parametrize(
    ("target_extra", "message"),
    [
        (
            ["-m", "256"],
            "Size mismatch: pc.ram: 0x20000000 != 0x10000000: Invalid argument",
        ),
        (
            ["-machine", "pc-i440fx-7.1,accel=tcg"],
            "Machine type received is 'pc-i440fx-7.2' and local is 'pc-i440fx-7.1'",
        ),
    ],
)
def test_mismatched_target_fails_both_sides(
    lab: Any, target_extra: list[str], message: str
) -> None:
    source, target, uri = pair(lab, *target_extra)
    source.qmp.ok("migrate", uri=uri)
    info = wait_done(source)
    assert info == {"status": "failed", "error-desc": "Unable to write to socket: Broken pipe"}
    code, err = target.exit_status()
    assert code == 1
    assert f"{PROG}: {message}\n" in err
    assert err.endswith(f"{PROG}: load of migration failed: Invalid argument\n")
    assert source.status() == "running"
    assert source.guest("echo alive") == "alive\n"


def test_nic_only_on_the_source_fails_only_on_the_target_passes(lab: Any) -> None:
    nic = ["-netdev", "user,id=n0", "-device", "e1000,netdev=n0,mac=52:54:00:12:34:56"]
    uri = f"unix:{lab.folder / 'mig'}"
    source = lab("src", *nic)
    target = lab("dst", "-incoming", uri)
    source.qmp.ok("migrate", uri=uri)
    assert wait_done(source)["status"] == "failed"
    code, err = target.exit_status()
    assert code == 1
    assert 'Unknown ramblock "0000:00:02.0/e1000.rom", cannot accept migration' in err
    # The other way round QEMU migrates: the target's extra NIC keeps its reset state.
    uri2 = f"unix:{lab.folder / 'mig2'}"
    plain = lab("src2")
    wider = lab("dst2", "-incoming", uri2, *nic)
    plain.qmp.ok("migrate", uri=uri2)
    assert wait_done(plain)["status"] == "completed"
    assert wider.guest("cat /sys/class/net/eth0/address") == "52:54:00:12:34:56\n"


# --------------------------------------------------------------------------- cancel, faults


def test_cancel(lab: Any) -> None:
    source, target, uri = pair(lab, KVMLAB_FAKE_MIGRATE_STALL="1")
    source.qmp.ok("migrate", uri=uri)
    source.qmp.event("MIGRATION", status="active")
    assert source.qmp.ok("migrate_cancel") == {}
    assert wait_done(source) == {"status": "cancelled"}
    assert source.qmp.migration_statuses()[-2:] == ["cancelling", "cancelled"]
    assert source.status() == "running"
    code, err = target.exit_status()
    assert code == 1
    assert "load of migration failed" in err


def test_stall_stays_active_until_cancelled(lab: Any) -> None:
    source, target, uri = pair(lab, KVMLAB_FAKE_MIGRATE_STALL="1")
    source.qmp.ok("migrate", uri=uri)
    source.qmp.event("MIGRATION", status="active")
    target.qmp.event("MIGRATION", status="active")
    assert target.qmp.ok("query-migrate") == {
        "status": "active",
        "socket-address": [{"path": str(lab.folder / "mig"), "type": "unix"}],
    }
    first = source.qmp.ok("query-migrate")
    assert wait_until(
        lambda: source.qmp.ok("query-migrate")["ram"]["transferred"] > first["ram"]["total"] // 64
    )
    info = source.qmp.ok("query-migrate")
    assert info["status"] == "active"
    assert info["ram"]["remaining"] > 0
    assert info["expected-downtime"] > 300  # it will not converge under the limit
    assert source.status() == "running"
    source.qmp.ok("migrate_cancel")
    assert wait_done(source)["status"] == "cancelled"


def test_target_dies_during_the_migration(lab: Any) -> None:
    source, target, uri = pair(lab, T_KVMLAB_FAKE_MIGRATE_DIE="1")
    source.guest("echo still-here > /root/x")
    source.qmp.ok("migrate", uri=uri)
    info = wait_done(source)
    assert info == {"status": "failed", "error-desc": "Unable to write to socket: Broken pipe"}
    code, _ = target.exit_status()
    assert code == -9
    assert source.status() == "running"
    assert source.guest("cat /root/x") == "still-here\n"


def test_slow_migration_is_active_meanwhile(lab: Any) -> None:
    source, _target, uri = pair(lab)
    source.qmp.ok("migrate-set-parameters", **{"max-bandwidth": 8 * 1024 * 1024})
    params = source.qmp.ok("query-migrate-parameters")
    assert params["max-bandwidth"] == 8 * 1024 * 1024
    assert params["downtime-limit"] == 300
    source.qmp.ok("migrate", uri=uri)
    source.qmp.event("MIGRATION", status="active")
    assert source.qmp.ok("query-migrate")["status"] == "active"
    info = wait_done(source)
    assert info["status"] == "completed"
    # The RAM was sent at no more than max-bandwidth.
    bandwidth = 8 * 1024 * 1024
    assert info["total-time"] >= info["ram"]["precopy-bytes"] * 1000 // bandwidth
    assert info["total-time"] >= 500  # ~5 MiB at 8 MiB/s
    assert info["ram"]["mbps"] <= bandwidth * 8 / 1e6 * 1.01


# --------------------------------------------------------------------------- device state


def start_two(lab: Any, source_extra: list[str], target_extra: list[str]) -> tuple[Fake, Fake, str]:
    uri = f"unix:{lab.folder / 'mig'}"
    source = lab("src", *source_extra)
    target = lab("dst", "-incoming", uri, *target_extra)
    return source, target, uri


@pytest.mark.parametrize(
    ("source_extra", "message"),
    [
        (["-smp", "2"], "Unknown savevm section or instance 'cpu_common' 1"),
        (["-drive", "file={img},if=virtio,format=raw"], "'0000:00:02.0/virtio-blk' 0"),
    ],
)
def test_device_state_mismatch_is_found_by_the_target_only(
    lab: Any, source_extra: list[str], message: str
) -> None:
    """As in QEMU: the device state comes last, the source has already called it done."""
    image = lab.folder / "disk.img"
    image.write_bytes(b"\0" * 65536)
    extra = [arg.format(img=image) for arg in source_extra]
    source, target, uri = start_two(lab, extra, [])
    source.qmp.ok("migrate", uri=uri)
    assert wait_done(source)["status"] == "completed"
    assert source.status() == "postmigrate"
    code, err = target.exit_status()
    assert code == 1
    assert message in err
    assert "Make sure that your current VM setup matches your saved VM setup" in err


def test_return_path_makes_the_source_see_the_targets_refusal(lab: Any) -> None:
    source, target, uri = start_two(lab, ["-smp", "2"], [])
    caps = [{"capability": "events", "state": True}, {"capability": "return-path", "state": True}]
    source.qmp.ok("migrate-set-capabilities", capabilities=caps)
    source.qmp.ok("migrate", uri=uri)
    assert wait_done(source) == {"status": "failed"}  # QEMU gives no error-desc here
    assert source.status() == "running"
    names = [e["event"] for e in source.qmp.events]
    assert names.index("STOP") < names.index("RESUME")
    assert target.exit_status()[0] == 1
    on = source.qmp.ok("query-migrate-capabilities")
    assert {"state": True, "capability": "return-path"} in on


def test_return_path_success(lab: Any) -> None:
    source, target, uri = start_two(lab, [], [])
    caps = [{"capability": "return-path", "state": True}]
    source.qmp.ok("migrate-set-capabilities", capabilities=caps)
    source.qmp.ok("migrate", uri=uri)
    assert wait_done(source)["status"] == "completed"
    assert wait_until(lambda: target.status() == "running")


def test_hotplugged_nic_must_be_on_the_target_command_line(lab: Any) -> None:
    source, target, uri = start_two(lab, [], [])
    source.qmp.ok("netdev_add", type="user", id="hp0")
    source.qmp.ok("device_add", driver="virtio-net-pci", id="nic1", netdev="hp0")
    source.qmp.ok("migrate", uri=uri)
    assert wait_done(source)["status"] == "failed"
    _, err = target.exit_status()
    assert 'Unknown ramblock "0000:00:03.0/virtio-net-pci.rom"' in err
    # With the NIC in the target's argv (kvmlab saves the hotplug in the runtime), it passes.
    nic = [
        "-netdev",
        "user,id=hp0",
        "-device",
        "virtio-net-pci,id=nic1,netdev=hp0,addr=3,mac=52:54:00:12:34:56",
    ]
    uri2 = f"unix:{lab.folder / 'mig2'}"
    lab("dst2", "-incoming", uri2, *nic)
    source.qmp.ok("migrate", uri=uri2)
    assert wait_done(source)["status"] == "completed"


# --------------------------------------------------------------------------- QEMU 10.0, settings


def test_qemu_10_device_status_and_fields(lab: Any) -> None:
    source, target, uri = pair(
        lab, KVMLAB_FAKE_PROFILE="qemu-10.0", T_KVMLAB_FAKE_PROFILE="qemu-10.0"
    )
    assert target.qmp.ok("query-status") == {"status": "inmigrate", "running": False}
    assert target.qmp.ok("query-migrate")["status"] == "setup"
    source.qmp.ok("migrate", uri=uri)
    info = wait_done(source)
    assert "skipped" not in info["ram"]
    source.qmp.event("MIGRATION", status="completed")
    assert source.qmp.migration_statuses() == ["setup", "active", "device", "completed"]
    bad = source.qmp.cmd("migrate", uri="foo:bar")
    assert bad["error"]["desc"] in (
        "unknown migration protocol: foo:bar",
        "Can't migrate the vm that was paused due to previous migration",
    )
    params = source.qmp.ok("query-migrate-parameters")
    assert "mode" in params
    assert "compress-level" not in params


def test_settings_errors_in_qemus_words(lab: Any) -> None:
    fake = lab("src")
    q = fake.qmp
    desc = q.cmd("migrate-set-capabilities", capabilities=[{"capability": "nope", "state": True}])
    assert desc["error"]["desc"] == "Parameter 'capability' does not accept value 'nope'"
    desc = q.cmd("migrate-set-capabilities", capabilities=[{"capability": "events"}])
    assert desc["error"]["desc"] == "Parameter 'capabilities[0].state' is missing"
    desc = q.cmd("migrate-set-capabilities", capabilities=[{"capability": "events", "state": 1}])
    assert desc["error"]["desc"] == (
        "Invalid parameter type for 'capabilities[0].state', expected: boolean"
    )
    desc = q.cmd("migrate-set-parameters", **{"downtime-limit": 3000000})
    assert desc["error"]["desc"] == (
        "Parameter 'downtime_limit' expects an integer in the range of 0 to (2000 * 1000) ms"
    )
    desc = q.cmd("migrate-set-parameters", **{"max-bandwidth": "x"})
    assert desc["error"]["desc"] == "Parameter 'max-bandwidth' expects uint64"
    desc = q.cmd("migrate-set-parameters", nope=1)
    assert desc["error"]["desc"] == "Parameter 'nope' is unexpected"
    assert q.ok("migrate-set-parameters", **{"max-bandwidth": -1}) == {}
    assert q.ok("query-migrate-parameters")["max-bandwidth"] == 2**64 - 1
    assert q.ok("migrate_cancel") == {}  # nothing to cancel
    refused = q.cmd("migrate", uri="tcp:127.0.0.1:1")
    assert refused == {"return": {}}
    assert wait_done(fake) == {
        "status": "failed",
        "error-desc": "Failed to connect to '127.0.0.1:1': Connection refused",
    }


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("foo:bar", "-incoming foo:bar: unknown migration protocol: foo:bar"),
        (
            "unix:/nonexistent/dir/x",
            "-incoming unix:/nonexistent/dir/x: Failed to bind socket to /nonexistent/dir/x:"
            " No such file or directory",
        ),
        (
            "tcp:127.0.0.1:notaport",
            "-incoming tcp:127.0.0.1:notaport: address resolution failed for"
            " 127.0.0.1:notaport: Servname not supported for ai_socktype",
        ),
    ],
)
def test_incoming_start_errors(value: str, message: str) -> None:
    env = {**os.environ, "PYTHONPATH": SOURCE_ROOT}
    argv = [*FAKE, "-display", "none", "-incoming", value]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 1
    assert done.stderr == f"{PROG}: {message}\n"


def test_source_dies_during_the_migration(lab: Any) -> None:
    source, target, uri = pair(lab, KVMLAB_FAKE_MIGRATE_DIE="1")
    source.qmp.ok("migrate", uri=uri)
    assert source.exit_status()[0] == -9
    code, err = target.exit_status()
    assert code == 1
    assert err.endswith(f"{PROG}: load of migration failed: Invalid argument\n")
    assert target.qmp.event("MIGRATION", status="failed")  # sent before it exited


def test_a_paused_source_migrates_into_a_paused_target(lab: Any) -> None:
    source, target, uri = pair(lab)
    source.qmp.ok("stop")
    source.qmp.ok("migrate", uri=uri)
    assert wait_done(source)["status"] == "completed"
    target.qmp.event("MIGRATION", status="completed")
    assert target.status() == "paused"
    assert not [e for e in target.qmp.events if e["event"] == "RESUME"]
    assert source.status() == "postmigrate"


def test_progress_is_monotonic_and_consistent(lab: Any) -> None:
    """What a property over many polls would check: nothing goes backwards."""
    source, _target, uri = pair(lab, KVMLAB_FAKE_MIGRATE_TIME="0.3")
    source.qmp.ok("migrate", uri=uri)
    polls: list[dict[str, Any]] = []
    while not polls or polls[-1]["status"] not in TERMINAL:
        polls.append(source.qmp.ok("query-migrate"))
        time.sleep(0.005)
    rams = [p["ram"] for p in polls if "ram" in p]
    assert len(rams) >= 2
    for before, after in itertools.pairwise(rams):
        assert after["transferred"] >= before["transferred"]
        assert after["remaining"] <= before["remaining"]
        assert after["total"] == before["total"]
    times = [p["total-time"] for p in polls if "total-time" in p]
    assert times == sorted(times)
    done = polls[-1]
    assert done["status"] == "completed"
    assert (
        done["ram"]["transferred"] == done["ram"]["precopy-bytes"] + done["ram"]["downtime-bytes"]
    )


def test_a_failed_daemonized_target_removes_its_files(lab: Any) -> None:
    folder: Path = lab.folder
    pidfile, qmp, sock = folder / "t.pid", folder / "t.qmp", folder / "t.mig"
    argv = [*FAKE, "-display", "none", "-m", "256", "-daemonize", "-pidfile", str(pidfile)]
    argv += ["-qmp", f"unix:{qmp},server=on,wait=off", "-incoming", f"unix:{sock}"]
    env = {**os.environ, "PYTHONPATH": SOURCE_ROOT}
    assert subprocess.run(argv, env=env, check=False).returncode == 0
    source = lab("src")  # -m 512: the target refuses the stream and exits
    source.qmp.ok("migrate", uri=f"unix:{sock}")
    assert wait_done(source)["status"] == "failed"
    assert wait_until(lambda: not pidfile.exists())
    assert not qmp.exists()
    assert not sock.exists()
