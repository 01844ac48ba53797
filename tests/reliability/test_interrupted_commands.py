"""kvmlab itself is SIGKILLed in the middle of ``start``, ``reboot`` and ``stop``.

SIGKILL runs no ``finally``: whatever kvmlab was doing stops dead. Afterwards the saved
runtime must be the old or the new one (parsed and compared, never partial), at most one
VM may run for the instance, and the next command must work (possibly after clearing a
stale pidfile). Two ways to land the kill:

- **kill points**: ``kvmlab`` runs under a small driver that replaces one internal step
  (the rename of the saved runtime, the launch of the binary, the wait after the ACPI
  powerdown...) with ``kill -9`` of itself: deterministic, one test per point;
- **delay sweeps**: the real console script, killed after 50..350 ms.

Each kvmlab process gets a private ``TMPDIR``, so leftover ``kvmlab-start-*`` folders are
seen: the next command on the instance sweeps those of dead kvmlab processes (and stale
``conf/.NAME.runtime.*.tmp`` files), which the two leftover tests below check.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers_reliability import (
    KVMLAB,
    MAC1,
    MAC2,
    PYTHON,
    one_line_error,
    processes_naming,
    run_kvmlab,
    vm_processes,
    wait_until,
    write_instance,
)

from kvmlab.errors import NotRunningError
from kvmlab.host.backends import FakeBackend
from kvmlab.host.process import read_pidfile
from kvmlab.lifecycle.hypervisor import Hypervisor
from kvmlab.runtime.saved import KVMRuntime
from kvmlab.spec.files import load_instance

DRIVER = r"""
import os, signal, sys
point, args = sys.argv[1], sys.argv[2:]

