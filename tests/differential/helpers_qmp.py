"""Send one sequence of QMP commands to a paused real QEMU and to the fake kvm, and compare.

Both programs start the minimal command line of kvmlab's default machine type (a ``pc``
machine with its VGA card, paused with ``-S``, one user-networking NIC and one virtio disk on an
``if=none`` drive, QMP on a unix socket), then each step of the sequence goes to both over a
plain blocking client (JSON lines; a step may pass a descriptor with ``SCM_RIGHTS``). They
agree when every step has the same outcome (success, or the same error class) and, for the
queries, the same value in the parts kvmlab reads (:func:`project`). Events are not compared,
their timing being the guest's business, except ``DEVICE_DELETED``, which kvmlab waits for
after a ``device_del``: both must have sent it for the same devices by the end (a paused
guest ejects nothing, so neither sends it), and ``query-pci`` shows what is still plugged.

The grammar draws the steps from a small pool of ids, node names and descriptor names, so
duplicates, unknown names and names in use come up often. :func:`deliberate` names the
sequences that run into a difference the fake keeps on purpose (docs/fake-kvm.md).
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helpers_differential import PairedRunner, raw_image

MAC = "52:54:00:12:34:57"
#: The machine both programs start: kvmlab's default machine type, paused, no display.
BASE = (
    "-machine", "pc,accel=tcg", "-m", "128", "-display", "none", "-S", "-nodefaults", "-vga", "std",
    "-netdev", "user,id=n0", "-device", f"virtio-net-pci,netdev=n0,id=nic0,mac={MAC}",
    "-drive", "file=@IMG,if=none,id=d0,format=raw", "-device", "virtio-blk-pci,drive=d0,id=disk0",
)  # fmt: skip

#: The deliberate differences of docs/fake-kvm.md that QMP sequences can run into.
DELIBERATE = {"guest-always-ejects": "device_del after cont: the fake's guest ejects at once"}

Step = dict[str, Any]  # {"execute": ..., "arguments": {...}, "fd": bool}


@dataclass
class Reply:
    """One step's answer: ``ok`` with the projected value, or the error class and text."""

    outcome: str  # "ok" or the error class
    value: object = None
    desc: str = ""

    def describe(self) -> str:
        if self.outcome == "ok":
            return "ok" if self.value is None else f"ok {json.dumps(self.value, sort_keys=True)}"
        return f"{self.outcome}: {self.desc}"


