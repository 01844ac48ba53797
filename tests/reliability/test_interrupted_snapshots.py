"""kvmlab is SIGKILLed at each step of snapshot, save, restore and revert (docs/snapshots.md).

The kvmlab running the command is a small driver that replaces one kill point of
``kvmlab.lifecycle.snapshots.write`` (``write_state``, ``commit_state``, ``resume_vm``,
``quit_vm``), ``kvmlab.lifecycle.snapshots.load`` (``start_incoming``, ``load_state``,
``finish_load``) or ``kvmlab.lifecycle.snapshots.operations`` (``stop_process``: a revert's
stop of the old VM, after its journal) with ``kill -9`` of itself, before the step or right
after it (wherever the package bound the name), as test_interrupted_migration.py does for a
migration. So each kill lands at a known point.

Afterwards: ``info`` shows the pending operation; one follow-up command (``kvmlab
recover NAME``, or a locked command) resolves it; then exactly one VM runs for the
instance or none (never two); either the VM is as it was before the command or the new
state is complete and recorded; every recorded state loads (each snapshot is reverted
to and the saved state restored, and the guest still has the file written before); no
temp file is left beside the states.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from helpers_reliability import (
    KVMLAB,
    PYTHON,
    matrix_instance,
    matrix_lab,
    run_status,
    vm_processes,
)

from kvmlab.lifecycle.hypervisor import Hypervisor

DRIVER = r"""
import importlib, os, pkgutil, signal, sys
point, args = sys.argv[1], sys.argv[2:]
import kvmlab.lifecycle.snapshots as package
import kvmlab.lifecycle.snapshots.load as load
import kvmlab.lifecycle.snapshots.operations as operations
import kvmlab.lifecycle.snapshots.write as write

