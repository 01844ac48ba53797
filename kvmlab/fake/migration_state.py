"""What a fake live migration moves, and what both sides must agree on.

Like QEMU, the device set is not migrated: the target builds its devices from its
own command line, and the stream says what the source had. :func:`describe` is that
description (the resolved machine type, the RAM size, one QEMU-style savevm section
per vCPU, NIC and virtio disk); :func:`mismatch` is the target's check of it, with
QEMU's error lines (a section the target lacks fails; a device only the target has
keeps its reset state and passes, as in QEMU). :func:`snapshot` and :func:`restore`
move the simulated guest: whether it has booted (so the target never prints the boot
facts again), its uptime, a pending power-button press, and the command-channel
shell's boot id and written files. Shared by :mod:`kvmlab.fake.migration` (source)
and :mod:`kvmlab.fake.incoming` (target); loaded with them only.
"""

from __future__ import annotations

import _socket
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from kvmlab.fake.machine_view import MachineView

__all__ = ["MAGIC", "address", "describe", "machine_type", "mismatch", "restore", "snapshot"]

#: The first key of the stream's header line.
MAGIC = "kvmlab-fake-migration"
_VM_SETUP = (
    ". Make sure that your current VM setup matches your saved VM setup, "
    "including any hotplugged devices"
)


def address(uri: str) -> tuple[int, str | tuple[str, int]]:
    """``unix:PATH`` or ``tcp:HOST:PORT`` as a socket family and address.

    :raise ValueError: for another protocol or a bad port.
    """
    if uri.startswith("unix:"):
        return _socket.AF_UNIX, uri[5:]
    if uri.startswith("tcp:"):
        host, _, port = uri[4:].rpartition(":")
        return _socket.AF_INET, (host.strip("[]") or "0.0.0.0", int(port.split(",")[0]))
    raise ValueError(uri)


def machine_type(m: MachineView) -> str:
    """``-machine``'s type with its alias resolved (``pc`` -> ``pc-i440fx-7.2``)."""
    wanted = m.cfg.machine
    for line in m.profile.text("machine").splitlines():
        name = line.split(" ", 1)[0]
        if wanted is None and line.endswith("(default)"):
            return name
        if name == wanted and "(alias of " in line:
            return line.rsplit("(alias of ", 1)[1].rstrip(")")
    return wanted or "pc-i440fx-" + ".".join(str(v) for v in m.profile.version[:2])


def _sections(m: MachineView) -> list[list[object]]:
    """What the devices put in the stream, QEMU-style: ``[kind, name, instance]``.

    ``kind`` is ``section`` (a device's state) or ``ramblock`` (a NIC's option ROM,
    the first thing a target misses when a NIC is only on the source). PCI slots
    count from 2 under ``-nodefaults`` (no VGA), else from 3, as QEMU numbers them.
    """
    sections: list[list[object]] = [["section", "cpu", index] for index in range(m.cfg.cpus)]
    taken = {nic.slot for nic in m.devices if nic.slot is not None}
    first = 2 if "-nodefaults" in m.cfg.argv else 3
    free = (slot for slot in range(first, 32) if slot not in taken)
    for nic in m.devices:
        slot = nic.slot if nic.slot is not None else next(free, 31)
        sections.append(["ramblock", f"0000:00:{slot:02x}.0/{nic.model}.rom", 0])
    for _disk in m.cfg.virtio_disks:
        sections.append(["section", f"0000:00:{next(free, 31):02x}.0/virtio-blk", 0])
    return sections


def describe(m: MachineView) -> dict[str, object]:
    """The stream's header: what the source VM is made of."""
    return {
        MAGIC: 1,
        "machine": machine_type(m),
        "ram": m.cfg.memory,
        "sections": _sections(m),
    }


def mismatch(m: MachineView, header: dict[str, object]) -> list[str]:
    """QEMU's error lines for a stream this VM cannot load; empty when it can."""
    invalid = "load of migration failed: Invalid argument"
    if header.get(MAGIC) != 1:
        return ["Not a migration stream", invalid]
    local = machine_type(m)
    if header.get("machine") != local:
        received = header.get("machine")
        return [f"Machine type received is '{received}' and local is '{local}'", invalid]
    ram = header.get("ram")
    if ram != m.cfg.memory and isinstance(ram, int):
        return [
            f"Size mismatch: pc.ram: {ram:#x} != {m.cfg.memory:#x}: Invalid argument",
            "error while loading state for instance 0x0 of device 'ram'",
            invalid,
        ]
    mine = _sections(m)
    sections = header.get("sections")
    listed = sections if isinstance(sections, list) else []
    # The RAM section (with the NICs' ROM blocks) comes first in the stream.
    for section in sorted(listed, key=lambda entry: entry[0] != "ramblock"):
        if section in mine:
            continue
        kind, name, instance = section
        if kind == "ramblock":
            return [
                f'Unknown ramblock "{name}", cannot accept migration',
                "error while loading state for instance 0x0 of device 'ram'",
                invalid,
            ]
        return [f"Unknown savevm section or instance '{name}' {instance}{_VM_SETUP}", invalid]
    return []


def snapshot(m: MachineView, running: bool) -> dict[str, object]:
    """The guest's state at the end of the transfer (the source is stopped by now)."""
    guest = m.guest
    shell = guest.shell()
    return {
        "running": running,
        "booted": guest.booted == guest.boots and not guest.needs_boot,
        "uptime": time.monotonic() - guest.booted_at if guest.booted_at is not None else 0.0,
        "pending_powerdown": guest.pending_powerdown,
        "boot_id": shell.boot_id,
        "files": dict(shell.files),
    }


def restore(m: MachineView, state: dict[str, object]) -> None:
    """Take the source guest's state over: same boot, files and boot id; no new boot."""
    guest = m.guest
    if state.get("booted"):
        guest.needs_boot = False
        guest.booted = guest.boots
        uptime = state.get("uptime")
        guest.booted_at = time.monotonic() - (uptime if isinstance(uptime, float) else 0.0)
    guest.pending_powerdown = bool(state.get("pending_powerdown"))
    shell = guest.shell()
    boot_id = state.get("boot_id")
    if isinstance(boot_id, str):
        shell.boot_id = boot_id
    files = state.get("files")
    if isinstance(files, dict):
        shell.files = {str(path): str(text) for path, text in files.items()}
