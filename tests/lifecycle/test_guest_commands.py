"""Commands inside the guest, through the command channel (ttyS1): the same test bodies on
the fake kvm and on real QEMU with the test guest (docs/guest.md, docs/fake-kvm.md).

A test that needs a running guest takes one restored from a template (``booted_vm``,
``booted_vm_factory``; docs/testing.md); the tests of the wait for a boot, of boot-time
disks and of a soft reboot boot their own."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from helpers_lifecycle import BOOT_TIMEOUT, assert_facts_match, boot_facts

from kvmlab.channels.guest_channel import GuestResult
from kvmlab.errors import (
    GuestChannelError,
    GuestTimeoutError,
    InvalidInputError,
    NotRunningError,
    UnknownInstanceError,
)
from kvmlab.spec.instance import Disk


def test_a_command_right_after_start_waits_for_the_guest_and_round_trips(
    lab, make_instance
) -> None:
    lab.start(make_instance())
    # No wait for the boot: the channel answers once the guest's loop is up.
    result = lab.guest("vm1").run(["echo", "hello", "a  b"], ready_timeout=BOOT_TIMEOUT)
    assert result == GuestResult(0, "hello a  b\n")


def test_exit_status_output_and_missing_newline_come_back_exactly(booted_vm) -> None:
    shell = booted_vm.lab.guest(booted_vm.name)
    assert shell.run("false") == GuestResult(1, "")
    assert shell.run("exit 7") == GuestResult(7, "")
    assert shell.run(["echo", "-n", "no newline"]) == GuestResult(0, "no newline")
    assert shell.run("echo one; echo; echo") == GuestResult(0, "one\n\n\n")
    missing = shell.run(["no-such-command", "x"])
    assert missing == GuestResult(127, "sh: no-such-command: not found\n")
    # A marker line with another nonce is output, not the end of the reply.
    fake_marker = "KVMLAB-EXIT 0123456789abcdef 0"
    assert shell.run(f"echo '{fake_marker}'; echo after") == GuestResult(
        0, f"{fake_marker}\nafter\n"
    )
    # Words are quoted: no glob, no redirection, no second command.
    assert shell.run(["echo", "*", ">", "/tmp/x;", "false"]).stdout == "* > /tmp/x; false\n"
    assert shell.run("echo stored > /tmp/f; cat /tmp/f") == GuestResult(0, "stored\n")


def test_a_command_that_times_out_is_an_error_and_the_channel_recovers(booted_vm) -> None:
    shell = booted_vm.lab.guest(booted_vm.name)
    began = time.monotonic()
    with pytest.raises(GuestTimeoutError, match="did not finish within 2 s"):
        shell.run(["sleep", "30"], timeout=2)
    # Given up at its timeout, not after the 30 s the command would take.
    assert 2 <= time.monotonic() - began < 30
    # The guest kills the command a second after the host's deadline: the next call waits.
    assert shell.run(["echo", "back"], timeout=10) == GuestResult(0, "back\n")
    assert time.monotonic() - began < 30  # the guest killed the sleep: it did not run out


def test_macs_in_sys_class_net_are_the_instance_nics(lab, make_instance, booted_vm_factory) -> None:
    instance = make_instance(nics=2)
    assert_facts_match(booted_vm_factory(instance).facts, instance)
    shell = lab.guest("vm1")
    names = shell.run(["ls", "/sys/class/net"])
    assert names == GuestResult(0, "eth0\neth1\nlo\n")
    addresses = shell.run("cat /sys/class/net/eth*/address")
    assert addresses.stdout.split() == [nic.mac for nic in instance.nics]
    assert shell.run(["cat", "/sys/class/net/lo/address"]).stdout == "00:00:00:00:00:00\n"


def test_memtotal_is_plausible_and_equals_the_mem_fact(
    lab, make_instance, booted_vm_factory
) -> None:
    facts = booted_vm_factory(make_instance(memory=192)).facts
    meminfo = lab.guest("vm1").run(["cat", "/proc/meminfo"])
    assert meminfo.exit_code == 0
    first = meminfo.stdout.splitlines()[0].split()
    assert first[0] == "MemTotal:" and first[2] == "kB"
    assert int(first[1]) == facts.mem_kb
    assert 0.75 * 192 * 1024 < int(first[1]) < 192 * 1024


def test_block_devices_are_the_virtio_disks(lab, make_instance, tmp_path: Path) -> None:
    disks = []
    for index, mib in enumerate((8, 4)):
        image = tmp_path / f"disk{index}.img"
        with image.open("wb") as file:
            file.truncate(mib << 20)
        disks.append(Disk(path=str(image)))
    instance = make_instance().model_copy(update={"disks": tuple(disks)})
    lab.start(instance)
    boot_facts(lab, "vm1")
    shell = lab.guest("vm1")
    assert shell.run(["ls", "/sys/block"]) == GuestResult(0, "vda\nvdb\n")
    assert shell.run(["cat", "/sys/block/vdb/size"]).stdout == f"{4 << 11}\n"
    partitions = shell.run(["cat", "/proc/partitions"]).stdout.splitlines()
    assert partitions[0].split() == ["major", "minor", "#blocks", "name"]
    assert [line.split()[2:] for line in partitions[2:]] == [["8192", "vda"], ["4096", "vdb"]]


def test_after_a_soft_reboot_the_channel_works_with_a_new_boot_id(lab, make_instance) -> None:
    lab.start(make_instance())
    boot_facts(lab, "vm1")
    shell = lab.guest("vm1")
    boot_id = shell.run(["cat", "/proc/sys/kernel/random/boot_id"])
    again = shell.run(["cat", "/proc/sys/kernel/random/boot_id"])
    assert boot_id.exit_code == 0 and len(boot_id.stdout.strip()) == 36
    assert again == boot_id  # two runs in a row, the same boot
    assert shell.run("echo x > /tmp/mark").exit_code == 0
    lab.reboot("vm1")
    after = shell.run(["cat", "/proc/sys/kernel/random/boot_id"], ready_timeout=BOOT_TIMEOUT)
    assert after.exit_code == 0 and after.stdout != boot_id.stdout
    assert shell.run(["cat", "/tmp/mark"]).exit_code == 1  # the old boot's files are gone


def test_concurrent_runs_on_one_vm_take_turns(booted_vm) -> None:
    shell = booted_vm.lab.guest(booted_vm.name)
    results: dict[int, GuestResult] = {}

    def run(index: int) -> None:
        results[index] = shell.run(["sh", "-c", f"sleep 1; echo {index}"], timeout=20)

    threads = [threading.Thread(target=run, args=(index,)) for index in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results == {index: GuestResult(0, f"{index}\n") for index in range(3)}


# -- errors (the fake is enough: they happen before the guest is asked) ---------------------

FAKE_ONLY = pytest.mark.parametrize("kvmlab_backend", ["fake"], indirect=True)


@FAKE_ONLY
def test_a_stopped_instance_is_not_running(lab, make_instance) -> None:
    lab.start(make_instance())
    shell = lab.guest("vm1")
    lab.stop("vm1", force=True)
    with pytest.raises(NotRunningError):
        shell.run(["true"])


@FAKE_ONLY
def test_unknown_instance(lab) -> None:
    with pytest.raises(UnknownInstanceError):
        lab.guest("nope")


@FAKE_ONLY
def test_no_channel_without_a_serial_console(lab, make_instance) -> None:
    lab.start(make_instance(serial_console=False))
    with pytest.raises(GuestChannelError, match="no command channel"):
        lab.guest("vm1")


@FAKE_ONLY
@pytest.mark.parametrize(
    "cmd", [[], "", "  ", ["echo", "a\nb"], "echo a\rb", ["echo", "nul\x00"], "x" * 4000]
)
def test_commands_that_cannot_be_one_line_are_refused(lab, make_instance, cmd) -> None:
    lab.start(make_instance())
    with pytest.raises(InvalidInputError):
        lab.guest("vm1").run(cmd)
