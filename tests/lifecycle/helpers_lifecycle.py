"""Helpers shared by the lifecycle tests (imported by name: tests have no packages)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from kvmlab.channels.console import GuestFacts
from kvmlab.lifecycle.hypervisor import Hypervisor
from kvmlab.runtime.ports import guest_sysfs_dir, has_root_ports
from kvmlab.runtime.saved import KVMRuntime
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


#: The machines hotplug runs on: the test guest's fast q35 (PCIe root ports), and the
#: i440fx pc (its root bus), for the hotplug tests' ``machine`` fixture.
HOTPLUG_MACHINES = ("q35", "pc")


def guest_pci_dir(lab: Hypervisor, slot: int, name: str = "vm1") -> str:
    """The guest's sysfs directory (a glob) of the device of reserved slot ``slot``."""
    return guest_sysfs_dir(slot, has_root_ports(lab.load_runtime(name).argv))


def without_root_ports(runtime: KVMRuntime) -> KVMRuntime:
    """``runtime`` as a kvmlab without root ports saved it (its q35 ports dropped)."""
    argv = list(runtime.argv)
    kept: list[str] = []
    while argv:
        word = argv.pop(0)
        if word == "-device" and argv and argv[0].startswith("pcie-root-port,"):
            argv.pop(0)
            continue
        kept.append(word)
    return runtime.model_copy(update={"argv": tuple(kept)})
