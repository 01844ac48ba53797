"""Snapshots and saved states (docs/snapshots.md): the same bodies on the fake kvm and on real
QEMU with the test guest (``KVMLAB_QEMU`` selects 10.0, as for the other lifecycle tests).

The proof is the guest's own, through its command channel: a file written before a snapshot
is there after the revert, one written after it is gone, and the boot id is unchanged (the
guest did not boot again). Every refusal is exit 2 in one line and leaves the state
directory as it was.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers_lifecycle import BOOT_TIMEOUT

from kvmlab.cli.app import main
from kvmlab.errors import (
    NotRunningError,
    SavedError,
    SnapshotError,
    SnapshotRefusedError,
)
from kvmlab.host.backends import Backend, FakeBackend, QemuBackend
from kvmlab.lifecycle.hypervisor import Hypervisor
from kvmlab.lifecycle.snapshots.record import STATE_MAGIC, SnapshotInfo
from kvmlab.runtime.rebase import machine_of
from kvmlab.spec.instance import Instance
from kvmlab.testing.plugin import stop_all
from kvmlab.testing.plugin import vm_processes as processes_of

BOOT_ID = "/proc/sys/kernel/random/boot_id"


def vm_processes(*labs: Hypervisor, name: str = "vm1") -> list[int]:
    """Live processes started with one of the labs' pidfiles for ``name``."""
    return [pid for pid, _lab in processes_of(*labs, name=name)]


def guest_run(lab: Hypervisor, command: str, name: str = "vm1") -> str:
    result = lab.guest(name).run(command, ready_timeout=BOOT_TIMEOUT)
    assert result.exit_code == 0, result
    return result.stdout


def boot_id(lab: Hypervisor) -> str:
    value = guest_run(lab, f"cat {BOOT_ID}").strip()
    assert value
    return value


