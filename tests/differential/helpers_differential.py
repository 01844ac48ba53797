"""Start one QEMU command line under the real binary and under the fake kvm, and compare.

The grammar below draws command lines from QEMU options with valid and invalid values
and combinations; :func:`compare` starts each paused and daemonized under both (the
cheapest start that runs every check QEMU makes before the guest runs), stops it through
its pidfile, and says whether they agree: both start, or both refuse with the same first
line of error (which names the same option, in QEMU's words). The differences the fake
keeps on purpose (``docs/fake-kvm.md``, "Deliberate differences") are named by
:func:`deliberate`, so the suite skips exactly those.
"""

from __future__ import annotations

import itertools
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

SYSTEM_QEMU = "/usr/bin/qemu-system-x86_64"
#: Every start: paused, no display, no default devices, TCG unless the line says otherwise.
BASE = ("-display", "none", "-S", "-nodefaults")
MAC = "52:54:00:12:34:57"

#: The deliberate differences of docs/fake-kvm.md, by name: what each one covers.
DELIBERATE = {
    "chardev-backend-not-simulated": "a -chardev backend other than socket, file, null, stdio",
    "netdev-backend-not-simulated": "a -netdev backend other than user and tap",
}


def qemu_binary() -> str:
    """``$KVMLAB_QEMU`` (the qemu10 session), else the system's QEMU."""
    return os.environ.get("KVMLAB_QEMU") or SYSTEM_QEMU


def profile_of(binary: str) -> str:
    """The recorded profile matching ``binary``'s version: ``qemu-7.2``, ``qemu-10.0``."""
    out = subprocess.run([binary, "-version"], capture_output=True, text=True, check=True).stdout
    major, minor = out.split("version ", 1)[1].split(".")[:2]
    return f"qemu-{major}.{minor}"


@dataclass(frozen=True)
class Outcome:
    """How a start ended: started (then stopped), or refused with ``message``."""

    started: bool
    message: str

    @property
    def first_line(self) -> str:
        return self.message.splitlines()[0] if self.message else ""

    def describe(self) -> str:
        return "started" if self.started else f"refused: {self.message!r}"


#: The names the two programs put before their messages.
_PROGRAMS = ("qemu-system-x86_64: ", "kvmlab-fake-kvm: ")


def _message(stderr: str) -> str:
    """The error lines, without the program's name, QEMU's warnings or module noise."""
    lines = []
    for line in stderr.splitlines():
        if line.startswith("qemu: module "):
            continue
        text = line
        for program in _PROGRAMS:
            text = text.removeprefix(program)
        if not text.startswith(("warning: ", "WARNING: ", "         ")):
            lines.append(text)
    return "\n".join(lines)


def start(program: list[str], argv: list[str], workdir: Path, env: dict[str, str]) -> Outcome:
    """Start ``program argv`` paused and daemonized; stop it again if it started."""
    pidfile = workdir / "vm.pid"
    pidfile.unlink(missing_ok=True)
    result = subprocess.run(
        [*program, *BASE, *argv, "-daemonize", "-pidfile", str(pidfile)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        stdin=subprocess.DEVNULL,
        env=env,
        cwd=workdir,
    )
    if result.returncode == 0:
        _stop(pidfile)
        return Outcome(True, "")
    return Outcome(False, _message(result.stderr))


def _stop(pidfile: Path) -> None:
    """SIGTERM the daemon named by ``pidfile`` and wait until it is gone (or a zombie,
    reaped when this process adopted it as a subreaper)."""
    try:
        pid = int(pidfile.read_text().strip())
        os.kill(pid, signal.SIGTERM)
    except (OSError, ValueError):
        return
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
        except OSError:
            return
        if stat[0] == "Z":
            if int(stat[1]) == os.getpid():
                os.waitpid(pid, 0)
            return
        time.sleep(0.005)
    os.kill(pid, signal.SIGKILL)


@dataclass(frozen=True)
class Verdict:
    """Both outcomes of one command line, and whether they agree."""

    argv: tuple[str, ...]
    qemu: Outcome
    fake: Outcome

    @property
    def agree(self) -> bool:
        if self.qemu.started or self.fake.started:
            return self.qemu.started == self.fake.started
        return self.qemu.first_line == self.fake.first_line

    def report(self) -> str:
        return (
            f"command line: {' '.join(self.argv)}\n"
            f"  qemu: {self.qemu.describe()}\n"
            f"  fake: {self.fake.describe()}"
        )


class PairedRunner:
    """One QEMU binary and the fake imitating its version, in one work folder with a
    1 MiB raw image; the command-line and the QMP runners build on it."""

    def __init__(self, binary: str, workdir: Path, fake_python: str = sys.executable) -> None:
        self.binary = binary
        self.profile = profile_of(binary)
        self.workdir = workdir
        self.fake = [fake_python, "-m", "kvmlab.fake", "--fake-profile", self.profile]
        # The fault knobs of the fake must not leak in from the caller's environment.
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("KVMLAB_FAKE_")}
        self.image = workdir / "disk.raw"
        raw_image(self.image)


def raw_image(path: Path) -> None:
    """A sparse 1 MiB raw image at ``path``."""
    with open(path, "wb") as f:
        f.truncate(1 << 20)