class QmpClient:
    """A blocking QMP client on a unix socket: greeting, negotiation, replies, events."""

    def __init__(self, path: Path, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.settimeout(timeout)
                self.sock.connect(str(path))
                break
            except OSError:
                self.sock.close()
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        self.buffer = b""
        self.events: list[dict[str, Any]] = []
        self._read()  # the greeting
        reply = self.execute({"execute": "qmp_capabilities"})
        assert "return" in reply, reply

    def _read(self) -> dict[str, Any]:
        while b"\n" not in self.buffer:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("QMP connection closed")
            self.buffer += data
        line, self.buffer = self.buffer.split(b"\n", 1)
        message: dict[str, Any] = json.loads(line)
        return message

    def execute(self, request: dict[str, Any], fd: int | None = None) -> dict[str, Any]:
        """Send ``request`` (with ``fd`` by ``SCM_RIGHTS``) and return its reply."""
        data = json.dumps(request).encode() + b"\n"
        if fd is None:
            self.sock.sendall(data)
        else:
            socket.send_fds(self.sock, [data], [fd])
        while True:
            message = self._read()
            if "event" in message:
                self.events.append(message)
                continue
            return message

    def close(self) -> None:
        self.sock.close()


def _pci(value: Any) -> object:
    """``query-pci``: the devices with an id, by slot (what hotplug checks)."""
    found = {}
    for bus in value if isinstance(value, list) else []:
        for device in bus.get("devices", []):
            if device.get("qdev_id"):
                found[device["qdev_id"]] = device["slot"]
    return found


def _nodes(value: Any) -> object:
    """``query-named-block-nodes``: the names given by the user (kvmlab looks its node up)."""
    names = {str(node.get("node-name", "")) for node in value if isinstance(node, dict)}
    return sorted(name for name in names if not name.startswith("#"))


def _caps(value: Any) -> object:
    return {c["capability"]: c["state"] for c in value} if isinstance(value, list) else value


def _params(value: Any) -> object:
    keys = ("max-bandwidth", "downtime-limit")
    return {k: value.get(k) for k in keys} if isinstance(value, dict) else value


#: The part of each query's value that kvmlab reads, and so that the fake must get right.
PROJECTIONS: dict[str, Callable[[Any], object]] = {
    "query-status": lambda v: {"status": v.get("status"), "running": v.get("running")},
    "query-pci": _pci,
    "query-named-block-nodes": _nodes,
    "query-migrate": lambda v: v.get("status"),
    "query-migrate-capabilities": _caps,
    "query-migrate-parameters": _params,
}


def project(command: str, reply: dict[str, Any]) -> Reply:
    if "error" in reply:
        return Reply(reply["error"]["class"], None, reply["error"].get("desc", ""))
    projection = PROJECTIONS.get(command)
    return Reply("ok", None if projection is None else projection(reply["return"]))


@dataclass
class Run:
    """What one program answered to a sequence (and how it ended, if it died)."""

    replies: list[Reply] = field(default_factory=list)
    #: The devices ``DEVICE_DELETED`` named.
    events: list[str] = field(default_factory=list)
    crash: str = ""


class Runner(PairedRunner):
    """Runs QMP sequences under one QEMU and under the fake imitating its version."""

    def __init__(self, binary: str, workdir: Path, fake_python: str = sys.executable) -> None:
        super().__init__(binary, workdir, fake_python)
        self.spare = workdir / "spare.raw"  # a second image, for blockdev-add
        raw_image(self.spare)

    def fill(self, value: Any) -> Any:
        """``value`` with ``@IMG``/``@SPARE``/``@DIR`` put in, recursively."""
        if isinstance(value, str):
            return (
                value.replace("@IMG", str(self.image))
                .replace("@SPARE", str(self.spare))
                .replace("@DIR", str(self.workdir))
            )
        if isinstance(value, list):
            return [self.fill(item) for item in value]
        if isinstance(value, dict):
            return {key: self.fill(item) for key, item in value.items()}
        return value

    def run(self, program: list[str], steps: list[Step]) -> Run:
        sock = self.workdir / "qmp.sock"
        sock.unlink(missing_ok=True)
        argv = [*program, *self.fill(list(BASE)), "-qmp", f"unix:{sock},server=on,wait=off"]
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=self.env,
            cwd=self.workdir,
        )
        run = Run()
        client = None
        try:
            client = QmpClient(sock, proc)
            for step in steps:
                request = {"execute": step["execute"]}
                if "arguments" in step:
                    request["arguments"] = self.fill(step["arguments"])
                if step.get("fd"):
                    read_end, write_end = os.pipe()
                    try:
                        reply = client.execute(request, read_end)
                    finally:
                        os.close(read_end)
                        os.close(write_end)
                else:
                    reply = client.execute(request)
                run.replies.append(project(step["execute"], reply))
            run.events = sorted(
                str(event.get("data", {}).get("device"))
                for event in client.events
                if event["event"] == "DEVICE_DELETED"
            )
        except (OSError, EOFError, ValueError) as err:
            run.crash = f"{type(err).__name__}: {err}"
        finally:
            if client is not None:
                client.close()
            proc.kill()
            _, stderr = proc.communicate(timeout=20)
            if run.crash:
                run.crash += f" (stderr: {stderr.decode(errors='replace').strip()[-500:]})"
        return run

    def compare(self, steps: list[Step]) -> Verdict:
        return Verdict(steps, self.run([self.binary], steps), self.run(self.fake, steps))


@dataclass
class Verdict:
    """Both programs' answers to one sequence, and whether they agree at each step."""

    steps: list[Step]
    qemu: Run
    fake: Run

    def first_difference(self) -> int | None:
        if self.qemu.crash or self.fake.crash:
            return -1 if self.qemu.crash != self.fake.crash else None
        for index, (mine, theirs) in enumerate(
            zip(self.qemu.replies, self.fake.replies, strict=False)
        ):
            if (mine.outcome, mine.value) != (theirs.outcome, theirs.value):
                return index
        if self.qemu.events != self.fake.events:
            return len(self.steps)
        return None

    @property
    def agree(self) -> bool:
        return self.first_difference() is None

    def report(self) -> str:
        lines = ["QMP sequence (first difference marked >>):"]
        where = self.first_difference()
        if where == -1:
            lines.append(f"  crash: qemu {self.qemu.crash!r}, fake {self.fake.crash!r}")
        if where == len(self.steps):
            lines.append(f"  DEVICE_DELETED: qemu {self.qemu.events}, fake {self.fake.events}")
        for index, step in enumerate(self.steps):
            mark = ">>" if index == where else "  "
            request = {k: v for k, v in step.items() if k != "fd"}
            lines.append(f"{mark} {json.dumps(request)}{' +fd' if step.get('fd') else ''}")
            for name, run in (("qemu", self.qemu), ("fake", self.fake)):
                if index < len(run.replies):
                    lines.append(f"     {name}: {run.replies[index].describe()}")
        return "\n".join(lines)


# --------------------------------------------------------------------------- the grammar

IDS = ["nic0", "disk0", "h0", "h1", "n0", "d0"]
NETDEVS = ["n0", "h0", "h1", "x0"]
NODES = ["node0", "node1", "d0"]
FDNAMES = ["fd0", "fd1", "0bad"]
NIC_DRIVERS = ["virtio-net-pci", "e1000", "rtl8139"]
DRIVERS = [*NIC_DRIVERS, "virtio-blk-pci", "virtio-blk-pci", "nope", "virtio-net"]
CAPABILITIES = ["events", "xbzrle", "auto-converge", "postcopy-ram", "block", "bogus"]
NO_ARGUMENTS = ["query-status", "stop", "query-pci", "query-named-block-nodes", "query-migrate"]
NO_ARGUMENTS += ["query-migrate-capabilities", "query-migrate-parameters"]


