"""Bad input to the commands that act on a running VM, one test per way it once went wrong.

Each runs the ``kvmlab`` console script against a fake VM that is running, and checks
the contract of every refusal: exit 2, one ``kvmlab`` error line naming the option or
the value, no traceback, the VM's process and saved runtime as they were, and no new
file in either lab (nor in the working directory). The same contract over random
input is ``test_bad_input_property.py``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest
from helpers_reliability import (
    KVMLAB,
    MAC1,
    one_line_error,
    run_kvmlab,
    snapshot,
    write_instance,
)


@pytest.fixture
def running(workdir: Path, state_dir: Path, private_tmp: Path) -> int:
    """vm1 running on the fake in ``state_dir``; its pid."""
    started = run_kvmlab(state_dir, "start", str(write_instance(workdir / "vm1.json")))
    assert started.returncode == 0, started.stderr
    return int((state_dir / "pid" / "vm1").read_text())


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def refused(
    workdir: Path, state_dir: Path, pid: int, *args: str, words: tuple[str, ...] = ()
) -> str:
    """Run a command that must be refused; its one error line, after the contract's checks."""
    before = snapshot(workdir)
    result = run_kvmlab(state_dir, *args, cwd=workdir, timeout=20)
    assert result.returncode == 2, (args, result.returncode, result.stdout, result.stderr)
    line = one_line_error(result.stderr) if "error: argument" not in result.stderr else ""
    if not line:  # argparse's usage error, one line too: "kvmlab exec: error: argument ..."
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        line = result.stderr.strip()
    for word in words:
        assert word in line, (word, line)
    assert alive(pid)
    assert (state_dir / "pid" / "vm1").read_text().strip() == str(pid)
    assert snapshot(workdir) == before
    return line


# -- numbers -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("migrate", "vm1", "--to", "TARGET", "--timeout=-1"),
        ("migrate", "vm1", "--to", "TARGET", "--timeout=nan"),
        ("console", "vm1", "--expect", "NEVER", "--timeout=nan"),
        ("exec", "vm1", "--timeout=inf", "--", "true"),
        ("exec", "vm1", "--timeout=1e308", "--", "true"),
        ("exec", "vm1", "--timeout=3000000", "--", "true"),
        ("exec", "vm1", "--ready-timeout=-inf", "--", "true"),
        ("stop", "vm1", "--timeout=-1"),
        ("stop", "vm1", "--timeout=0"),
    ],
    ids=lambda args: " ".join(args[2:]).replace("TARGET ", ""),
)
def test_a_duration_out_of_range_is_refused_naming_option_and_value(
    workdir: Path, state_dir: Path, running: int, args: tuple[str, ...]
) -> None:
    args = tuple(str(workdir / "tg") if word == "TARGET" else word for word in args)
    option, _, value = next(
        word for word in args if word.startswith("--") and "=" in word
    ).partition("=")
    try:
        refused(workdir, state_dir, running, *args, words=(option, repr(value)))
    except subprocess.TimeoutExpired:
        pytest.fail(f"kvmlab {' '.join(args)} was still running after 20 s")
    assert not (workdir / "tg").exists()


