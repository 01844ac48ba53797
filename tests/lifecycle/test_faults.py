"""Faults on purpose: the fake kvm fails, crashes, hangs or ignores the guest's power button.

Fake backend only (the faults are ``KVMLAB_FAKE_*`` variables). Every test runs with a
private ``tempfile.tempdir``, so "no kvmlab temp file left behind" (invariant 8) is
checked against a directory no other process writes to.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kvmlab.errors import LaunchError, NotRunningError
from kvmlab.host.executor import TEMP_PREFIX
from kvmlab.host.process import is_alive, read_pidfile, wait_for_exit
from kvmlab.lifecycle.hypervisor import Hypervisor, InstanceState
from kvmlab.runtime.saved import KVMRuntime
from kvmlab.spec.instance import HvParams, Instance, Nic

FaultEnv = Callable[..., None]


def instance(name: str = "vm1", *, nics: tuple[Nic, ...] | None = None, **hv: object) -> Instance:
    params: dict[str, object] = {"kernel_path": "", "vnc_bind_address": "", **hv}
    return Instance(
        name=name,
        memory=128,
        vcpus=1,
        nics=nics if nics is not None else (Nic(mac="52:54:00:6b:01:01", mode="user"),),
        hvparams=HvParams.model_validate(params),
    )


@pytest.fixture
def private_tmp(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """``tempfile.gettempdir()`` is a fresh empty directory for this test."""
    path = Path(tempfile.mkdtemp(prefix="kft-"))
    monkeypatch.setattr(tempfile, "tempdir", str(path))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def temp_leftovers(tmp: Path, lab: Hypervisor) -> list[str]:
    """Everything in the temp dir except the lab's own state directory."""
    return sorted(p.name for p in tmp.iterdir() if p != lab.layout.root)


def processes_naming(path: Path) -> list[int]:
    """Pids (other than ours) whose command line holds ``path`` as one argument."""
    target = os.fsencode(path)
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            raw = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if target in raw.rstrip(b"\0").split(b"\0"):
            found.append(int(entry.name))
    return found


def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def stale_files(lab: Hypervisor, name: str) -> list[Path]:
    paths = [
        lab.layout.pidfile(name),
        lab.layout.qmp_socket(name),
        lab.layout.serial_socket(name),
        lab.layout.monitor_socket(name),
    ]
    return [p for p in paths if p.exists()]


# -- fail at start ---------------------------------------------------------------------


def test_failed_start_raises_with_the_binarys_message_and_leaves_nothing(
    fake_lab: Hypervisor, fault_env: FaultEnv, private_tmp: Path
) -> None:
    fault_env(fail_start="disk on fire (injected)")
    with pytest.raises(LaunchError) as caught:
        fake_lab.start(instance())
    err = caught.value
    assert err.exitcode == 1
    assert "disk on fire (injected)" in err.output
    assert "disk on fire (injected)" in str(err)
    assert err.argv and err.argv[0].endswith("kvmlab-fake-kvm")
    assert temp_leftovers(private_tmp, fake_lab) == []
    assert not list(private_tmp.glob(f"{TEMP_PREFIX}*"))
    assert not fake_lab.layout.pidfile("vm1").exists()
    assert stale_files(fake_lab, "vm1") == []
    assert processes_naming(fake_lab.layout.pidfile("vm1")) == []
    # The runtime was saved before the launch and is intact.
    text = fake_lab.layout.runtime_file("vm1").read_text(encoding="utf-8")
    assert KVMRuntime.from_json(text) == fake_lab.load_runtime("vm1")
    assert fake_lab.info("vm1").state is InstanceState.STOPPED


