"""The fake kvm behaves like QEMU 7.2 (or 10.0) for everything kvmlab relies on.

Command-line errors are worded like QEMU's (checked against the real binary
when it is installed); ``-daemonize``, the pidfile, QMP, the monitor and the
serial console work as kvmlab expects; the guest prints the guest facts; and
each ``KVMLAB_FAKE_*`` fault does what its documentation says.

Sockets live in a short folder under /tmp (``sun_path`` is 108 bytes), and
every process a test starts is killed at teardown, failed test or not.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import kvmlab
from kvmlab import fake
from kvmlab.spec.capabilities import (
    OPTION_FLAGS,
    QemuCapabilities,
    available_profiles,
    load_profile,
)

#: The folder holding the ``kvmlab`` package, so the fake runs without installing.
SOURCE_ROOT = str(Path(kvmlab.__file__).resolve().parents[1])
FAKE = [sys.executable, "-m", "kvmlab.fake"]
PROG = "kvmlab-fake-kvm"
MAC = "52:54:00:12:34:56"
MACS = ("52:54:00:12:34:56", "52:54:00:ab:cd:01", "52:54:00:ab:cd:02")
#: ``MemTotal`` the fake guest reports for -m 512: 524288 kB minus 4 %.
MEM_512 = 524288 - 524288 // 25


# --------------------------------------------------------------------------- helpers


def alive(pid: int) -> bool:
    """Whether ``pid`` runs; a zombie waiting to be reaped counts as gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def wait_until(predicate: Any, timeout: float = 3.0) -> bool:
    """Poll ``predicate`` every 10 ms until it is true or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


class Qmp:
    """A minimal QMP client on a plain socket: requests, replies, events."""

    def __init__(self, path: Path | str, timeout: float = 3.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.file = self.sock.makefile("rb")
        self.events: list[dict[str, Any]] = []
        self.greeting = self.read()

    def read(self) -> dict[str, Any]:
        line = self.file.readline()
        if not line:
            raise EOFError("QMP connection closed")
        assert line.endswith(b"\r\n"), line
        return json.loads(line)  # type: ignore[no-any-return]

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def cmd(self, command: str, **arguments: Any) -> dict[str, Any]:
        """Send a command; its reply. Events read on the way go to ``events``."""
        message: dict[str, Any] = {"execute": command}
        if arguments:
            message["arguments"] = arguments
        self.send_raw(json.dumps(message).encode() + b"\n")
        return self.reply()

    def reply(self) -> dict[str, Any]:
        while True:
            answer = self.read()
            if "event" not in answer:
                return answer
            self.events.append(answer)

    def event(self, name: str) -> dict[str, Any]:
        """The first event called ``name``, reading on until it comes."""
        index = 0
        while True:
            while index < len(self.events):
                if self.events[index]["event"] == name:
                    return self.events[index]
                index += 1
            self.events.append(self.read())

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def read_until(sock: socket.socket, marker: bytes, timeout: float = 3.0) -> bytes:
    """Read from ``sock`` until ``marker`` arrives."""
    sock.settimeout(timeout)
    data = b""
    while marker not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


class FakeVM:
    """One fake kvm: its command line, files, and the conversation with it.

    :param workdir: a short folder for sockets, pidfile and logs.
    :param reaper: pids killed at teardown.
    """

    def __init__(self, workdir: Path, reaper: list[int], name: str = "vm1") -> None:
        self.dir = workdir
        self.name = name
        self.reaper = reaper
        self.pidfile = workdir / f"{name}.pid"
        self.qmp_path = workdir / f"{name}.qmp"
        self.monitor_path = workdir / f"{name}.mon"
        self.serial_path = workdir / f"{name}.ser"
        self.serial_log = workdir / f"{name}.serial.log"
        self.event_log = workdir / "events.jsonl"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("KVMLAB_FAKE_")}
        self.env.update(PYTHONPATH=SOURCE_ROOT, KVMLAB_FAKE_LOG=str(self.event_log))
        self.pid: int | None = None

    def argv(
        self,
        *extra: str,
        memory: int = 512,
        cpus: int = 2,
        nics: tuple[str, ...] = ("-net", "none"),
        daemonize: bool = True,
        machine: str = "pc-i440fx-7.2,accel=tcg",
    ) -> list[str]:
        """kvmlab's saved command line, then the start-time part (NICs, QMP)."""
        argv = ["-name", self.name, "-m", str(memory), "-smp", str(cpus)]
        argv += ["-pidfile", str(self.pidfile), "-device", "virtio-balloon"]
        argv += ["-daemonize"] if daemonize else []
        argv += ["-machine", machine, "-display", "none"]
        argv += ["-monitor", f"unix:{self.monitor_path},server=on,wait=off"]
        argv += [
            "-chardev",
            f"socket,id=serial0,path={self.serial_path},server=on,wait=off,"
            f"logfile={self.serial_log},logappend=off",
            "-serial",
            "chardev:serial0",
            *extra,
            *nics,
            "-qmp",
            f"unix:{self.qmp_path},server=on,wait=off",
        ]
        return argv

    def run(
        self, argv: list[str], env: dict[str, str] | None = None, **kwargs: Any
    ) -> subprocess.CompletedProcess[str]:
        """Run the fake until it exits (with ``-daemonize``: until the parent does)."""
        result = subprocess.run(
            [*FAKE, *argv],
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
            **kwargs,
        )
        self.note_pid()
        return result

    def popen(self, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*FAKE, *argv],
            env={**self.env, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def note_pid(self) -> None:
        if self.pidfile.exists() and self.pidfile.read_text().strip():
            self.pid = int(self.pidfile.read_text())
            self.reaper.append(self.pid)

    def start(self, *extra: str, env: dict[str, str] | None = None, **kwargs: Any) -> int:
        """Start daemonized, check it worked; the VM process's pid."""
        result = self.run(self.argv(*extra, **kwargs), env=env)
        assert result.returncode == 0, result.stderr
        assert self.pid is not None and alive(self.pid)
        return self.pid

    def qmp(self) -> Qmp:
        client = Qmp(self.qmp_path)
        assert client.cmd("qmp_capabilities") == {"return": {}}
        return client

    def quit(self) -> None:
        client = self.qmp()
        client.cmd("quit")
        client.close()
        assert self.wait_gone()

    def wait_gone(self, timeout: float = 3.0) -> bool:
        pid = self.pid
        assert pid is not None
        return wait_until(lambda: not alive(pid), timeout)

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        if not self.event_log.exists():
            return []
        records = [json.loads(line) for line in self.event_log.read_text().splitlines()]
        return [r for r in records if kind is None or r["event"] == kind]

    def serial_text(self) -> str:
        return self.serial_log.read_bytes().decode() if self.serial_log.exists() else ""

    def wait_facts(self, timeout: float = 3.0) -> list[str]:
        """The guest facts, ``KVMLAB-BOOT-OK`` to ``KVMLAB-FACTS-END``, from the serial log."""
        assert wait_until(lambda: "KVMLAB-FACTS-END\r\n" in self.serial_text(), timeout)
        return facts_of(self.serial_text())

    def leftovers(self) -> list[str]:
        """Sockets and pidfile still on disk."""
        paths = (self.pidfile, self.qmp_path, self.monitor_path, self.serial_path)
        return [p.name for p in paths if p.exists()]


def facts_of(text: str) -> list[str]:
    lines = text.split("\r\n")
    return lines[lines.index("KVMLAB-BOOT-OK") : lines.index("KVMLAB-FACTS-END") + 1]


def expected_facts(*macs: str, mem: int = MEM_512, cpus: int = 2) -> list[str]:
    nics = [f"NIC eth{index} {mac}" for index, mac in enumerate(macs)]
    return ["KVMLAB-BOOT-OK", f"MEM {mem}", f"CPUS {cpus}", *nics, "KVMLAB-FACTS-END"]


def make_script(path: Path, body: str, executable: bool = True) -> Path:
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755 if executable else 0o644)
    return path


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def _no_fault_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process calls must not see a developer's KVMLAB_FAKE_* settings."""
    for key in list(os.environ):
        if key.startswith("KVMLAB_FAKE_"):
            monkeypatch.delenv(key)


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A short private folder under /tmp, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="kf", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def reaper() -> Iterator[list[int]]:
    """Pids SIGKILLed at teardown if still alive, whatever the test's outcome."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def popens() -> Iterator[list[subprocess.Popen[str]]]:
    """Fake processes run in the foreground, killed and reaped at teardown."""
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=5)


@pytest.fixture
def vm(workdir: Path, reaper: list[int]) -> FakeVM:
    """A fake VM in its own folder, not started yet."""
    return FakeVM(workdir, reaper)


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run :func:`kvmlab.fake.main` in this process (for errors found before any fork)."""
    code = fake.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


