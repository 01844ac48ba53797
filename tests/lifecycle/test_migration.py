"""Live migration between two labs (docs/migration.md): the same bodies on the fake
kvm and on real QEMU with the test guest (``KVMLAB_QEMU`` selects 10.0, as for the other
lifecycle tests), plus 7.2 -> 10.0 with two labs on different binaries.

The proof is the guest's own: a token written into its /tmp and its boot id are the same
after the migration, and ``KVMLAB-BOOT-OK`` was printed once (the source's console log has
it, the target's does not: the guest did not boot again). The tests that need a running
guest and do not count its boots start from one restored from a template
(``booted_vm_factory``, docs/testing.md).
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers_lifecycle import BOOT_TIMEOUT, mac

from kvmlab.errors import MigrationError, MigrationRefusedError
from kvmlab.golden.diff import diff_runtimes
from kvmlab.host.backends import Backend, FakeBackend, QemuBackend
from kvmlab.host.process import read_pidfile
from kvmlab.lifecycle.hypervisor import Hypervisor
from kvmlab.lifecycle.migration import transfer as migration
from kvmlab.runtime.rebase import machine_of, pin_machine
from kvmlab.spec.instance import Disk, Nic
from kvmlab.testing.plugin import stop_all
from kvmlab.testing.plugin import vm_processes as processes_of

QEMU_7_2 = "/usr/bin/qemu-system-x86_64"
QEMU_10_0 = "/opt/kvmlab/qemu-10.0/bin/qemu-system-x86_64"
NEW = "52:54:00:6b:01:01"
BOOT_ID = "/proc/sys/kernel/random/boot_id"


def _backend_for(kind: str, version: str | None) -> Backend | str:
    """A backend of ``kind`` imitating (fake) or being (qemu) QEMU ``version``."""
    if version is None:
        return kind
    if kind == "fake":
        return FakeBackend(profile=f"qemu-{version}")
    binary = {"7.2": QEMU_7_2, "10.0": QEMU_10_0}[version]
    if not os.access(binary, os.X_OK):
        pytest.skip(f"QEMU {version} is not installed at {binary}")
    return QemuBackend(binary)


@pytest.fixture
def make_lab(kvmlab_backend: str) -> Iterator[Callable[..., Hypervisor]]:
    """Labs on fresh short state directories (``/tmp/kl-*``), on this test's backend;
    ``version`` pins the QEMU (or the fake's profile)."""
    made: list[Hypervisor] = []

    def make(version: str | None = None) -> Hypervisor:
        root = Path(tempfile.mkdtemp(prefix="kl-"))
        lab = Hypervisor(root, backend=_backend_for(kvmlab_backend, version), stop_timeout=20.0)
        made.append(lab)
        return lab

    yield make
    for lab in made:
        stop_all(lab)
        shutil.rmtree(lab.layout.root, ignore_errors=True)


@pytest.fixture
def target(make_lab: Callable[..., Hypervisor]) -> Hypervisor:
    return make_lab()


def vm_processes(*labs: Hypervisor, name: str = "vm1") -> list[int]:
    """Live processes started with one of the labs' pidfiles for ``name``."""
    return [pid for pid, _lab in processes_of(*labs, name=name)]


def write_token(lab: Hypervisor, name: str = "vm1") -> tuple[str, str]:
    shell = lab.guest(name)
    token = os.urandom(8).hex()
    assert shell.run(f"echo {token} > /tmp/token", ready_timeout=BOOT_TIMEOUT).exit_code == 0
    boot_id = shell.run(["cat", BOOT_ID]).stdout.strip()
    assert boot_id
    return token, boot_id


def read_token(lab: Hypervisor, name: str = "vm1") -> tuple[str, str]:
    shell = lab.guest(name)
    token = shell.run(["cat", "/tmp/token"], ready_timeout=30).stdout.strip()
    return token, shell.run(["cat", BOOT_ID]).stdout.strip()


def boot_ok_count(*labs: Hypervisor, name: str = "vm1") -> int:
    return sum(
        lab.layout.serial_log(name).read_text(errors="replace").count("KVMLAB-BOOT-OK")
        for lab in labs
        if lab.layout.serial_log(name).exists()
    )


def assert_migrated(source: Hypervisor, target: Hypervisor, saved_before) -> None:
    """One VM, in the target, whose saved runtime is the source's rebased, guest-visibly equal."""
    assert vm_processes(source, target) == [target.info("vm1", query_guest=False).pid]
    assert source.list_instances() == []
    assert not source.layout.runtime_file("vm1").exists()
    for lab in (source, target):
        assert not lab.layout.migration_journal("vm1").exists()
    saved = target.load_runtime("vm1")
    machine = machine_of(saved)
    reference = (
        saved_before if machine == machine_of(saved_before) else pin_machine(saved_before, machine)
    )
    assert diff_runtimes(reference, saved).guest_visible == ()
    assert saved.nics == saved_before.nics and saved.nic_slots == saved_before.nic_slots
    assert not any(str(source.layout.root) in word for word in saved.argv)
    assert "-incoming" not in saved.argv, "a start-time argument, never saved"
    live = target.info("vm1", query_guest=False).argv
    # argv[0] aside: QEMU 10.0 here is a wrapper script that execs the real binary.
    assert live[1 : len(saved.argv)] == saved.argv[1:]
    start_args = live[len(saved.argv) :]
    uri = f"unix:{target.layout.migration_socket('vm1')}"
    assert ("-incoming", uri) in itertools.pairwise(start_args)


def test_the_guest_keeps_its_memory_and_its_boot(lab, target, make_instance) -> None:
    lab.start(make_instance(nics=2))
    token, boot_id = write_token(lab)
    before = lab.load_runtime("vm1")
    assert boot_ok_count(lab) == 1

    result = lab.migrate("vm1", target, timeout=120)

    assert result.status == "completed" and result.live
    assert result.total_time_ms is not None and result.total_time_ms > 0
    assert result.downtime_ms is not None and result.transferred_bytes
    assert read_token(target) == (token, boot_id)
    assert boot_ok_count(lab, target) == 1, "the guest did not boot again"
    assert_migrated(lab, target, before)
    macs = target.guest("vm1").run("cat /sys/class/net/eth*/address").stdout.split()
    assert macs == [mac(0), mac(1)]


def test_back_and_forth_and_an_offline_migration(
    lab, target, make_instance, booted_vm_factory
) -> None:
    booted_vm_factory(make_instance())
    token, boot_id = write_token(lab)
    before = lab.load_runtime("vm1")
    lab.migrate("vm1", target, timeout=120)
    back = target.migrate("vm1", lab, live=False, timeout=120)
    assert back.status == "completed" and not back.live
    # The second hop reports its own transfer, not the one the VM arrived by.
    assert back.transferred_bytes and back.total_time_ms is not None
    assert read_token(lab) == (token, boot_id)
    assert lab.info("vm1").extra.get("status") == "running", "resumed after the offline transfer"
    assert_migrated(target, lab, before)
    assert lab.load_runtime("vm1") == before, "home again: the very same runtime"


@pytest.mark.parametrize(("old", "new"), [("7.2", "10.0")])
def test_cross_version_to_a_newer_qemu_pins_the_machine(make_lab, make_instance, old, new) -> None:
    source, target = make_lab(old), make_lab(new)
    source.start(make_instance())
    token, boot_id = write_token(source)
    before = source.load_runtime("vm1")

    result = source.migrate("vm1", target, timeout=120)

    assert (result.source_version[:3], result.target_version[:4]) == ("7.2", "10.0")
    assert read_token(target) == (token, boot_id)
    assert boot_ok_count(source, target) == 1
    saved = target.load_runtime("vm1")
    assert machine_of(before) == "q35" and machine_of(saved) == "pc-q35-7.2"
    assert saved.hvparams.machine_version == "pc-q35-7.2"
    assert_migrated(source, target, before)


def test_to_an_older_qemu_is_refused_up_front(make_lab, make_instance) -> None:
    source, target = make_lab("10.0"), make_lab("7.2")
    source.start(make_instance())
    before = source.layout.runtime_file("vm1").read_bytes()
    with pytest.raises(MigrationRefusedError, match="older QEMU") as refused:
        source.migrate("vm1", target)
    assert refused.value.exit_code == 2
    assert not target.layout.root.joinpath("conf").exists(), "the target was never touched"
    assert source.layout.runtime_file("vm1").read_bytes() == before
    assert vm_processes(source, target) == [source.info("vm1", query_guest=False).pid]


def test_refusals_change_nothing(lab, target, make_instance) -> None:
    lab.start(make_instance())
    with pytest.raises(MigrationRefusedError, match="its own state directory"):
        lab.migrate("vm1", Hypervisor(lab.layout.root, backend=lab.backend))
    target.start(make_instance())
    with pytest.raises(MigrationRefusedError, match="already has an instance"):
        lab.migrate("vm1", target)
    target.stop("vm1", force=True)
    with pytest.raises(MigrationRefusedError, match="not running"):
        target.migrate("vm1", lab)
    assert len(vm_processes(lab, target)) == 1


def test_a_soft_reboot_on_the_target_replays_the_migrated_runtime(
    lab, target, make_instance, booted_vm_factory
) -> None:
    # NIC hotplug needs the PC machine (docs/hotplug.md).
    booted_vm_factory(make_instance(nics=1, machine_version="pc"))
    lab.attach_nic("vm1", Nic(mac=NEW, mode="user"))
    shell = lab.guest("vm1")
    shell.run("true", ready_timeout=BOOT_TIMEOUT)
    before = lab.load_runtime("vm1")
    assert before.nic_slots == (0x10, 0x11)

    lab.migrate("vm1", target, timeout=120)
    assert target.load_runtime("vm1").nics == before.nics

    target.reboot("vm1")
    pci = "/sys/bus/pci/devices/0000:00:{:02x}.0/virtio*/net/*/address"
    guest = target.guest("vm1")
    assert guest.run(f"cat {pci.format(0x10)}", ready_timeout=BOOT_TIMEOUT).stdout.strip() == mac(0)
    assert guest.run(f"cat {pci.format(0x11)}").stdout.strip() == NEW
    assert boot_ok_count(target) == 1, "the reboot booted the guest anew, on the target"
    assert len(vm_processes(lab, target)) == 1


def test_a_disk_hotplugged_on_the_source_stays_at_its_slot_on_the_target(
    lab, target, make_instance, tmp_path: Path, booted_vm_factory
) -> None:
    image = tmp_path / "disk-4m.img"
    with image.open("wb") as file:
        file.truncate(4 << 20)
    booted_vm_factory(make_instance(nics=1, machine_version="pc"))  # hotplug needs PC
    lab.guest("vm1").run("true", ready_timeout=BOOT_TIMEOUT)
    lab.attach_disk("vm1", Disk(path=str(image)))
    before = lab.load_runtime("vm1")
    assert before.disk_slots == (0x08,)

    lab.migrate("vm1", target, timeout=120)
    moved = target.load_runtime("vm1")
    assert (moved.disks, moved.disk_slots) == (before.disks, before.disk_slots)
    block = "/sys/bus/pci/devices/0000:00:08.0/virtio*/block/*/size"
    guest = target.guest("vm1")
    assert guest.run(f"cat {block}").stdout.strip() == str(4 << 11), "4 MiB in sectors"
    target.reboot("vm1")
    assert guest.run(f"cat {block}", ready_timeout=BOOT_TIMEOUT).stdout.strip() == str(4 << 11)
    assert len(vm_processes(lab, target)) == 1


@pytest.fixture
def slow_transfers(monkeypatch: pytest.MonkeyPatch, fault_env, kvmlab_backend: str) -> None:
    """A transfer that takes minutes: 1 MiB/s on real QEMU, a stalled one on the fake."""
    monkeypatch.setattr(migration, "BANDWIDTH", 1 << 20)
    if kvmlab_backend == "fake":
        fault_env(migrate_stall="1")


def test_a_target_killed_mid_transfer_leaves_the_source_running(
    lab, target, make_instance, slow_transfers, booted_vm_factory
) -> None:
    booted_vm_factory(make_instance())
    token, boot_id = write_token(lab)
    before = lab.layout.runtime_file("vm1").read_bytes()
    killed: list[int] = []

    def kill_target(info) -> None:
        if info.get("status") == "active" and not killed:
            pid = read_pidfile(target.layout.pidfile("vm1"))  # no runtime there yet
            assert pid is not None
            os.kill(pid, 9)
            killed.append(pid)

    with pytest.raises(MigrationError, match="still runs in") as failed:
        lab.migrate("vm1", target, timeout=120, progress=kill_target)
    assert killed and failed.value.exit_code == 1
    assert_source_kept(lab, target, before, token, boot_id)


def test_a_timed_out_transfer_is_cancelled_and_the_source_keeps_running(
    lab, target, make_instance, slow_transfers, booted_vm_factory
) -> None:
    booted_vm_factory(make_instance())
    token, boot_id = write_token(lab)
    before = lab.layout.runtime_file("vm1").read_bytes()
    with pytest.raises(MigrationError, match="did not complete within 1 s") as failed:
        lab.migrate("vm1", target, timeout=1)
    assert failed.value.status == "timeout"
    assert_source_kept(lab, target, before, token, boot_id)


def assert_source_kept(source, target, runtime_bytes, token, boot_id) -> None:
    assert source.layout.runtime_file("vm1").read_bytes() == runtime_bytes
    assert vm_processes(source, target) == [source.info("vm1", query_guest=False).pid]
    assert source.info("vm1").extra.get("status") == "running"
    assert read_token(source) == (token, boot_id)
    assert target.list_instances() == []
    for path in ("pid/vm1", "conf/vm1.runtime", "conf/vm1.migration", "ctrl/vm1.qmp"):
        assert not (target.layout.root / path).exists(), path
    assert not source.layout.migration_journal("vm1").exists()


def test_a_target_dying_right_after_the_transfer_gives_the_vm_back_to_the_source(
    lab, target, make_instance, booted_vm_factory
) -> None:
    booted_vm_factory(make_instance())
    token, boot_id = write_token(lab)
    before = lab.layout.runtime_file("vm1").read_bytes()

    def kill_target_once_done(info) -> None:
        if info.get("status") == "completed":
            pid = read_pidfile(target.layout.pidfile("vm1"))
            assert pid is not None
            os.kill(pid, 9)

    with pytest.raises(MigrationError, match="did not take over"):
        lab.migrate("vm1", target, timeout=120, progress=kill_target_once_done)
    # The source was paused (postmigrate) when the target died: resumed, same guest.
    assert_source_kept(lab, target, before, token, boot_id)