def die(*_args, **_kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

when, _, name = point.partition(":")
real = next(getattr(m, name) for m in (write, load, operations) if hasattr(m, name))
if when == "before":
    replacement = die
elif when == "after":
    def replacement(*a, **k):
        out = real(*a, **k)
        die()
        return out
else:
    raise SystemExit(f"unknown kill point {point}")
# The step is replaced wherever the package bound it (a module may have imported it by
# name), so the kill lands whichever way it is called.
for info in pkgutil.iter_modules(package.__path__):
    module = importlib.import_module(f"{package.__name__}.{info.name}")
    if getattr(module, name, None) is real:
        setattr(module, name, replacement)

from kvmlab.cli.app import main
sys.exit(main(args))
"""

#: The kill points of each operation, in the order the operation passes them, and what the
#: recovery makes of each: a state not yet recorded is rolled back (the VM as before, the
#: instance still saved), a recorded one completed; a revert is rolled back while the old VM
#: was not stopped (it is untouched), and finished from then on.
POINTS = {
    "snapshot": {"before:write_state": "rolled back", "before:commit_state": "rolled back",
                 "before:resume_vm": "completed", "after:resume_vm": "completed"},
    "save": {"before:write_state": "rolled back", "before:commit_state": "rolled back",
             "before:quit_vm": "completed", "after:quit_vm": "completed"},
    "restore": {"before:start_incoming": "rolled back", "before:load_state": "rolled back",
                "before:finish_load": "completed", "after:finish_load": "completed"},
    "revert": {"before:stop_process": "rolled back", "after:stop_process": "completed",
               "before:start_incoming": "completed", "before:load_state": "completed",
               "before:finish_load": "completed", "after:finish_load": "completed"},
}  # fmt: skip
CASES = [(op, point) for op, points in POINTS.items() for point in points]
TOKEN_BEFORE = "/tmp/before"
TOKEN_AFTER = "/tmp/after"


BACKENDS = ["fake", pytest.param("qemu", marks=pytest.mark.qemu)]


def _kvmlab(lab: Hypervisor, kind: str, *args: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [KVMLAB, "--state-dir", str(lab.layout.root), "--backend", kind, *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "TMPDIR": str(tmp)},
    )


def _read(lab: Hypervisor, path: str) -> str:
    result = lab.guest("vm1").run(f"cat {path} 2>/dev/null || echo missing", ready_timeout=120)
    return result.stdout.strip()


def _temp_files(lab: Hypervisor) -> list[str]:
    """Files beside the states that are no state and no record (temps, half writes)."""
    found = []
    for directory in (lab.layout.root / "snap", lab.layout.root / "save"):
        if directory.exists():
            found += [
                str(p.relative_to(lab.layout.root))
                for p in directory.rglob("*")
                if p.is_file() and p.suffix not in (".state", ".json")
            ]
    return found


def _prepare(lab: Hypervisor, op: str, token: str) -> None:
    """The running instance as each operation finds it: with a token; saved for restore;
    a snapshot ``s1`` and a file written after it for revert."""
    shell = lab.guest("vm1")
    assert shell.run(f"echo {token} > {TOKEN_BEFORE}", ready_timeout=120).exit_code == 0
    if op == "restore":
        lab.save("vm1", timeout=120)
    elif op == "revert":
        lab.snapshot("vm1", "s1", timeout=120)
        assert shell.run(f"echo later > {TOKEN_AFTER}").exit_code == 0


def _command(op: str) -> list[str]:
    return {
        "snapshot": ["snapshot", "vm1", "s1", "--timeout", "120"],
        "save": ["save", "vm1", "--timeout", "120"],
        "restore": ["restore", "vm1"],
        "revert": ["revert", "vm1", "s1"],
    }[op]


def _check_every_state_loads(lab: Hypervisor, token: str) -> None:
    """Each recorded state loads and holds the guest as it was when taken."""
    for snap in lab.snapshots("vm1"):
        lab.revert("vm1", str(snap.tag), timeout=120)
        assert run_status(lab) == "running"
        assert _read(lab, TOKEN_BEFORE) == token
    if lab.saved_state("vm1") is not None:
        lab.restore("vm1", timeout=120)
        assert run_status(lab) == "running"
        assert _read(lab, TOKEN_BEFORE) == token


@pytest.mark.parametrize(("op", "point"), CASES)
@pytest.mark.parametrize("kvmlab_backend", BACKENDS, indirect=True)
def test_a_kill_at_each_step_is_resolved_by_one_command(
    workdir: Path, running_lab: Hypervisor, op: str, point: str
) -> None:
    lab, backend_kind = running_lab, running_lab.backend.name
    tmp = workdir / "tmp"
    tmp.mkdir(mode=0o700)
    token = os.urandom(6).hex()
    _prepare(lab, op, token)
    before_snapshots = [s.tag for s in lab.snapshots("vm1")]
    vms_before = vm_processes(lab.layout.pidfile("vm1"))

    argv = [PYTHON, "-c", DRIVER, point, "--state-dir", str(lab.layout.root)]
    argv += ["--backend", backend_kind, *_command(op)]
    killed = subprocess.run(
        argv, capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "TMPDIR": str(tmp)},
    )  # fmt: skip
    assert killed.returncode == -9, killed.stderr
    pidfile = lab.layout.pidfile("vm1")
    assert len(vm_processes(pidfile)) <= 1, "two VMs for one instance"

    # What is pending shows, in the API and in info --json.
    info = lab.info("vm1", query_guest=False)
    assert "snapshot_pending" in info.extra, info.extra
    shown = _kvmlab(lab, backend_kind, "info", "vm1", "--json", tmp=tmp)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["snapshot_pending"]["op"] == op
    text = _kvmlab(lab, backend_kind, "info", "vm1", tmp=tmp)
    assert f"\n{op}: PENDING " in text.stdout, text.stdout  # its own label, not "snapshot:"

    recovered = _kvmlab(lab, backend_kind, "recover", "vm1", tmp=tmp)
    assert recovered.returncode == 0, recovered.stderr
    outcome = POINTS[op][point]
    assert recovered.stdout.strip() == f"vm1: interrupted snapshot operation {outcome}"
    assert not lab.layout.snapshot_journal("vm1").exists()
    assert "snapshot_pending" not in lab.info("vm1", query_guest=False).extra

    vms = vm_processes(pidfile)
    assert len(vms) <= 1, "two VMs for one instance"
    assert _temp_files(lab) == []
    assert list(tmp.iterdir()) == []
    tags = [s.tag for s in lab.snapshots("vm1")]
    saved = lab.saved_state("vm1")
    if op == "snapshot":
        # The VM runs as before; the snapshot is there, complete, or not at all.
        assert len(vms) == 1 and run_status(lab) == "running"
        assert tags == ([] if outcome == "rolled back" else ["s1"])
        assert saved is None
    elif op == "save":
        # Either still running (no saved state) or saved (no VM), never both, never neither.
        assert (len(vms), saved is not None) == (
            (1, False) if outcome == "rolled back" else (0, True)
        )
        if saved is None:
            assert run_status(lab) == "running"
    elif op == "restore":
        # Restored (a VM, the saved state consumed) or still saved (no VM).
        assert (len(vms), saved is not None) == (
            (0, True) if outcome == "rolled back" else (1, False)
        )
    else:
        # Before the old VM is stopped, it runs on untouched (the file written after the
        # snapshot is still there); after that there is no way back: always finished.
        assert len(vms) == 1 and run_status(lab) == "running"
        assert tags == before_snapshots == ["s1"]
        after = "later" if outcome == "rolled back" else "missing"
        assert _read(lab, TOKEN_AFTER) == after
        if outcome == "rolled back":
            assert vms == vms_before, "the old VM itself, not a new one"
    if vms:
        assert _read(lab, TOKEN_BEFORE) == token
    _check_every_state_loads(lab, token)
    assert len(vm_processes(pidfile)) == 1
    lab.stop("vm1", force=True)


@pytest.mark.parametrize("point", POINTS["snapshot"])
def test_a_locked_command_resolves_a_killed_snapshot_first(workdir: Path, point: str) -> None:
    """Not only ``recover``: a soft reboot (locked) resolves the journal, then reboots."""
    lab = matrix_lab(workdir / "sd", "fake")
    tmp = workdir / "tmp"
    tmp.mkdir(mode=0o700)
    lab.start(matrix_instance(None))
    argv = [PYTHON, "-c", DRIVER, point, "--state-dir", str(lab.layout.root)]
    argv += ["--backend", "fake", *_command("snapshot")]
    killed = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert killed.returncode == -9, killed.stderr
    assert lab.layout.snapshot_journal("vm1").exists()
    rebooted = _kvmlab(lab, "fake", "reboot", "vm1", tmp=tmp)
    assert rebooted.returncode == 0, rebooted.stderr
    assert not lab.layout.snapshot_journal("vm1").exists()
    assert len(vm_processes(lab.layout.pidfile("vm1"))) == 1
    assert run_status(lab) == "running"
    assert _temp_files(lab) == []
    for snap in lab.snapshots("vm1"):
        lab.revert("vm1", str(snap.tag))
        assert run_status(lab) == "running"
    lab.stop("vm1", force=True)
