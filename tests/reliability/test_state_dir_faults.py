"""A full disk or a read-only state directory: a clear error, the previous runtime intact.

As root, faults are real file systems: a 64 KiB tmpfs mounted on the state directory
(filled to the last block) for "disk full", and a read-only bind mount (or a tmpfs
remounted ``ro``) for "read-only". Without the right to mount, the tests skip.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from helpers_reliability import (
    fill,
    one_line_error,
    read_only,
    run_kvmlab,
    tmpfs,
    vm_processes,
    write_instance,
)

from kvmlab.runtime.saved import KVMRuntime


@pytest.fixture
def files(workdir: Path) -> tuple[Path, Path]:
    old = write_instance(workdir / "old.json")
    new = write_instance(workdir / "new.json", memory=256, vcpus=2)
    return old, new


def kvmlab(state_dir: Path, tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_kvmlab(state_dir, *args, tmpdir=tmp)


def assert_untouched(state_dir: Path, before: bytes, tmp: Path) -> None:
    runtime = state_dir / "conf" / "vm1.runtime"
    assert runtime.read_bytes() == before
    KVMRuntime.from_json(before)
    assert [p.name for p in (state_dir / "conf").iterdir()] == ["vm1.runtime"]
    assert vm_processes(state_dir / "pid" / "vm1") == []
    assert list(tmp.iterdir()) == []


def test_disk_full_while_saving_is_a_clear_error_and_keeps_the_runtime(
    state_dir: Path, private_tmp: Path, files: tuple[Path, Path]
) -> None:
    old, new = files
    with tmpfs(state_dir, "64k"):
        assert kvmlab(state_dir, private_tmp, "start", str(old)).returncode == 0
        assert kvmlab(state_dir, private_tmp, "stop", "vm1").returncode == 0
        before = (state_dir / "conf" / "vm1.runtime").read_bytes()
        fill(state_dir)
        result = kvmlab(state_dir, private_tmp, "start", str(new))
        assert result.returncode == 1, result
        line = one_line_error(result.stderr)
        assert "No space left on device" in line and "vm1.runtime" in line
        assert_untouched(state_dir, before, private_tmp)
        (state_dir / "filler").unlink()
        assert kvmlab(state_dir, private_tmp, "start", str(new)).returncode == 0
        assert kvmlab(state_dir, private_tmp, "stop", "vm1").returncode == 0


def test_read_only_conf_dir_while_saving_is_a_clear_error_and_keeps_the_runtime(
    state_dir: Path, private_tmp: Path, files: tuple[Path, Path]
) -> None:
    old, new = files
    assert kvmlab(state_dir, private_tmp, "start", str(old)).returncode == 0
    assert kvmlab(state_dir, private_tmp, "stop", "vm1").returncode == 0
    before = (state_dir / "conf" / "vm1.runtime").read_bytes()
    with read_only(state_dir / "conf"):
        result = kvmlab(state_dir, private_tmp, "start", str(new))
        assert result.returncode == 1, result
        assert "Read-only file system" in one_line_error(result.stderr)
        assert_untouched(state_dir, before, private_tmp)
    assert kvmlab(state_dir, private_tmp, "start", str(new)).returncode == 0


def test_stop_on_a_full_disk_works(
    state_dir: Path, private_tmp: Path, files: tuple[Path, Path]
) -> None:
    with tmpfs(state_dir, "64k"):
        assert kvmlab(state_dir, private_tmp, "start", str(files[0])).returncode == 0
        before = (state_dir / "conf" / "vm1.runtime").read_bytes()
        fill(state_dir)
        result = kvmlab(state_dir, private_tmp, "stop", "vm1")
        assert result.returncode == 0, result.stderr
        assert (state_dir / "conf" / "vm1.runtime").read_bytes() == before
        assert vm_processes(state_dir / "pid" / "vm1") == []


def test_info_and_list_work_on_a_read_only_state_dir(
    state_dir: Path, private_tmp: Path, files: tuple[Path, Path]
) -> None:
    assert kvmlab(state_dir, private_tmp, "start", str(files[0])).returncode == 0
    with read_only(state_dir):
        for command in (["info", "vm1", "--json"], ["list"], ["console", "vm1"]):
            result = kvmlab(state_dir, private_tmp, *command)
            assert result.returncode == 0, (command, result.stderr)
    assert kvmlab(state_dir, private_tmp, "stop", "vm1").returncode == 0


# -- bugs: OSErrors from the state directory escape as tracebacks -----------------------


@pytest.mark.parametrize("command", ["start", "stop", "reboot"])
def test_read_only_state_dir_is_a_clear_error(
    state_dir: Path, private_tmp: Path, files: tuple[Path, Path], command: str
) -> None:
    assert kvmlab(state_dir, private_tmp, "start", str(files[0])).returncode == 0
    if command == "start":
        assert kvmlab(state_dir, private_tmp, "stop", "vm1").returncode == 0
    before = (state_dir / "conf" / "vm1.runtime").read_bytes()
    with read_only(state_dir):
        args = ["start", str(files[1])] if command == "start" else [command, "vm1"]
        result = kvmlab(state_dir, private_tmp, *args)
        assert result.returncode == 1, result
        assert "Read-only file system" in one_line_error(result.stderr)
        assert (state_dir / "conf" / "vm1.runtime").read_bytes() == before


@pytest.mark.parametrize("fault", ["log-full", "log-read-only", "pid-read-only"])
def test_unwritable_state_subdir_at_start_is_a_clear_error(
    state_dir: Path, private_tmp: Path, files: tuple[Path, Path], fault: str
) -> None:
    assert kvmlab(state_dir, private_tmp, "start", str(files[0])).returncode == 0
    assert kvmlab(state_dir, private_tmp, "stop", "vm1").returncode == 0
    (state_dir / "pid" / "vm1").write_text("999999\n")  # a stale pidfile to clear
    subdir = state_dir / fault.split("-", maxsplit=1)[0]
    manager = tmpfs(subdir, "4k") if fault == "log-full" else read_only(subdir)
    with manager:
        if fault == "log-full":
            fill(subdir)
        result = kvmlab(state_dir, private_tmp, "start", str(files[1]))
        assert result.returncode == 1, result
        one_line_error(result.stderr)
        assert vm_processes(state_dir / "pid" / "vm1") == []
        assert list(private_tmp.iterdir()) == []