_KINDS = ["netdev_add", "netdev_del", "device_add", "device_add", "device_del", "blockdev-add"]
_KINDS += ["blockdev-del", "getfd", "closefd", "caps", "params", "query", "query", "unknown"]


def _maybe_wrong(rng: random.Random, args: dict[str, Any], required: list[str]) -> None:
    """Now and then drop a required argument, give one the wrong type, or add an unknown one."""
    roll = rng.random()
    if roll < 0.06 and required:
        del args[rng.choice(required)]
    elif roll < 0.12 and required:
        args[rng.choice(required)] = rng.choice([5, True, None, ["x"]])
    elif roll < 0.15:
        args["bogus"] = 1


def _step(rng: random.Random) -> Step:
    kind = rng.choice(_KINDS)
    args: dict[str, Any]
    if kind == "netdev_add":
        args = {"type": rng.choice(["user", "user", "user", "tap", "bogus"])}
        args["id"] = rng.choice(NETDEVS)
        if args["type"] == "tap":
            args["fd"] = rng.choice(FDNAMES)
        _maybe_wrong(rng, args, ["type", "id"])
        return {"execute": "netdev_add", "arguments": args}
    if kind == "netdev_del":
        args = {"id": rng.choice(NETDEVS)}
        _maybe_wrong(rng, args, ["id"])
        return {"execute": "netdev_del", "arguments": args}
    if kind == "device_add":
        driver = rng.choice(DRIVERS)
        args = {"driver": driver}
        if rng.random() < 0.9:
            args["id"] = rng.choice(IDS)
        if driver in NIC_DRIVERS and rng.random() < 0.85:
            args["netdev"] = rng.choice(NETDEVS)
        if driver == "virtio-blk-pci" and rng.random() < 0.85:
            args["drive"] = rng.choice(NODES)
        if rng.random() < 0.2:
            args["addr"] = rng.choice(["0x5", "0x6", "0x2", "0x1", "zz", "0x20"])
        _maybe_wrong(rng, args, ["driver"])
        return {"execute": "device_add", "arguments": args}
    if kind == "device_del":
        args = {"id": rng.choice(IDS)}
        _maybe_wrong(rng, args, ["id"])
        return {"execute": "device_del", "arguments": args}
    if kind == "blockdev-add":
        filename = rng.choice(["@SPARE", "@SPARE", "@IMG", "@DIR/missing.raw"])
        args = {
            "driver": rng.choice(["raw", "raw", "raw", "bogus"]),
            "node-name": rng.choice(NODES),
            "file": {"driver": "file", "filename": filename},
        }
        if rng.random() < 0.2:
            args["read-only"] = True
        _maybe_wrong(rng, args, ["driver", "node-name"])
        return {"execute": "blockdev-add", "arguments": args}
    if kind == "blockdev-del":
        args = {"node-name": rng.choice(NODES)}
        _maybe_wrong(rng, args, ["node-name"])
        return {"execute": "blockdev-del", "arguments": args}
    if kind in ("getfd", "closefd"):
        args = {"fdname": rng.choice(FDNAMES)}
        _maybe_wrong(rng, args, ["fdname"])
        step: Step = {"execute": kind, "arguments": args}
        if kind == "getfd" and rng.random() < 0.85:
            step["fd"] = True
        return step
    if kind == "caps":
        entry: dict[str, Any] = {"capability": rng.choice(CAPABILITIES), "state": True}
        if rng.random() < 0.2:
            entry["state"] = rng.choice([False, "yes"])
        args = {"capabilities": [entry]}
        _maybe_wrong(rng, args, ["capabilities"])
        return {"execute": "migrate-set-capabilities", "arguments": args}
    if kind == "params":
        name = rng.choice(["max-bandwidth", "downtime-limit", "bogus-param"])
        args = {name: rng.choice([1 << 20, 0, 300, -1, "fast", 1 << 40])}
        return {"execute": "migrate-set-parameters", "arguments": args}
    if kind == "query":
        return {"execute": rng.choice(NO_ARGUMENTS)}
    return {"execute": rng.choice(["query-nope", "device-add", "netdev-add"])}


def generate(rng: random.Random, length: int | None = None) -> list[Step]:
    """One sequence of 2 to 8 steps, ending with the queries that show the state left."""
    count = rng.randint(2, 8) if length is None else length
    steps = [_step(rng) for _ in range(count)]
    return [*steps, {"execute": "query-pci"}, {"execute": "query-named-block-nodes"}]


def deliberate(steps: list[Step]) -> str | None:
    """The name of the deliberate difference ``steps`` run into, or ``None``.

    The grammar never resumes the guest: the fake's guest always answers the ACPI eject
    (docs/fake-kvm.md, ``guest-always-ejects``), QEMU's firmware does not.
    """
    if any(step["execute"] == "cont" for step in steps):
        return "guest-always-ejects"
    return None
