"""Soft reboot replays the saved runtime; hard restart regenerates (invariant 9)."""

from __future__ import annotations

from helpers_lifecycle import (
    assert_facts_match,
    boot_facts,
    kvmlab_temp_leftovers,
    mac,
    option_value,
)

from kvmlab.host.process import is_alive, read_cmdline
from kvmlab.spec.instance import Nic


def macs_in(argv: tuple[str, ...]) -> list[str]:
    return [
        part.removeprefix("mac=")
        for value in option_value(argv, "-device")
        for part in value.split(",")
        if part.startswith("mac=")
    ]


def test_soft_reboot_replays_the_old_memory_and_nics(lab, make_instance) -> None:
    old = make_instance(memory=192, nics=1)
    first = lab.start(old)
    saved = lab.layout.runtime_file("vm1").read_bytes()
    before_facts = boot_facts(lab, "vm1")

    # More memory and one more NIC: a soft reboot must apply none of it.
    new = old.model_copy(update={"memory": 320, "nics": (*old.nics, Nic(mac=mac(9), mode="user"))})
    assert new.memory != old.memory
    before = kvmlab_temp_leftovers()
    info = lab.reboot("vm1")

    assert info.pid != first.pid and not is_alive(first.pid)
    cmdline = read_cmdline(info.pid)
    assert cmdline is not None
    assert option_value(cmdline, "-m") == ["192"]
    assert macs_in(cmdline) == [mac(0)]
    facts = boot_facts(lab, "vm1")
    assert_facts_match(facts, old)
    assert facts.mem_kb == before_facts.mem_kb
    assert lab.layout.runtime_file("vm1").read_bytes() == saved  # invariant 6
    assert not kvmlab_temp_leftovers() - before  # invariant 8


def test_hard_restart_applies_the_new_instance(lab, make_instance) -> None:
    old = make_instance(memory=192, nics=1)
    lab.start(old)
    boot_facts(lab, "vm1")
    new = old.model_copy(update={"memory": 320, "nics": (*old.nics, Nic(mac=mac(9), mode="user"))})
    info = lab.restart(new)
    cmdline = read_cmdline(info.pid)
    assert cmdline is not None
    assert option_value(cmdline, "-m") == ["320"]
    assert macs_in(cmdline) == [mac(0), mac(9)]
    assert_facts_match(boot_facts(lab, "vm1"), new)


def test_soft_reboot_twice_is_the_same_command_line(lab, make_instance) -> None:
    lab.start(make_instance())
    first = lab.reboot("vm1")
    second = lab.reboot("vm1")
    assert first.argv == second.argv
