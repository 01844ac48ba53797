"""A command line as a table: each option, its value, and why kvmlab put it there."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from kvmlab.display._markup import (
    _MUTED,
    _box,
    _code,
    _p,
    _table,
    _text_table,
)
from kvmlab.spec.argv import FLAG_OPTIONS

if TYPE_CHECKING:
    pass

__all__ = ["OPTION_WHY", "ArgvRow", "argv_html", "argv_rows", "argv_text"]

# --------------------------------------------------------------------------- options

#: Why each option is in a kvmlab command line, in a few words. ``host-only:`` marks
#: what the guest never sees (sockets, pidfile, daemon flags): a change there is not a
#: change of the virtual machine.
OPTION_WHY: Final[Mapping[str, str]] = {
    "-name": "instance name (process title, QMP identity)",
    "-m": "guest memory (MiB)",
    "-smp": "virtual CPUs (and sockets/cores/threads)",
    "-pidfile": "host-only: where QEMU writes its pid",
    "-balloon": "memory balloon device (the pre-1.x spelling)",
    "-daemonize": "host-only: detach once ready, so start returns with a live VM",
    "-no-acpi": "no ACPI (hvparams.acpi=False): stop cannot power it down gently",
    "-no-reboot": "exit instead of rebooting (reboot_behavior=exit)",
    "-machine": "machine type, pinned to a version so a QEMU upgrade keeps the hardware"
    " (accel=: the probed accelerator)",
    "-M": "machine type (QEMU without -machine)",
    "-enable-kvm": "use KVM (QEMU without -machine accel=)",
    "-no-kvm": "use TCG (QEMU without -machine accel=)",
    "-boot": "boot device (hvparams.boot_order)",
    "-drive": "a disk or CD/floppy image, in order (interface, cache, read-only)",
    "-kernel": "kernel booted directly (hvparams.kernel_path)",
    "-initrd": "initial ramdisk (hvparams.initrd_path)",
    "-append": "kernel command line: root_path, kernel_args, serial console speed",
    "-mem-path": "guest memory backed by files there (hugepages)",
    "-mem-prealloc": "allocate all guest memory at start",
    "-monitor": "host-only: human monitor socket",
    "-chardev": "host-only: a socket behind a serial port",
    "-serial": "a serial port of the guest",
    "-usb": "USB controller (for the tablet or mouse)",
    "-usbdevice": "USB device (the pre-1.x spelling)",
    "-display": "no display: VNC is off (no vnc_bind_address)",
    "-nographic": "no display (QEMU without -display)",
    "-vnc": "VNC console; 'none' without a network_port (Ganeti's behaviour)",
    "-object": "TLS credentials the VNC server uses",
    "-rtc": "guest clock in local time (use_localtime)",
    "-localtime": "guest clock in local time (the pre-1.x spelling)",
    "-run-with": "host-only: chroot and user QEMU drops into after start",
    "-chroot": "host-only: directory QEMU chroots into after start",
    "-runas": "host-only: user QEMU switches to after start",
    "-k": "VNC keyboard layout",
    "-cpu": "CPU model (hvparams.cpu_type)",
    "-vga": "graphics card (hvparams.vga)",
    "-soundhw": "sound card (the pre-4.x spelling)",
    "-uuid": "SMBIOS system UUID (derived from the name unless given)",
    # Start-time options: never in a saved argv, only in a live one.
    "-netdev": "a NIC's host side (added at start time, never saved)",
    "-net": "a NIC (added at start time, never saved)",
    "-nic": "a NIC (added at start time, never saved)",
    "-qmp": "host-only: QMP socket (added at start time)",
    "-S": "start with the CPUs paused",
    "-incoming": "wait for a machine state instead of booting: a migration's stream (unix:,"
    " tcp:) or a saved state or snapshot (defer: kvmlab feeds it the file over QMP);"
    " added at start time, never saved",
}

#: ``-device`` explanations by driver.
_DEVICE_WHY: Final[Mapping[str, str]] = {
    "virtio-balloon": "memory balloon: lets the host reclaim guest memory",
    "virtio-balloon-pci": "memory balloon: lets the host reclaim guest memory",
    "usb-tablet": "absolute pointer, so the VNC cursor follows the mouse",
    "usb-mouse": "USB mouse (hvparams.usb_mouse)",
    "virtio-net-pci": "a NIC's guest side (added at start time, never saved)",
    "e1000": "a NIC's guest side (added at start time, never saved)",
    "rtl8139": "a NIC's guest side (added at start time, never saved)",
}


@dataclass(frozen=True, slots=True)
class ArgvRow:
    """One option of a command line, its value and why it is there.

    :ivar origin: ``"binary"``, ``"generated"``, ``"kvm_extra"`` (passed through from
        hvparams) or ``"start"`` (appended at start time, only in a live argv).
    """

    option: str
    value: str | None
    why: str
    origin: str = "generated"

    @property
    def host_only(self) -> bool:
        """True when the guest cannot see this option (sockets, pidfile, daemon flags)."""
        return self.why.startswith("host-only") or self.origin == "binary"


def _split_options(argv: Sequence[str]) -> list[tuple[int, str, str | None]]:
    """``(index, option, value)`` for every option after ``argv[0]``.

    QEMU options take at most one value; the flags in :data:`kvmlab.spec.argv.FLAG_OPTIONS` take
    none, an unknown option takes the next word unless that word is itself an option.
    """
    out: list[tuple[int, str, str | None]] = []
    index = 1
    while index < len(argv):
        word = argv[index]
        following = argv[index + 1] if index + 1 < len(argv) else None
        takes_value = (
            word.startswith("-")
            and word not in FLAG_OPTIONS
            and following is not None
            and (word in OPTION_WHY or not following.startswith("-"))
        )
        if takes_value:
            out.append((index, word, following))
            index += 2
        else:
            out.append((index, word, None))
            index += 1
    return out


#: The guest's serial ports in the order QEMU numbers them: the console, then the channel
#: kvmlab runs commands over (kvmlab.channels.guest_channel).
_SERIAL_PORTS: Final = (
    "the guest's first serial port (ttyS0): the console",
    "the guest's second serial port (ttyS1): the guest command channel",
)
#: ``-chardev`` by its ``id=``: which serial port the socket is behind.
_CHARDEV_WHY: Final[Mapping[str, str]] = {
    "serial0": "host-only: the console's socket (ttyS0)",
    "cmd0": "host-only: the guest command channel's socket (ttyS1)",
}


def _chardev_why(value: str) -> str:
    keys = dict(part.partition("=")[::2] for part in value.split(",")[1:])
    why = _CHARDEV_WHY.get(keys.get("id", ""), OPTION_WHY["-chardev"])
    if "logfile" in keys:
        why += ", logged to a file for this boot only"
    return why


def _why(option: str, value: str | None, serial: int = 0) -> str:
    """Why ``option value`` is there; ``serial`` counts the ``-serial`` options before it."""
    if option == "-device" and value is not None:
        driver = value.split(",", 1)[0]
        return _DEVICE_WHY.get(driver, f"device {driver}")
    if option == "-chardev" and value is not None:
        return _chardev_why(value)
    if option == "-serial" and value is not None:
        if value == "none":
            return "no serial port (hvparams.serial_console=False)"
        return _SERIAL_PORTS[serial] if serial < len(_SERIAL_PORTS) else OPTION_WHY[option]
    if not option.startswith("-"):
        return "a word without an option (passed through)"
    return OPTION_WHY.get(option, "not a kvmlab option")


def argv_rows(
    argv: Sequence[str], *, saved: Sequence[str] = (), extra: Sequence[str] = ()
) -> list[ArgvRow]:
    """Split a command line into explained rows.

    :param saved: the saved argv this one was executed from: words past it are marked
        ``start`` (the executor appended them), which is how invariant 7 reads.
    :param extra: the trailing words that came from ``hvparams.kvm_extra``.
    """
    if not argv:
        return []
    rows = [ArgvRow("(binary)", argv[0], "the program that runs the VM", "binary")]
    saved_len = len(saved) if saved and tuple(argv[: len(saved)]) == tuple(saved) else len(argv)
    extra_start = saved_len - len(extra) if extra else saved_len
    if extra and tuple(argv[extra_start:saved_len]) != tuple(extra):
        extra_start = saved_len
    serial = 0
    for index, option, value in _split_options(argv):
        origin = "generated"
        why = _why(option, value, serial)
        serial += option == "-serial"
        if index >= saved_len:
            origin = "start"
        elif index >= extra_start:
            origin = "kvm_extra"
            why = f"from hvparams.kvm_extra: {why}"
        rows.append(ArgvRow(option, value, why, origin))
    return rows


# --------------------------------------------------------------------------- runtime / argv


_ORIGIN_STYLE = {"start": "background:#fff8c5", "kvm_extra": "background:#ddf4ff"}
#: Said in words, not by a row colour: JupyterLab stripes table rows grey itself.
HOST_ONLY_LEGEND: Final = "options in grey text are host-only: the guest never sees them"


def argv_html(
    argv: Sequence[str], *, saved: Sequence[str] = (), extra: Sequence[str] = (), title: str = ""
) -> str:
    """A command line as a table (option, value, why); start-time words highlighted.

    Useful for a *live* argv (``lab.info(name).argv``, read from ``/proc``): pass the
    saved argv as ``saved`` and the NIC and QMP arguments the executor appended stand out.
    """
    rows = argv_rows(argv, saved=saved, extra=extra)
    styles = []
    cells = []
    for row in rows:
        style = _ORIGIN_STYLE.get(row.origin, "")
        if row.host_only and not style:
            style = _MUTED
        styles.append(style)
        why = row.why if row.origin != "start" else f"start time: {row.why}"
        cells.append((_code(row.option, breakable=False), _code_or_none(row.value), why))
    table = _table(("option", "value", "why"), cells, row_styles=styles)
    legend = []
    if any(row.origin == "start" for row in rows):
        legend.append("yellow rows were appended at start time (not saved)")
    if any(row.origin == "kvm_extra" for row in rows):
        legend.append("blue rows come from hvparams.kvm_extra")
    legend.append(HOST_ONLY_LEGEND)
    return _box(
        title or "Command line",
        table,
        _p("; ".join(legend) + ".", _MUTED + ";font-size:85%"),
        subtitle=f"{len(argv)} words",
    )


def _code_or_none(value: str | None) -> object:
    return None if value is None else _code(value)


def argv_text(argv: Sequence[str], *, saved: Sequence[str] = (), extra: Sequence[str] = ()) -> str:
    """Plain-text counterpart of :func:`argv_html`: one option a line, with why."""
    rows = argv_rows(argv, saved=saved, extra=extra)
    table = [
        (
            ("+ " if row.origin == "start" else "") + row.option,
            row.value,
            row.why,
        )
        for row in rows
    ]
    return _text_table(("option", "value", "why"), table)
