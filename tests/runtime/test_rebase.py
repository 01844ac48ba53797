"""The pure half of a migration (kvmlab/runtime/rebase.py, docs/migration.md): the source's runtime
rebased onto the target's state directory, its machine alias pinned across versions, and
the refusals; properties over generated instances: nothing guest-visible changes, no source
path is left, and rebasing back gives the source's runtime again."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvmlab.errors import LayoutError, MigrationRefusedError
from kvmlab.golden.diff import diff_runtimes
from kvmlab.runtime.generator import generate_runtime
from kvmlab.runtime.rebase import (
    concrete_machine,
    machine_of,
    pin_machine,
    rebase_paths,
    target_runtime,
)
from kvmlab.spec.capabilities import load_profile
from kvmlab.spec.instance import HvParams, Instance, Nic
from kvmlab.spec.layout import StateLayout
from kvmlab.testing import strategies as kst

Q72, Q10 = load_profile("qemu-7.2"), load_profile("qemu-10.0")
A, B = StateLayout(Path("/tmp/kl-a")), StateLayout(Path("/tmp/kl-b"))


def instance(machine: str = "q35") -> Instance:
    return Instance(
        name="vm1",
        memory=192,
        nics=[Nic(mac="52:54:00:6b:03:01", mode="user")],
        hvparams=HvParams(kernel_path="/k", machine_version=machine, vnc_bind_address=""),
    )


def test_paths_are_rebased_at_word_boundaries_only() -> None:
    src, dst = Path("/tmp/kl-a"), Path("/tmp/kl-b")
    assert rebase_paths("/tmp/kl-a/pid/vm1", src, dst) == "/tmp/kl-b/pid/vm1"
    assert (
        rebase_paths("unix:/tmp/kl-a/ctrl/vm1.qmp,server=on", src, dst)
        == "unix:/tmp/kl-b/ctrl/vm1.qmp,server=on"
    )
    assert rebase_paths("a,logfile=/tmp/kl-a/log/x,b", src, dst) == "a,logfile=/tmp/kl-b/log/x,b"
    assert rebase_paths("/tmp/kl-ab/pid/vm1", src, dst) == "/tmp/kl-ab/pid/vm1"
    assert rebase_paths("/x/tmp/kl-a/pid", src, dst) == "/x/tmp/kl-a/pid"


def test_same_version_changes_host_paths_and_the_binary_only() -> None:
    source = generate_runtime(instance(), Q72, layout=A, binary="/usr/bin/kvm")
    target = target_runtime(
        source, source=A, target=B, source_caps=Q72, target_caps=Q72, binary="/opt/q"
    )
    assert target.argv[0] == "/opt/q"
    assert machine_of(target) == "q35", "no pin between equal versions"
    assert not any("/tmp/kl-a" in word for word in target.argv)
    assert "/tmp/kl-b/pid/vm1" in target.argv
    diff = diff_runtimes(source, target)
    assert diff.guest_visible == () and diff.changes
    assert (target.nics, target.nic_slots, target.hvparams) == (
        source.nics,
        source.nic_slots,
        source.hvparams,
    )


@pytest.mark.parametrize(
    ("machine", "pinned", "hv"),
    [
        ("q35", "pc-q35-7.2", "pc-q35-7.2"),
        ("pc", "pc-i440fx-7.2", "pc-i440fx-7.2"),
        ("", "pc-i440fx-7.2", ""),  # the generator already pinned the default type
    ],
)
def test_an_alias_is_pinned_to_the_sources_type_across_versions(machine, pinned, hv) -> None:
    source = generate_runtime(instance(machine), Q72, layout=A, binary="/usr/bin/kvm")
    target = target_runtime(
        source, source=A, target=B, source_caps=Q72, target_caps=Q10, binary="/opt/q10"
    )
    assert machine_of(target) == pinned
    assert target.hvparams.machine_version == hv
    assert diff_runtimes(pin_machine(source, pinned), target).guest_visible == ()
    assert "-incoming" not in target.argv


def test_a_concrete_type_stays() -> None:
    assert concrete_machine("pc-q35-7.1", Q10) == "pc-q35-7.1"
    assert concrete_machine("q35", Q10) == "pc-q35-10.0"


def test_refusals() -> None:
    newer = generate_runtime(instance(), Q10, layout=A, binary="/q10")
    with pytest.raises(MigrationRefusedError, match=r"older QEMU 7\.2"):
        target_runtime(newer, source=A, target=B, source_caps=Q10, target_caps=Q72, binary="/q")
    odd = generate_runtime(instance("pc-q35-99.0"), Q72, layout=A, binary="/q")
    with pytest.raises(MigrationRefusedError, match=r"no machine type 'pc-q35-99\.0'"):
        target_runtime(odd, source=A, target=B, source_caps=Q72, target_caps=Q72, binary="/q")
    deep = StateLayout(Path("/tmp/" + "d" * 90))
    source = generate_runtime(instance(), Q72, layout=A, binary="/q")
    with pytest.raises(LayoutError):
        target_runtime(source, source=A, target=deep, source_caps=Q72, target_caps=Q72, binary="/q")


@settings(max_examples=60)
@given(kst.instances(), st.sampled_from(["qemu-7.2", "qemu-10.0"]))
def test_rebasing_keeps_the_guest_view_and_goes_back_exactly(vm: Instance, profile: str) -> None:
    caps = load_profile(profile)
    try:
        source = generate_runtime(vm, caps, layout=A, binary="/q")
    except Exception:  # an instance this QEMU refuses: nothing to migrate
        return
    there = target_runtime(
        source, source=A, target=B, source_caps=caps, target_caps=caps, binary="/r"
    )
    assert diff_runtimes(source, there).guest_visible == ()
    assert not any(str(A.root) + "/" in word for word in there.argv[1:])
    back = target_runtime(
        there, source=B, target=A, source_caps=caps, target_caps=caps, binary="/q"
    )
    assert back == source
