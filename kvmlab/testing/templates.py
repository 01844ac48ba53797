"""Running guests in a fraction of a boot: template snapshots, restored into a test's lab.

A test that needs a running guest but does not test the boot pays a TCG boot for nothing.
Here the guest boots once as a *template*: in a lab of its own in the cache directory, it
boots, its command channel answers ``true``, it is snapshotted (tag ``template``) and
stopped. Every later use loads a pristine copy of that state into the test's own lab, as a
revert would (the snapshot core's :func:`~kvmlab.lifecycle.snapshots.plan.plan_load` and
:mod:`~kvmlab.lifecycle.snapshots.load`), so no test sees what another did in its guest.

**The key.** A state only loads into the runtime it was taken with, on a QEMU that can
read it. A template is kept under a key made of:

- the QEMU binary's identity: the backend, the resolved path, its size and mtime, and the
  version it reports (for the fake kvm, its program and sources);
- the SHA-256 of the guest's kernel and initramfs;
- the size and SHA-256 of each of the instance's disk images, in order (the images' paths
  do not matter: a copy opens its own);
- the runtime the instance is generated into, in a fixed placeholder lab, so that lab paths
  do not matter. That is the guest-visible part (what kvmlab's semantic diff,
  :mod:`kvmlab.golden.diff`, classifies so: memory, CPUs, machine, devices, MACs, kernel
  command line...) and the host side too, so that a copy's saved runtime is exactly the
  one its instance would be given in that lab (checked after each restore).

A change to any of them makes a new template, never a wrong restore.

**Disks.** A template of an instance with disks boots from copies of its images, kept in
the template's directory (``disks/disk-N.img``). A restored copy opens the test's own
images, whose content the key says is what the template booted from; when the template's
guest wrote to a disk before its snapshot, that image is first copied over the test's, so
the disk matches the memory the copy resumes with. Each copy writes only its own images.

**Sharing.** Templates live next to the guest cache (``$XDG_CACHE_HOME/kvmlab/templates/
KEY/``, or ``/tmp/kvmlab-templates-UID/KEY/`` when that path is too long for the unix
sockets of its lab). One ``flock`` per key: a builder holds it exclusively, users hold it
shared while they load the state, so pytest-xdist workers and later runs build each
template once. A damaged or half-written template (its state does not match the record's
size and SHA-256, checked at its first load in each process, or its marker file is
missing) is rebuilt. Each use marks the template
used, and each build prunes the templates no one has used for a while, or the least
recently used beyond a size budget (:mod:`kvmlab.testing.pruning`; :func:`prune` by hand).

**What a copy is.** Its saved runtime is the template's runtime moved into the test's lab
(paths under the template lab rebased, ``argv[0]`` the backend's binary: as a migration
moves it), so a soft reboot, hotplug, snapshot or migration of it behave as for any VM. What
the guest sees of the template's identity:

- the instance's own memory, CPUs, machine, MACs and SMBIOS UUID (the instance's, or the
  one derived from its name): they are in the key, so they are what a start would give;
- the template's boot: its uptime, kernel random state and every file its boot wrote, the
  same in every copy; the console log starts empty (the boot's output is kept as
  :attr:`BootedVM.boot_console`);
- the boot id: Linux makes it at its first read, which the template does not do, so each
  copy on QEMU reads one of its own; the fake kvm's guest keeps the template's;
- the clock stopped at the snapshot: the fixture sets it from the host (``date -s @EPOCH``
  through the command channel) after each restore; the fake kvm's guest has no clock.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from kvmlab.channels.console import GuestFacts, parse_guest_facts
from kvmlab.errors import (
    AlreadyRunningError,
    LayoutError,
    OperationError,
    SnapshotRefusedError,
)
from kvmlab.files import atomic_write
from kvmlab.golden.diff import diff_runtimes
from kvmlab.guest.build import GuestImage, boot_hvparams
from kvmlab.host.backends import Backend, FakeBackend
from kvmlab.host.inventory import running_pid
from kvmlab.host.stopping import stop as stop_process
from kvmlab.host.store import atomic_write_json
from kvmlab.lifecycle.hypervisor import Hypervisor
from kvmlab.lifecycle.locking import locked
from kvmlab.lifecycle.snapshots.load import finish_load, load_state, start_incoming
from kvmlab.lifecycle.snapshots.plan import plan_load
from kvmlab.lifecycle.snapshots.record import SnapshotRecord, load_record, verify_state
from kvmlab.runtime.generator import qemu_opt
from kvmlab.runtime.saved import KVMRuntime
from kvmlab.spec.instance import HvParams, Instance, Nic
from kvmlab.spec.layout import StateLayout
from kvmlab.states import InstanceState
from kvmlab.testing.pruning import (
    PruneReport,
    configured_limits,
    fallback_root,
    flock,
    lock_of,
    mark_used,
    prune,
    templates_root,
)
from kvmlab.testing.template_key import (
    disks_at,
    file_digest,
    template_key,
    with_disk_paths,
)

__all__ = [
    "DEFAULT_MAC",
    "TEMPLATE_TAG",
    "BootedVM",
    "PruneReport",
    "Template",
    "boot_copy",
    "default_instance",
    "prune",
    "restore_copy",
    "template_key",
    "template_lease",
    "templates_root",
]

#: The snapshot tag of every template.
TEMPLATE_TAG = "template"
#: The MAC of the default test guest's NIC (the lifecycle suite's first NIC).
DEFAULT_MAC = "52:54:00:6b:00:00"
#: Seconds the template's guest may take to boot until its command channel answers.
BOOT_TIMEOUT = 90.0
#: Seconds a copy's state may take to load.
LOAD_TIMEOUT = 60.0
_MARKER = "template.json"
_DISKS = "disks"
_CONSOLE = "boot-console.log"
_FAULTS = "KVMLAB_FAKE_"


def default_instance(image: GuestImage | None) -> Instance:
    """The default test guest: ``vm1``, 192 MiB, 2 vCPUs, one user-mode NIC
    (:data:`DEFAULT_MAC`), booted fast (:func:`kvmlab.guest.build.boot_hvparams`; no
    kernel on the fake kvm)."""
    return Instance(
        name="vm1",
        memory=192,
        vcpus=2,
        nics=(Nic(mac=DEFAULT_MAC, mode="user"),),
        hvparams=HvParams.model_validate(boot_hvparams(image)),
    )


# --- the template on disk ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Template:
    """One template: ``directory/lab`` is its lab, holding snapshot ``template`` of ``name``."""

    key: str
    name: str
    directory: Path

    @property
    def lab_root(self) -> Path:
        return self.directory / "lab"

    @property
    def layout(self) -> StateLayout:
        return StateLayout(self.lab_root)

    @property
    def record_path(self) -> Path:
        return self.layout.snapshot_record(self.name, TEMPLATE_TAG)

    @property
    def state_path(self) -> Path:
        return self.layout.snapshot_state(self.name, TEMPLATE_TAG)

    def disk_path(self, index: int) -> Path:
        """The template's copy of disk ``index`` (what its guest booted from)."""
        return self.directory / _DISKS / f"disk-{index}.img"

    def written_disks(self) -> dict[int, str]:
        """The disks the template's guest wrote before its snapshot: index -> SHA-256 of
        the image as the snapshot left it (from the marker; empty without disks)."""
        marker = json.loads((self.directory / _MARKER).read_text(encoding="utf-8"))
        return {int(i): str(sha) for i, sha in marker.get("written_disks", {}).items()}

    @property
    def boot_console(self) -> str:
        """The template's console output of its boot (its guest facts among it)."""
        return (self.directory / _CONSOLE).read_text(encoding="utf-8", errors="replace")

    def record(self) -> SnapshotRecord:
        """:raise SnapshotRefusedError: no record, or a damaged one."""
        return load_record(self.record_path, f"the template of {self.name}")

    def complete(self) -> bool:
        """Cheap check: marker, console, record, disk copies, and a state of the recorded
        size (the SHA-256 is checked at the first load in each process: a mismatch there
        rebuilds it too)."""
        try:
            marker = json.loads((self.directory / _MARKER).read_text(encoding="utf-8"))
            record = self.record()
            size = self.state_path.stat().st_size
            (self.directory / _CONSOLE).stat()
            for index in range(int(marker.get("disks", 0))):
                self.disk_path(index).stat()
        except (OSError, ValueError, TypeError, SnapshotRefusedError):
            return False
        return bool(marker.get("key") == self.key and size == record.size)


