"""QMP disk hotplug on the fake: ``blockdev-add``, ``blockdev-del``, ``query-named-block-nodes``,
and the disk half of ``device_add``/``device_del``.

As in QEMU, a ``blockdev-add`` node outlives the device plugged into it (it needs a
``blockdev-del`` after ``DEVICE_DELETED``), while a drive from the command line's
``-drive`` is deleted with its device. Errors use QEMU's wording. Imported on the
first hotplug command only.
"""

from __future__ import annotations

import os

from kvmlab.fake.cmdline.config import BlockDevice
from kvmlab.fake.errors import QmpCommandError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from kvmlab.fake.machine_view import MachineView

__all__ = ["blockdev_add", "blockdev_del", "new_disk", "query_named_block_nodes", "unplugged"]


#: QEMU's block drivers (its schema's ``BlockdevDriver``): any other is refused by name.
_BLOCK_DRIVERS = frozenset(
    {
        "blkdebug",
        "blklogwrites",
        "blkreplay",
        "blkverify",
        "bochs",
        "cloop",
        "compress",
        "copy-before-write",
        "copy-on-read",
        "dmg",
        "file",
        "snapshot-access",
        "ftp",
        "ftps",
        "gluster",
        "host_cdrom",
        "host_device",
        "http",
        "https",
        "io_uring",
        "iscsi",
        "luks",
        "nbd",
        "nfs",
        "null-aio",
        "null-co",
        "nvme",
        "nvme-io_uring",
        "parallels",
        "preallocate",
        "qcow",
        "qcow2",
        "qed",
        "quorum",
        "raw",
        "rbd",
        "replication",
        "ssh",
        "throttle",
        "vdi",
        "vhdx",
        "virtio-blk-vfio-pci",
        "virtio-blk-vhost-user",
        "virtio-blk-vhost-vdpa",
        "vmdk",
        "vpc",
        "vvfat",
    }
)


def _in_use(m: MachineView, name: str) -> BlockDevice | None:
    return next((disk for disk in m.disks if disk.drive == name), None)


def blockdev_add(m: MachineView, arguments: dict[str, object]) -> object:
    driver = str(arguments["driver"])
    name = str(arguments.get("node-name", ""))
    child = arguments.get("file")
    if driver not in _BLOCK_DRIVERS:
        raise QmpCommandError(f"Parameter 'driver' does not accept value '{driver}'")
    if driver != "raw" or not isinstance(child, dict) or child.get("driver") != "file":
        raise QmpCommandError(
            "blockdev-add other than a raw node over a file is not simulated by kvmlab-fake"
        )
    if not name:
        raise QmpCommandError("A top-level node needs a node-name")  # kvmlab always names it
    if name in m.block_nodes:
        raise QmpCommandError(f"Duplicate nodes with node-name='{name}'")
    if name in m.cfg.named_drives:
        raise QmpCommandError(f"node-name={name} is conflicting with a device id")
    path = str(child.get("filename", ""))
    writable = not bool(arguments.get("read-only", False))
    if not os.access(path, os.R_OK | (os.W_OK if writable else 0)):
        raise QmpCommandError(f"Could not open '{path}': No such file or directory")
    m.block_nodes[name] = (path, writable)
    m.log("hotplug", action="blockdev-add", node=name, path=path)
    return {}


def blockdev_del(m: MachineView, arguments: dict[str, object]) -> object:
    name = str(arguments["node-name"])
    if name not in m.block_nodes:
        raise QmpCommandError(f"Failed to find node with node-name='{name}'")
    user = _in_use(m, name)
    if user is not None:
        raise QmpCommandError(f"Node {name} is in use")
    del m.block_nodes[name]
    m.log("hotplug", action="blockdev-del", node=name)
    return {}


def query_named_block_nodes(m: MachineView, arguments: dict[str, object]) -> object:
    """The named nodes: ``blockdev-add``'s by their names, ``-drive``'s as QEMU names them."""
    named = [(name, path, writable) for name, (path, writable) in m.block_nodes.items()]
    legacy = [
        (f"#block{100 + 10 * i}", path, writable)
        for i, (path, writable) in enumerate(m.cfg.named_drives.values())
    ]
    return [
        {"node-name": name, "drv": "raw", "file": path, "ro": not writable}
        for name, path, writable in [*named, *legacy]
    ]


def new_disk(m: MachineView, driver: str, arguments: dict[str, object]) -> BlockDevice:
    """The disk a ``device_add`` of ``driver`` plugs in (its id and slot checked by the caller)."""
    drive = arguments.get("drive")
    if drive is None:
        raise QmpCommandError("drive property not set")
    name = str(drive)
    if name in m.block_nodes:
        path, writable = m.block_nodes[name]
        legacy = False
    elif name in m.cfg.named_drives:
        path, writable = m.cfg.named_drives[name]
        legacy = True
    else:
        raise QmpCommandError(f"Property '{driver}.drive' can't find value '{name}'")
    user = _in_use(m, name)
    if user is not None and legacy:
        raise QmpCommandError(f"Drive '{name}' is already in use by another device")
    if user is not None:  # a node's write permission is taken by its first device
        new = str(arguments.get("id", ""))
        raise QmpCommandError(
            f"Permission conflict on node '{name}': permissions 'write' are both required by"
            f" block device '/machine/peripheral/{user.ident}/virtio-backend' (uses node"
            f" '{name}' as 'root' child) and unshared by block device"
            f" '/machine/peripheral/{new}/virtio-backend' (uses node '{name}' as 'root' child)."
        )
    disk = BlockDevice(path, writable, name, "device_add")
    disk.legacy = legacy
    taken = {other.index for other in m.disks}
    disk.index = next(i for i in range(len(m.disks) + 1) if i not in taken)  # Linux's ida
    return disk


def unplugged(m: MachineView, disk: BlockDevice) -> None:
    """The guest ejected ``disk``: QEMU deletes a ``-drive`` drive with it, not a node."""
    m.disks.remove(disk)
    if disk.legacy and disk.drive is not None:
        m.cfg.named_drives.pop(disk.drive, None)