def test_failed_start_then_good_start(
    fake_lab: Hypervisor, fault_env: FaultEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    fault_env(fail_start="nope")
    with pytest.raises(LaunchError):
        fake_lab.start(instance())
    monkeypatch.delenv("KVMLAB_FAKE_FAIL_START")
    info = fake_lab.start(instance())
    assert info.state is InstanceState.RUNNING and is_alive(info.pid)


# -- crash after start -----------------------------------------------------------------


def crashed_instance(lab: Hypervisor, fault_env: FaultEnv) -> int:
    fault_env(crash_after="0.3")
    info = lab.start(instance())
    assert info.pid is not None
    assert wait_for_exit(info.pid, 5.0), "the fake did not crash"
    return info.pid


def test_crash_after_start_counts_as_stopped_and_stop_clears_stale_files(
    fake_lab: Hypervisor, fault_env: FaultEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    pid = crashed_instance(fake_lab, fault_env)
    # SIGABRT left the pidfile and sockets behind, like a crashed QEMU.
    assert read_pidfile(fake_lab.layout.pidfile("vm1")) == pid
    assert fake_lab.layout.qmp_socket("vm1").exists()

    info = fake_lab.info("vm1")
    assert info.state is InstanceState.STOPPED
    assert info.pid is None and info.argv == ()
    assert info.to_dict()["pid"] is None

    with pytest.raises(NotRunningError):
        fake_lab.stop("vm1")
    assert stale_files(fake_lab, "vm1") == []

    monkeypatch.delenv("KVMLAB_FAKE_CRASH_AFTER")
    again = fake_lab.start(instance())
    assert again.state is InstanceState.RUNNING
    assert again.pid != pid and is_alive(again.pid)
    assert fake_lab.console("vm1").facts(10).cpus == 1


def test_soft_reboot_of_a_crashed_instance_is_refused(
    fake_lab: Hypervisor, fault_env: FaultEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    crashed_instance(fake_lab, fault_env)
    saved = fake_lab.layout.runtime_file("vm1").read_bytes()
    with pytest.raises(NotRunningError):
        fake_lab.reboot("vm1")
    assert stale_files(fake_lab, "vm1") == []
    assert fake_lab.layout.runtime_file("vm1").read_bytes() == saved
    assert processes_naming(fake_lab.layout.pidfile("vm1")) == []


def test_a_binary_that_dies_at_once_is_reported_without_kvmlabs_log_header(
    fake_lab: Hypervisor, fault_env: FaultEnv
) -> None:
    fault_env(crash_after="0")
    with pytest.raises(LaunchError) as caught:
        fake_lab.start(instance())
    assert stale_files(fake_lab, "vm1") == []
    assert "exited right after starting vm1" in str(caught.value)
    assert "kvmlab start:" not in str(caught.value)
    assert len(str(caught.value)) < 200


# -- ignore powerdown ------------------------------------------------------------------


def test_stop_kills_a_guest_that_ignores_the_powerdown(
    fake_lab: Hypervisor, fault_env: FaultEnv
) -> None:
    fault_env(ignore_powerdown="1")
    info = fake_lab.start(instance())
    assert info.pid is not None
    began = time.monotonic()
    fake_lab.stop("vm1", timeout=0.5)
    took = time.monotonic() - began
    assert not is_alive(info.pid)
    assert 0.5 <= took < 4.0, took  # waited for the guest, then terminated it
    assert fake_lab.info("vm1").state is InstanceState.STOPPED
    assert stale_files(fake_lab, "vm1") == []


def test_ignored_powerdown_was_really_asked_for(
    fake_lab: Hypervisor, fault_env: FaultEnv, tmp_path: Path
) -> None:
    log = tmp_path / "fake.log"
    fault_env(ignore_powerdown="1", log=str(log))
    fake_lab.start(instance())
    fake_lab.stop("vm1", timeout=0.3)
    events = [json.loads(line) for line in log.read_text().splitlines()]
    powerdowns = [e for e in events if e["event"] == "powerdown"]
    assert powerdowns and powerdowns[0]["ignored"] is True
    assert any(e["event"] == "signal" for e in events)  # then SIGTERM ended it


# -- slow and hanging starts -----------------------------------------------------------


def test_slow_start_is_waited_for(
    fake_lab: Hypervisor, fault_env: FaultEnv, private_tmp: Path
) -> None:
    fault_env(slow_start="0.5")
    began = time.monotonic()
    info = fake_lab.start(instance())
    assert time.monotonic() - began >= 0.5
    assert info.state is InstanceState.RUNNING
    assert fake_lab.layout.qmp_socket("vm1").exists()
    queried = fake_lab.info("vm1")  # asks the guest over QMP
    assert queried.vcpus == 1 and queried.extra.get("status") == "running"
    assert temp_leftovers(private_tmp, fake_lab) == []


def test_hanging_start_times_out_and_leaves_nothing_running(
    fake_lab: Hypervisor, fault_env: FaultEnv, private_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fault_env(hang_start="1")
    lab = Hypervisor(fake_lab.layout.root, backend="fake", start_timeout=1)
    pidfile = lab.layout.pidfile("vm1")
    began = time.monotonic()
    with pytest.raises(LaunchError) as caught:
        lab.start(instance())
    assert time.monotonic() - began < 30  # gave up at start_timeout: the fake hangs forever
    assert caught.value.exitcode is None
    assert "within 1 s" in str(caught.value)
    assert wait_until(lambda: processes_naming(pidfile) == [], 1.0), processes_naming(pidfile)
    assert not pidfile.exists()
    assert stale_files(lab, "vm1") == []
    assert temp_leftovers(private_tmp, lab) == []
    assert lab.info("vm1").state is InstanceState.STOPPED

    monkeypatch.delenv("KVMLAB_FAKE_HANG_START")
    assert lab.start(instance()).state is InstanceState.RUNNING


# -- bridged NIC: the up-script is a start-time temp file ------------------------------


def test_bridged_nic_script_is_run_from_a_private_temp_dir_and_removed(
    fake_lab: Hypervisor, fault_env: FaultEnv, private_tmp: Path, tmp_path: Path
) -> None:
    log = tmp_path / "fake.log"
    fault_env(log=str(log))
    nics = (
        Nic(mac="52:54:00:6b:01:01", mode="bridged", link="br0"),
        Nic(mac="52:54:00:6b:01:02", mode="user"),
    )
    info = fake_lab.start(instance(nics=nics))
    assert info.state is InstanceState.RUNNING

    events = [json.loads(line) for line in log.read_text().splitlines()]
    scripts = [e for e in events if e["event"] == "script"]
    assert len(scripts) == 1, scripts  # one tap NIC, one script
    (event,) = scripts
    script = Path(event["script"])
    assert event["action"] == "would run"
    assert event["message"] == f"would run {script} {event['tap']}"
    assert script.parent.name.startswith(TEMP_PREFIX)
    assert script.parent.parent == private_tmp
    # Invariant 8: the script and its directory are gone once the start returned.
    assert not script.exists()
    assert not script.parent.exists()
    assert temp_leftovers(private_tmp, fake_lab) == []
    # Invariant 1/7: the temp path is in the live argv, never in the saved one.
    assert any(str(script) in word for word in info.argv)
    assert not any(str(private_tmp) in word for word in fake_lab.load_runtime("vm1").argv)
    assert fake_lab.console("vm1").facts(10).macs == [nic.mac for nic in nics]


def test_bridged_nic_scripts_are_removed_when_the_start_fails(
    fake_lab: Hypervisor, fault_env: FaultEnv, private_tmp: Path
) -> None:
    fault_env(fail_start="late failure")
    nics = (Nic(mac="52:54:00:6b:01:01", mode="bridged", link="br0"),)
    with pytest.raises(LaunchError) as caught:
        fake_lab.start(instance(nics=nics))
    scripts = [w for w in caught.value.argv if "script=" in w]
    assert scripts and str(private_tmp) in scripts[0]
    assert temp_leftovers(private_tmp, fake_lab) == []
