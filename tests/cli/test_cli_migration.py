"""``kvmlab migrate`` and ``kvmlab recover`` on the fake kvm: refusals, a pending migration
in ``info``, recovery of a journal a killed kvmlab left (docs/migration.md)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from subprocess import CompletedProcess

from test_cli import one_line_error, run, state_dir, workdir, write_instance

__all__ = ["run", "state_dir", "workdir", "write_instance"]  # the fixtures, shared


def test_refusals_are_exit_2_in_one_line_and_touch_no_target(
    run: Callable[..., CompletedProcess[str]], write_instance: Callable[..., Path], state_dir: Path
) -> None:
    target = state_dir.parent / "tg"
    assert run("start", str(write_instance())).returncode == 0
    before = (state_dir / "conf" / "vm1.runtime").read_bytes()
    for args, message in [
        (("migrate", "vm1", "--to", str(state_dir)), "its own state directory"),
        (("migrate", "nosuch", "--to", str(target)), "no instance named"),
        (("migrate", "vm1", "--to", "/tmp/a,b"), "contains ','"),
    ]:
        result = run(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert message in one_line_error(result.stderr), args
    assert not target.exists()
    assert run("stop", "vm1", "--force").returncode == 0
    result = run("migrate", "vm1", "--to", str(target))
    assert result.returncode == 2
    assert "not running" in one_line_error(result.stderr)
    assert (state_dir / "conf" / "vm1.runtime").read_bytes() == before


def test_info_reports_a_pending_migration_and_recover_rolls_it_back(
    run: Callable[..., CompletedProcess[str]], write_instance: Callable[..., Path], state_dir: Path
) -> None:
    target = state_dir.parent / "tg"
    assert run("start", str(write_instance())).returncode == 0
    runtime = (state_dir / "conf" / "vm1.runtime").read_text()
    # What a kvmlab killed right after writing the source's journal leaves behind.
    journal = {
        "op": "migrate",
        "name": "vm1",
        "source": str(state_dir),
        "target": str(target),
        "live": True,
        "resume_source": True,
        "step": "starting-target",
    }
    path = state_dir / "conf" / "vm1.migration"
    path.write_text(json.dumps({**journal, "target_runtime": runtime}))
    shown = run("info", "vm1")
    assert shown.returncode == 0
    assert "migration: PENDING" in shown.stdout and str(target) in shown.stdout
    as_json = json.loads(run("info", "vm1", "--json").stdout)
    assert as_json["migration_pending"] == journal, "the journal, without the runtime it carries"

    recovered = run("recover", "vm1")
    assert recovered.returncode == 0, recovered.stderr
    assert recovered.stdout == "vm1: interrupted migration rolled back\n"
    assert not path.exists()
    assert json.loads(run("info", "vm1", "--json").stdout)["state"] == "running"
    assert run("recover", "vm1").stdout == "vm1: nothing pending\n"


def test_a_locked_command_recovers_first(
    run: Callable[..., CompletedProcess[str]], write_instance: Callable[..., Path], state_dir: Path
) -> None:
    assert run("start", str(write_instance())).returncode == 0
    path = state_dir / "conf" / "vm1.migration"
    runtime = (state_dir / "conf" / "vm1.runtime").read_text()
    target = state_dir.parent / "tg"
    path.write_text(
        json.dumps({"source": str(state_dir), "target": str(target), "target_runtime": runtime})
    )
    assert run("reboot", "vm1").returncode == 0
    assert not path.exists()


def test_migrate_prints_the_figures_and_json(
    run: Callable[..., CompletedProcess[str]], write_instance: Callable[..., Path], state_dir: Path
) -> None:
    target = state_dir.parent / "tg"
    assert run("start", str(write_instance())).returncode == 0
    moved = run("migrate", "vm1", "--to", str(target))
    assert moved.returncode == 0, moved.stderr
    assert moved.stdout.startswith(f"migrated vm1 to {target} (QEMU ")
    back = run("--state-dir", str(target), "migrate", "vm1", "--to", str(state_dir), "--json")
    assert back.returncode == 0, back.stderr
    result = json.loads(back.stdout)
    assert result["status"] == "completed" and result["target"] == str(state_dir)
    assert json.loads(run("info", "vm1", "--json").stdout)["state"] == "running"
