"""Invariants 1 to 7 of docs/architecture.md as hypothesis properties.

Each property draws valid instances, capability profiles and layouts from
``kvmlab.testing.strategies`` and asserts one invariant through the same checks
notebooks use (``kvmlab.runtime.invariants``), plus direct assertions where a check could
hide a failure.
"""

from __future__ import annotations

import json
import subprocess
import sys

from hypothesis import given
from hypothesis import strategies as st

from kvmlab.errors import InstanceError
from kvmlab.runtime.generator import generate_runtime
from kvmlab.runtime.invariants import (
    check_execution,
    check_nics_deferred,
    check_no_temp_paths,
    check_round_trip,
)
from kvmlab.runtime.plan import plan_execution
from kvmlab.runtime.saved import KVMRuntime
from kvmlab.spec.capabilities import QemuCapabilities, available_profiles, load_profile
from kvmlab.spec.instance import Instance, Nic
from kvmlab.testing import strategies as kst

inputs = st.tuples(kst.instances(), kst.capabilities(), kst.layouts())


def user_paths(instance: Instance) -> list[str]:
    hv = instance.hvparams
    paths = [d.path for d in instance.disks]
    paths += [hv.kernel_path, hv.initrd_path, hv.cdrom_image_path, hv.floppy_image_path]
    return [p for p in paths if p]


@given(inputs, st.data())
def test_1_saved_argv_holds_no_temp_path_even_after_execution(args, data) -> None:
    instance, caps, layout = args
    runtime = generate_runtime(instance, caps, layout=layout)
    facts = data.draw(kst.start_facts(runtime, caps))
    plan = plan_execution(runtime, facts)
    assert check_no_temp_paths(runtime.argv, allowed=user_paths(instance)) == []
    # The executed argv does hold the temp scripts and fds: the check can see them.
    if plan.temp_files or any("fd=" in word for word in plan.start_args):
        assert check_no_temp_paths(plan.argv) != []


@given(inputs)
def test_2_nics_are_deferred_and_kept_as_data(args) -> None:
    instance, caps, layout = args
    runtime = generate_runtime(instance, caps, layout=layout)
    assert check_nics_deferred(runtime, instance) == []
    assert runtime.nics == instance.nics
    for nic in instance.nics:
        assert not any(nic.mac in word for word in runtime.argv)


@given(inputs)
def test_3_generation_is_deterministic(args) -> None:
    instance, caps, layout = args
    first = generate_runtime(instance, caps, layout=layout)
    second = generate_runtime(instance.model_copy(deep=True), caps, layout=layout)
    assert first.to_json() == second.to_json()


def test_3_generation_is_identical_across_interpreters() -> None:
    """Byte for byte the same in fresh processes with different hash seeds."""
    code = (
        "from kvmlab.spec.instance import Instance, Nic, Disk;"
        "from kvmlab.runtime.generator import generate_runtime;"
        "i = Instance(name='vm1', memory=512, vcpus=2,"
        " nics=[Nic(mac='52:54:00:00:00:01', link='br0'),"
        " Nic(mac='52:54:00:00:00:02', mode='user')],"
        " disks=[Disk(path='/srv/a.img'), Disk(path='/srv/b.img', mode='ro')]);"
        "print(generate_runtime(i).to_json())"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin"},
        ).stdout
        for seed in ("0", "1", "12345")
    }
    assert len(outputs) == 1
    assert json.loads(outputs.pop())["name"] == "vm1"


@given(inputs)
def test_4_json_round_trip(args) -> None:
    instance, caps, layout = args
    runtime = generate_runtime(instance, caps, layout=layout)
    assert check_round_trip(runtime) == []
    assert KVMRuntime.from_json(runtime.to_json()) == runtime


@st.composite
def legacy_documents(draw: st.DrawFn) -> list[object]:
    """Ganeti-style positional runtimes of 2, 3 or 4 elements with old options."""
    instance = draw(kst.instances())
    runtime = generate_runtime(instance)
    argv: list[object] = [
        int(w) if w.isdigit() and draw(st.booleans()) else w for w in runtime.argv
    ]
    if draw(st.booleans()):
        argv += ["-balloon", "virtio"]
    if draw(st.booleans()):
        argv.append("-localtime")
    if draw(st.booleans()):
        argv += ["-chroot", "/var/run/ganeti/chroot"]
    nics = [
        {"mac": nic.mac, "nicparams": {"mode": str(nic.mode), "link": nic.link}}
        for nic in instance.nics
    ]
    hv = instance.hvparams.model_dump(mode="json")
    disks = [
        [{"mode": str(d.mode), "iv_name": f"disk/{i}"}, d.path, None]
        for i, d in enumerate(instance.disks)
    ]
    length = draw(st.sampled_from([2, 3, 4]))
    return [argv, nics, hv, disks][:length]


