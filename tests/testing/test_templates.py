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
from kvmlab.testing.template_key import file_digest
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


def sparse(path: Path, mib: int, content: bytes = b"") -> str:
    """A raw image of ``mib`` MiB (its size names it in the guest), ``content`` at its start."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as file:
        file.write(content)
        file.truncate(mib << 20)
    return str(path)


def with_disks(instance, *paths: str, mode: str = "rw"):
    return instance.model_copy(update={"disks": tuple(Disk(path=p, mode=mode) for p in paths)})


@FAKE_ONLY
def test_the_key_holds_the_disks_content_and_not_their_paths(lab, instance, tmp_path) -> None:
    one = sparse(tmp_path / "a" / "disk.img", 4, b"same")
    two = sparse(tmp_path / "b" / "other-name.img", 4, b"same")

    def key_of(*paths: str, mode: str = "rw") -> str:
        return template_key(with_disks(instance, *paths, mode=mode), lab.backend)

    key = key_of(one)
    assert key_of(two) == key, "paths do not matter"
    assert template_key(instance, lab.backend) != key
    assert key_of(one, mode="ro") != key
    assert key_of(sparse(tmp_path / "c", 4, b"diff")) != key, "content matters"
    assert key_of(sparse(tmp_path / "d", 8, b"same")) != key, "size matters"
    assert key_of(one, two) != key
    missing = str(tmp_path / "missing.img")
    with pytest.raises(InvalidInputError, match=rf"disk '{missing}' of instance vm1: No such file"):
        template_key(with_disks(instance, missing), lab.backend)


@ON_BOTH
def test_copies_of_an_instance_with_disks_each_open_their_own_images(
    lab, instance, root, tmp_path: Path
) -> None:
    first_images = [sparse(tmp_path / "1" / "big.img", 8), sparse(tmp_path / "1" / "small.img", 4)]
    first = boot_copy(lab, with_disks(instance, *first_images), root)
    runtime = lab.load_runtime(first.name)
    assert [disk.path for disk in runtime.disks] == first_images
    assert not any(str(first.template.directory) in word for word in runtime.argv)
    with other_lab(lab) as second_lab:
        second_images = [sparse(tmp_path / "2,x" / "b.img", 8), sparse(tmp_path / "2,x" / "s", 4)]
        second = boot_copy(second_lab, with_disks(instance, *second_images), root)
        assert not second.built and second.template == first.template
        assert [d.path for d in second_lab.load_runtime(second.name).disks] == second_images
        if lab.backend.name == "qemu":
            shell = lab.guest(first.name)
            sizes = shell.run("for d in /sys/block/vd*; do cat $d/size; done").stdout.split()
            assert sorted(int(n) // 2048 for n in sizes) == [4, 8], "the guest sees both disks"
            # A write in one copy lands in its own image, not the other's or the template's.
            wrote = shell.run("printf MINE > /tmp/m && dd if=/tmp/m of=/dev/vda conv=fsync")
            assert wrote.exit_code == 0, wrote
            opened = second_lab.guest(second.name).run("head -c 4 /dev/vda").stdout
            assert opened == "\0\0\0\0"
            images = [Path(path).read_bytes()[:4] for path in (*first_images, *second_images)]
            assert b"MINE" in images[:2] and images[2:] == [b"\0" * 4] * 2
            assert first.template.disk_path(0).read_bytes()[:4] == b"\0" * 4


@FAKE_ONLY
def test_a_disk_the_templates_guest_wrote_is_copied_over_the_tests(
    lab, instance, root, tmp_path: Path
) -> None:
    """The copy resumes with the template's memory: its disk must be the template's too."""
    image = sparse(tmp_path / "1" / "d.img", 4, b"before")
    first = boot_copy(lab, with_disks(instance, image), root)
    lab.stop(first.name, force=True)
    template = first.template
    # As if the template's guest had written to its disk before the snapshot.
    written = sparse(template.disk_path(0), 4, b"written by the template")
    marker = json.loads((template.directory / "template.json").read_text())
    marker["written_disks"] = {"0": file_digest(written)}
    (template.directory / "template.json").write_text(json.dumps(marker))
    second = sparse(tmp_path / "2" / "d.img", 4, b"before")
    boot_copy(lab, with_disks(instance, second), root)
    assert Path(second).read_bytes() == Path(written).read_bytes()


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