def files_of(lab: Hypervisor) -> dict[str, str]:
    """Every file of the state directory that a command could change (not the logs, not
    the sockets), with a digest of its content."""
    found = {}
    for path in sorted(lab.layout.root.rglob("*")):
        relative = path.relative_to(lab.layout.root)
        if path.is_file() and relative.parts[0] not in ("log", "ctrl"):
            found[str(relative)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


@pytest.fixture
def cli(lab: Hypervisor, kvmlab_backend: str, capsys: pytest.CaptureFixture[str]):
    """Run ``kvmlab`` on this lab; ``(exit code, stdout, stderr)``."""

    def run(*words: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(["--state-dir", str(lab.layout.root), "--backend", kvmlab_backend, *words])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_revert_brings_back_the_guest_as_it_was(lab, make_instance, booted_vm_factory) -> None:
    booted_vm_factory(make_instance())
    guest_run(lab, "echo before > /tmp/before")
    booted = boot_id(lab)
    before = lab.load_runtime("vm1")

    info = lab.snapshot("vm1", "base")

    assert (info.tag, info.kind, info.running) == ("base", "snapshot", True)
    assert info.size > 0 and info.elapsed_ms is not None
    assert Path(info.state_file).read_bytes()[: len(STATE_MAGIC)] == STATE_MAGIC
    assert lab.info("vm1").extra.get("status") == "running", "it runs on after the write"
    guest_run(lab, "echo after > /tmp/after")

    reverted = lab.revert("vm1", "base")

    assert guest_run(lab, "cat /tmp/before").strip() == "before"
    assert guest_run(lab, "ls /tmp/after || echo gone").strip().endswith("gone")
    assert boot_id(lab) == booted, "the guest did not boot again"
    assert vm_processes(lab) == [reverted.pid]
    assert lab.load_runtime("vm1") == before
    assert "-incoming" not in lab.load_runtime("vm1").argv, "a start-time argument, never saved"
    assert [s.tag for s in lab.snapshots("vm1")] == ["base"], "the snapshot stays"
    assert not lab.layout.snapshot_journal("vm1").exists()
    # Reverting again works: the snapshot is not used up.
    guest_run(lab, "echo again > /tmp/after")
    lab.revert("vm1", "base")
    assert guest_run(lab, "ls /tmp/after || echo gone").strip().endswith("gone")
    listed = lab.info("vm1", query_guest=False).to_dict()["snapshots"]
    assert [entry["tag"] for entry in listed] == ["base"]
    assert set(listed[0]) == {"tag", "size", "created", "qemu_version", "machine", "running"}


def test_save_then_restore_continues_the_guest(lab, make_instance, booted_vm_factory) -> None:
    instance = make_instance()
    booted_vm_factory(instance)
    guest_run(lab, "echo kept > /tmp/token")
    booted = boot_id(lab)

    saved = lab.save("vm1")

    assert (saved.tag, saved.kind) == (None, "save")
    info = lab.info("vm1")
    assert info.state == "stopped" and info.pid is None
    assert info.to_dict()["saved"]["size"] == saved.size
    assert "tag" not in info.to_dict()["saved"]
    assert lab.saved_state("vm1") == saved.__class__(**{**saved.to_dict(), "elapsed_ms": None})
    assert vm_processes(lab) == []
    for refused in (
        lambda: lab.start(instance),
        lambda: lab.reboot("vm1"),
        lambda: lab.revert("vm1", "nothing"),
    ):
        with pytest.raises(SavedError, match="kvmlab restore vm1") as err:
            refused()
        assert err.value.state == "saved" and err.value.exit_code == 1
    assert lab.saved_state("vm1") is not None, "a refused start loses nothing"

    restored = lab.restore("vm1")

    assert guest_run(lab, "cat /tmp/token").strip() == "kept"
    assert boot_id(lab) == booted
    assert vm_processes(lab) == [restored.pid]
    assert lab.saved_state("vm1") is None
    assert not lab.layout.saved_state("vm1").exists(), "continued: two copies would be two VMs"
    assert lab.info("vm1").extra.get("status") == "running"


def test_cleanup_discards_the_saved_state_and_the_snapshots(lab, make_instance) -> None:
    lab.start(make_instance())
    lab.snapshot("vm1", "one")
    lab.save("vm1")
    lab.cleanup("vm1")
    assert not lab.layout.snapshot_dir("vm1").exists()
    assert not lab.layout.saved_state("vm1").exists()
    assert not lab.layout.saved_record("vm1").exists()


def test_every_refusal_is_exit_2_in_one_line_and_changes_nothing(
    lab, make_instance, cli: Callable[..., tuple[int, str, str]]
) -> None:
    lab.start(make_instance())
    assert cli("snapshot", "vm1", "base")[0] == 0
    pid = lab.info("vm1", query_guest=False).pid
    cases = [
        *(("snapshot", "vm1", tag) for tag in ("a/b", "..", "a..b", "a b", "x;rm", "$(id)", ".x")),
        ("snapshot", "vm1", "base"),  # duplicate
        ("revert", "vm1", "nope"),
        ("revert", "vm1", "../base"),
        ("delete-snapshot", "vm1", "nope"),
        ("restore", "vm1"),  # nothing saved
    ]
    before = files_of(lab)
    for words in cases:
        code, out, err = cli(*words)
        assert code == 2, (words, err)
        assert err.count("\n") == 1 and err.startswith("kvmlab: error: "), (words, err)
        assert out == ""
        assert files_of(lab) == before, words
        assert lab.info("vm1", query_guest=False).pid == pid
    assert "invalid snapshot tag 'a/b'" in cli("snapshot", "vm1", "a/b")[2]
    assert "already has a snapshot 'base'" in cli("snapshot", "vm1", "base")[2]

    # A state of a newer QEMU than this one: refused before anything starts.
    record_path = lab.layout.snapshot_record("vm1", "base")
    record = json.loads(record_path.read_text())
    record_path.write_text(json.dumps({**record, "qemu_version": "99.0.0"}))
    before = files_of(lab)
    code, _out, err = cli("revert", "vm1", "base")
    assert code == 2 and "written by QEMU 99.0.0" in err
    assert files_of(lab) == before
    assert lab.info("vm1", query_guest=False).pid == pid

    lab.stop("vm1", force=True)
    before = files_of(lab)
    code, _out, err = cli("snapshot", "vm1", "later")
    assert code == 2 and "not running" in err
    code, _out, err = cli("save", "vm1")
    assert code == 2 and "not running" in err
    assert files_of(lab) == before


def test_stop_and_reboot_of_a_saved_instance_say_how_to_continue_it(
    lab, make_instance, cli: Callable[..., tuple[int, str, str]]
) -> None:
    lab.start(make_instance())
    lab.save("vm1")
    before = files_of(lab)

    with pytest.raises(NotRunningError, match="has a saved state") as err:
        lab.stop("vm1")
    assert err.value.state == "saved" and err.value.exit_code == 1
    for words in (("stop", "vm1"), ("stop", "vm1", "--force"), ("reboot", "vm1")):
        code, out, err_text = cli(*words)
        assert code == 1 and out == "", (words, err_text)
        assert err_text.count("\n") == 1 and err_text.startswith("kvmlab: error: "), err_text
        assert "has a saved state (taken " in err_text, err_text
        assert "`kvmlab restore vm1` continues it" in err_text
        assert "`kvmlab cleanup vm1` discards it" in err_text
    assert files_of(lab) == before, "nothing was thrown away"
    assert lab.saved_state("vm1") is not None

    lab.cleanup("vm1")
    lab.start(make_instance())
    lab.stop("vm1", force=True)
    with pytest.raises(NotRunningError) as err:
        lab.stop("vm1")
    assert str(err.value) == "instance vm1 is not running"
    assert err.value.state == "stopped", "an instance without a saved state: as before"


def test_a_damaged_state_is_refused_never_loaded(lab, make_instance) -> None:
    lab.start(make_instance())
    lab.snapshot("vm1", "base")
    state = lab.layout.snapshot_state("vm1", "base")
    data = bytearray(state.read_bytes())
    data[len(data) // 2] ^= 0x01
    state.write_bytes(bytes(data))
    pid = lab.info("vm1", query_guest=False).pid

    with pytest.raises(SnapshotRefusedError, match="does not match its record") as err:
        lab.revert("vm1", "base")

    assert err.value.exit_code == 2
    assert vm_processes(lab) == [pid], "the VM was not touched"

    lab.save("vm1")
    saved = lab.layout.saved_state("vm1")
    saved.write_bytes(saved.read_bytes()[:-1])  # a truncated one
    with pytest.raises(SnapshotRefusedError, match="bytes, its record says"):
        lab.restore("vm1")
    assert vm_processes(lab) == []
    assert lab.saved_state("vm1") is not None, "it stays saved"


def test_cli_commands_print_and_list(
    lab, make_instance, cli: Callable[..., tuple[int, str, str]]
) -> None:
    lab.start(make_instance())
    code, out, _err = cli("snapshot", "vm1", "one", "--json")
    assert code == 0 and json.loads(out)["tag"] == "one"
    code, out, _err = cli("snapshot", "vm1", "two")
    assert code == 0 and out.startswith("snapshot 'two' of vm1: ")
    code, out, _err = cli("snapshots", "vm1", "--json")
    assert [entry["tag"] for entry in json.loads(out)] == ["one", "two"]
    code, out, _err = cli("info", "vm1")
    assert code == 0 and out.count("\nsnapshot: ") == 2
    assert cli("revert", "vm1", "one")[1].startswith("reverted vm1 to snapshot 'one'")
    assert cli("delete-snapshot", "vm1", "two")[0] == 0
    assert [s.tag for s in lab.snapshots("vm1")] == ["one"]
    code, out, _err = cli("save", "vm1", "--json")
    assert code == 0 and json.loads(out)["kind"] == "save"
    code, out, _err = cli("info", "vm1", "--json")
    assert json.loads(out)["saved"]["size"] > 0 and json.loads(out)["state"] == "stopped"
    code, out, _err = cli("restore", "vm1")
    assert code == 0 and out.startswith("restored vm1 (pid ")


KILLED = """
import os, sys
from kvmlab.lifecycle.hypervisor import Hypervisor
from kvmlab.lifecycle.snapshots import {module}

def killed(*args, **kwargs):
    os._exit(9)

setattr({module}, {function!r}, killed)
lab = Hypervisor(sys.argv[1], backend=sys.argv[2])
{call}
"""
CALLS = {
    "snapshot": "lab.snapshot('vm1', 'base')",
    "save": "lab.save('vm1')",
    "revert": "lab.revert('vm1', 'base')",
    "restore": "lab.restore('vm1')",
}


@pytest.mark.parametrize(
    "case",
    [
        ("write", "write_state", "snapshot", "rolled back"),
        ("write", "commit_state", "snapshot", "rolled back"),
        ("write", "resume_vm", "snapshot", "completed"),
        ("write", "commit_state", "save", "rolled back"),
        ("write", "quit_vm", "save", "completed"),
        ("load", "start_incoming", "revert", "completed"),
        ("load", "load_state", "revert", "completed"),
        ("load", "finish_load", "revert", "completed"),
        ("load", "start_incoming", "restore", "rolled back"),
        ("load", "load_state", "restore", "rolled back"),
        ("load", "finish_load", "restore", "completed"),
    ],
    ids=lambda case: f"{case[2]}-{case[1]}",
)
def test_a_killed_kvmlab_leaves_a_journal_that_recover_resolves(
    lab, kvmlab_backend, cli, case: tuple[str, str, str, str], *, make_instance, booted_vm_factory
) -> None:
    """kvmlab killed before a step: ``info`` shows the journal, ``recover`` finishes or undoes
    the operation, and the instance has one VM (or none, saved) that answers."""
    module, function, op, outcome = case
    booted_vm_factory(make_instance())
    guest_run(lab, "echo before > /tmp/before")
    booted = boot_id(lab)
    if op == "revert":
        lab.snapshot("vm1", "base")
        guest_run(lab, "echo after > /tmp/after")
    if op == "restore":
        lab.save("vm1")
    script = textwrap.dedent(KILLED.format(module=module, function=function, call=CALLS[op]))
    killed = subprocess.run(
        [sys.executable, "-c", script, str(lab.layout.root), kvmlab_backend],
        capture_output=True,
        text=True,
        check=False,
    )
    assert killed.returncode == 9, killed.stderr
    pending = lab.info("vm1", query_guest=False)
    assert "snapshot_pending" in pending.extra and "snapshot_pending" in pending.pending

    code, out, err = cli("recover", "vm1")

    assert code == 0, err
    assert f"interrupted snapshot operation {outcome}" in out
    assert not lab.layout.snapshot_journal("vm1").exists()
    assert not list(lab.layout.root.rglob(".*.tmp")), "no temp state left"
    recorded = [state.tag for state in lab.snapshots("vm1")]
    saved = lab.saved_state("vm1")
    if op == "snapshot":
        assert recorded == (["base"] if outcome == "completed" else [])
    if op in ("save", "restore"):
        expected = (op, outcome) in (("save", "completed"), ("restore", "rolled back"))
        assert (saved is not None) == expected
    if saved is not None:
        assert vm_processes(lab) == [], "a saved instance has no VM"
        lab.restore("vm1")
    assert len(vm_processes(lab)) == 1
    assert lab.info("vm1").extra.get("status") == "running"
    assert guest_run(lab, "cat /tmp/before").strip() == "before"
    assert boot_id(lab) == booted
    if op == "revert":
        assert guest_run(lab, "ls /tmp/after || echo gone").strip().endswith("gone")


def test_a_failed_write_leaves_the_vm_running(lab, make_instance, kvmlab_backend, fault_env):
    if kvmlab_backend != "fake":
        pytest.skip("a full disk is the fake kvm's fault")
    fault_env(state_truncate="4096")
    lab.start(make_instance())
    pid = lab.info("vm1", query_guest=False).pid
    before = files_of(lab)
    with pytest.raises(SnapshotError) as err:
        lab.snapshot("vm1", "base")
    assert err.value.exit_code == 1 and "runs as before" in str(err.value)
    assert files_of(lab) == before
    assert not list(lab.layout.root.rglob(".*.tmp"))
    assert vm_processes(lab) == [pid]
    assert lab.info("vm1").extra.get("status") == "running"


def test_a_hotplugged_instance_is_refused_while_its_hotplug_is_pending(
    lab, make_instance: Callable[..., Instance]
) -> None:
    lab.start(make_instance())
    lab.layout.hotplug_intent("vm1").write_text('{"op": "attach-nic"}')
    with pytest.raises(SnapshotRefusedError, match="hotplug was interrupted"):
        lab.snapshot("vm1", "base")
    assert not lab.layout.snapshot_dir("vm1").exists()


QEMU_7_2 = "/usr/bin/qemu-system-x86_64"
QEMU_10_0 = "/opt/kvmlab/qemu-10.0/bin/qemu-system-x86_64"


def backend_for(kind: str, version: str) -> Backend:
    """A backend of ``kind`` imitating (fake) or being (qemu) QEMU ``version``."""
    if kind == "fake":
        return FakeBackend(profile=f"qemu-{version}")
    binary = {"7.2": QEMU_7_2, "10.0": QEMU_10_0}[version]
    if not os.access(binary, os.X_OK):
        pytest.skip(f"QEMU {version} is not installed at {binary}")
    return QemuBackend(binary)


def test_a_7_2_state_restores_on_10_0_with_its_machine_pinned(
    make_instance, kvmlab_backend
) -> None:
    root = Path(tempfile.mkdtemp(prefix="kl-"))
    old = Hypervisor(root, backend=backend_for(kvmlab_backend, "7.2"), stop_timeout=20.0)
    new = Hypervisor(root, backend=backend_for(kvmlab_backend, "10.0"), stop_timeout=20.0)
    try:
        old.start(make_instance())
        guest_run(old, "echo kept > /tmp/token")
        booted = boot_id(old)
        saved = old.save("vm1")
        assert saved.qemu_version.startswith("7.2") and saved.machine == "pc-q35-7.2"

        new.restore("vm1")

        assert guest_run(new, "cat /tmp/token").strip() == "kept"
        assert boot_id(new) == booted
        runtime = new.load_runtime("vm1")
        assert machine_of(runtime) == "pc-q35-7.2" and runtime.argv[0] != QEMU_7_2

        # ... and a state 10.0 wrote does not go back to 7.2: refused before anything starts.
        new.save("vm1")
        before = files_of(new)
        with pytest.raises(SnapshotRefusedError, match="is older") as err:
            old.restore("vm1")
        assert err.value.exit_code == 2
        assert files_of(new) == before and vm_processes(new) == []
    finally:
        stop_all(old)
        shutil.rmtree(root, ignore_errors=True)


def test_a_guest_visible_difference_is_refused(make_instance, kvmlab_backend) -> None:
    """A state dir moved elsewhere: its paths are rebased, and one the guest reads (here in
    the kernel command line) would change, so the state is refused, nothing started."""
    root = Path(tempfile.mkdtemp(prefix="kl-"))
    moved = Path(tempfile.mkdtemp(prefix="kl-"))
    moved.rmdir()
    lab = Hypervisor(root, backend=kvmlab_backend, stop_timeout=20.0)
    there = Hypervisor(moved, backend=kvmlab_backend)
    try:
        instance = make_instance()
        # A kernel line needs a kernel: the fake kvm boots none, any file will do for it.
        kernel = instance.hvparams.kernel_path or "/etc/hostname"
        args = f"{instance.hvparams.kernel_args} kvmlab.data={root}/conf"
        hvparams = instance.hvparams.model_copy(update={"kernel_args": args, "kernel_path": kernel})
        lab.start(instance.model_copy(update={"hvparams": hvparams}))
        guest_run(lab, "true")
        lab.save("vm1")
        root.rename(moved)
        before = files_of(there)
        with pytest.raises(SnapshotRefusedError, match="would change what the guest sees"):
            there.restore("vm1")
        assert files_of(there) == before and vm_processes(there) == []
    finally:
        for each in (lab, there):
            if each.layout.root.exists():
                stop_all(each)
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(moved, ignore_errors=True)


def test_a_snapshot_shows_in_a_notebook() -> None:
    from kvmlab import display  # noqa: PLC0415

    info = SnapshotInfo(
        name="vm1",
        tag="<base>",
        kind="snapshot",
        size=96_000_000,
        sha256="ab" * 32,
        created="2026-01-01T00:00:00Z",
        qemu_version="7.2.0",
        machine="pc-q35-7.2",
        running=True,
        state_file="/tmp/kl-a/snap/vm1/<base>.state",
        elapsed_ms=210,
    )
    html = display.snapshot_html(info)
    assert "&lt;base&gt;" in html and "<base>" not in html
    assert "96.0 MB" in html and "ab" * 32 in html and "in 210 ms" in html
    assert display.snapshot_text(info).startswith("snapshot <base> of vm1: 96.0 MB")


def test_a_locked_command_resolves_a_pending_journal_first(
    lab, make_instance, kvmlab_backend, booted_vm_factory
):
    booted_vm_factory(make_instance())
    guest_run(lab, "true")
    script = textwrap.dedent(
        KILLED.format(module="write", function="resume_vm", call=CALLS["snapshot"])
    )
    killed = subprocess.run(
        [sys.executable, "-c", script, str(lab.layout.root), kvmlab_backend], check=False
    )
    assert killed.returncode == 9
    assert lab.info("vm1").extra.get("status") != "running", "paused where kvmlab died"

    lab.snapshot("vm1", "next")  # resolves the first (completed), then takes its own

    assert [state.tag for state in lab.snapshots("vm1")] == ["base", "next"]
    assert not lab.layout.snapshot_journal("vm1").exists()
    assert lab.info("vm1").extra.get("status") == "running"


def test_a_write_that_stalls_is_cancelled_at_the_timeout(
    lab, make_instance, kvmlab_backend, fault_env
):
    if kvmlab_backend != "fake":
        pytest.skip("a stalled write is the fake kvm's fault")
    fault_env(migrate_stall="1")
    lab.start(make_instance())
    before = files_of(lab)
    with pytest.raises(SnapshotError, match=r"did not end within 1 s \(cancelled\)") as err:
        lab.save("vm1", timeout=1)
    assert err.value.status == "timeout"
    assert files_of(lab) == before and not list(lab.layout.root.rglob(".*.tmp"))
    assert lab.info("vm1").extra.get("status") == "running"


def test_a_snapshot_waits_for_qemu_to_end_its_migration(
    lab, make_instance, kvmlab_backend, fault_env
):
    """QEMU 7.2 says ``completed`` before its migration thread ends, and refuses ``cont``
    until then: a snapshot that resumed at once would fail after its state was written."""
    if kvmlab_backend != "fake":
        pytest.skip("a slow end of a migration is the fake kvm's fault (rare on QEMU 7.2)")
    fault_env(finalize_delay="1")
    lab.start(make_instance())
    lab.snapshot("vm1", "base")
    lab.snapshot("vm1", "next")
    assert [state.tag for state in lab.snapshots("vm1")] == ["base", "next"]
    assert lab.info("vm1").extra.get("status") == "running"


def test_a_state_qemu_cannot_load_leaves_the_instance_saved(
    lab, make_instance, cli, booted_vm_factory
) -> None:
    """A state that matches its record but ends early (a record rewritten to match): QEMU
    exits, as on a failed migration, and the instance stays saved, its state kept."""
    booted_vm_factory(make_instance())
    guest_run(lab, "true")
    lab.save("vm1")
    state, record_path = lab.layout.saved_state("vm1"), lab.layout.saved_record("vm1")
    data = state.read_bytes()[:65536]
    state.write_bytes(data)
    record = json.loads(record_path.read_text())
    record.update(size=len(data), sha256=hashlib.sha256(data).hexdigest())
    record_path.write_text(json.dumps(record))
    before = files_of(lab)

    code, _out, err = cli("restore", "vm1")

    assert code == 1 and "stays saved" in err and err.count("\n") == 1, err
    assert vm_processes(lab) == []
    assert files_of(lab) == before
    assert not lab.layout.snapshot_journal("vm1").exists()


def test_a_revert_qemu_cannot_load_leaves_the_instance_stopped(lab, make_instance) -> None:
    """Once the old VM is gone there is no way back: a state QEMU refuses (matching its
    record, rewritten to match) leaves the instance stopped with the snapshot's runtime."""
    lab.start(make_instance())
    guest_run(lab, "true")
    lab.snapshot("vm1", "base")
    state, record_path = (
        lab.layout.snapshot_state("vm1", "base"),
        lab.layout.snapshot_record("vm1", "base"),
    )
    data = state.read_bytes()[:65536]
    state.write_bytes(data)
    record = json.loads(record_path.read_text())
    record.update(size=len(data), sha256=hashlib.sha256(data).hexdigest())
    record_path.write_text(json.dumps(record))

    with pytest.raises(SnapshotError, match="is stopped, with the runtime of snapshot 'base'"):
        lab.revert("vm1", "base")

    assert vm_processes(lab) == []
    assert lab.layout.runtime_file("vm1").read_text().rstrip("\n") == record["runtime"]
    assert not lab.layout.snapshot_journal("vm1").exists()
    assert [s.tag for s in lab.snapshots("vm1")] == ["base"]
