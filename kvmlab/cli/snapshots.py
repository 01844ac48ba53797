"""The snapshot commands of the ``kvmlab`` command line: snapshot, revert, save, restore,
delete-snapshot, snapshots (docs/snapshots.md).

Registered by :func:`kvmlab.cli.app.build_parser` through :func:`add_commands`; every
refusal is one line and exit 2, a failure exit 1, as for every command.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kvmlab.host.inventory import InstanceInfo
    from kvmlab.lifecycle.hypervisor import Hypervisor
    from kvmlab.lifecycle.snapshots.record import SnapshotInfo

__all__ = ["add_commands", "describe_state", "print_states"]

EXIT_OK = 0

Command = Callable[[str, Callable[[argparse.Namespace], int], str], Any]


def add_commands(command: Command, seconds: Callable[[str], float]) -> None:
    """Add the snapshot commands with ``command(name, handler, help)`` (the parser's own
    helper, which adds the global options); ``seconds`` checks a ``--timeout``."""
    p = command("snapshot", cmd_snapshot, "write a running instance's machine state as TAG")
    p.add_argument("name")
    p.add_argument("tag", help="the snapshot's name (letters, digits, '.', '_', '-')")
    p.add_argument("--timeout", type=seconds, help="seconds the write may take (default 300)")
    p.add_argument("--json", action="store_true", help="print the snapshot as a JSON object")

    p = command("revert", cmd_revert, "replace an instance's VM by snapshot TAG (the tag stays)")
    p.add_argument("name")
    p.add_argument("tag")
    p.add_argument("--timeout", type=seconds, help="seconds the load may take (default 300)")

    p = command("save", cmd_save, "write a running instance's machine state and stop it")
    p.add_argument("name")
    p.add_argument("--timeout", type=seconds, help="seconds the write may take (default 300)")
    p.add_argument("--json", action="store_true", help="print the state as a JSON object")

    p = command("restore", cmd_restore, "continue a saved instance from its saved state")
    p.add_argument("name")
    p.add_argument("--timeout", type=seconds, help="seconds the load may take (default 300)")

    p = command("delete-snapshot", cmd_delete_snapshot, "remove snapshot TAG of an instance")
    p.add_argument("name")
    p.add_argument("tag")

    p = command("snapshots", cmd_snapshots, "list an instance's snapshots (oldest first)")
    p.add_argument("name")
    p.add_argument("--json", action="store_true", help="print a JSON list")


def _lab(args: argparse.Namespace) -> Hypervisor:
    from kvmlab.lifecycle.hypervisor import Hypervisor  # noqa: PLC0415

    return Hypervisor(args.state_dir, backend=args.backend)


def describe_state(state: dict[str, Any]) -> str:
    """One line for a state as ``info`` lists it (``base 96.0 MB 2026-... QEMU 7.2.0 ...``)."""
    tag = f"{state['tag']} " if "tag" in state else ""
    how = "running" if state.get("running") else "paused"
    return (
        f"{tag}{state['size'] / 1e6:.1f} MB {state['created']} QEMU {state['qemu_version']}"
        f" {state['machine']} ({how})"
    )


def print_states(info: InstanceInfo) -> None:
    """The ``info`` lines of an interrupted operation, the saved state and the snapshots."""
    pending = info.extra.get("snapshot_pending")
    if pending is not None:
        # Labelled by its operation: "snapshot:" alone is the label of a snapshot's line.
        op = str(pending.get("op", "snapshot"))
        print(
            f"{op}: PENDING {json.dumps(pending)}: it was interrupted; the next command"
            " on the instance finishes or undoes it"
        )
    saved = info.extra.get("saved")
    if saved:
        print(f"saved:   {describe_state(saved)}: kvmlab restore {info.name} continues it")
    for state in info.extra.get("snapshots") or ():
        print(f"snapshot: {describe_state(state)}")


def _taken(info: SnapshotInfo, args: argparse.Namespace, what: str) -> int:
    if args.json:
        print(json.dumps(info.to_dict(), indent=2))
        return EXIT_OK
    seconds = (info.elapsed_ms or 0) / 1000
    print(
        f"{what}: {info.size / 1e6:.1f} MB in {seconds:.2f} s (QEMU {info.qemu_version},"
        f" {info.machine}): {info.state_file}"
    )
    return EXIT_OK


def cmd_snapshot(args: argparse.Namespace) -> int:
    info = _lab(args).snapshot(args.name, args.tag, timeout=args.timeout)
    return _taken(info, args, f"snapshot {args.tag!r} of {args.name}")


def cmd_save(args: argparse.Namespace) -> int:
    info = _lab(args).save(args.name, timeout=args.timeout)
    return _taken(info, args, f"saved {args.name}")


def cmd_revert(args: argparse.Namespace) -> int:
    info = _lab(args).revert(args.name, args.tag, timeout=args.timeout)
    print(f"reverted {info.name} to snapshot {args.tag!r} (pid {info.pid})")
    return EXIT_OK


def cmd_restore(args: argparse.Namespace) -> int:
    info = _lab(args).restore(args.name, timeout=args.timeout)
    print(f"restored {info.name} (pid {info.pid})")
    return EXIT_OK


def cmd_delete_snapshot(args: argparse.Namespace) -> int:
    _lab(args).delete_snapshot(args.name, args.tag)
    print(f"deleted snapshot {args.tag!r} of {args.name}")
    return EXIT_OK


def cmd_snapshots(args: argparse.Namespace) -> int:
    infos = _lab(args).snapshots(args.name)
    if args.json:
        print(json.dumps([info.to_dict() for info in infos], indent=2))
        return EXIT_OK
    if not infos:
        print(f"{args.name} has no snapshots")
    for info in infos:
        print(describe_state(info.summary()))
    return EXIT_OK
