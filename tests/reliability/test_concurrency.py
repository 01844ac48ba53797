"""Many processes start, stop and reboot the same and different instances at once.

8 worker processes x 50 operations through the Python API (each worker is its own
interpreter, so the instance lock is really contended across processes), plus 8 x 4
through the console script. Throughout the run a sampler thread scans ``/proc`` for the
VM processes of every instance; two at once for one instance is the failure this test
exists for. Every operation must end with a clear result: done, or one of already
running / not running / busy (``LockedError``); never a traceback, never a hang (one
global timeout).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers_reliability import (
    CLEAR_FAILURES,
    KVMLAB,
    PYTHON,
    instance_data,
    vm_processes,
    vm_processes_of,
    write_instance,
)

from kvmlab.errors import NotRunningError
from kvmlab.host.backends import FakeBackend
from kvmlab.lifecycle.hypervisor import Hypervisor
from kvmlab.spec.instance import Instance

WORKERS = 8
OPS_PER_WORKER = 50
CLI_OPS_PER_WORKER = 4
GLOBAL_TIMEOUT = 150.0
FAULTS = {"KVMLAB_FAKE_POWERDOWN_DELAY": "0"}

WORKER = r"""
import json, random, sys, time, traceback
from kvmlab.host.backends import FakeBackend
from kvmlab.errors import AlreadyRunningError, LockedError, NotRunningError
from kvmlab.lifecycle.hypervisor import Hypervisor
from kvmlab.spec.instance import Instance

state, seed, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
instances = {name: Instance.model_validate(data) for name, data in json.loads(sys.argv[4]).items()}
lab = Hypervisor(
    state, backend=FakeBackend(faults={"KVMLAB_FAKE_POWERDOWN_DELAY": "0"}), stop_timeout=10
)
rng = random.Random(seed)
results = []
for _ in range(count):
    name = rng.choice(sorted(instances))
    op = rng.choice(["start", "start", "stop", "reboot"])
    began = time.monotonic()
    try:
        if op == "start":
            lab.start(instances[name])
        elif op == "stop":
            lab.stop(name)
        else:
            lab.reboot(name)
        outcome, message = "ok", ""
    except (AlreadyRunningError, NotRunningError, LockedError) as err:
        outcome, message = type(err).__name__, str(err)
    except BaseException:
        outcome, message = "UNEXPECTED", traceback.format_exc()
    results.append([op, name, outcome, message, time.monotonic() - began])
print(json.dumps(results))
"""


def names_for(worker: int) -> list[str]:
    """The shared instance, one shared by a pair of workers, and the worker's own."""
    return ["shared", f"pair{worker // 2}", f"own{worker}"]


def all_names() -> list[str]:
    return sorted({name for worker in range(WORKERS) for name in names_for(worker)})


def instance_for(name: str) -> dict[str, Any]:
    seq = all_names().index(name)
    return instance_data(name, nics=[{"mac": f"52:54:00:6b:0c:{seq:02x}", "mode": "user"}])


class Sampler(threading.Thread):
    """Scans /proc while the workers run; records every moment two VMs ran for one name."""

    def __init__(self, lab: Hypervisor, names: list[str], launchers: set[int]) -> None:
        super().__init__(daemon=True)
        self.pidfiles = {name: lab.layout.pidfile(name) for name in names}
        self.launchers = launchers
        self.stop_event = threading.Event()
        self.samples = 0
        self.violations: list[tuple[str, list[int]]] = []

    def run(self) -> None:
        while not self.stop_event.is_set():
            found = vm_processes_of(self.pidfiles.values(), self.launchers)
            for name, pidfile in self.pidfiles.items():
                if len(found[str(pidfile)]) > 1:
                    again = vm_processes(pidfile, self.launchers)  # not a torn read
                    if len(again) > 1:
                        self.violations.append((name, again))
            self.samples += 1
            time.sleep(0.005)


def prepare(lab: Hypervisor) -> None:
    """Every instance exists (started and stopped once): no operation meets an unknown name."""
    for name in all_names():
        lab.start(Instance.model_validate(instance_for(name)))
        lab.stop(name, force=True)


def finish(lab: Hypervisor, sampler: Sampler) -> None:
    sampler.stop_event.set()
    sampler.join(5)
    for name in all_names():
        vms = vm_processes(lab.layout.pidfile(name))
        assert len(vms) <= 1, (name, vms)
        info = lab.info(name, query_guest=False)
        assert [info.pid] == vms if vms else info.pid is None, (name, info, vms)
        with contextlib.suppress(NotRunningError):
            lab.stop(name, force=True)
        assert vm_processes(lab.layout.pidfile(name)) == []


