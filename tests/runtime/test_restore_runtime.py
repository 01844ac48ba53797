"""The pure half of a restore (kvmlab/runtime/restore.py, docs/snapshots.md): the runtime a
machine state was taken with, rebased onto this lab and binary, its machine alias pinned to
the recorded type on a newer QEMU, and refused on an older one or one without the machine."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from kvmlab.errors import SnapshotRefusedError
from kvmlab.golden.diff import diff_runtimes
from kvmlab.runtime.generator import generate_runtime
from kvmlab.runtime.rebase import machine_of, pin_machine
from kvmlab.runtime.restore import restore_runtime
from kvmlab.runtime.saved import KVMRuntime
from kvmlab.spec.capabilities import QemuCapabilities, load_profile
from kvmlab.spec.instance import HvParams, Instance, Nic
from kvmlab.spec.layout import StateLayout

Q72, Q10 = load_profile("qemu-7.2"), load_profile("qemu-10.0")
A, B = StateLayout(Path("/tmp/kl-a")), StateLayout(Path("/tmp/kl-b"))


def recorded(machine: str = "q35", caps: QemuCapabilities = Q72, **hv: object) -> KVMRuntime:
    instance = Instance(
        name="vm1",
        memory=192,
        nics=[Nic(mac="52:54:00:6b:03:01", mode="user")],
        hvparams=HvParams.model_validate(
            {"kernel_path": "/k", "machine_version": machine, "vnc_bind_address": "", **hv}
        ),
    )
    return generate_runtime(instance, caps, layout=A, binary="/usr/bin/kvm")


def restore(
    runtime: KVMRuntime,
    caps: QemuCapabilities,
    version: tuple[int, int, int],
    machine: str,
    target: StateLayout = A,
) -> KVMRuntime:
    return restore_runtime(
        runtime,
        source=A,
        target=target,
        recorded_version=version,
        recorded_machine=machine,
        caps=caps,
        binary="/opt/qemu",
    )


def test_the_same_qemu_in_the_same_lab_changes_only_the_binary() -> None:
    runtime = recorded()
    planned = restore(runtime, Q72, (7, 2, 0), "pc-q35-7.2")
    assert planned.argv[0] == "/opt/qemu"
    assert planned.argv[1:] == runtime.argv[1:]
    assert planned.model_copy(update={"argv": runtime.argv}) == runtime
    assert "-incoming" not in planned.argv


def test_another_lab_rebases_the_paths() -> None:
    runtime = recorded()
    planned = restore(runtime, Q72, (7, 2, 0), "pc-q35-7.2", target=B)
    assert not any("/tmp/kl-a/" in word for word in planned.argv)
    assert any(word == "/tmp/kl-b/pid/vm1" for word in planned.argv)
    assert diff_runtimes(runtime, planned).guest_visible == ()


def test_a_7_2_state_on_qemu_10_0_pins_the_recorded_machine() -> None:
    runtime = recorded()
    assert machine_of(runtime) == "q35"
    planned = restore(runtime, Q10, (7, 2, 0), "pc-q35-7.2")
    assert machine_of(planned) == "pc-q35-7.2"
    assert planned.hvparams.machine_version == "pc-q35-7.2", "a soft reboot keeps the machine"
    reference = pin_machine(runtime, "pc-q35-7.2")
    assert diff_runtimes(reference, planned).guest_visible == ()


def test_a_concrete_machine_is_kept_as_it_is() -> None:
    runtime = recorded(machine="pc-i440fx-7.2")
    planned = restore(runtime, Q10, (7, 2, 0), "pc-i440fx-7.2")
    assert machine_of(planned) == "pc-i440fx-7.2"


def test_a_10_0_state_on_qemu_7_2_is_refused() -> None:
    runtime = recorded(caps=Q10)
    with pytest.raises(SnapshotRefusedError, match=r"QEMU 10\.0\.0, and QEMU 7\.2.* is older"):
        restore(runtime, Q72, (10, 0, 0), "pc-q35-10.0")


def test_a_qemu_without_the_machine_is_refused() -> None:
    runtime = recorded()
    lacking = dataclasses.replace(Q10, machines=tuple(m for m in Q10.machines if m != "pc-q35-7.2"))
    with pytest.raises(SnapshotRefusedError, match=r"no machine type 'pc-q35-7\.2'"):
        restore(runtime, lacking, (7, 2, 0), "pc-q35-7.2")


def test_a_path_of_the_old_lab_in_the_kernel_line_is_a_guest_visible_change() -> None:
    # What plan_load refuses (kvmlab.lifecycle.snapshots.plan): the rebase reaches into
    # the kernel command line, which the guest reads.
    runtime = recorded(kernel_args="console=ttyS0 data=/tmp/kl-a/conf")
    planned = restore(runtime, Q72, (7, 2, 0), "pc-q35-7.2", target=B)
    assert diff_runtimes(runtime, planned).guest_visible != ()