class Runner(PairedRunner):
    """Runs command lines under one QEMU and the fake imitating its version."""

    def __init__(self, binary: str, workdir: Path, fake_python: str = sys.executable) -> None:
        super().__init__(binary, workdir, fake_python)
        self.qcow2 = workdir / "disk.qcow2"
        with open(self.qcow2, "wb") as f:  # a qcow2 header QEMU's probe recognises
            f.write(_QCOW2_HEADER)
            f.truncate(1 << 18)

    def fill(self, argv: list[str]) -> list[str]:
        """The command line with the image paths put in."""
        return [
            arg.replace("@IMG", str(self.image))
            .replace("@QCOW", str(self.qcow2))
            .replace("@DIR", str(self.workdir))
            for arg in argv
        ]

    def compare(self, argv: list[str]) -> Verdict:
        line = self.fill(argv)
        qemu = start([self.binary], line, self.workdir, self.env)
        fake = start(self.fake, line, self.workdir, self.env)
        return Verdict(tuple(line), qemu, fake)


#: A qcow2 (version 3) header for a 1 MiB image with no clusters allocated.
_QCOW2_HEADER = bytes.fromhex(
    "514649fb00000003"  # magic, version
    "0000000000000000"  # backing file offset
    "0000000000000010"  # backing file size, cluster bits (16)
    "0000000000100000"  # size: 1 MiB
    "0000000000000000"  # crypt method, l1 size
    "0000000000030000"  # l1 table offset
    "0000000000010000"  # refcount table offset
    "0000000100000000"  # refcount table clusters, nb snapshots
    "0000000000000000"  # snapshots offset
    "0000000000000000"  # incompatible features
    "0000000000000000"  # compatible features
    "0000000000000000"  # autoclear features
    "0000000400000068"  # refcount order, header length
)


# --------------------------------------------------------------------------- the grammar

MEMORY = ["512", "64M", "1G", "2048", "foo", "100T", "1.5G", "-1", "512,slots=2", "512,bogus=1"]
SMP = ["1", "2", "4", "0", "255", "256", "300", "2,sockets=1,cores=2,threads=1"]
SMP += ["3,sockets=1,cores=2,threads=1", "x", "2,maxcpus=1"]
MACHINE_TYPES = ["pc", "q35", "nope", "isapc"]
ACCELS = ["tcg", "tcg", "tcg", "foo", "tcg:foo", "foo:tcg"]
CPUS = ["qemu64", "max", "Haswell", "Haswel", "EPYC", "Skylake-Client-v1", "486", "nope"]
CPUS += ["qemu64,+ssse3", "host"]
RTC = ["base=utc", "base=localtime", "base=2006-06-17", "base=2006-06-17T16:01:21", "base=foo"]
RTC += ["base=2006-06-17T16:01", "clock=host", "base=utc,driftfix=slew", "base=17/06/2006"]
INTERFACES = ["virtio", "ide", "none", "scsi", "floppy", "foo", None]
FORMATS = ["raw", "qcow2", "bogus", None]
CACHES = ["none", "writeback", "writebak", "unsafe", "directsync", "writethrough", None]
DEVICES = ["usb-tablet", "usb-kbd", "qemu-xhci", "piix3-usb-uhci", "virtio-balloon"]
DEVICES += ["virtio-rng-pci", "nope", "NIC"]
NIC_MODELS = ["virtio-net-pci", "e1000", "rtl8139"]
NETDEVS = ["user,id=n0", "user", "foo,id=n1", "user,id=n0,bogus=1"]
CHARDEVS = ["null,id=c0", "ringbuf,id=c1", "socket,id=c2,path=@DIR/c.sock,server=on,wait=off"]


def generate(rng: random.Random) -> list[str]:
    """One command line (with ``@IMG``/``@QCOW`` for the images) from the grammar."""
    argv: list[str] = []
    if rng.random() < 0.5:
        argv += ["-m", rng.choice(MEMORY)]
    if rng.random() < 0.5:
        argv += ["-smp", rng.choice(SMP)]
    machine = rng.choice(MACHINE_TYPES) if rng.random() < 0.5 else None
    accel = rng.choice(ACCELS)
    extra = ",usb=on" if rng.random() < 0.1 else ""
    argv += ["-machine", f"{machine + ',' if machine else ''}accel={accel}{extra}"]
    if rng.random() < 0.4:
        argv += ["-cpu", rng.choice(CPUS)]
    if rng.random() < 0.3:
        argv += ["-rtc", rng.choice(RTC)]
    if rng.random() < 0.15:
        argv += ["-usb"]
    for _ in range(rng.choice([0, 0, 1, 1, 2])):
        parts = ["file=@IMG"]
        for key, values in (("if", INTERFACES), ("format", FORMATS), ("cache", CACHES)):
            value = rng.choice(values)
            if value is not None:
                parts.append(f"{key}={value}")
        if rng.random() < 0.5:
            parts.append("readonly=on")
        argv += ["-drive", ",".join(parts)]
    if rng.random() < 0.5:
        argv += ["-netdev", rng.choice(NETDEVS)]
    for _ in range(rng.choice([0, 1, 1, 2, 3])):
        device = rng.choice(DEVICES)
        if device == "NIC":
            device = rng.choice(NIC_MODELS) + ",netdev=n0"
            if rng.random() < 0.7:
                device += f",mac={MAC}"
        argv += ["-device", device]
    if rng.random() < 0.2:
        argv += ["-chardev", rng.choice(CHARDEVS)]
    return argv


def deliberate(argv: list[str]) -> str | None:
    """The name of the deliberate difference ``argv`` runs into, or ``None``."""
    for option, value in itertools.pairwise(argv):
        if option == "-chardev" and value.split(",", 1)[0] not in ("socket", "file", "null"):
            return "chardev-backend-not-simulated"
        kind = value.split(",", 1)[0]
        if option == "-netdev" and kind not in ("user", "tap") and "id=" in value:
            return "netdev-backend-not-simulated"
    return None