@pytest.mark.slow
def test_many_processes_operating_on_shared_instances_never_run_two_vms(
    state_dir: Path, private_tmp: Path
) -> None:
    lab = Hypervisor(state_dir, backend=FakeBackend(faults=FAULTS), stop_timeout=10)
    prepare(lab)
    env = {**os.environ, "TMPDIR": str(private_tmp)}
    commands = [
        [
            PYTHON,
            "-c",
            WORKER,
            str(state_dir),
            str(1000 + worker),
            str(OPS_PER_WORKER),
            json.dumps({name: instance_for(name) for name in names_for(worker)}),
        ]
        for worker in range(WORKERS)
    ]
    sampler = Sampler(lab, all_names(), set())
    # The workers take ~100 ms to import kvmlab: the sampler, told their pids right
    # after they are spawned, is running before any of them launches a VM.
    outputs = run_workers(commands, env, on_spawned=lambda pids: start(sampler, pids))
    finish(lab, sampler)

    results = [tuple(r) for out in outputs for r in json.loads(out)]
    assert len(results) == WORKERS * OPS_PER_WORKER
    unexpected = [r for r in results if r[2] == "UNEXPECTED"]
    assert unexpected == [], unexpected[0][3]
    for op, name, outcome, message, _ in results:
        if outcome != "ok":
            assert any(word in message for word in CLEAR_FAILURES), (op, name, message)
    outcomes = Counter((r[0], r[2]) for r in results)
    assert outcomes[("start", "ok")] > 20 and outcomes[("reboot", "ok")] > 5, outcomes
    assert outcomes[("start", "LockedError")] + outcomes[("stop", "LockedError")] > 0, outcomes
    assert sampler.samples > 50
    assert sampler.violations == [], sampler.violations[:5]
    assert list(private_tmp.iterdir()) == []


def start(sampler: Sampler, pids: set[int]) -> None:
    sampler.launchers.update(pids)
    sampler.start()


def run_workers(
    commands: list[list[str]],
    env: dict[str, str],
    on_spawned: Callable[[set[int]], None] = lambda pids: None,
) -> list[str]:
    """Run the workers at once; their stdouts, or a failure after the global timeout."""
    processes = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for cmd in commands
    ]
    on_spawned({p.pid for p in processes})
    outputs: list[str] = []
    deadline = time.monotonic() + GLOBAL_TIMEOUT
    try:
        for process in processes:
            out, err = process.communicate(timeout=max(deadline - time.monotonic(), 1))
            assert process.returncode == 0, err
            outputs.append(out)
    except subprocess.TimeoutExpired:
        pytest.fail(f"deadlock: the workers did not finish within {GLOBAL_TIMEOUT:g} s")
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    return outputs


CLI_WORKER = r"""
import json, random, subprocess, sys
kvmlab, state, seed, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
files = json.loads(sys.argv[5])
rng = random.Random(seed)
results = []
for _ in range(count):
    name = rng.choice(sorted(files))
    op = rng.choice(["start", "stop", "reboot"])
    arg = files[name] if op == "start" else name
    done = subprocess.run(
        [kvmlab, "--state-dir", state, "--backend", "fake", op, arg],
        capture_output=True, text=True, timeout=60,
    )
    results.append([op, name, done.returncode, done.stdout, done.stderr])
print(json.dumps(results))
"""


@pytest.mark.slow
def test_concurrent_cli_commands_end_with_clear_exit_codes(
    workdir: Path, state_dir: Path, private_tmp: Path
) -> None:
    lab = Hypervisor(state_dir, backend=FakeBackend(faults=FAULTS), stop_timeout=10)
    prepare(lab)
    files = {
        name: str(write_instance(workdir / f"{name}.json", **instance_for(name)))
        for name in all_names()
    }
    env = {**os.environ, "TMPDIR": str(private_tmp), **FAULTS}
    commands = [
        [
            PYTHON,
            "-c",
            CLI_WORKER,
            KVMLAB,
            str(state_dir),
            str(2000 + worker),
            str(CLI_OPS_PER_WORKER),
            json.dumps({name: files[name] for name in names_for(worker)}),
        ]
        for worker in range(WORKERS)
    ]
    outputs = run_workers(commands, env)
    results = [r for out in outputs for r in json.loads(out)]
    assert len(results) == WORKERS * CLI_OPS_PER_WORKER
    for op, name, code, stdout, stderr in results:
        assert "Traceback" not in stderr, stderr
        assert code in (0, 1), (op, name, code, stderr)  # never 2: the input is valid
        if code == 0:
            assert stdout.strip() and stderr == "", (op, stdout, stderr)
        else:
            lines = stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("kvmlab: error: "), stderr
            assert any(word in lines[0] for word in CLEAR_FAILURES), lines[0]
    for name in all_names():
        assert len(vm_processes(lab.layout.pidfile(name))) <= 1
        with contextlib.suppress(NotRunningError):
            lab.stop(name, force=True)
    assert list(private_tmp.iterdir()) == []
