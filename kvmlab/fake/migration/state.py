"""What a fake live migration moves, and what both sides must agree on.

Like QEMU, the device set is not migrated: the target builds its devices from its
own command line, and the stream says what the source had. :func:`describe` is that
description (the resolved machine type, the RAM size, one QEMU-style savevm section
per vCPU, NIC and virtio disk); :func:`mismatch` is the target's check of it, with
QEMU's error lines (a section the target lacks fails; a device only the target has
keeps its reset state and passes, as in QEMU). :func:`snapshot` and :func:`restore`
move the simulated guest: whether it has booted (so the target never prints the boot
facts again), its uptime, a pending power-button press, and the command-channel
shell's boot id and written files. Shared by :mod:`kvmlab.fake.migration.outgoing` (source)
and :mod:`kvmlab.fake.migration.incoming` (target); loaded with them only.
"""

from __future__ import annotations

import _socket
import os
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn

    from kvmlab.fake.machine_view import MachineView

__all__ = ["MAGIC", "address", "describe", "die", "machine_type", "mismatch", "restore", "snapshot"]

#: The first key of the stream's header line.
MAGIC = "kvmlab-fake-migration"
_VM_SETUP = (
    ". Make sure that your current VM setup matches your saved VM setup, "
    "including any hotplugged devices"
)


def address(uri: str) -> tuple[int, str | tuple[str, int]]:
    """``unix:PATH`` or ``tcp:HOST:PORT`` as a socket family and address.

    :raise ValueError: for another protocol (the protocol error's text).
    :raise OSError: a port that is not a number (QEMU's resolution error as ``strerror``).
    """
    if uri.startswith("unix:"):
        return _socket.AF_UNIX, uri[5:]
    if uri.startswith("tcp:"):
        host, _, port = uri[4:].partition(",")[0].rpartition(":")
        if not port.isdigit():
            raise OSError(
                0,
                f"address resolution failed for {uri[4:]}: Servname not supported for ai_socktype",
            )
        return _socket.AF_INET, (host.strip("[]") or "0.0.0.0", int(port))
    raise ValueError(f"unknown migration protocol: {uri}")


def die(m: MachineView) -> NoReturn:
    """``KVMLAB_FAKE_MIGRATE_DIE``: killed mid-transfer (``SIGKILL``); files stay behind."""
    m.log("crash", fault="KVMLAB_FAKE_MIGRATE_DIE")
    os.kill(os.getpid(), 9)
    os._exit(137)  # pragma: no cover - not reached


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
    sections: list[list[object]] = [["section", "cpu_common", index] for index in range(m.cfg.cpus)]
    taken = {nic.slot for nic in m.devices if nic.slot is not None}
    taken |= {disk.slot for disk in m.disks if disk.slot is not None}
    first = 2 if "-nodefaults" in m.cfg.argv else 3
    free = (slot for slot in range(first, 32) if slot not in taken)
    for nic in m.devices:
        slot = nic.slot if nic.slot is not None else next(free, 31)
        sections.append(["ramblock", f"0000:00:{slot:02x}.0/{nic.model}.rom", 0])
    for disk in m.disks:  # the live set: hotplugged disks included, at their slots
        slot = disk.slot if disk.slot is not None else next(free, 31)
        sections.append(["section", f"0000:00:{slot:02x}.0/virtio-blk", 0])
    return sections


def describe(m: MachineView) -> dict[str, object]:
    """The stream's header: what the source VM is made of."""
    return {
        MAGIC: 1,
        "machine": machine_type(m),
        "ram": m.cfg.memory,
        "sections": _sections(m),
    }


def mismatch(m: MachineView, header: dict[str, object], devices: bool = False) -> list[str]:
    """QEMU's error lines for a stream this VM cannot load; empty when it can.

    :param devices: check the device state sections (sent last, at the stop-and-copy)
        rather than what comes first (configuration, RAM size, RAM blocks).
    """
    invalid = "load of migration failed: Invalid argument"
    listed = header.get("sections")
    sections = [s for s in (listed if isinstance(listed, list) else []) if isinstance(s, list)]
    mine = _sections(m)
    if devices:
        for kind, name, instance in sections:
            if kind == "section" and [kind, name, instance] not in mine:
                return [
                    f"Unknown savevm section or instance '{name}' {instance}{_VM_SETUP}",
                    invalid,
                ]
        return []
    if header.get(MAGIC) != 1:
        return ["Not a migration stream", invalid]
    local = machine_type(m)
    if header.get("machine") != local:
        received = header.get("machine")
        return [f"Machine type received is '{received}' and local is '{local}'", invalid]
    ram = header.get("ram")
    ramblocks = [s[1] for s in sections if s[0] == "ramblock" and s not in mine]
    resized = isinstance(ram, int) and ram != m.cfg.memory
    if resized or ramblocks:
        first = (
            f"Size mismatch: pc.ram: {ram:#x} != {m.cfg.memory:#x}: Invalid argument"
            if resized
            else f'Unknown ramblock "{ramblocks[0]}", cannot accept migration'
        )
        return [first, "error while loading state for instance 0x0 of device 'ram'", invalid]
    return []


def snapshot(m: MachineView, running: bool) -> dict[str, object]:
    """The guest's state at the end of the transfer (the source is stopped by now)."""
    guest = m.guest
    state: dict[str, object] = {
        "running": running,
        "booted": guest.booted == guest.boots and not guest.needs_boot,
        "uptime": time.monotonic() - guest.booted_at if guest.booted_at is not None else 0.0,
        "pending_powerdown": guest.pending_powerdown,
    }
    shell = guest.current_shell()
    if shell is not None:  # else no command ran: no one has seen a boot id or written a file
        state["boot_id"] = shell.boot_id
        state["files"] = dict(shell.files)
    return state


def restore(m: MachineView, state: dict[str, object]) -> None:
    """Take the source guest's state over: same boot, files and boot id; no new boot."""
    guest = m.guest
    if state.get("booted"):
        guest.needs_boot = False
        guest.booted = guest.boots
        uptime = state.get("uptime")
        guest.booted_at = time.monotonic() - (uptime if isinstance(uptime, float) else 0.0)
    guest.pending_powerdown = bool(state.get("pending_powerdown"))
    boot_id = state.get("boot_id")
    files = state.get("files")
    if isinstance(boot_id, str) and isinstance(files, dict):
        shell = guest.shell()
        shell.boot_id = boot_id
        shell.files = {str(path): str(text) for path, text in files.items()}
