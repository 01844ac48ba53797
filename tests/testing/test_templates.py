"""The ``booted_vm`` fixtures and the templates behind them (kvmlab.testing.templates).

A template is booted once per key and every copy is loaded from its snapshot into the
test's own lab: these tests check the key, the sharing (two processes racing build it
once), the rebuild of a damaged template, and that a copy is an honest VM of its lab.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmlab.errors import AlreadyRunningError, InvalidInputError, SnapshotError
from kvmlab.host.backends import resolve_backend
from kvmlab.host.process import is_alive
from kvmlab.lifecycle.hypervisor import Hypervisor
from kvmlab.spec.instance import Disk
from kvmlab.testing import templates
from kvmlab.testing.templates import (
    TEMPLATE_TAG,
    Template,
    boot_copy,
    default_instance,
    template_key,
    template_lease,
)

BACKENDS = ["fake", pytest.param("qemu", marks=pytest.mark.qemu)]
ON_BOTH = pytest.mark.parametrize("kvmlab_backend", BACKENDS, indirect=True)
FAKE_ONLY = pytest.mark.parametrize("kvmlab_backend", ["fake"], indirect=True)
BOOT_ID = "/proc/sys/kernel/random/boot_id"


@pytest.fixture
def root() -> Iterator[Path]:
    """A templates directory of the test's own (short: its labs hold unix sockets)."""
    path = Path(tempfile.mkdtemp(prefix="kt-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def instance(request: pytest.FixtureRequest, kvmlab_backend: str):
    image = request.getfixturevalue("test_guest") if kvmlab_backend == "qemu" else None
    return default_instance(image)


@contextlib.contextmanager
def other_lab(lab: Hypervisor) -> Iterator[Hypervisor]:
    second = Hypervisor(Path(tempfile.mkdtemp(prefix="kl-")), backend=lab.backend)
    try:
        yield second
    finally:
        for info in second.list_instances():
            if info.pid is not None:
                second.stop(info.name, force=True)
        shutil.rmtree(second.layout.root, ignore_errors=True)


@ON_BOTH
def test_booted_vm_runs_in_the_tests_lab_with_its_runtime_rebased(booted_vm) -> None:
    lab, name = booted_vm.lab, booted_vm.name
    assert lab.guest(name).run(["echo", "up"]).stdout == "up\n"
    runtime = lab.load_runtime(name)
    assert not any(str(booted_vm.template.lab_root) in word for word in runtime.argv)
    assert any(str(lab.layout.root) in word for word in runtime.argv)
    assert runtime == lab.generate(booted_vm.instance), "what a start in this lab would save"
    assert lab.info(name).extra.get("status") == "running"
    assert booted_vm.facts.macs == [nic.mac for nic in booted_vm.instance.nics]
    assert lab.snapshots(name) == [], "the template's snapshot stays in the template's lab"


@ON_BOTH
def test_a_copy_is_pristine_and_soft_reboots_into_a_real_boot(lab, instance, root) -> None:
    first = boot_copy(lab, instance, root)
    shell = lab.guest(first.name)
    assert shell.run("echo dirty > /tmp/mark").exit_code == 0
    boot_id = shell.run(["cat", BOOT_ID]).stdout
    with other_lab(lab) as second_lab:
        second = boot_copy(second_lab, instance, root)
        assert not second.built and second.template == first.template
        # Another copy does not see what the first did in its guest.
        assert second_lab.guest(second.name).run(["cat", "/tmp/mark"]).exit_code == 1
    # A soft reboot replays the saved runtime: a real boot, the copy's files gone.
    lab.reboot(first.name)
    after = shell.run(["cat", BOOT_ID], ready_timeout=90)
    assert after.exit_code == 0 and after.stdout != boot_id
    assert shell.run(["cat", "/tmp/mark"]).exit_code == 1
    assert lab.console(first.name).read().count("KVMLAB-BOOT-OK") == 1


@pytest.mark.qemu
@pytest.mark.parametrize("kvmlab_backend", ["qemu"], indirect=True)
def test_the_guest_clock_is_set_from_the_host(booted_vm) -> None:
    seconds = booted_vm.lab.guest(booted_vm.name).run(["date", "+%s"]).stdout
    # The template's clock stopped when it was snapshotted; the copy's reads the host's.
    assert abs(int(seconds) - time.time()) < 30


@FAKE_ONLY
def test_the_key_follows_the_runtime_and_not_the_lab(lab, instance, tmp_path: Path) -> None:
    key = template_key(instance, lab.backend)
    assert template_key(instance, resolve_backend("fake")) == key
    assert template_key(instance.model_copy(update={"memory": 256}), lab.backend) != key
    assert template_key(instance.model_copy(update={"name": "vm2"}), lab.backend) != key
    hv = instance.hvparams.model_copy(update={"machine_version": "pc"})
    assert template_key(instance.model_copy(update={"hvparams": hv}), lab.backend) != key
    kernel = tmp_path / "kernel"
    kernel.write_bytes(b"one")
    with_kernel = instance.hvparams.model_copy(update={"kernel_path": str(kernel)})
    first = template_key(instance.model_copy(update={"hvparams": with_kernel}), lab.backend)
    kernel.write_bytes(b"two")
    os.utime(kernel, ns=(1, 1))
    second = template_key(instance.model_copy(update={"hvparams": with_kernel}), lab.backend)
    assert first != second, "the image's content is in the key"


@FAKE_ONLY
def test_an_instance_with_disks_is_refused_naming_them(lab, instance, tmp_path: Path) -> None:
    image = tmp_path / "d.img"
    image.write_bytes(b"")
    with pytest.raises(InvalidInputError, match=rf"instance vm1 has disks \({image}\)"):
        boot_copy(lab, instance.model_copy(update={"disks": (Disk(path=str(image)),)}))
    assert lab.list_instances() == []


def _damage_state(template: Template) -> None:
    with template.state_path.open("r+b") as state:
        state.seek(template.record().size // 2)
        byte = state.read(1)
        state.seek(-1, os.SEEK_CUR)
        state.write(bytes([byte[0] ^ 0xFF]))


@FAKE_ONLY
@pytest.mark.parametrize("damage", ["flipped byte", "truncated", "no marker", "no record"])
def test_a_damaged_or_half_written_template_is_rebuilt(lab, instance, root, damage) -> None:
    first = boot_copy(lab, instance, root)
    assert first.built
    lab.stop(first.name, force=True)
    lab.cleanup(first.name)
    template = first.template
    if damage == "flipped byte":
        _damage_state(template)
    elif damage == "truncated":
        os.truncate(template.state_path, template.record().size - 1)
    elif damage == "no marker":
        (template.directory / "template.json").unlink()
    else:
        template.record_path.unlink()
    again = boot_copy(lab, instance, root)
    assert again.built and again.template == template
    assert lab.guest(again.name).run(["true"]).exit_code == 0
    assert template.complete()


RACER = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from kvmlab.host.backends import resolve_backend
    from kvmlab.spec.instance import Instance
    from kvmlab.testing.templates import template_lease

    root, backend, document = sys.argv[1:4]
    instance = Instance.model_validate_json(document)
    sys.stdin.readline()  # both racers are ready: go
    with template_lease(instance, resolve_backend(backend), Path(root)) as (template, built):
        record = template.record()
        print(json.dumps({"built": built, "key": template.key, "sha256": record.sha256}))
    """
)


@ON_BOTH
def test_two_processes_racing_build_the_template_once(kvmlab_backend, instance, root) -> None:
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(root), kvmlab_backend, instance.model_dump_json()],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for racer in racers:
        assert racer.stdin is not None
        racer.stdin.write("go\n")
        racer.stdin.flush()
    outputs = [racer.communicate(timeout=300)[0] for racer in racers]
    assert [racer.returncode for racer in racers] == [0, 0]
    answers = [json.loads(output) for output in outputs]
    assert sorted(answer["built"] for answer in answers) == [False, True]
    assert answers[0]["key"] == answers[1]["key"]
    assert answers[0]["sha256"] == answers[1]["sha256"]
    templates = [path for path in root.iterdir() if path.is_dir()]
    assert len(templates) == 1
    snapshots = list(templates[0].glob(f"lab/snap/*/{TEMPLATE_TAG}.state"))
    assert len(snapshots) == 1


@FAKE_ONLY
def test_a_held_lease_keeps_the_template_for_its_holder(lab, instance, root) -> None:
    """A user holds the lock shared while it loads: a rebuild waits for it."""
    with template_lease(instance, lab.backend, root) as (template, built):
        assert built and template.complete()
        with template_lease(instance, lab.backend, root) as (same, built_again):
            assert same == template and not built_again


@FAKE_ONLY
def test_a_copy_over_a_running_instance_is_refused_and_leaves_it_alone(lab, instance, root) -> None:
    lab.start(instance)
    pid = lab.info("vm1", query_guest=False).pid
    before = lab.layout.runtime_file("vm1").read_bytes()
    with pytest.raises(AlreadyRunningError):
        boot_copy(lab, instance, root)
    assert lab.info("vm1", query_guest=False).pid == pid
    assert lab.layout.runtime_file("vm1").read_bytes() == before


@FAKE_ONLY
def test_a_failed_load_leaves_no_process_and_no_instance(
    lab, instance, root, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(layout, name, state, timeout) -> str:
        raise SnapshotError(f"loading {state} into {name} failed")

    monkeypatch.setattr(templates, "load_state", fail)
    with pytest.raises(SnapshotError, match="failed"):
        boot_copy(lab, instance, root)
    assert lab.list_instances() == []
    assert not lab.layout.runtime_file("vm1").exists()
    assert not lab.layout.pidfile("vm1").exists()


@FAKE_ONLY
def test_a_builder_killed_mid_way_leaves_a_vm_the_next_build_stops(lab, instance, root) -> None:
    with template_lease(instance, lab.backend, root) as (template, _built):
        pass
    (template.directory / "template.json").unlink()
    left = Hypervisor(template.lab_root, backend=lab.backend)
    left.start(instance)  # as a builder killed between its start and its snapshot leaves it
    pid = left.info(instance.name, query_guest=False).pid
    assert pid is not None
    again = boot_copy(lab, instance, root)
    assert again.built
    assert not is_alive(pid)
    assert lab.guest(again.name).run(["true"]).exit_code == 0
