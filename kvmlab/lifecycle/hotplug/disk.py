"""Disk hotplug kept by the saved runtime: the virtio-disk twin of NIC hotplug.

:func:`attach_disk` and :func:`detach_disk` run on a running VM under the instance
lock (the caller's hotplug guard checks both, as for NICs) and follow
:mod:`kvmlab.lifecycle.hotplug.nic`'s steps:

1. refuse, with :class:`~kvmlab.errors.HotplugRefusedError` (exit 2) and nothing
   changed, a path already attached or not attached, a missing image,
   q35 without root ports or no ACPI, disks that are not virtio or have no slots of their own (a
   format 1 or 2 runtime), a QEMU without the commands;
2. write the intent file;
3. ``blockdev-add`` (a raw node over the file) + ``device_add virtio-blk-pci``; a
   failed ``device_add`` is undone (``blockdev-del``), the runtime untouched.
   Detach: ``device_del``, wait for ``DEVICE_DELETED``, then ``blockdev-del`` when
   the node was hotplugged (a ``-drive`` drive, the disks a VM was started or soft
   rebooted with, is deleted by QEMU with its device);
4. rewrite the runtime with the disk's args added to or removed from the saved argv:
   the args :func:`kvmlab.runtime.generator.disk_args` writes, the very function generation
   uses, so the next soft reboot starts the disk as a fresh start would;
5. remove the intent file.

Design, slots and what each QEMU needed: docs/hotplug.md.
"""

from __future__ import annotations

import logging
import os
import stat
from typing import Any

from kvmlab.errors import HotplugRefusedError, QmpError
from kvmlab.host.store import save_runtime
from kvmlab.lifecycle.hotplug.intent import HotplugIntent, HotplugOp
from kvmlab.lifecycle.hotplug.nic import (
    UNPLUG_TIMEOUT,
    check_commands,
    check_machine,
    session,
)
from kvmlab.runtime.generator import disk_args, disk_ids, has_disk_slots
from kvmlab.runtime.ports import device_placement, has_root_ports
from kvmlab.runtime.saved import KVMRuntime, free_disk_slot
from kvmlab.spec.capabilities import QemuCapabilities
from kvmlab.spec.instance import Disk, DiskMode, HvParams
from kvmlab.spec.layout import StateLayout

__all__ = ["DISK_COMMANDS", "attach_disk", "detach_disk"]

log = logging.getLogger("kvmlab")

#: QMP commands disk hotplug needs (QEMU 7.2 and 10.0 both have them).
DISK_COMMANDS = (
    "blockdev-add",
    "blockdev-del",
    "device_add",
    "device_del",
    "query-named-block-nodes",
)


def _same_path(a: str, b: str) -> bool:
    """Two spellings of one image: equal once normalised, or the same file."""
    if os.path.normpath(a) == os.path.normpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _check_image(disk: Disk) -> None:
    """The image must exist, be a file or a block device, and allow the disk's mode."""
    path = disk.path
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise HotplugRefusedError(f"disk image {path} does not exist") from None
    except OSError as err:
        raise HotplugRefusedError(f"disk image {path}: {err.strerror}") from None
    if not (stat.S_ISREG(info.st_mode) or stat.S_ISBLK(info.st_mode)):
        raise HotplugRefusedError(f"disk image {path} is not a file or a block device")
    wanted = os.R_OK | (os.W_OK if disk.mode is DiskMode.RW else 0)
    if not os.access(path, wanted):
        raise HotplugRefusedError(
            f"disk image {path} is not {'writable' if wanted & os.W_OK else 'readable'}"
        )


def _check_disks(runtime: KVMRuntime, caps: QemuCapabilities) -> None:
    if not (caps.has_device and caps.has_qmp):
        raise HotplugRefusedError(
            f"{runtime.binary} (QEMU {'.'.join(map(str, caps.version))}) has no"
            " -device/QMP: disk hotplug needs them"
        )
    if not has_disk_slots(runtime.hvparams, caps):
        raise HotplugRefusedError(
            f"{runtime.name} has disk_type {runtime.hvparams.disk_type!r}: only virtio"
            " (paravirtual) disks sit on a PCI slot of their own and can be hotplugged"
        )
    if runtime.disks and not runtime.disk_slots:
        raise HotplugRefusedError(
            f"{runtime.name} was started by an older kvmlab whose disks have no PCI slot"
            " of their own: restart it (stop, start) before hotplugging disks"
        )


def _blockdev(disk: Disk, node: str, hv: HvParams) -> dict[str, Any]:
    """``blockdev-add``'s arguments: what the generated ``-drive`` of the disk opens."""
    file: dict[str, Any] = {"driver": "file", "filename": disk.path}
    if hv.disk_aio != "threads":
        file["aio"] = hv.disk_aio
    args: dict[str, Any] = {
        "driver": "raw",
        "node-name": node,
        "read-only": disk.mode is DiskMode.RO,
        "file": file,
    }
    if hv.disk_cache == "none":  # -drive cache=none: O_DIRECT, flushes kept
        args["cache"] = {"direct": True, "no-flush": False}
    return args


def _device(node: str, device: str, slot: int, hv: HvParams, *, root_ports: bool) -> dict[str, Any]:
    props: dict[str, Any] = {
        "driver": "virtio-blk-pci",
        "drive": node,
        "id": device,
        **device_placement(slot, root_ports),
    }
    if hv.disk_cache == "writethrough":  # -drive cache=writethrough: no volatile cache
        props["write-cache"] = "off"
    return props


def _find(argv: tuple[str, ...], words: tuple[str, ...]) -> int | None:
    """Where ``words`` stand in ``argv`` as a whole, or ``None``."""
    width = len(words)
    return next((i for i in range(len(argv) - width + 1) if argv[i : i + width] == words), None)


