"""kvmlab is SIGKILLed at each step of a migration (docs/migration.md).

The kvmlab running ``migrate`` is a small driver that replaces one internal step with
``kill -9`` of itself (as test_interrupted_commands.py does for start and reboot), so
each kill lands at a known point: after the journals, after the target started, right
after ``migrate`` was sent (QEMU carries on alone), after the transfer completed, after
the target saved its runtime, after the source was quit, in the middle of a rollback; and
three of them on a VM's second hop (it arrived by migration before).

Afterwards: never two guests executing at once; ``info`` in the source lab reports the
pending migration; one follow-up command (``kvmlab recover``, from either lab) resolves
it; then exactly one VM runs for the instance, in the lab that has its runtime, the
other lab has neither, and the guest still has the token written before the migration.
"""

from __future__ import annotations

import itertools
import os
import subprocess
from pathlib import Path

import pytest
from helpers_reliability import KVMLAB, PYTHON, matrix_lab, run_status

from kvmlab.host.process import read_cmdline
from kvmlab.lifecycle.hypervisor import Hypervisor

DRIVER = r"""
import os, signal, sys
point, args = sys.argv[1], sys.argv[2:]
import kvmlab.lifecycle.migration.endings as e
import kvmlab.lifecycle.migration.transfer as m

def die(*_args, **_kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

def after(module, name):
    real = getattr(module, name)
    def wrapped(*a, **k):
        out = real(*a, **k)
        die()
        return out
    setattr(module, name, wrapped)

if point == "after-journals":
    m.execute = die
elif point == "after-target-start":
    after(m, "_wait_incoming")
elif point == "after-migrate-sent":
    real_transfer = m._transfer
    def transfer(qmp, *a, **k):
        real = qmp.execute
        def execute(command, arguments=None):
            out = real(command, arguments)
            if command == "migrate":
                die()
            return out
        qmp.execute = execute
        return real_transfer(qmp, *a, **k)
    m._transfer = transfer
elif point == "after-completed":
    m.roll_forward = die
elif point == "after-target-saved":
    e.quit_qemu = die
elif point == "after-source-quit":
    after(e, "quit_qemu")
elif point == "during-rollback":
    m.BANDWIDTH = 1 << 20
    e.resume = die
else:
    raise SystemExit(f"unknown kill point {point}")

from kvmlab.cli.app import main
sys.exit(main(args))
"""

POINTS = {
    "after-journals": "rolled back",
    "after-target-start": "rolled back",
    "after-migrate-sent": None,  # QEMU finished or not by the time of the recovery
    "after-completed": "completed",
    "after-target-saved": "completed",
    "after-source-quit": "completed",
    "during-rollback": "rolled back",
}


BACKENDS = ["fake", pytest.param("qemu", marks=pytest.mark.qemu)]


def _vms(*labs: Hypervisor) -> dict[int, Hypervisor]:
    """Live processes started with one of the labs' pidfiles, and their lab."""
    by_pidfile = {str(lab.layout.pidfile("vm1")): lab for lab in labs}
    found: dict[int, Hypervisor] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        argv = read_cmdline(int(entry)) or ()
        for option, value in itertools.pairwise(argv):
            if option == "-pidfile" and value in by_pidfile:
                stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                if stat[0] not in ("Z", "X"):
                    found[int(entry)] = by_pidfile[value]
    return found


#: The second hop: a VM that arrived by migration answers query-migrate with that incoming
#: one (completed) until its own shows, which the recovery must not take for its own.
SECOND_HOP = ("after-target-start", "after-migrate-sent", "after-completed")


@pytest.mark.parametrize(
    ("point", "hop"),
    [(point, 1) for point in POINTS] + [(point, 2) for point in SECOND_HOP],
)
@pytest.mark.parametrize("kvmlab_backend", BACKENDS, indirect=True)
def test_a_kill_at_each_step_is_recovered_with_one_vm(
    workdir: Path, running_lab: Hypervisor, point: str, hop: int
) -> None:
    source, backend_kind = running_lab, running_lab.backend.name
    target = matrix_lab(workdir / "b", backend_kind)
    token = os.urandom(6).hex()
    assert source.guest("vm1").run(f"echo {token} > /tmp/t", ready_timeout=120).exit_code == 0
    if hop == 2:
        source.migrate("vm1", target, timeout=120)
        source, target = target, source
    argv = [
        PYTHON, "-c", DRIVER, point, "--state-dir", str(source.layout.root),
        "--backend", backend_kind, "migrate", "vm1", "--to", str(target.layout.root),
        "--timeout", "2",
    ]  # fmt: skip
    killed = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    assert killed.returncode == -9, killed.stderr

    # Never two guests executing: the source pauses before the target resumes. The states
    # are sampled one after the other while QEMU may still be migrating (kvmlab is dead,
    # the transfer is not), and they only move one way (the source running -> paused, the
    # target inmigrate -> running), so an overlap is proven only by one VM running at two
    # samples around one where the other runs.
    samples = [run_status(lab) == "running" for lab in (source, target, source, target)]
    assert not (samples[0] and samples[1] and samples[2]), "two guests executing"
    assert not (samples[1] and samples[2] and samples[3]), "two guests executing"
    pending = source.info("vm1", query_guest=False).extra.get("migration_pending")
    assert pending is not None and pending["target"] == str(target.layout.root)
    if target.layout.migration_journal("vm1").exists():  # the arriving side shows it too
        assert "migration_pending" in target.info("vm1", query_guest=False).extra

    # One follow-up command, from the target's side half of the time.
    side = target if point in ("after-completed", "after-source-quit") else source
    recovered = subprocess.run(
        [KVMLAB, "--state-dir", str(side.layout.root), "--backend", backend_kind, "recover", "vm1"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert recovered.returncode == 0, recovered.stderr
    expected = POINTS[point]
    if expected is not None:
        assert expected in recovered.stdout

    vms = _vms(source, target)
    assert len(vms) == 1, vms
    (owner,) = vms.values()
    other = target if owner is source else source
    assert owner.layout.runtime_file("vm1").exists()
    assert not other.layout.runtime_file("vm1").exists()
    for lab in (source, target):
        assert not lab.layout.migration_journal("vm1").exists()
        assert "migration_pending" not in (
            lab.info("vm1", query_guest=False).extra if lab is owner else {}
        )
    assert run_status(owner) == "running"
    assert owner.guest("vm1").run(["cat", "/tmp/t"], ready_timeout=30).stdout.strip() == token
    owner.stop("vm1", force=True)
