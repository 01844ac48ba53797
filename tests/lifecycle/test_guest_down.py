"""A wait on a guest that cannot answer ends at once: a kernel panic, or its QEMU gone.

Fake backend (the panic and the crash are ``KVMLAB_FAKE_*`` faults). Nothing here
asserts a duration: a wait that was cut short raises :class:`GuestDownError`, which
only the early verdict raises, where the timeout would raise its plain timeout error.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from kvmlab.channels import qmp_log
from kvmlab.channels.console import Console
from kvmlab.channels.guest_watch import panic_report
from kvmlab.channels.qmp import QmpSession
from kvmlab.errors import ExpectTimeoutError, GuestDownError, GuestTimeoutError, QmpError
from kvmlab.host.process import wait_for_exit
from kvmlab.lifecycle.hypervisor import Hypervisor
from kvmlab.spec.instance import HvParams, Instance, Nic

FaultEnv = Callable[..., None]

PANIC = "Kernel panic - not syncing"


def instance(**hv: object) -> Instance:
    params: dict[str, object] = {"kernel_path": "", "vnc_bind_address": "", **hv}
    return Instance(
        name="vm1",
        memory=128,
        nics=(Nic(mac="52:54:00:6b:07:01", mode="user"),),
        hvparams=HvParams.model_validate(params),
    )


# -- the panic report, as Linux prints it ------------------------------------------------

LINUX_PANIC = (
    "[    1.2] Run /init as init process\r\n"
    "[    1.3] Kernel panic - not syncing: VFS: Unable to mount root fs\r\n"
    "[    1.3] CPU: 0 PID: 1 Comm: swapper/0 Not tainted 6.1.0 #1\r\n"
    "[    1.3] ---[ end Kernel panic - not syncing: VFS: Unable to mount root fs ]---\r\n"
)


def test_a_panic_that_is_the_guests_last_word_is_reported_from_its_first_line() -> None:
    report = panic_report(LINUX_PANIC)
    assert report is not None
    assert (
        report.splitlines()[0]
        == "[    1.3] Kernel panic - not syncing: VFS: Unable to mount root fs"
    )
    assert report.splitlines()[-1].startswith("[    1.3] ---[ end Kernel panic")
    assert "Run /init" not in report


def test_a_panic_still_being_printed_counts() -> None:
    assert panic_report(LINUX_PANIC.rsplit("[    1.3] ---", 1)[0]) is not None


def test_a_guest_that_came_back_from_its_panic_is_not_panicked() -> None:
    assert panic_report("KVMLAB-BOOT-OK\r\n") is None
    rebooting = LINUX_PANIC.replace("---[ end", "Rebooting in 5 seconds..\r\n[    1.3] ---[ end")
    assert panic_report(rebooting) is None
    assert panic_report(LINUX_PANIC + "KVMLAB-BOOT-OK\r\n") is None
    # ... until it panics again.
    assert panic_report(LINUX_PANIC + "KVMLAB-BOOT-OK\r\n" + LINUX_PANIC) is not None


# -- console and command channel on the fake -------------------------------------------


def test_expect_on_a_guest_that_panics_at_boot_fails_with_the_panic(
    fake_lab: Hypervisor, fault_env: FaultEnv
) -> None:
    fault_env(panic_after="0")
    fake_lab.start(instance())
    with pytest.raises(GuestDownError) as caught:
        fake_lab.console("vm1").expect("KVMLAB-BOOT-OK", timeout=120)
    err = caught.value
    assert err.reason == "panic"
    assert err.pattern == "KVMLAB-BOOT-OK"
    assert err.output.splitlines()[0].endswith(
        f"{PANIC}: VFS: Unable to mount root fs on unknown-block(0,0)"
    )
    assert PANIC in str(err)
    # Both timeouts' handlers catch it.
    assert isinstance(err, ExpectTimeoutError) and isinstance(err, GuestTimeoutError)
    # Waiting for the panic itself is answered, as any pattern.
    assert PANIC in fake_lab.console("vm1").expect(PANIC, timeout=5)
    with pytest.raises(GuestDownError):
        fake_lab.guest("vm1").run("true", ready_timeout=120)


def test_a_guest_command_running_when_the_guest_panics_fails_with_the_panic(
    fake_lab: Hypervisor, fault_env: FaultEnv
) -> None:
    fault_env(panic_after="0.5")
    fake_lab.start(instance())
    shell = fake_lab.guest("vm1")
    assert shell.run("echo up").stdout == "up\n"
    with pytest.raises(GuestDownError) as caught:
        shell.run("sleep 100", timeout=200)
    assert caught.value.reason == "panic"
    assert "Attempted to kill init!" in caught.value.output


def kernel(tmp_path: Path) -> str:
    """A kernel file for ``-kernel`` (the fake only opens it), so ``-append`` is passed."""
    path = tmp_path / "vmlinuz"
    path.write_bytes(b"\0" * 64)
    return str(path)


def test_a_panic_with_panic_minus_one_and_no_reboot_ends_qemu_and_the_wait(
    fake_lab: Hypervisor, fault_env: FaultEnv, tmp_path: Path
) -> None:
    fault_env(panic_after="0", boot_delay="0.5")
    info = fake_lab.start(
        instance(kernel_path=kernel(tmp_path), kernel_args="panic=-1", reboot_behavior="exit")
    )
    assert info.pid is not None
    with pytest.raises(GuestDownError) as caught:
        fake_lab.console("vm1").expect("KVMLAB-BOOT-OK", timeout=120)
    assert caught.value.reason == "panic"
    assert wait_for_exit(info.pid, 10.0)  # the guest's reset ended QEMU (-no-reboot)


def test_a_guest_that_reboots_after_its_panic_is_waited_for(
    fake_lab: Hypervisor, fault_env: FaultEnv, tmp_path: Path
) -> None:
    fault_env(panic_after="0")
    fake_lab.start(instance(kernel_path=kernel(tmp_path), kernel_args="panic=1"))
    console = fake_lab.console("vm1")
    text = console.expect("KVMLAB-BOOT-OK", timeout=30)
    assert "Rebooting in 1 seconds.." in text
    assert fake_lab.guest("vm1").run("echo back").stdout == "back\n"


def test_expect_on_a_guest_whose_qemu_dies_fails_with_the_console(
    fake_lab: Hypervisor, fault_env: FaultEnv
) -> None:
    fault_env(crash_after="0.5")
    fake_lab.start(instance())
    with pytest.raises(GuestDownError) as caught:
        fake_lab.console("vm1").expect("never printed", timeout=120)
    assert caught.value.reason == "exited"
    assert "KVMLAB-FACTS-END" in caught.value.output
    assert "VM process exited" in str(caught.value)


def test_a_console_outside_a_state_directory_waits_as_before(tmp_path: Path) -> None:
    log = tmp_path / "serial.log"
    log.write_text(LINUX_PANIC)
    console = Console("vm1", log, tmp_path / "serial.sock")
    with pytest.raises(ExpectTimeoutError) as caught:
        console.expect("never", timeout=0.1)
    assert not isinstance(caught.value, GuestDownError)


# -- the QMP traffic log ---------------------------------------------------------------


def records(lab: Hypervisor) -> list[dict[str, object]]:
    text = lab.layout.qmp_log("vm1").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines()]


def test_qmp_sessions_record_commands_errors_and_events(fake_lab: Hypervisor) -> None:
    fake_lab.start(instance())
    with QmpSession(fake_lab.layout.qmp_socket("vm1")) as qmp:
        qmp.execute("stop")
        with pytest.raises(QmpError):
            qmp.execute("no-such-command", {"x": 1})
        qmp.execute("cont")
        qmp.execute("query-status")
    got = records(fake_lab)
    commands = [(r["command"], r.get("error")) for r in got if "command" in r]
    assert commands == [
        ("stop", None),
        ("no-such-command", None),
        ("no-such-command", "The command no-such-command has not been found"),
        ("cont", None),
        ("query-status", None),
    ]
    assert {"command": "no-such-command", "arguments": {"x": 1}} in [
        {k: v for k, v in r.items() if k != "time"} for r in got
    ]
    events = [r["event"] for r in got if "event" in r]
    assert events == ["STOP", "RESUME"]
    assert all(isinstance(r["time"], float) for r in got)


def test_the_qmp_log_starts_over_past_its_size(
    fake_lab: Hypervisor, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(qmp_log, "MAX_BYTES", 2000)
    fake_lab.start(instance())
    with QmpSession(fake_lab.layout.qmp_socket("vm1")) as qmp:
        for _ in range(100):
            qmp.execute("query-status")
    current = fake_lab.layout.qmp_log("vm1")
    older = current.with_name("vm1.qmp.log.1")
    assert current.stat().st_size <= 2000
    assert 1000 < older.stat().st_size <= 2000
    assert records(fake_lab)[-1]["command"] == "query-status"


def test_a_qmp_socket_outside_a_state_directory_records_nothing(tmp_path: Path) -> None:
    assert qmp_log.qmp_log_for_socket(tmp_path / "x.qmp") is None
    assert qmp_log.qmp_log_for_socket(tmp_path / "ctrl" / "vm1.qmp") is None  # no log/