def _blocks(runtime: KVMRuntime, caps: QemuCapabilities) -> list[tuple[int, tuple[str, ...]]]:
    """Where each disk's args stand in the saved argv, and the args themselves.

    :raise HotplugRefusedError: a disk whose args are not in the argv (an edited runtime).
    """
    found = []
    for index, (disk, slot) in enumerate(zip(runtime.disks, runtime.disk_slots, strict=True)):
        words = disk_args(
            disk, slot, runtime.hvparams, caps, index, root_ports=has_root_ports(runtime.argv)
        )
        at = _find(runtime.argv, words)
        if at is None:
            raise HotplugRefusedError(
                f"the saved argv of {runtime.name} has no args for disk {disk.path} at slot"
                f" {slot:#04x} (was it edited?): restart it before hotplugging disks"
            )
        found.append((at, words))
    return found


def _saved(
    runtime: KVMRuntime, argv: tuple[str, ...], disks: tuple[Disk, ...], slots: tuple[int, ...]
) -> KVMRuntime:
    # A copy: every field not named here (NICs, their slots...) stays as it is.
    return runtime.model_copy(update={"argv": argv, "disks": disks, "disk_slots": slots})


def attach_disk(
    layout: StateLayout, runtime: KVMRuntime, disk: Disk, caps: QemuCapabilities
) -> KVMRuntime:
    """Plug ``disk`` into the running VM and save the runtime with it; the caller holds the
    lock and has checked that the VM runs.

    :return: the runtime saved.
    :raise HotplugRefusedError: refused, nothing changed.
    :raise QmpError: QEMU refused the disk (its block node is removed again); the
        runtime is untouched.
    """
    name = runtime.name
    check_machine(runtime)
    if any(_same_path(existing.path, disk.path) for existing in runtime.disks):
        raise HotplugRefusedError(f"{name} already has disk {disk.path}")
    _check_image(disk)
    _check_disks(runtime, caps)
    slot = free_disk_slot(runtime.disk_slots)
    if slot is None:
        raise HotplugRefusedError(f"{name} has no free disk slot (all 8 are used)")
    hv = runtime.hvparams
    root_ports = has_root_ports(runtime.argv)
    words = disk_args(disk, slot, hv, caps, len(runtime.disks), root_ports=root_ports)
    blocks = _blocks(runtime, caps)
    # After the last disk's args (where generation puts disks), or at the end.
    at = max((start + len(args) for start, args in blocks), default=len(runtime.argv))
    argv = (*runtime.argv[:at], *words, *runtime.argv[at:])
    node, device = disk_ids(slot)

    with session(layout, name) as qmp:
        check_commands(qmp, name, DISK_COMMANDS, "disk hotplug")
        intent = layout.hotplug_intent(name)
        HotplugIntent(op=HotplugOp.ATTACH_DISK, path=disk.path, slot=slot).save(intent)
        try:
            qmp.execute("blockdev-add", _blockdev(disk, node, hv))
            try:
                qmp.execute("device_add", _device(node, device, slot, hv, root_ports=root_ports))
            except QmpError:
                qmp.execute("blockdev-del", {"node-name": node})
                raise
        except QmpError:
            intent.unlink(missing_ok=True)
            raise
        saved = _saved(runtime, argv, (*runtime.disks, disk), (*runtime.disk_slots, slot))
        save_runtime(layout.runtime_file(name), saved)
        intent.unlink(missing_ok=True)
    log.info("attached disk %s to %s at slot %#04x", disk.path, name, slot)
    return saved


def detach_disk(
    layout: StateLayout, runtime: KVMRuntime, path: str, caps: QemuCapabilities
) -> KVMRuntime:
    """Unplug the disk ``path`` and save the runtime without it; the caller holds the
    lock and has checked that the VM runs.

    :raise HotplugRefusedError: no such disk; nothing changed.
    :raise QmpError: QEMU refused, or the guest did not eject the disk in time (the
        intent file stays: ``info`` reports it).
    """
    name = runtime.name
    check_machine(runtime)
    index = next((i for i, disk in enumerate(runtime.disks) if _same_path(disk.path, path)), None)
    if index is None:
        raise HotplugRefusedError(f"{name} has no disk {path}")
    _check_disks(runtime, caps)
    disk = runtime.disks[index]
    slot = runtime.disk_slots[index]
    start, words = _blocks(runtime, caps)[index]
    argv = (*runtime.argv[:start], *runtime.argv[start + len(words) :])
    node, device = disk_ids(slot)
    with session(layout, name) as qmp:
        check_commands(qmp, name, DISK_COMMANDS, "disk hotplug")
        intent = layout.hotplug_intent(name)
        HotplugIntent(op=HotplugOp.DETACH_DISK, path=disk.path, slot=slot).save(intent)
        qmp.execute_and_wait(
            "device_del", {"id": device}, "DEVICE_DELETED", {"device": device}, UNPLUG_TIMEOUT
        )
        # A hotplugged node outlives its device; a -drive drive went with it.
        nodes = {entry.get("node-name") for entry in qmp.execute("query-named-block-nodes")}
        if node in nodes:
            qmp.execute("blockdev-del", {"node-name": node})
        keep = [i for i in range(len(runtime.disks)) if i != index]
        saved = _saved(
            runtime,
            argv,
            tuple(runtime.disks[i] for i in keep),
            tuple(runtime.disk_slots[i] for i in keep),
        )
        save_runtime(layout.runtime_file(name), saved)
        intent.unlink(missing_ok=True)
    log.info("detached disk %s from %s (slot %#04x)", disk.path, name, slot)
    return saved