def _template_dir(root: Path, key: str, name: str) -> Path:
    """``root/KEY``, or a short ``/tmp`` one when its lab's socket paths would be too long."""
    short = key[:24]
    candidate = root / short
    try:
        StateLayout(candidate / "lab").instance_paths(name)
    except LayoutError:
        candidate = fallback_root() / short
    return candidate


def _private_dir(path: Path) -> None:
    """Create ``path`` (0700); refuse one another user owns (``/tmp`` is shared)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_uid != os.getuid():
        raise OperationError(f"template directory {path} belongs to another user")


@contextlib.contextmanager
def _without_faults(backend: Backend) -> Iterator[Backend]:
    """``backend`` without the fake kvm's faults (its ``faults`` and ``KVMLAB_FAKE_*`` in
    the environment, which a test may have set for its own VM): a template is pristine."""
    if not isinstance(backend, FakeBackend):
        yield backend
        return
    saved = {key: os.environ.pop(key) for key in list(os.environ) if key.startswith(_FAULTS)}
    try:
        yield FakeBackend(profile=backend.profile)
    finally:
        os.environ.update(saved)


def _build(template: Template, instance: Instance, backend: Backend) -> None:
    """Boot ``instance`` in the template's lab, wait for its command channel, snapshot it,
    stop it; the marker is written last (its presence: the template is complete)."""
    with _without_faults(backend) as clean:
        _boot_and_snapshot(template, instance, clean)


def _boot_and_snapshot(template: Template, instance: Instance, backend: Backend) -> None:
    with contextlib.suppress(FileNotFoundError):
        (template.directory / _MARKER).unlink()
    if running_pid(template.layout, instance.name) is not None:  # a builder killed mid-way
        stop_process(template.layout, instance.name, press=None, timeout=20.0)
    shutil.rmtree(template.lab_root, ignore_errors=True)
    shutil.rmtree(template.directory / _DISKS, ignore_errors=True)
    copies = [template.disk_path(i) for i in range(len(instance.disks))]
    if copies:
        _private_dir(template.directory / _DISKS)
    for disk, copy in zip(instance.disks, copies, strict=True):
        shutil.copyfile(disk.path, copy)
    booted = with_disk_paths(instance, [str(copy) for copy in copies])
    lab = Hypervisor(template.lab_root, backend=backend, stop_timeout=20.0)
    name = instance.name
    try:
        lab.start(booted)
        answer = lab.guest(name).run(["true"], ready_timeout=BOOT_TIMEOUT)
        if answer.exit_code != 0:
            raise OperationError(f"the template of {name} answers `true` with {answer}")
        lab.console(name).facts(BOOT_TIMEOUT)  # on the console before the channel's loop
        console = lab.console(name).read()
        lab.snapshot(name, TEMPLATE_TAG)
        lab.stop(name, force=True)
    except BaseException:
        with contextlib.suppress(Exception):
            if running_pid(lab.layout, name) is not None:
                lab.stop(name, force=True)
        shutil.rmtree(template.lab_root, ignore_errors=True)
        raise
    atomic_write(template.directory / _CONSOLE, console)
    written = {}
    for index, (disk, copy) in enumerate(zip(instance.disks, copies, strict=True)):
        after = file_digest(str(copy))
        if after != file_digest(disk.path):
            written[str(index)] = after
    marker = {
        "key": template.key,
        "name": name,
        "built": time.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "disks": len(copies),
        "written_disks": written,
    }
    atomic_write_json(template.directory / _MARKER, marker)


@contextlib.contextmanager
def template_lease(
    instance: Instance, backend: Backend, root: Path | None = None
) -> Iterator[tuple[Template, bool]]:
    """The complete template of ``instance``, built first when missing or damaged, held
    (a shared ``flock``) while the caller loads it; and whether this call built it.

    Each lease marks the template used. A build prunes the other templates afterwards
    (:func:`~kvmlab.testing.pruning.configured_limits`; this one is held meanwhile, so
    no pruner removes it): the limits are read before the build, so a bad value is
    refused before a guest boots.

    :param root: the templates directory (:func:`templates_root` when omitted).
    :raise InvalidInputError: a disk image of ``instance`` cannot be read.
    :raise OptionValueError: ``$KVMLAB_TEMPLATE_MAX_AGE_DAYS`` or
        ``$KVMLAB_TEMPLATE_BUDGET_MIB`` is not a limit (when a build is needed).
    """
    key = template_key(instance, backend)
    pruned_root = root
    root = templates_root() if root is None else root
    directory = _template_dir(root, key, instance.name)
    _private_dir(directory.parent)
    template = Template(key, instance.name, directory)
    lock = lock_of(directory)
    built = False
    limits: tuple[float | None, int | None] = (None, None)  # read before a build
    # A pruner may remove the template between the build and the shared lock (a budget
    # smaller than one template): build it again, a few times at most.
    for _attempt in range(3):
        with flock(lock, exclusive=False):
            if template.complete():
                mark_used(directory)
                if built:
                    with contextlib.suppress(OSError):  # housekeeping: never the test's failure
                        prune(*limits, root=pruned_root, keep=[directory])
                yield template, built
                return
        limits = configured_limits()
        with flock(lock, exclusive=True):
            if not template.complete():  # another process may have built it meanwhile
                _private_dir(directory)  # under the lock: a pruner may have removed it
                _build(template, instance, backend)
                built = True
    raise OperationError(f"the template of {instance.name} in {directory} vanished")


def rebuild_if_damaged(template: Template) -> None:
    """Mark ``template`` for a rebuild if its state does not match its record (checked
    again under the exclusive lock: another process may have rebuilt it meanwhile)."""
    with flock(lock_of(template.directory), exclusive=True):
        try:
            verify_state(template.state_path, template.record(), f"the template of {template.name}")
        except SnapshotRefusedError:
            with contextlib.suppress(FileNotFoundError):
                (template.directory / _MARKER).unlink()


# --- a copy in the test's lab --------------------------------------------------------------


#: The template states this process has checked against their records and loaded: a
#: complete template is never rewritten in place (a rebuild writes new files), so a state
#: with the same inode, size and mtime is the one checked, and its SHA-256 (0.06 s for a
#: 192 MiB guest) is not computed again for every copy.
_VERIFIED: set[tuple[str, int, int, int]] = set()


def _state_identity(template: Template) -> tuple[str, int, int, int]:
    try:
        st = template.state_path.stat()
    except OSError:
        return (str(template.state_path), 0, 0, 0)  # plan_load says what is missing
    return (str(template.state_path), st.st_ino, st.st_size, st.st_mtime_ns)


def _disks_moved(runtime: KVMRuntime, paths: list[str]) -> KVMRuntime:
    """``runtime`` opening disk ``i`` at ``paths[i]`` instead of the template's copy: in
    the ``-drive file=`` words (escaped as the generator writes them) and the disks kept
    as data."""
    argv = list(runtime.argv)
    for old_disk, new in zip(runtime.disks, paths, strict=True):
        old = "file=" + qemu_opt(old_disk.path)
        repl = "file=" + qemu_opt(new)
        for index, word in enumerate(argv):
            if word == old or word.startswith(old + ","):
                argv[index] = repl + word[len(old) :]
    return runtime.model_copy(update={"argv": tuple(argv), "disks": disks_at(runtime.disks, paths)})


def restore_copy(
    lab: Hypervisor,
    template: Template,
    timeout: float = LOAD_TIMEOUT,
    *,
    disks: tuple[str, ...] = (),
) -> KVMRuntime:
    """Load the template's state as instance ``template.name`` of ``lab`` (another lab):
        the snapshot core's load, fed a record of another lab; the runtime that runs.

        The record names the lab it was taken in, so :func:`plan_load` rebases its runtime onto
        ``lab`` (and checks the state against the record, and the guest-visible diff); the load
        is the core's three steps. A failure leaves no process behind, and the instance's saved
    runtime as it was (none when it had none).

        :param disks: the images the copy opens, one per disk of the template (their
            content is the template's: the key says so, and a disk the template's guest
            wrote is copied over first).

        :raise SnapshotRefusedError: the state does not match its record, or cannot be loaded
            by this binary.
        :raise SnapshotError: the load failed.
        :raise AlreadyRunningError: the instance runs in ``lab``.
    """
    layout, name = lab.layout, template.name
    record = template.record()
    identity = _state_identity(template)
    plan = plan_load(
        layout, lab.backend, record, template.state_path, verify=identity not in _VERIFIED
    )
    runtime = _disks_moved(plan.runtime, list(disks))
    with locked(layout, name):
        pid = running_pid(layout, name)
        if pid is not None:
            raise AlreadyRunningError(
                f"instance {name} is already running (pid {pid})",
                name=name,
                state=InstanceState.RUNNING,
            )
        known = layout.runtime_file(name).exists()  # a stopped instance: replaced, as a start
        for index, sha in template.written_disks().items():
            if file_digest(disks[index]) != sha:
                shutil.copyfile(template.disk_path(index), disks[index])
        try:
            start_incoming(layout, lab.backend, runtime, plan.caps, lab.start_timeout)
            load_state(layout, name, plan.state, timeout)
            finish_load(layout, runtime, record.running)
        except BaseException:
            if running_pid(layout, name) is not None:
                stop_process(layout, name, press=None, timeout=lab.stop_timeout)
            if not known:  # finish_load saves the runtime last: a failure left none of ours
                with contextlib.suppress(FileNotFoundError):
                    layout.runtime_file(name).unlink()
            raise
    _VERIFIED.add(identity)
    return runtime


@dataclass(frozen=True, slots=True)
class BootedVM:
    """A running guest restored from a template into a test's lab.

    ``booted_vm.lab.guest(booted_vm.name).run(["uname", "-r"])`` runs a command in it.

    :ivar lab: the test's :class:`~kvmlab.lifecycle.hypervisor.Hypervisor`.
    :ivar name: the instance's name there.
    :ivar instance: the instance it is a copy of.
    :ivar template: the template it was restored from.
    :ivar built: this call built the template (the first use of its key).
    """

    lab: Hypervisor
    name: str
    instance: Instance
    template: Template
    built: bool

    @property
    def boot_console(self) -> str:
        """The console output of the boot (the template's: a copy did not boot)."""
        return self.template.boot_console

    @property
    def facts(self) -> GuestFacts:
        """The guest facts its boot printed (memory, CPUs, NICs)."""
        return parse_guest_facts(self.boot_console)


def _set_clock(lab: Hypervisor, name: str) -> None:
    """The guest's clock from the host's (it reads the template's time plus the load)."""
    # The fake guest has no clock: its channel answering is all there is to check.
    fake = lab.backend.name == "fake"
    command = ["true"] if fake else ["date", "-s", f"@{int(time.time())}"]
    result = lab.guest(name).run(command, timeout=10, ready_timeout=30)
    if result.exit_code != 0:
        raise OperationError(f"{' '.join(command)} in {name} failed: {result}")


def boot_copy(lab: Hypervisor, instance: Instance, root: Path | None = None) -> BootedVM:
    """A running ``instance`` in ``lab``, restored from its template (built on first use).

    After the restore the guest's clock is set from the host's, and its saved runtime is
    checked against the one ``lab`` would generate for ``instance`` (no difference at all).

    :raise InvalidInputError: a disk image of ``instance`` cannot be read.
    :raise OperationError: the template cannot be built or the copy does not answer.
    """
    for attempt in range(2):
        with template_lease(instance, lab.backend, root) as (template, built):
            try:
                runtime = restore_copy(
                    lab, template, disks=tuple(disk.path for disk in instance.disks)
                )
            except SnapshotRefusedError:
                if attempt:
                    raise
                damaged = True
            else:
                damaged = False
        if not damaged:
            break
        rebuild_if_damaged(template)  # a state that failed its record: build it again
    changes = diff_runtimes(lab.generate(instance), runtime).changes
    if changes:
        raise OperationError(
            f"the copy of {instance.name} runs another runtime than its instance would"
            f" ({'; '.join(str(change) for change in changes[:3])})"
        )
    _set_clock(lab, instance.name)
    return BootedVM(lab, instance.name, instance, template, built)
