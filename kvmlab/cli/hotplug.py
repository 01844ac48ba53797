"""The hotplug commands of the ``kvmlab`` command line: attach-nic, detach-nic,
attach-disk, detach-disk (docs/hotplug.md).

Registered by :func:`kvmlab.cli.app.build_parser` through :func:`add_commands`. A NIC or
disk given on the command line is validated as the instance file's are: a bad value is
one line naming the field, exit 2, before the lab is touched.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from kvmlab.lifecycle.hypervisor import Hypervisor

__all__ = ["add_commands"]

EXIT_OK = 0
#: A pydantic model (unbound here: importing pydantic would slow every command down).
_Model = TypeVar("_Model")

Command = Callable[[str, Callable[[argparse.Namespace], int], str], Any]


def add_commands(command: Command) -> None:
    """Add the hotplug commands with ``command(name, handler, help)`` (the parser's own
    helper, which adds the global options)."""
    p = command(
        "attach-nic", cmd_attach_nic, "hotplug a NIC into a running instance and keep it saved"
    )
    p.add_argument("name")
    p.add_argument("--mac", required=True, help="the new NIC's MAC (xx:xx:xx:xx:xx:xx)")
    p.add_argument("--mode", default="user", help="user (default), or bridged or routed (as root)")
    p.add_argument("--link", default="", help="bridge or routing table (bridged, routed)")

    p = command(
        "detach-nic", cmd_detach_nic, "unplug a NIC from a running instance and keep it saved"
    )
    p.add_argument("name")
    p.add_argument("mac")

    p = command(
        "attach-disk", cmd_attach_disk, "hotplug a disk into a running instance and keep it saved"
    )
    p.add_argument("name")
    p.add_argument("path", help="the disk image or block device")
    p.add_argument("--mode", default="rw", choices=("ro", "rw"), help="read-only or read-write")

    p = command(
        "detach-disk", cmd_detach_disk, "unplug a disk from a running instance and keep it saved"
    )
    p.add_argument("name")
    p.add_argument("path")


def _lab(args: argparse.Namespace) -> Hypervisor:
    from kvmlab.lifecycle.hypervisor import Hypervisor  # noqa: PLC0415

    return Hypervisor(args.state_dir, backend=args.backend)


def _device_model(model: type[_Model], what: str, **fields: Any) -> _Model:
    """A NIC or disk built from the options, or exit 2 naming the field and the value."""
    from pydantic import ValidationError  # noqa: PLC0415

    from kvmlab.errors import InvalidInputError  # noqa: PLC0415
    from kvmlab.spec.instance import format_validation_error  # noqa: PLC0415

    try:
        return model(**fields)
    except ValidationError as err:
        raise InvalidInputError(f"invalid {what}: {format_validation_error(err)}") from None


def cmd_attach_nic(args: argparse.Namespace) -> int:
    from kvmlab.spec.instance import Nic  # noqa: PLC0415

    nic = _device_model(Nic, "NIC", mac=args.mac, mode=args.mode, link=args.link)
    runtime = _lab(args).attach_nic(args.name, nic)
    slot = runtime.nic_slots[-1]
    print(f"attached NIC {nic.mac} to {args.name} at PCI slot {slot:#04x} (saved)")
    return EXIT_OK


def cmd_detach_nic(args: argparse.Namespace) -> int:
    _lab(args).detach_nic(args.name, args.mac)
    print(f"detached NIC {args.mac.lower()} from {args.name} (saved)")
    return EXIT_OK


def _disk_path(path: str) -> str:
    """An image path as the runtime keeps it: absolute (a relative one is the caller's),
    normal (``..``, a trailing slash), and never empty."""
    from kvmlab.spec.inputs import input_path  # noqa: PLC0415

    return input_path("disk path", path)


def cmd_attach_disk(args: argparse.Namespace) -> int:
    from kvmlab.spec.instance import Disk  # noqa: PLC0415

    disk = _device_model(Disk, "disk", path=_disk_path(args.path), mode=args.mode)
    runtime = _lab(args).attach_disk(args.name, disk)
    slot = runtime.disk_slots[-1]
    print(f"attached disk {disk.path} to {args.name} at PCI slot {slot:#04x} (saved)")
    return EXIT_OK


def cmd_detach_disk(args: argparse.Namespace) -> int:
    path = _disk_path(args.path)
    _lab(args).detach_disk(args.name, path)
    print(f"detached disk {path} from {args.name} (saved)")
    return EXIT_OK
