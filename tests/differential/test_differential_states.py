"""State files: the fake writes and loads them as QEMU 7.2 and 10.0 do.

Each program (the real QEMU named by ``$KVMLAB_QEMU``, else the system's 7.2, and the fake
imitating it) runs the same scenarios on ``helpers_qmp.BASE``'s machine, and the facts kvmlab
relies on must agree. Measured on both QEMUs:

- ``stop`` + ``getfd`` + ``migrate {"uri": "fd:NAME"}`` into a file: ``completed``, run state
  ``postmigrate`` (on a loaded machine 7.2 stays ``finish-migrate`` a moment after it says
  ``completed``, refusing ``cont`` with "Migration is not finalized yet"), the stream
  starts ``QEVM\\0\\0\\0\\3``, ``query-migrate`` has ``status``, ``setup-time``,
  ``downtime``, ``total-time`` and ``ram`` (``remaining`` 0); the descriptor name is gone
  (``closefd``: not found); ``cont`` runs the VM again.
- ``-incoming defer`` + ``getfd`` + ``migrate-incoming`` of that file: ``paused`` (the writer
  had been stopped; ``prelaunch`` if it never ran, running with ``RESUME`` if it was not
  stopped), ``query-migrate`` ``{"status": "completed"}``, events ``setup``, ``active``,
  ``completed``.
- A stream cut short: ``MIGRATION`` ``failed``, exit status 1, and on stderr (after 10.0's
  ``warning: fd: migration to a file is deprecated. Use file: instead.``) "Configuration
  section missing" / "load of migration failed: Invalid argument" when only the magic is
  there; "error while loading state section id N(ram)" / "load of migration failed:
  Input/output error" when cut in the RAM (N and a first "Getting RAM address failed"
  depend on the devices and on where the cut lands: the fake says 7.2's 2, 10.0's 1).
- A write that fails (``/dev/full``): ``failed``, ``error-desc`` "Unable to write to file: No
  space left on device" (10.0: "ram_save_setup failed: Input/output error"); the VM stays
  stopped. (On a disk that fills up mid-RAM both say "Unable to write to file: No space
  left on device"; tests/fake/test_fake_state_files.py checks the fake's fault for it.)
- ``migrate fd:nope``: "File descriptor named 'nope' has not been found", and ``query-migrate``
  is ``failed`` with it as ``error-desc``. ``migrate file:PATH``: 7.2 refuses it with
  "Parameter 'uri' expects a valid migration protocol" (``failed``, no ``error-desc``); 10.0
  writes the state (``completed``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers_differential import PairedRunner, qemu_binary
from helpers_qmp import BASE, QmpClient

pytestmark = pytest.mark.qemu

_PROGRAMS = ("qemu-system-x86_64: ", "kvmlab-fake-kvm: ")


class StateRunner(PairedRunner):
    """Runs the state scenarios under one program and says what it saw."""

    def start(self, program: list[str], name: str, *extra: str, paused: bool = True) -> Any:
        sock = self.workdir / f"{name}.sock"
        sock.unlink(missing_ok=True)
        base = [arg.replace("@IMG", str(self.image)) for arg in BASE if paused or arg != "-S"]
        proc = subprocess.Popen(
            [*program, *base, *extra, "-qmp", f"unix:{sock},server=on,wait=off"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=self.env,
            cwd=self.workdir,
            text=True,
        )
        client = QmpClient(sock, proc)
        caps = [{"capability": "events", "state": True}]
        client.execute({"execute": "migrate-set-capabilities", "arguments": {"capabilities": caps}})
        return proc, client

    @staticmethod
    def _do(client: QmpClient, command: str, fd: int | None = None, **args: Any) -> Any:
        request: dict[str, Any] = {"execute": command}
        if args:
            request["arguments"] = args
        reply = client.execute(request, fd)
        return reply.get("return", reply.get("error", {}).get("desc"))

    def _status(self, client: QmpClient) -> str:
        return str(self._do(client, "query-status")["status"])

    def _give(self, client: QmpClient, path: str, flags: int) -> None:
        fd = os.open(path, flags, 0o600)
        try:
            assert self._do(client, "getfd", fd, fdname="st") == {}
        finally:
            os.close(fd)

    def _wait(self, client: QmpClient) -> dict[str, Any]:
        """The migration's end; once ``completed``, also its thread's (7.2 says ``completed``
        first: ``cont`` is refused and a new ``migrate`` can crash QEMU until the run state
        leaves ``finish-migrate``, as kvmlab's snapshots wait for)."""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            info: dict[str, Any] = self._do(client, "query-migrate")
            if info.get("status") == "completed" and self._status(client) == "finish-migrate":
                pass
            elif info.get("status") in ("completed", "failed"):
                return info
            time.sleep(0.01)
        raise AssertionError("the migration never ended")

    @staticmethod
    def _stop(proc: subprocess.Popen[str], client: QmpClient) -> tuple[int | None, list[str]]:
        client.close()
        code = proc.poll()
        if code is None:
            proc.kill()
        _, err = proc.communicate(timeout=20)
        lines = []
        for raw in err.splitlines():
            line = raw
            for program in _PROGRAMS:
                line = line.removeprefix(program)
            lines.append(line)
        return code, lines

    def write(self, program: list[str], path: Path, stop: bool) -> dict[str, object]:
        """Write a state of a running VM (stopped first if ``stop``); what was seen."""
        proc, client = self.start(program, "src", paused=False)
        if stop:
            self._do(client, "stop")
        self._give(client, str(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        seen: dict[str, object] = {"migrate": self._do(client, "migrate", uri="fd:st")}
        info = self._wait(client)
        seen["query"] = (
            info["status"],
            sorted(info),
            sorted(info["ram"]),
            info["ram"]["remaining"],
        )
        seen["status"] = self._status(client)
        seen["magic"] = path.read_bytes()[:8]
        seen["closefd"] = self._do(client, "closefd", fdname="st")
        seen["cont"] = (self._do(client, "cont"), self._status(client))
        seen["unknown"] = (
            self._do(client, "migrate", uri="fd:nope"),
            self._do(client, "query-migrate"),
        )
        target = self.workdir / "file.state"
        seen["file"] = self._do(client, "migrate", uri=f"file:{target}")
        seen["file-end"] = self._wait(client)["status"]
        self._stop(proc, client)
        return seen

    def load(self, program: list[str], path: Path, keep: int | None = None) -> dict[str, object]:
        """Load ``path`` (its first ``keep`` bytes) into ``-incoming defer``; what was seen."""
        if keep is not None:
            cut = self.workdir / "cut.state"
            cut.write_bytes(path.read_bytes()[:keep])
            path = cut
        proc, client = self.start(program, "dst", "-incoming", "defer", paused=False)
        seen: dict[str, object] = {"before": self._status(client)}
        self._give(client, str(path), os.O_RDONLY)
        seen["incoming"] = self._do(client, "migrate-incoming", uri="fd:st")
        try:
            deadline = time.monotonic() + 20
            while self._status(client) == "inmigrate" and time.monotonic() < deadline:
                time.sleep(0.01)
            seen["after"] = self._status(client)
            seen["query"] = self._do(client, "query-migrate")
        except (OSError, EOFError):
            seen["after"] = "exited"
            _drain(client)
            proc.wait(timeout=20)
        events = [e for e in client.events if e["event"] in ("MIGRATION", "RESUME")]
        seen["events"] = [e["event"] + ":" + e.get("data", {}).get("status", "") for e in events]
        code, lines = self._stop(proc, client)
        seen["exit"] = code
        seen["stderr"] = [line for line in lines if not line.startswith("warning: ")]
        return seen

    def full_disk(self, program: list[str]) -> dict[str, object]:
        """A write into ``/dev/full`` from a stopped VM."""
        proc, client = self.start(program, "full", paused=False)
        self._do(client, "stop")
        self._give(client, "/dev/full", os.O_WRONLY)
        self._do(client, "migrate", uri="fd:st")
        seen: dict[str, object] = {"query": self._wait(client), "status": self._status(client)}
        _, lines = self._stop(proc, client)
        seen["stderr"] = [line for line in lines if not line.startswith("warning: ")]
        return seen


def _drain(client: QmpClient) -> None:
    """Read the events a program sent before it exited (the last write may have failed)."""
    try:
        while True:
            message = client._read()
            if "event" in message:
                client.events.append(message)
    except (OSError, EOFError, ValueError):
        pass


@pytest.fixture(scope="module")
def runner() -> Iterator[StateRunner]:
    binary = qemu_binary()
    if not os.access(binary, os.X_OK):
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and no QEMU at {binary}")
        pytest.skip(f"no QEMU at {binary}")
    workdir = Path(tempfile.mkdtemp(prefix="kvmlab-statediff-", dir="/tmp"))
    try:
        yield StateRunner(binary, workdir, sys.executable)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def states(runner: StateRunner) -> dict[str, dict[str, object]]:
    """Each program's stopped and live states, written once: ``qemu`` and ``fake``."""
    seen: dict[str, dict[str, object]] = {}
    for who, program in (("qemu", [runner.binary]), ("fake", runner.fake)):
        for kind in ("stopped", "live"):
            path = runner.workdir / f"{who}-{kind}.state"
            seen[f"{who}-{kind}"] = runner.write(program, path, stop=kind == "stopped")
            seen[f"{who}-{kind}"]["path"] = path
    return seen


def test_writing_a_state_agrees(runner: StateRunner, states: dict[str, dict[str, Any]]) -> None:
    qemu, fake = states["qemu-stopped"], states["fake-stopped"]
    for key in ("migrate", "query", "status", "magic", "closefd", "cont", "unknown", "file"):
        assert qemu[key] == fake[key], key
    assert qemu["file-end"] == fake["file-end"]
    assert qemu["status"] == "postmigrate"
    assert qemu["magic"] == b"QEVM\x00\x00\x00\x03"
    assert qemu["cont"] == ({}, "running")
    unknown = "File descriptor named 'nope' has not been found"
    assert qemu["unknown"] == (unknown, {"status": "failed", "error-desc": unknown})
    if runner.profile == "qemu-7.2":
        assert qemu["file"] == "Parameter 'uri' expects a valid migration protocol"
    else:
        assert qemu["file"] == {}


@pytest.mark.parametrize("kind", ["stopped", "live"])
def test_loading_a_state_agrees(
    runner: StateRunner, states: dict[str, dict[str, Any]], kind: str
) -> None:
    qemu = runner.load([runner.binary], states[f"qemu-{kind}"]["path"])
    fake = runner.load(runner.fake, states[f"fake-{kind}"]["path"])
    assert qemu == fake
    assert qemu["after"] == ("paused" if kind == "stopped" else "running")
    assert qemu["query"] == {"status": "completed"}


@pytest.mark.parametrize("where", ["magic", "ram"])
def test_a_truncated_state_fails_alike(
    runner: StateRunner, states: dict[str, dict[str, Any]], where: str
) -> None:
    seen: dict[str, dict[str, Any]] = {}
    for who, program in (("qemu", [runner.binary]), ("fake", runner.fake)):
        path = states[f"{who}-stopped"]["path"]
        keep = 8 if where == "magic" else path.stat().st_size // 2
        seen[who] = runner.load(program, path, keep)
    if where == "ram":
        # Where in the RAM a cut lands decides whether QEMU also says "Getting RAM address
        # failed", and the RAM section's id depends on the devices: both end alike.
        for side in seen.values():
            lines = side.pop("stderr")
            assert any(
                re.fullmatch(r"error while loading state section id \d\(ram\)", x) for x in lines
            )
            assert lines[-1] == "load of migration failed: Input/output error"
    assert seen["qemu"] == seen["fake"]
    assert seen["qemu"]["exit"] == 1
    assert seen["qemu"]["after"] == "exited"
    assert seen["qemu"]["events"][-1] == "MIGRATION:failed"


def test_a_failed_write_agrees(runner: StateRunner) -> None:
    qemu = runner.full_disk([runner.binary])
    fake = runner.full_disk(runner.fake)
    assert qemu == fake
    assert qemu["status"] == "paused"