# --------------------------------------------------------------------------- argv parsing

NIC1 = ("-netdev", "user,id=net0", "-device", f"virtio-net-pci,netdev=net0,mac={MAC},id=nic0")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-foo"], "-foo: invalid option"),
        (["--foo"], "--foo: invalid option"),
        (["-m"], "-m: requires an argument"),
        (["-name", "vm1", "-qmp"], "-qmp: requires an argument"),
        (["-m", "foo"], "-m foo: Parameter 'size' expects a non-negative number below 2^64"),
        (["-smp", "foo"], "Parameter 'smp.cpus' expects integer"),
        (["-name", "vm1,foo=bar"], "-name vm1,foo=bar: Invalid parameter 'foo'"),
        (["-machine", "nope"], "unsupported machine type"),
        (["-machine", "pc,acpi=maybe"], "Parameter 'acpi' does not accept value 'maybe'"),
        (["-boot", "z"], "Invalid boot device 'z'"),
        (["-uuid", "zzz"], "-uuid zzz: failed to parse UUID string: wrong format"),
        (["-device", "nope"], "-device nope: 'nope' is not a valid device model name"),
        (["-netdev", "foo,id=x"], "-netdev foo,id=x: Parameter 'type' does not accept value 'foo'"),
        (["-netdev", "user"], "-netdev user: Parameter 'id' is missing"),
        (
            ["-netdev", "user,id=n0", "-netdev", "user,id=n0"],
            "-netdev user,id=n0: Duplicate ID 'n0' for netdev",
        ),
        (
            ["-device", f"virtio-net-pci,netdev=n1,mac={MAC}"],
            f"-device virtio-net-pci,netdev=n1,mac={MAC}: "
            "Property 'virtio-net-device.netdev' can't find value 'n1'",
        ),
        (
            ["-netdev", "user,id=n0", "-device", "e1000,netdev=n0,mac=zz"],
            "-device e1000,netdev=n0,mac=zz: Property 'e1000.mac' doesn't take value 'zz'",
        ),
        (["-cpu", "Haswel"], "unable to find CPU model 'Haswel'"),
        (["-machine", "pc,accel=foo"], "invalid accelerator foo"),
        (
            ["-drive", "file=/x,if=none,cache=writebak"],
            "-drive file=/x,if=none,cache=writebak: inv",
        ),
        (["-drive", "file=/x,if=foo"], "-drive file=/x,if=foo: unsupported bus type 'foo'"),
        (["-drive", "file=/x,format=bogus"], "-drive file=/x,format=bogus: Unknown driver 'bogus'"),
        (["-rtc", "base=foo"], "invalid datetime format"),
        (["-device", "usb-tablet"], "-device usb-tablet: No 'usb-bus' bus found for device"),
        (["-smp", "300"], "Invalid SMP CPUs 300. The max CPUs supported by machine 'pc-i440fx"),
        (
            [
                *("-netdev", "user,id=n0", "-device", f"e1000,netdev=n0,mac={MACS[0]}"),
                *("-device", f"e1000,netdev=n0,mac={MACS[1]}"),
            ],
            "Property 'e1000.netdev' can't take value 'n0', it's in use",
        ),
        (
            ["-net", f"nic,vlan=0,macaddr={MAC},model=virtio"],
            f"-net nic,vlan=0,macaddr={MAC},model=virtio: Invalid parameter 'vlan'",
        ),
        (["-net", f"nic,macaddr={MAC},model=foo"], "Unsupported NIC model: foo"),
        (["-initrd", "/etc/hostname"], "-initrd only allowed with -kernel option"),
        (["-append", "ro"], "-append only allowed with -kernel option"),
        (["-chardev", "socket,path=/tmp/kfx,server=on"], "chardev: no id specified"),
        (["-serial", "chardev:nope"], "could not connect serial device to character backend"),
        (["-serial", "stdio", "-daemonize"], "-serial stdio: cannot use stdio with -daemonize"),
        (["-smp", "3,sockets=1,cores=2,threads=1"], "Invalid CPU topology"),
    ],
)
def test_argv_errors_are_worded_like_qemu(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_main(argv, capsys)
    assert code == 1
    assert out == ""
    assert err.startswith(f"{PROG}: ")
    assert message in err


def test_a_nic_without_mac_gets_qemus_default_macs() -> None:
    cfg = fake.parse_argv(
        [
            *("-netdev", "user,id=n0", "-netdev", "user,id=n1"),
            *("-device", "e1000,netdev=n0", "-device", "virtio-net-pci,netdev=n1"),
        ]
    )
    assert [nic.mac for nic in cfg.nics] == ["52:54:00:12:34:56", "52:54:00:12:34:57"]


def test_root_ports_and_bus_on_the_command_line() -> None:
    """``-device pcie-root-port`` and a device's ``bus=``, refused in QEMU's words."""
    head = ["-machine", "q35", "-netdev", "user,id=n0"]
    port = "pcie-root-port,id=port-s10,bus=pcie.0,chassis=16,port=0x10,addr=0x10.0x1"
    nic = f"virtio-net-pci,netdev=n0,mac={MAC},id=nic-s10,bus=port-s10,addr=0x0"
    cfg = fake.parse_argv([*head, "-device", port, "-device", nic])
    assert cfg.root_ports == {"port-s10": (0x10, 1)}
    assert (cfg.nics[0].bus, cfg.nics[0].slot) == ("port-s10", 0)
    with pytest.raises(fake.FakeError, match="Bus 'port-s10' not found"):
        fake.parse_argv([*head, "-device", nic])
    second = f"virtio-net-pci,netdev=n1,mac={MACS[1]},id=nic-x,bus=port-s10,addr=0x0"
    with pytest.raises(
        fake.FakeError,
        match="slot 0 function 0 not available for virtio-net-pci, in use by"
        " virtio-net-pci,id=nic-s10",
    ):
        fake.parse_argv(
            [*head, "-netdev", "user,id=n1", "-device", port, "-device", nic, "-device", second]
        )


def test_a_valid_command_line_parses_into_config() -> None:
    cfg = fake.parse_argv(
        [
            *("-name", "vm1", "-m", "1G", "-smp", "2,cores=2,threads=1,sockets=1", "-S"),
            *("-no-acpi", "-daemonize", "-no-reboot", "-pidfile", "/run/x/vm1.pid"),
            *("-machine", "pc-i440fx-7.2,accel=kvm", "-drive", "file=/a,,b,format=raw,if=virtio"),
            *("-kernel", "/k", "-initrd", "/i", "-append", "root=/dev/vda1 ro console=ttyS0,38400"),
            *("-usb", "-device", "usb-tablet", "-vnc", "127.0.0.1:5,password=on"),
            *("-rtc", "base=localtime", "-cpu", "host", "-k", "en-us", "-vga", "std"),
            *("-uuid", "0f8fad5b-d9cb-469f-a165-70867728950e", "-chroot", "/", "-runas", "root"),
            *("-monitor", "unix:/s/m,server,nowait", "-serial", "unix:/s/x,server,nowait"),
            *("-netdev", "tap,id=net0,script=/s/up-0,downscript=no,vhost=on,vnet_hdr=on"),
            *("-device", f"virtio-net-pci,netdev=net0,mac={MAC.upper()},id=nic0"),
            *("-net", f"nic,macaddr={MACS[1]},model=virtio", "-net", "user"),
            *("-qmp", "unix:/s/q,server=on,wait=off"),
        ]
    )
    assert (cfg.name, cfg.memory_mib, cfg.cpus, cfg.accel) == ("vm1", 1024, 2, "kvm")
    assert (cfg.acpi, cfg.start_paused, cfg.daemonize, cfg.no_reboot) == (False, True, True, True)
    assert cfg.drives == [("-drive file=/a,,b,format=raw,if=virtio", "/a,b", True)]
    assert cfg.append == "root=/dev/vda1 ro console=ttyS0,38400"
    assert [(n.model, n.mac, n.netdev) for n in cfg.nics] == [
        ("virtio-net-pci", MAC, "net0"),
        ("virtio-net-pci", MACS[1], None),
    ]
    tap, user = cfg.net_backends
    assert (tap.kind, tap.script, tap.downscript, tap.vnet_hdr) == ("tap", "/s/up-0", None, True)
    assert user.kind == "user"
    assert [(m.frontend, m.path, m.server, m.wait) for m in cfg.monitors] == [
        ("hmp", "/s/m", True, False),
        ("qmp", "/s/q", True, False),
    ]
    assert [(s.path, s.wait) for s in cfg.serials] == [("/s/x", False)]


def test_profile_from_first_argument_beats_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KVMLAB_FAKE_PROFILE", "qemu-7.2")
    code, _, err = run_main(["--fake-profile", "qemu-10.0", "-no-acpi"], capsys)
    assert (code, err) == (1, f"{PROG}: -no-acpi: invalid option\n")
    monkeypatch.setenv("KVMLAB_FAKE_PROFILE", "qemu-10.0")
    assert run_main(["-runas", "root"], capsys)[2] == f"{PROG}: -runas: invalid option\n"
    code, _, err = run_main(["--fake-profile", "qemu-99"], capsys)
    assert code == 1
    assert "unknown QEMU profile 'qemu-99' (recorded: " in err


def test_qemu_10_rejects_no_acpi_and_7_2_accepts_it() -> None:
    seven, ten = fake.load_profile("qemu-7.2"), fake.load_profile("qemu-10.0")
    assert fake.parse_argv(["-no-acpi"], seven).acpi is False
    with pytest.raises(fake.FakeError, match=r"^-no-acpi: invalid option$"):
        fake.parse_argv(["-no-acpi"], ten)
    cfg = fake.parse_argv(["-machine", "pc,acpi=off", "-run-with", "chroot=/,user=root"], ten)
    assert (cfg.acpi, cfg.chroot) == (False, "/")
    assert cfg.runas == ("root", "-run-with chroot=/,user=root")
    with pytest.raises(fake.FakeError, match="-run-with: invalid option"):
        fake.parse_argv(["-run-with", "user=root"], seven)


def test_no_acpi_under_qemu_10_fails_the_process(vm: FakeVM) -> None:
    result = vm.run(vm.argv("-no-acpi"), env={"KVMLAB_FAKE_PROFILE": "qemu-10.0"})
    assert (result.returncode, result.stderr) == (1, f"{PROG}: -no-acpi: invalid option\n")
    assert vm.leftovers() == []


def test_qemu_opts_escaped_commas_and_short_booleans() -> None:
    assert fake.parse_opts("file=/a,,b,,c,if=virtio", "") == {"file": "/a,b,c", "if": "virtio"}
    assert fake.parse_opts("/p,server,nowait", "", "path") == {
        "path": "/p",
        "server": "on",
        "wait": "off",
    }


@pytest.mark.parametrize("name", ["qemu-7.2", "qemu-10.0"])
def test_profile_options_agree_with_qemu_capabilities(name: str) -> None:
    """The fake's option set is what QemuCapabilities computes its booleans from."""
    if name not in available_profiles():
        pytest.skip(f"profile {name} not recorded")
    profile, caps = fake.load_profile(name), load_profile(name)
    assert_agrees(profile, caps)
    assert profile.machines() == set(caps.machines)
    assert set(caps.devices) <= set(profile.devices())


def assert_agrees(profile: fake.Profile, caps: QemuCapabilities) -> None:
    for field, option in OPTION_FLAGS.items():
        assert getattr(caps, field) == profile.accepts(option), (profile.name, field)
    assert profile.version == caps.version


def test_old_help_texts_load_as_profiles(ganeti_fixtures: Path) -> None:
    for path in sorted(ganeti_fixtures.glob("kvm_*_help.txt")):
        profile = fake.load_profile(str(path))
        assert_agrees(profile, QemuCapabilities.from_help(path.read_text()))


def test_builtin_profile_matches_the_7_2_defaults() -> None:
    builtin = fake.builtin_profile()
    caps = QemuCapabilities.from_help(builtin.help_text, builtin.text("machine"))
    defaults = QemuCapabilities()
    for field in defaults.to_dict():
        if field.startswith("has_") or field in ("version", "default_machine"):
            assert getattr(caps, field) == getattr(defaults, field), field
    if "qemu-7.2" in available_profiles():
        assert builtin.options == fake.load_profile("qemu-7.2").options


# --------------------------------------------------------------------------- help texts


@pytest.mark.parametrize(
    ("argv", "recording"),
    [
        (["-help"], "help"),
        (["--help"], "help"),
        (["-version"], "version"),
        (["-machine", "help"], "machine"),
        (["-M", "?"], "machine"),
        (["-device", "help"], "device"),
        (["-netdev", "help"], "netdev"),
    ],
)
def test_help_prints_the_recorded_texts(
    argv: list[str], recording: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_main(argv, capsys)
    assert (code, err) == (0, "")
    assert out == fake.load_profile().text(recording)
    assert out.strip()


def test_capabilities_probe_works_on_the_fake(workdir: Path) -> None:
    for name in ("qemu-7.2", "qemu-10.0"):
        command = f"{sys.executable} -m kvmlab.fake --fake-profile {name}"
        wrapper = make_script(
            workdir / f"kvm-{name}", f'PYTHONPATH={SOURCE_ROOT} exec {command} "$@"'
        )
        probed = QemuCapabilities.probe(wrapper)
        assert probed.to_dict() | {"profile": name} == load_profile(name).to_dict()


# --------------------------------------------------------------------------- start, QMP


def test_daemonize_writes_the_pidfile_and_exits_when_ready(vm: FakeVM) -> None:
    pid = vm.start()
    assert vm.pidfile.read_text() == f"{pid}\n"
    assert stat.S_ISSOCK(vm.qmp_path.stat().st_mode)
    assert stat.S_ISSOCK(vm.monitor_path.stat().st_mode)
    assert stat.S_ISSOCK(vm.serial_path.stat().st_mode)
    # a second process for the same pidfile is refused while the first holds its lock
    again = vm.run(vm.argv())
    assert again.returncode == 1
    assert "cannot create PID file: Cannot lock pid file" in again.stderr
    vm.quit()
    assert vm.leftovers() == []
    assert [e["event"] for e in vm.events() if e["pid"] == pid][:2] == ["ready", "boot"]


def test_qmp_conversation(vm: FakeVM) -> None:
    vm.start()
    client = Qmp(vm.qmp_path)
    assert client.greeting == {
        "QMP": {
            "version": {"qemu": {"major": 7, "minor": 2, "micro": 22}, "package": "kvmlab-fake"},
            "capabilities": [],
        }
    }
    early = client.cmd("query-status")
    assert early["error"]["desc"] == "Expecting capabilities negotiation with 'qmp_capabilities'"
    assert client.cmd("qmp_capabilities") == {"return": {}}
    again = client.cmd("qmp_capabilities")
    assert again["error"]["class"] == "CommandNotFound"
    status = {"status": "running", "singlestep": False, "running": True}
    assert client.cmd("query-status") == {"return": status}
    assert client.cmd("query-name") == {"return": {"name": "vm1"}}
    assert client.cmd("query-version")["return"]["qemu"] == {"major": 7, "minor": 2, "micro": 22}
    cpus = client.cmd("query-cpus-fast")["return"]
    assert [cpu["cpu-index"] for cpu in cpus] == [0, 1]
    memory = client.cmd("query-memory-size-summary")
    assert memory == {"return": {"base-memory": 512 * 1024 * 1024, "plugged-memory": 0}}
    assert client.cmd("foo") == {
        "error": {"class": "CommandNotFound", "desc": "The command foo has not been found"}
    }
    assert client.cmd("query-status", a=1)["error"]["desc"] == "Parameter 'a' is unexpected"
    client.send_raw(b'{"execute": "query-name", "id": "x1"}')  # no newline: QEMU does not need one
    assert client.reply() == {"return": {"name": "vm1"}, "id": "x1"}
    client.send_raw(b"[1]\n")
    assert client.reply()["error"]["desc"] == "QMP input must be a JSON object"
    hmp = client.cmd("human-monitor-command", **{"command-line": "info status"})
    assert hmp == {"return": "VM status: running\r\n"}
    assert client.cmd("stop") == {"return": {}}
    assert client.event("STOP")["event"] == "STOP"
    assert client.cmd("query-status")["return"]["status"] == "paused"
    client.close()
    # one client at a time, any number over time
    second = vm.qmp()
    assert second.cmd("cont") == {"return": {}}
    assert second.event("RESUME")
    assert second.cmd("quit") == {"return": {}}
    assert second.events[-1]["data"] == {"guest": False, "reason": "host-qmp-quit"}
    second.close()
    assert vm.wait_gone()
    assert vm.leftovers() == []
    logged = [e["command"] for e in vm.events("qmp")]
    assert logged[:3] == ["query-status", "qmp_capabilities", "qmp_capabilities"]


def test_started_paused_boots_at_cont(vm: FakeVM) -> None:
    vm.start("-S")
    client = vm.qmp()
    assert client.cmd("query-status")["return"]["status"] == "prelaunch"
    serial = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    serial.connect(str(vm.serial_path))
    time.sleep(0.05)
    assert "KVMLAB-BOOT-OK" not in vm.serial_text()
    assert client.cmd("cont") == {"return": {}}
    seen = read_until(serial, b"KVMLAB-FACTS-END\r\n").decode()
    assert facts_of(seen) == expected_facts()
    assert client.cmd("query-status")["return"]["status"] == "running"
    assert client.event("RESUME")
    serial.close()
    client.close()
    vm.quit()


def test_human_monitor(vm: FakeVM) -> None:
    vm.start("-S")
    mon = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    mon.connect(str(vm.monitor_path))
    banner = read_until(mon, b"(qemu) ")
    assert banner == b"QEMU 7.2.22 monitor - type 'help' for more information\r\n(qemu) "
    mon.sendall(b"info status\n")
    assert b"VM status: paused (prelaunch)\r\n(qemu) " in read_until(mon, b"(qemu) ")
    mon.sendall(b"cont\n")
    read_until(mon, b"(qemu) ")
    mon.sendall(b"info bogus\n")
    assert b"unknown command: 'info bogus'" in read_until(mon, b"(qemu) ")
    mon.sendall(b"quit\n")
    read_until(mon, b"never")
    mon.close()
    assert vm.wait_gone()
    assert vm.leftovers() == []
    assert vm.wait_facts() == expected_facts()


def test_wait_on_blocks_start_until_a_client_connects(vm: FakeVM, popens: list[Any]) -> None:
    argv = vm.argv()
    argv[-1] = f"unix:{vm.qmp_path},server"  # the old spelling: server, and wait defaults to on
    proc = vm.popen(argv)
    popens.append(proc)
    assert wait_until(vm.qmp_path.exists)
    time.sleep(0.2)
    assert proc.poll() is None
    client = Qmp(vm.qmp_path)
    assert proc.wait(timeout=5) == 0
    assert proc.stderr is not None
    assert "QEMU waiting for connection on: disconnected:unix:" in proc.stderr.read()
    vm.note_pid()
    assert client.cmd("qmp_capabilities") == {"return": {}}
    client.close()
    vm.quit()


# --------------------------------------------------------------------------- guest facts


def test_facts_without_nics(vm: FakeVM) -> None:
    vm.start()
    assert vm.wait_facts() == expected_facts()
    vm.quit()
    assert facts_of(vm.serial_text()) == expected_facts()


def test_facts_with_one_nic(vm: FakeVM) -> None:
    vm.start(nics=NIC1, memory=1024, cpus=4)
    vm.quit()
    assert facts_of(vm.serial_text()) == expected_facts(MAC, mem=1048576 - 1048576 // 25, cpus=4)


def test_facts_with_three_nics_user_tap_script_and_tap_fd(vm: FakeVM) -> None:
    script = make_script(vm.dir / "up-1", f'echo "$1" > {vm.dir}/ran')
    read_end, tap_fd = os.pipe()
    nics = (
        *("-netdev", "user,id=net0"),
        *("-device", f"virtio-net-pci,netdev=net0,mac={MACS[0]},id=nic0"),
        *("-netdev", f"tap,id=net1,script={script},downscript=no"),
        *("-device", f"e1000,netdev=net1,mac={MACS[1]},id=nic1"),
        *("-netdev", f"tap,id=net2,fd={tap_fd},vhost=on"),
        *("-device", f"rtl8139,netdev=net2,mac={MACS[2]},id=nic2"),
    )
    try:
        result = vm.run(vm.argv(nics=nics), pass_fds=(tap_fd,))
    finally:
        os.close(read_end)
        os.close(tap_fd)
    assert result.returncode == 0, result.stderr
    script.unlink()  # kvmlab deletes its scripts right after start
    vm.quit()
    assert facts_of(vm.serial_text()) == expected_facts(*MACS)
    assert not (vm.dir / "ran").exists()
    (recorded,) = vm.events("script")
    assert recorded["message"] == f"would run {script} tap0"


def test_facts_with_old_style_net_options(vm: FakeVM) -> None:
    nics = ("-net", f"nic,macaddr={MACS[1]},model=virtio", "-net", "user")
    vm.start(nics=nics)
    vm.quit()
    assert facts_of(vm.serial_text()) == expected_facts(MACS[1])


def test_an_old_qemu_with_vlans_and_short_booleans(vm: FakeVM, ganeti_fixtures: Path) -> None:
    """Ganeti's QEMU 0.12.5: -M, -net ...,vlan=0, server,nowait; control by the monitor."""
    profile = str(ganeti_fixtures / "kvm_0.12.5_help.txt")
    argv = [
        *("--fake-profile", profile, "-name", "vm1", "-m", "256", "-smp", "1"),
        *("-pidfile", str(vm.pidfile), "-daemonize", "-S", "-M", "pc"),
        *("-serial", f"unix:{vm.serial_path},server,nowait"),
        *("-monitor", f"unix:{vm.monitor_path},server,nowait"),
        *("-net", f"nic,vlan=0,macaddr={MAC},model=virtio", "-net", "tap,vlan=0,script=no"),
    ]
    assert vm.run(argv).returncode == 0
    serial = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    serial.connect(str(vm.serial_path))
    mon = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    mon.connect(str(vm.monitor_path))
    assert read_until(mon, b"(qemu) ").startswith(b"QEMU 0.12.5 monitor")
    mon.sendall(b"cont\n")
    seen = read_until(serial, b"KVMLAB-FACTS-END\r\n").decode()
    assert facts_of(seen) == expected_facts(MAC, mem=262144 - 262144 // 25, cpus=1)
    mon.sendall(b"quit\n")
    assert vm.wait_gone()
    serial.close()
    mon.close()


# --------------------------------------------------------------------------- powerdown


def test_powerdown_with_acpi_powers_the_guest_off(vm: FakeVM) -> None:
    vm.start()
    client = vm.qmp()
    assert client.cmd("system_powerdown") == {"return": {}}
    assert client.event("POWERDOWN")
    assert client.event("SHUTDOWN")["data"] == {"guest": True, "reason": "guest-shutdown"}
    assert vm.wait_gone()
    client.close()
    assert vm.leftovers() == []
    assert "reboot: Power down\r\n" in vm.serial_text()
    assert vm.events("exit")[-1]["code"] == 0


@pytest.mark.parametrize(
    ("extra", "env"),
    [
        (("-no-acpi",), {}),
        (("-machine", "pc-i440fx-7.2,acpi=off"), {}),
        ((), {"KVMLAB_FAKE_IGNORE_POWERDOWN": "1"}),
    ],
    ids=["no-acpi", "acpi-off", "ignored"],
)
def test_powerdown_without_acpi_or_ignored_leaves_it_running(
    vm: FakeVM, extra: tuple[str, ...], env: dict[str, str]
) -> None:
    vm.start(*extra, env={"KVMLAB_FAKE_POWERDOWN_DELAY": "0.05", **env})
    client = vm.qmp()
    assert client.cmd("system_powerdown") == {"return": {}}
    assert client.event("POWERDOWN")
    time.sleep(0.2)  # four times the power-off delay
    assert alive(vm.pid or 0)
    assert client.cmd("query-status")["return"]["status"] == "running"
    assert [e["event"] for e in client.events] == ["POWERDOWN"]
    client.close()
    vm.quit()


def test_system_reset_reboots_and_no_reboot_exits(vm: FakeVM) -> None:
    vm.start()
    client = vm.qmp()
    vm.wait_facts()
    assert client.cmd("system_reset") == {"return": {}}
    assert client.event("RESET")["data"] == {"guest": False, "reason": "host-qmp-system-reset"}
    assert wait_until(lambda: vm.serial_text().count("KVMLAB-FACTS-END") == 2)
    client.close()
    vm.quit()
    other = FakeVM(vm.dir, vm.reaper, name="vm2")
    other.start("-no-reboot")
    client = other.qmp()
    assert client.cmd("system_reset") == {"return": {}}
    assert client.event("SHUTDOWN")["data"] == {"guest": False, "reason": "host-qmp-system-reset"}
    assert other.wait_gone()
    client.close()
    assert other.leftovers() == []


# --------------------------------------------------------------------------- faults


def test_fail_start(vm: FakeVM) -> None:
    result = vm.run(vm.argv(), env={"KVMLAB_FAKE_FAIL_START": "could not frobnicate"})
    assert (result.returncode, result.stderr) == (1, f"{PROG}: could not frobnicate\n")
    assert vm.leftovers() == []


def test_crash_after_leaves_pidfile_and_sockets_behind(vm: FakeVM) -> None:
    vm.start(env={"KVMLAB_FAKE_CRASH_AFTER": "0.2"})
    assert vm.wait_gone()
    assert vm.leftovers() == ["vm1.pid", "vm1.qmp", "vm1.mon", "vm1.ser"]
    (crash,) = vm.events("crash")
    assert crash["after"] == 0.2
    assert vm.events("exit") == []


def test_slow_start_delays_readiness(vm: FakeVM) -> None:
    began = time.monotonic()
    vm.start(env={"KVMLAB_FAKE_SLOW_START": "0.4"})
    assert time.monotonic() - began >= 0.4
    vm.quit()


def test_hang_start_never_gets_ready(vm: FakeVM, popens: list[Any]) -> None:
    proc = vm.popen(vm.argv(), env={"KVMLAB_FAKE_HANG_START": "1"})
    popens.append(proc)
    assert wait_until(vm.pidfile.exists)
    time.sleep(0.1)
    vm.note_pid()
    time.sleep(0.3)
    assert proc.poll() is None
    assert not vm.qmp_path.exists()
    # kvmlab gives up and kills the process it started: the hung VM goes too
    proc.kill()
    proc.wait(timeout=5)
    assert vm.wait_gone()
    assert vm.leftovers() == []


def test_invalid_fault_value_is_an_error(vm: FakeVM) -> None:
    result = vm.run(vm.argv(), env={"KVMLAB_FAKE_CRASH_AFTER": "soon"})
    assert result.returncode == 1
    assert "KVMLAB_FAKE_CRASH_AFTER='soon': expected a number of seconds" in result.stderr


# --------------------------------------------------------------------------- signals


def test_sigterm_cleans_up(vm: FakeVM) -> None:
    pid = vm.start()
    client = vm.qmp()
    os.kill(pid, signal.SIGTERM)
    assert client.event("SHUTDOWN")["data"] == {"guest": False, "reason": "host-signal"}
    assert vm.wait_gone()
    client.close()
    assert vm.leftovers() == []
    assert vm.events("signal")[0]["signal"] == signal.SIGTERM
    assert vm.events("exit")[-1]["code"] == 0


def test_foreground_sigterm_message_and_status(vm: FakeVM, popens: list[Any]) -> None:
    proc = vm.popen(vm.argv(daemonize=False))
    popens.append(proc)
    assert wait_until(vm.qmp_path.exists)
    vm.note_pid()
    assert vm.pid == proc.pid
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=5)
    assert proc.returncode == 0
    assert err == f"{PROG}: terminating on signal 15\n"
    assert vm.leftovers() == []


# --------------------------------------------------------------------------- files, taps


def test_missing_files_fail_like_qemu(vm: FakeVM) -> None:
    missing = vm.dir / "missing"
    result = vm.run(vm.argv("-kernel", str(missing)))
    assert result.returncode == 1
    message = f"qemu: could not open kernel file '{missing}': No such file or directory\n"
    assert result.stderr == message
    assert vm.leftovers() == []
    result = vm.run(vm.argv("-drive", f"file={missing},format=raw,if=virtio"))
    assert result.stderr.endswith(f": Could not open '{missing}': No such file or directory\n")


def test_in_process_start_failure_restores_signal_handlers(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    code, _, err = run_main(["-kernel", str(workdir / "nope")], capsys)
    assert code == 1
    assert "could not open kernel file" in err
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_tap_script_must_be_executable(vm: FakeVM) -> None:
    script = make_script(vm.dir / "up-0", "exit 0", executable=False)
    nics = ("-netdev", f"tap,id=net0,script={script},downscript=no", *NIC1[2:])
    result = vm.run(vm.argv(nics=nics))
    assert result.returncode == 1
    assert result.stderr.endswith(f": network script {script} failed with status 256\n")
    assert vm.leftovers() == []


def test_tap_fd_must_be_open(vm: FakeVM) -> None:
    nics = ("-netdev", "tap,id=net0,fd=99", *NIC1[2:])
    result = vm.run(vm.argv(nics=nics))
    assert result.returncode == 1
    assert "net0: Can't use file descriptor 99: Bad file descriptor" in result.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="KVMLAB_FAKE_TAP=run needs root")
@pytest.mark.usefixtures("host_taps")  # creates a tap: tests/conftest.py
def test_tap_script_runs_with_the_tap_name_as_root(vm: FakeVM) -> None:
    script = make_script(vm.dir / "up-0", f'echo "$1" > {vm.dir}/ran')
    nics = ("-netdev", f"tap,id=net0,script={script},downscript=no", *NIC1[2:])
    vm.start(nics=nics, env={"KVMLAB_FAKE_TAP": "run"})
    tap = (vm.dir / "ran").read_text().strip()
    assert tap.startswith("tap")
    (ran,) = vm.events("script")
    assert (ran["action"], ran["tap"], ran["status"]) == ("run", tap, 0)
    vm.quit()
    failing = make_script(vm.dir / "up-1", "exit 3")
    nics = ("-netdev", f"tap,id=net0,script={failing},downscript=no", *NIC1[2:])
    result = vm.run(vm.argv(nics=nics), env={"KVMLAB_FAKE_TAP": "run"})
    assert result.returncode == 1
    assert result.stderr.endswith(f": network script {failing} failed with status 768\n")
    assert vm.leftovers() == []


# --------------------------------------------------------------------------- cost


def test_peak_rss_stays_small(vm: FakeVM) -> None:
    pid = vm.start(nics=NIC1)
    client = vm.qmp()
    for _ in range(20):
        client.cmd("query-status")
    vm.wait_facts()
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    client.close()
    vm.quit()
    assert peak < 20 * 1024, f"peak RSS {peak} kB"


# --------------------------------------------------------------------------- against real QEMU


@pytest.mark.qemu
@pytest.mark.parametrize(
    "argv",
    [
        ["-foo"],
        ["-m"],
        ["-netdev", "user,id=n0", "-netdev", "user,id=n0"],
        ["-device", f"virtio-net-pci,netdev=n1,mac={MAC}"],
        ["-netdev", "user,id=n0", "-device", "e1000,netdev=n0,mac=zz"],
        ["-net", f"nic,vlan=0,macaddr={MAC},model=virtio"],
        ["-kernel", "/nonexistent/vmlinuz"],
        ["-initrd", "/etc/hostname"],
        ["-drive", "file=/nonexistent/disk,format=raw,if=virtio"],
        ["-machine", "nope"],
        ["-name", "vm1,foo=bar"],
        ["-netdev", "user"],
        ["-uuid", "zzz"],
        ["-device", "nope"],
        ["-chardev", "socket,path=/tmp/kf-none,server=on,wait=off"],
    ],
    ids=lambda argv: " ".join(argv)[:40],
)
def test_same_error_as_real_qemu(
    argv: list[str], qemu_binary: str, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["-display", "none", "-S", "-nodefaults"]
    real = subprocess.run(
        [qemu_binary, *base, *argv], capture_output=True, text=True, timeout=10, check=False
    )
    code, _, err = run_main([*base, *argv], capsys)
    assert (code, real.returncode) == (1, 1)
    assert err.replace(PROG, os.path.basename(qemu_binary)) == real.stderr


# --------------------------------------------------------------------------- command channel


def channel_args(vm: FakeVM) -> tuple[str, ...]:
    """kvmlab's second serial: the guest command channel (ttyS1)."""
    path = vm.dir / f"{vm.name}.cmd"
    return ("-chardev", f"socket,id=cmd0,path={path},server=on,wait=off", "-serial", "chardev:cmd0")


CHANNEL_MAC = "52:54:00:6b:0c:01"


def ask(sock: socket.socket, nonce: str, line: str, seconds: int = 5) -> bytes:
    """Send one request; the reply up to its marker line's end."""
    sock.sendall(f"{nonce} {seconds} {line}\n".encode())
    data = read_until(sock, f"KVMLAB-EXIT {nonce} ".encode())
    while not data.endswith(b"\n"):
        data += read_until(sock, b"\n")
    return data


def test_channel_answers_only_once_running_and_in_order(vm: FakeVM) -> None:
    vm.start("-S", *channel_args(vm))
    channel = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    channel.connect(str(vm.dir / "vm1.cmd"))
    channel.sendall(b"n1 5 sleep 0.2; echo first\nn2 5 echo second\n")
    channel.settimeout(0.3)
    with pytest.raises(TimeoutError):
        channel.recv(100)  # prelaunch: the guest's loop is not running yet
    client = vm.qmp()
    assert client.cmd("cont") == {"return": {}}
    seen = read_until(channel, b"KVMLAB-EXIT n2 0\n")
    assert seen == b"first\n\nKVMLAB-EXIT n1 0\nsecond\n\nKVMLAB-EXIT n2 0\n"
    logged = [(e["command"], e["status"]) for e in vm.events("guest-command")]
    assert logged == [("sleep 0.2; echo first", 0), ("echo second", 0)]
    channel.close()
    client.close()
    vm.quit()


def test_channel_shell_syntax_and_errors_like_busybox(vm: FakeVM) -> None:
    vm.start(
        *channel_args(vm),
        nics=("-netdev", "user,id=n0", "-device", f"e1000,netdev=n0,mac={CHANNEL_MAC}"),
    )
    channel = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    channel.connect(str(vm.dir / "vm1.cmd"))
    assert ask(channel, "a", "cat /sys/class/net/*/address") == (
        f"{CHANNEL_MAC}\n00:00:00:00:00:00\n\nKVMLAB-EXIT a 0\n".encode()
    )
    assert (
        ask(channel, "b", "false || echo 'x  y' && echo \"z\"") == b"x  y\nz\n\nKVMLAB-EXIT b 0\n"
    )
    assert ask(channel, "c", "cat /nope 2>/dev/null; echo $?") == (
        b"sh: kvmlab-fake: unsupported shell syntax '$'\n\nKVMLAB-EXIT c 2\n"
    )
    assert ask(channel, "d", "cat /nope") == (
        b"cat: can't open '/nope': No such file or directory\n\nKVMLAB-EXIT d 1\n"
    )
    assert ask(channel, "e", "echo a >> /tmp/f; echo b >> /tmp/f; cat /tmp/f") == (
        b"a\nb\n\nKVMLAB-EXIT e 0\n"
    )
    assert ask(channel, "f", "sleep 5", seconds=1) == b"\nKVMLAB-EXIT f 137\n"  # killed
    assert ask(channel, "g", "echo x > /proc/meminfo").endswith(b"KVMLAB-EXIT g 1\n")
    channel.close()
    vm.quit()


def test_channel_reset_drops_files_and_renews_the_boot_id(vm: FakeVM) -> None:
    vm.start(*channel_args(vm))
    channel = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    channel.connect(str(vm.dir / "vm1.cmd"))
    before = ask(channel, "a", "cat /proc/sys/kernel/random/boot_id; echo x > /tmp/f")
    client = vm.qmp()
    assert client.cmd("system_reset") == {"return": {}}
    assert wait_until(lambda: vm.serial_text().count("KVMLAB-FACTS-END") == 2)
    after = ask(channel, "b", "cat /proc/sys/kernel/random/boot_id")
    assert before.split(b"\n")[0] != after.split(b"\n")[0]
    assert ask(channel, "c", "cat /tmp/f").endswith(b"KVMLAB-EXIT c 1\n")
    channel.close()
    client.close()
    vm.quit()
