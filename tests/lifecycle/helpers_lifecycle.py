"""Helpers shared by the lifecycle tests (imported by name: tests have no packages)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from kvmlab.channels.console import GuestFacts
from kvmlab.lifecycle.hypervisor import Hypervisor
from kvmlab.spec.instance import Instance

BOOT_TIMEOUT = 90.0


def mac(seq: int) -> str:
    return f"52:54:00:6b:00:{seq:02x}"


def boot_facts(lab: Hypervisor, name: str) -> GuestFacts:
    return lab.console(name).facts(BOOT_TIMEOUT)


def assert_facts_match(facts: GuestFacts, instance: Instance) -> None:
    """What the guest sees equals what was asked for (Linux keeps some memory for itself)."""
    asked_kb = instance.memory * 1024
    assert 0.75 * asked_kb < facts.mem_kb < asked_kb, (facts.mem_kb, asked_kb)
    assert facts.cpus == instance.vcpus
    assert facts.macs == [nic.mac for nic in instance.nics]


def kvmlab_temp_leftovers() -> set[str]:
    """The start-time temp directories of this process's kvmlab now present.

    Each is named ``kvmlab-start-<owner pid>-...``; the lifecycle tests run kvmlab in this
    process, so only this pid's count. Other processes (another pytest-xdist worker,
    another suite on the same machine) create and remove their own while a test runs.
    """
    mine = f"kvmlab-start-{os.getpid()}-*"
    return {p.name for p in Path(tempfile.gettempdir()).glob(mine)}


def option_value(argv: tuple[str, ...], option: str) -> list[str]:
    return [argv[i + 1] for i, word in enumerate(argv[:-1]) if word == option]