def die(*_args, **_kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

if point in ("save-before-rename", "save-after-rename"):
    real_replace = os.replace
    def replace(src, dst, *a, **k):
        if str(dst).endswith(".runtime") and point == "save-before-rename":
            die()
        real_replace(src, dst, *a, **k)
        if str(dst).endswith(".runtime"):
            die()
    os.replace = replace
elif point == "before-binary":
    import kvmlab.host.executor
    kvmlab.host.executor._run = die
elif point == "reboot-after-stop":
    import kvmlab.lifecycle.hypervisor
    kvmlab.lifecycle.hypervisor.execute = die
elif point == "stop-after-powerdown":
    import kvmlab.host.stopping
    kvmlab.host.stopping.wait_for_exit = die
elif point == "stop-before-signal":
    import kvmlab.host.stopping
    kvmlab.host.stopping.signal_process = die
elif point != "none":
    raise SystemExit(f"unknown kill point {point}")

from kvmlab.cli.app import main
sys.exit(main(args))
"""

NICS_OLD = [{"mac": MAC1, "mode": "bridged", "link": "br0"}, {"mac": MAC2, "mode": "user"}]


@dataclass
class Scene:
    """One instance in a state directory, with an old and a new instance file."""

    workdir: Path
    state_dir: Path
    tmp: Path
    old_file: Path
    new_file: Path

    def api(self, **faults: str) -> Hypervisor:
        """The Python API on the same state directory (faster than the console script)."""
        env = {f"KVMLAB_FAKE_{k.upper()}": v for k, v in faults.items()}
        return Hypervisor(self.state_dir, backend=FakeBackend(faults=env), stop_timeout=5)

    @property
    def lab(self) -> Hypervisor:
        return self.api()

    def start(self, path: Path, **faults: str) -> None:
        self.api(**faults).start(load_instance(path))

    @property
    def runtime_path(self) -> Path:
        return self.state_dir / "conf" / "vm1.runtime"

    @property
    def pidfile(self) -> Path:
        return self.state_dir / "pid" / "vm1"

    def env(self, **faults: str) -> dict[str, str]:
        return {
            **os.environ,
            "TMPDIR": str(self.tmp),
            **{f"KVMLAB_FAKE_{k.upper()}": v for k, v in faults.items()},
        }

    def kvmlab(self, *args: str, **faults: str) -> subprocess.CompletedProcess[str]:
        return run_kvmlab(self.state_dir, *args, tmpdir=self.tmp, env=self.env(**faults))

    def popen(self, argv: list[str], **faults: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            argv,
            env=self.env(**faults),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def head(self) -> list[str]:
        return ["--state-dir", str(self.state_dir), "--backend", "fake"]

    def saved(self) -> KVMRuntime:
        return KVMRuntime.from_json(self.runtime_path.read_bytes())

    def expected(self, path: Path) -> KVMRuntime:
        """The runtime ``start FILE`` saves (generation is pure: generate it here)."""
        return self.lab.generate(load_instance(path))

    def settle(self) -> None:
        """Wait until no start is half-way: no process names the pidfile, or only the
        VM whose pid is in it (a start killed early may not have forked yet)."""

        def settled() -> bool:
            naming = processes_naming(self.pidfile)
            return not naming or naming == [read_pidfile(self.pidfile)]

        # A start killed right after Popen may still be exec'ing the binary, whose
        # cmdline names the pidfile only once it runs (and the fake's slow start lasts
        # 1 s): the state must hold for longer than that before it counts as settled.
        deadline = time.monotonic() + 15.0
        while True:
            assert wait_until(settled, max(deadline - time.monotonic(), 0.1)), processes_naming(
                self.pidfile
            )
            time.sleep(1.5)
            if settled():
                return

    def leftovers(self) -> list[str]:
        temp = sorted(p.name for p in self.tmp.iterdir())
        conf = sorted(p.name for p in (self.state_dir / "conf").glob(".*"))
        return temp + conf


@pytest.fixture
def scene(workdir: Path, state_dir: Path, private_tmp: Path) -> Scene:
    old = write_instance(workdir / "old.json", nics=NICS_OLD)
    new = write_instance(workdir / "new.json", memory=256, vcpus=2, nics=NICS_OLD[1:])
    return Scene(workdir, state_dir, private_tmp, old, new)


def assert_recovers(scene: Scene, first: list[str]) -> None:
    """The next command gives a clear answer, then a whole cycle works again."""
    result = scene.kvmlab(*first)
    if result.returncode != 0:
        assert result.returncode == 1, result
        assert any(w in one_line_error(result.stderr) for w in ("already running", "not running"))
    assert len(vm_processes(scene.pidfile)) <= 1
    lab = scene.lab
    with contextlib.suppress(NotRunningError):
        lab.stop("vm1", force=True)
    lab.start(load_instance(scene.new_file))
    lab.reboot("vm1")
    lab.stop("vm1")
    assert vm_processes(scene.pidfile) == []


def killed_by_driver(scene: Scene, point: str, *args: str, **faults: str) -> None:
    process = scene.popen([PYTHON, "-c", DRIVER, point, *scene.head(), *args], **faults)
    _, err = process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL, (point, err)
    scene.settle()


# -- start ------------------------------------------------------------------------------


START_POINTS = {
    # point: which runtime must be on disk afterwards, and whether a VM runs
    "save-before-rename": ("old", False),
    "save-after-rename": ("new", False),
    "before-binary": ("new", False),
}


@pytest.mark.parametrize("point", START_POINTS)
def test_start_killed_at_a_point_keeps_one_whole_runtime(scene: Scene, point: str) -> None:
    scene.start(scene.old_file)
    scene.lab.stop("vm1")
    old = scene.saved()
    new = scene.expected(scene.new_file)
    assert old != new

    killed_by_driver(scene, point, "start", str(scene.new_file))

    which, running = START_POINTS[point]
    assert scene.saved() == (old if which == "old" else new)
    assert len(vm_processes(scene.pidfile)) == int(running)
    assert_recovers(scene, ["start", str(scene.new_file)])


def kill_when(process: subprocess.Popen[str], predicate: object, timeout: float = 20) -> None:
    assert callable(predicate)
    assert wait_until(lambda: predicate() or process.poll() is not None, timeout, 0.005)
    assert process.poll() is None, "kvmlab finished before the kill point"
    process.kill()
    process.communicate(timeout=30)


def log_headers(scene: Scene) -> int:
    log = scene.state_dir / "log" / "vm1.log"
    return log.read_text().count("kvmlab start:") if log.exists() else 0


def binary_starting(scene: Scene, headers: int) -> bool:
    """kvmlab logged its ``headers``-th start line and the binary it launched runs.

    The line is written just before the launch: killing kvmlab on the line alone could
    land before the fork (on a busy machine, e.g. beside another xdist worker), which is
    the "before-binary" kill point, not this one.
    """
    return log_headers(scene) == headers and bool(processes_naming(scene.pidfile))


def test_start_killed_while_the_binary_starts(scene: Scene) -> None:
    """The binary runs on (its own session): the new runtime is saved and the VM comes up."""
    new = scene.expected(scene.new_file)
    process = scene.popen([KVMLAB, *scene.head(), "start", str(scene.new_file)], slow_start="1")
    kill_when(process, lambda: binary_starting(scene, 1))
    scene.settle()
    assert scene.saved() == new
    assert wait_until(lambda: len(vm_processes(scene.pidfile)) == 1, 5)
    assert_recovers(scene, ["start", str(scene.new_file)])


def test_start_killed_while_the_binary_starts_leaves_no_temp_folder(scene: Scene) -> None:
    process = scene.popen([KVMLAB, *scene.head(), "start", str(scene.old_file)], slow_start="1")
    kill_when(process, lambda: binary_starting(scene, 1))
    scene.settle()
    assert_recovers(scene, ["stop", "vm1"])
    assert scene.leftovers() == []


def test_start_killed_before_the_rename_leaves_no_temp_file(scene: Scene) -> None:
    scene.start(scene.old_file)
    scene.lab.stop("vm1")
    killed_by_driver(scene, "save-before-rename", "start", str(scene.new_file))
    assert_recovers(scene, ["start", str(scene.new_file)])
    assert scene.leftovers() == []


# -- reboot and stop --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("point", "command", "faults", "running_after"),
    [
        ("reboot-after-stop", ["reboot", "vm1"], {}, False),
        ("stop-after-powerdown", ["stop", "vm1"], {"powerdown_delay": "0.3"}, False),
        (
            "stop-before-signal",
            ["stop", "vm1", "--timeout", "0.2"],
            {"ignore_powerdown": "1"},
            True,
        ),
    ],
)
def test_reboot_and_stop_killed_at_a_point(
    scene: Scene, point: str, command: list[str], faults: dict[str, str], running_after: bool
) -> None:
    scene.start(scene.old_file, **faults)
    before = scene.runtime_path.read_bytes()
    killed_by_driver(scene, point, *command)
    if not running_after:  # the guest got the power button: it goes away by itself
        assert wait_until(lambda: vm_processes(scene.pidfile) == [], 5)
    assert scene.runtime_path.read_bytes() == before
    assert len(vm_processes(scene.pidfile)) == int(running_after)
    assert_recovers(scene, command)


def test_reboot_killed_while_the_binary_starts(scene: Scene) -> None:
    scene.start(scene.old_file)
    before = scene.runtime_path.read_bytes()
    process = scene.popen([KVMLAB, *scene.head(), "reboot", "vm1"], slow_start="1")
    kill_when(process, lambda: binary_starting(scene, 2))
    scene.settle()
    assert scene.runtime_path.read_bytes() == before
    assert wait_until(lambda: len(vm_processes(scene.pidfile)) == 1, 5)
    assert_recovers(scene, ["reboot", "vm1"])


# -- delay sweeps -----------------------------------------------------------------------

DELAYS = [0.05, 0.15, 0.25, 0.35]


def sweep_once(scene: Scene, argv: list[str], delay: float, **faults: str) -> int | None:
    process = scene.popen([KVMLAB, *scene.head(), *argv], **faults)
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    _, err = process.communicate(timeout=60)
    assert "Traceback" not in err
    scene.settle()
    return process.returncode


@pytest.mark.slow
def test_start_killed_after_various_delays(scene: Scene) -> None:
    files = [scene.old_file, scene.new_file]
    runtimes = [scene.expected(path) for path in files]
    scene.start(files[0])
    scene.lab.stop("vm1")
    killed = 0
    for round_, delay in enumerate(DELAYS):
        previous = scene.saved()
        target = (round_ + 1) % 2
        code = sweep_once(scene, ["start", str(files[target])], delay, slow_start="0.1")
        killed += code == -signal.SIGKILL
        assert scene.saved() in (previous, runtimes[target])
        assert len(vm_processes(scene.pidfile)) <= 1
        result = scene.kvmlab("stop", "vm1", "--force")
        assert result.returncode == 0 or "not running" in one_line_error(result.stderr)
        assert vm_processes(scene.pidfile) == []
    assert killed >= 2, "the sweep never caught kvmlab running"
    assert_recovers(scene, ["start", str(scene.new_file)])


@pytest.mark.slow
@pytest.mark.parametrize("command", [["reboot", "vm1"], ["stop", "vm1"]])
def test_reboot_and_stop_killed_after_various_delays(scene: Scene, command: list[str]) -> None:
    scene.start(scene.old_file, powerdown_delay="0.2")
    saved = scene.runtime_path.read_bytes()
    killed = 0
    for delay in DELAYS:
        code = sweep_once(scene, command, delay, powerdown_delay="0.2", slow_start="0.1")
        killed += code == -signal.SIGKILL
        assert scene.runtime_path.read_bytes() == saved
        assert len(vm_processes(scene.pidfile)) <= 1
        # Whatever state the kill left, the next start gives a clear answer.
        result = scene.kvmlab("start", str(scene.old_file), powerdown_delay="0.2")
        assert result.returncode == 0 or "already running" in one_line_error(result.stderr)
        assert len(vm_processes(scene.pidfile)) == 1
    assert killed >= 2, "the sweep never caught kvmlab running"
    assert_recovers(scene, command[:2])