def test_the_fake_vm_survives_a_guest_command_timeout_too_long_for_epoll(
    state_dir: Path, running: int
) -> None:
    """A request straight on the command channel (the CLI no longer sends one): the timer
    it arms is beyond what ``epoll_wait`` can wait, and the VM must keep serving."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(state_dir / "ctrl" / "vm1.cmd"))
        sock.sendall(b"n1 3000000 true\nn2 " + b"9" * 400 + b" true\n")
        reply = b""
        while b"KVMLAB-EXIT n2" not in reply:
            chunk = sock.recv(4096)
            assert chunk, f"the channel closed: the VM died ({reply!r})"
            reply += chunk
    time.sleep(0.3)  # the loop's next wait: the one that overflowed
    assert alive(running)
    result = run_kvmlab(state_dir, "exec", "vm1", "--", "echo", "still-here")
    assert result.returncode == 0 and result.stdout == "still-here\n", result


# -- paths -------------------------------------------------------------------------------


def test_migrate_to_an_empty_path_is_refused_not_the_working_directory(
    workdir: Path, state_dir: Path, running: int
) -> None:
    line = refused(workdir, state_dir, running, "migrate", "vm1", "--to", "")
    assert "--to ''" in line and "empty" in line


@pytest.mark.parametrize("spelling", ["dotdot", "symlink", "relative", "trailing-slash"])
def test_migrate_to_its_own_state_dir_spelled_another_way_says_so(
    workdir: Path, state_dir: Path, running: int, spelling: str
) -> None:
    (workdir / "link").symlink_to(state_dir)
    to = {
        "dotdot": f"{workdir}/tmp/../{state_dir.name}",
        "symlink": str(workdir / "link"),
        "relative": state_dir.name,
        "trailing-slash": f"{state_dir}/",
    }[spelling]
    line = refused(workdir, state_dir, running, "migrate", "vm1", "--to", to)
    assert "its own state directory" in line and "busy" not in line


@pytest.mark.parametrize("where", ["file", "under-a-file"])
def test_migrate_to_a_regular_file_says_it_is_not_a_directory(
    workdir: Path, state_dir: Path, running: int, where: str
) -> None:
    (workdir / "afile").write_text("x")
    to = workdir / "afile" if where == "file" else workdir / "afile" / "lab"
    line = refused(workdir, state_dir, running, "migrate", "vm1", "--to", str(to))
    assert repr(str(to)) in line and "not a directory" in line


@pytest.mark.parametrize("command", ["attach-disk", "detach-disk"])
def test_an_empty_disk_path_is_refused(
    workdir: Path, state_dir: Path, running: int, command: str
) -> None:
    line = refused(workdir, state_dir, running, command, "vm1", "")
    assert "disk path ''" in line


def test_an_empty_state_dir_option_is_refused(workdir: Path, running: int) -> None:
    before = snapshot(workdir)
    result = subprocess.run(
        [KVMLAB, "--state-dir", "", "--backend", "fake", "recover", "vm1"],
        capture_output=True,
        text=True,
        cwd=workdir,
        check=False,
    )
    assert result.returncode == 2
    assert "state directory ''" in one_line_error(result.stderr)
    assert snapshot(workdir) == before


# -- values QEMU would rewrite -----------------------------------------------------------


def test_attach_nic_refuses_the_all_zero_mac(workdir: Path, state_dir: Path, running: int) -> None:
    line = refused(workdir, state_dir, running, "attach-nic", "vm1", "--mac", "00:00:00:00:00:00")
    assert "mac" in line and "00:00:00:00:00:00" in line


def test_start_refuses_the_all_zero_mac(workdir: Path, state_dir: Path) -> None:
    vm = workdir / "zero.json"
    vm.write_text(json.dumps({"name": "vm1", "nics": [{"mac": "00:00:00:00:00:00"}]}))
    result = run_kvmlab(state_dir, "start", str(vm))
    assert result.returncode == 2
    assert "nics.0.mac" in one_line_error(result.stderr)
    assert not state_dir.exists()


# -- exit codes and stderr ---------------------------------------------------------------


def test_recover_of_an_unknown_instance_is_exit_2(
    workdir: Path, state_dir: Path, running: int
) -> None:
    line = refused(workdir, state_dir, running, "recover", "nosuch")
    assert "no instance named 'nosuch'" in line


def test_a_library_log_record_never_reaches_stderr(
    workdir: Path, state_dir: Path, running: int
) -> None:
    """The power button cannot be pressed (no QMP socket): kvmlab's warning, and the
    stop goes on; qemu.qmp's own record of the failed connection is not shown."""
    (state_dir / "ctrl" / "vm1.qmp").unlink()
    result = run_kvmlab(state_dir, "stop", "vm1", "--timeout=1")
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("kvmlab: WARNING: ACPI powerdown"), lines
    debug = run_kvmlab(state_dir, "--debug", "info", "vm1")
    assert debug.returncode == 0


# -- nothing left behind -----------------------------------------------------------------


def test_a_failed_migration_leaves_no_directory_in_the_new_target(
    workdir: Path, state_dir: Path, running: int
) -> None:
    saved = (state_dir / "conf" / "vm1.runtime").read_bytes()
    target = workdir / "tg"
    result = run_kvmlab(
        state_dir,
        "migrate",
        "vm1",
        "--to",
        str(target),
        env={"KVMLAB_FAKE_FAIL_START": "disk on fire (injected)"},
    )
    assert result.returncode == 1
    assert "disk on fire" in one_line_error(result.stderr)
    assert not target.exists()
    assert alive(running)
    assert (state_dir / "conf" / "vm1.runtime").read_bytes() == saved


def test_the_refusals_leave_the_lab_usable(workdir: Path, state_dir: Path, running: int) -> None:
    """After all of the above kinds of refusal, the VM still takes a valid command."""
    refused(workdir, state_dir, running, "migrate", "vm1", "--to", "")
    refused(workdir, state_dir, running, "attach-nic", "vm1", "--mac", "00:00:00:00:00:00")
    result = run_kvmlab(state_dir, "attach-nic", "vm1", "--mac", "52:54:00:6b:09:07")
    assert result.returncode == 0, result.stderr
    runtime = json.loads((state_dir / "conf" / "vm1.runtime").read_text())
    assert MAC1 in json.dumps(runtime) and "52:54:00:6b:09:07" in json.dumps(runtime)