@given(legacy_documents())
def test_4_legacy_formats_upgrade_to_a_fixed_point(document) -> None:
    upgraded = KVMRuntime.from_json(json.dumps(document))
    again = KVMRuntime.from_json(upgraded.to_json())
    assert again == upgraded
    assert again.to_json() == upgraded.to_json()
    assert all(isinstance(word, str) for word in upgraded.argv)
    assert not {"-balloon", "-localtime", "-chroot"} & set(upgraded.argv)


@given(inputs, kst.nics())
def test_5_changing_the_instance_after_generation_changes_nothing(args, extra_nic: Nic) -> None:
    instance, caps, layout = args
    runtime = generate_runtime(instance, caps, layout=layout)
    saved = runtime.to_json()
    nics = (*tuple(n for n in instance.nics if n.mac != extra_nic.mac), extra_nic)
    changed = instance.model_copy(update={"memory": instance.memory + 1, "nics": nics})
    regenerated = generate_runtime(changed, caps, layout=layout)
    assert runtime.to_json() == saved
    assert runtime.nics == instance.nics
    assert regenerated.nics == nics
    assert regenerated.argv != runtime.argv  # -m moved: the new runtime really differs


@given(inputs, st.data())
def test_6_and_7_execution_leaves_the_runtime_and_only_appends(args, data) -> None:
    instance, caps, layout = args
    runtime = generate_runtime(instance, caps, layout=layout)
    facts = data.draw(kst.start_facts(runtime, caps))
    saved = runtime.to_json()
    assert check_execution(runtime, facts) == []
    plan = plan_execution(runtime, facts)
    assert runtime.to_json() == saved
    assert plan.argv[: len(runtime.argv)] == runtime.argv
    assert plan.argv[len(runtime.argv) :] == plan.start_args
    for nic in runtime.nics:
        assert any(nic.mac in word for word in plan.start_args)


def fields_it_cannot_express(instance: Instance, caps: QemuCapabilities) -> set[str]:
    """The fields of ``instance`` that need a feature ``caps`` lacks (the rules of
    ``kst.expresses_every_instance``, per instance)."""
    hv = instance.hvparams
    fields = {f"disks.{i}.mode" for i, d in enumerate(instance.disks) if str(d.mode) == "ro"}
    if caps.has_drive_readonly:
        fields.clear()
    if not hv.acpi and not (caps.has_no_acpi or caps.has_machine):
        fields.add("hvparams.acpi")
    if not caps.has_run_with:
        if hv.use_chroot and not caps.has_chroot:
            fields.add("hvparams.use_chroot")
        if hv.security_model == "user" and not caps.has_runas:
            fields.add("hvparams.security_model")
    return fields


EVERY_PROFILE = [load_profile(name) for name in available_profiles()]


@given(kst.instances(), st.sampled_from(EVERY_PROFILE), kst.layouts(), st.data())
def test_every_bundled_qemu_generates_or_refuses_what_it_cannot_express(
    instance: Instance, caps: QemuCapabilities, layout, data
) -> None:
    """Ganeti's QEMU 0.9.1 and 0.12.5 included: kvmlab refuses an instance exactly when it
    needs a feature the QEMU lacks (naming that field), and otherwise keeps the invariants."""
    missing = fields_it_cannot_express(instance, caps)
    try:
        runtime = generate_runtime(instance, caps, layout=layout)
    except InstanceError as err:
        assert err.field in missing, (caps.profile, str(err), missing)
        return
    assert not missing, (caps.profile, missing)
    assert check_nics_deferred(runtime, instance) == []
    assert check_round_trip(runtime) == []
    assert check_execution(runtime, data.draw(kst.start_facts(runtime, caps))) == []


def test_the_strategies_draw_old_qemus_only_when_asked() -> None:
    every = [caps.profile for caps in EVERY_PROFILE]
    assert {"ganeti-0.9.1", "ganeti-0.12.5"} <= set(every)
    limited = [caps.profile for caps in EVERY_PROFILE if not kst.expresses_every_instance(caps)]
    assert limited == ["ganeti-0.9.1", "ganeti-0.12.5"]
    assert all(kst.expresses_every_instance(caps) for caps in EVERY_PROFILE[2:])


def test_the_default_capabilities_are_used_when_none_are_given() -> None:
    instance = Instance(name="vm1")
    assert generate_runtime(instance) == generate_runtime(instance, QemuCapabilities())
