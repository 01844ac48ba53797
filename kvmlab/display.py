"""How kvmlab's objects look in a notebook: HTML and plain-text renderings.

Notebooks are a first-class way to use kvmlab, and a command line of forty words
or a list of dataclasses is hard to read at a glance. Every function here is pure:
it takes one object and returns a string, HTML (``*_html``) or plain text
(``*_text``), so tests can check them without Jupyter::

    from IPython.display import HTML
    HTML(runtime_html(runtime))      # option | value | why it is there
    print(runtime_text(runtime))

The data classes do not know this module: it sits above every layer whose objects
it draws, and :func:`register` teaches IPython which renderer goes with which
class, by module and class name, so nothing is imported until an object is shown.
Importing kvmlab inside a running IPython shell (any Jupyter kernel) registers
them; ``%load_ext kvmlab.display`` does it by hand elsewhere. That keeps the
import graph one-way: models, runtimes and the lifecycle never import display.

Everything that comes from outside kvmlab (names, kernel arguments, paths, guest
output) is escaped with :func:`html.escape`: a ``kernel_args`` of
``console=ttyS0 <b>&x`` is valid, and must show as typed, not as markup.

Besides one renderer per object (instance, runtime, diff, invariant report,
hypervisor, instance info, guest facts) there is :func:`capability_matrix`: which
options each QEMU version gets for a set of instances, as a table and an inline
SVG chart, so a notebook needs no plotting library.
"""

from __future__ import annotations

import html
import re
import shlex
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from kvmlab.argv import FLAG_OPTIONS

if TYPE_CHECKING:
    from kvmlab.capabilities import QemuCapabilities
    from kvmlab.console import GuestFacts
    from kvmlab.diff import RuntimeDiff, TreeDiff
    from kvmlab.invariants import InvariantReport
    from kvmlab.inventory import InstanceInfo
    from kvmlab.lifecycle import Hypervisor
    from kvmlab.models import Disk, Instance, Nic
    from kvmlab.runtime import KVMRuntime

__all__ = [
    "FORMATTERS",
    "OPTION_WHY",
    "ArgvRow",
    "CapabilityMatrix",
    "argv_html",
    "argv_rows",
    "argv_text",
    "capabilities_html",
    "capabilities_text",
    "capability_matrix",
    "diff_html",
    "diff_text",
    "facts_html",
    "facts_text",
    "hypervisor_html",
    "hypervisor_text",
    "info_html",
    "info_text",
    "instance_html",
    "instance_text",
    "load_ipython_extension",
    "matrix_html",
    "matrix_svg",
    "matrix_text",
    "option_features",
    "register",
    "report_html",
    "report_text",
    "runtime_html",
    "runtime_text",
]

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
    "-chardev": "host-only: serial console socket, logged to a file for this boot only",
    "-serial": "the guest's first serial port (ttyS0)",
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

    QEMU options take at most one value; the flags in :data:`kvmlab.argv.FLAG_OPTIONS` take none, an
    unknown option takes the next word unless that word is itself an option.
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


def _why(option: str, value: str | None) -> str:
    if option == "-device" and value is not None:
        driver = value.split(",", 1)[0]
        return _DEVICE_WHY.get(driver, f"device {driver}")
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
    for index, option, value in _split_options(argv):
        origin = "generated"
        why = _why(option, value)
        if index >= saved_len:
            origin = "start"
        elif index >= extra_start:
            origin = "kvm_extra"
            why = f"from hvparams.kvm_extra: {why}"
        rows.append(ArgvRow(option, value, why, origin))
    return rows


# --------------------------------------------------------------------------- helpers


class _Html(str):
    """Already-built markup: table cells of this type are inserted as they are."""

    __slots__ = ()


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _code(value: object, *, breakable: bool = True) -> _Html:
    text = _e(value)
    if not breakable:
        return _Html(f"<code style='white-space:nowrap'>{text}</code>")
    # Let long option values (sockets, drives) wrap at their commas.
    return _Html(f"<code>{text.replace(',', ',<wbr>')}</code>")


_TABLE = "border-collapse:collapse;margin:4px 0;font-size:90%"
_CELL = "padding:2px 8px;text-align:left;vertical-align:top;border-bottom:1px solid #ddd"
_HEAD = _CELL + ";border-bottom:2px solid #999"
_OK = "color:#1a7f37"
_BAD = "color:#cf222e;font-weight:bold"
_MUTED = "color:#6e7781"


def _cell(value: object) -> str:
    if value is None:
        return "<span style='color:#6e7781'>&mdash;</span>"
    return value if isinstance(value, _Html) else _e(value)


def _table(
    headers: Sequence[str],
    rows: Iterable[Sequence[object]],
    *,
    row_styles: Sequence[str] = (),
) -> _Html:
    head = "".join(f"<th style='{_HEAD}'>{_e(h)}</th>" for h in headers)
    body: list[str] = []
    for number, row in enumerate(rows):
        style = row_styles[number] if number < len(row_styles) else ""
        cells = "".join(f"<td style='{_CELL}'>{_cell(value)}</td>" for value in row)
        body.append(f"<tr style='{style}'>{cells}</tr>" if style else f"<tr>{cells}</tr>")
    return _Html(
        f"<table style='{_TABLE}'><thead><tr>{head}</tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def _box(title: str, *parts: str, subtitle: str = "") -> str:
    sub = f" <span style='{_MUTED}'>{_e(subtitle)}</span>" if subtitle else ""
    return f"<div class='kvmlab'><strong>{_e(title)}</strong>{sub}{''.join(parts)}</div>"


def _p(text: str, style: str = "") -> _Html:
    attr = f" style='{style}'" if style else ""
    return _Html(f"<div{attr}>{_e(text)}</div>")


def _chunks(text: str, width: int) -> list[str]:
    """Cut ``text`` into pieces of at most ``width``, after a comma, space or slash if any."""
    pieces: list[str] = []
    while len(text) > width:
        cut = max(text.rfind(sep, 0, width) for sep in ", /") + 1
        if cut <= 0:
            cut = width
        pieces.append(text[:cut])
        text = text[cut:]
    return [*pieces, text]


def _text_table(headers: Sequence[str], rows: Sequence[Sequence[object]], *, cap: int = 48) -> str:
    """Columns aligned on the widest value; a value wider than ``cap`` wraps onto more lines
    (at its commas), so one long socket path does not push every other column away."""
    cells = [[_plain(value) for value in row] for row in rows]
    last = len(headers) - 1
    widths = [
        min(cap, max([len(h), *(len(row[i]) for row in cells)])) if i < last else 0
        for i, h in enumerate(headers)
    ]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * (w or len(h)) for h, w in zip(headers, widths, strict=True)))
    for row in cells:
        wrapped = [_chunks(v, w) if w else [v] for v, w in zip(row, widths, strict=True)]
        for depth in range(max(len(parts) for parts in wrapped)):
            parts = [p[depth] if depth < len(p) else "" for p in wrapped]
            lines.append("  ".join(v.ljust(w) for v, w in zip(parts, widths, strict=True)).rstrip())
    return "\n".join(lines)


def _plain(value: object) -> str:
    return "-" if value is None else str(value)


# --------------------------------------------------------------------------- instance


def _non_default_hvparams(instance: Instance) -> list[tuple[str, object, object]]:
    hv = instance.hvparams
    fields = type(hv).model_fields
    changed: list[tuple[str, object, object]] = []
    for name, info in fields.items():
        value = getattr(hv, name)
        if value != info.default:
            changed.append((name, value, info.default))
    return changed


def _nics_and_disks_html(
    nics: Sequence[Nic], disks: Sequence[Disk], nics_title: str, no_nic: str
) -> list[str]:
    """The NIC and disk tables an instance and a runtime both show."""
    parts: list[str] = (
        [_p(nics_title), _table(("#", "mac", "mode", "link"), _nic_rows(nics))]
        if nics
        else [_p(no_nic, _MUTED)]
    )
    if disks:
        rows = [(i, _code(d.path), str(d.mode)) for i, d in enumerate(disks)]
        parts.append(_table(("#", "disk", "mode"), rows))
    return parts


def _nic_rows(nics: Iterable[object]) -> list[tuple[object, ...]]:
    rows: list[tuple[object, ...]] = []
    for seq, nic in enumerate(nics):
        if isinstance(nic, Mapping):
            mac, mode, link = nic.get("mac", ""), nic.get("mode", ""), nic.get("link", "")
        else:
            mac, mode, link = (getattr(nic, key, "") for key in ("mac", "mode", "link"))
        rows.append((seq, _code(mac), str(mode), link or None))
    return rows


def instance_html(instance: Instance) -> str:
    """The instance as the user described it: size, NICs, disks, hvparams changed from Ganeti's
    defaults (the other ~45 are listed by count, not by value, to stay readable)."""
    summary = _table(
        ("field", "value"),
        [
            ("memory", f"{instance.memory} MiB"),
            ("vcpus", instance.vcpus),
            ("uuid", _code(instance.system_uuid)),
            ("network_port", instance.network_port),
        ],
    )
    parts: list[str] = [summary]
    parts += _nics_and_disks_html(
        instance.nics,
        instance.disks,
        f"NICs ({len(instance.nics)}), kept as data until start:",
        "no NIC",
    )
    changed = _non_default_hvparams(instance)
    total = len(type(instance.hvparams).model_fields)
    if changed:
        parts.append(_p(f"hvparams changed from Ganeti's defaults ({len(changed)} of {total}):"))
        parts.append(
            _table(
                ("hvparam", "value", "default"),
                [(name, _code(value), _code(default)) for name, value, default in changed],
            )
        )
    else:
        parts.append(_p(f"all {total} hvparams at Ganeti's defaults", _MUTED))
    return _box(f"Instance {instance.name}", *parts)


def instance_text(instance: Instance) -> str:
    """Plain-text counterpart of :func:`instance_html`."""
    lines = [
        f"Instance {instance.name}: {instance.memory} MiB, {instance.vcpus} vCPU(s),"
        f" uuid {instance.system_uuid}"
        + (f", VNC port {instance.network_port}" if instance.network_port else "")
    ]
    for seq, nic in enumerate(instance.nics):
        link = f" link {nic.link}" if nic.link else ""
        lines.append(f"  nic {seq}: {nic.mac} {nic.mode}{link}")
    for index, disk in enumerate(instance.disks):
        lines.append(f"  disk {index}: {disk.path} ({disk.mode})")
    changed = _non_default_hvparams(instance)
    for name, value, default in changed:
        lines.append(f"  hvparams.{name} = {value!r} (default {default!r})")
    if not changed:
        lines.append("  hvparams: all at Ganeti's defaults")
    return "\n".join(lines)


# --------------------------------------------------------------------------- runtime / argv


_ORIGIN_STYLE = {"start": "background:#fff8c5", "kvm_extra": "background:#ddf4ff"}


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
    legend.append("grey rows are host-only: the guest never sees them")
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


def runtime_html(runtime: KVMRuntime) -> str:
    """The saved runtime: its argv explained option by option, then the NICs and disks it
    keeps as data (expanded into arguments only at start time)."""
    extra = runtime.hvparams.kvm_extra_args
    rows = argv_rows(runtime.argv, extra=extra)
    styles = [_ORIGIN_STYLE.get(row.origin, _MUTED if row.host_only else "") for row in rows]
    table = _table(
        ("option", "value", "why"),
        [(_code(row.option, breakable=False), _code_or_none(row.value), row.why) for row in rows],
        row_styles=styles,
    )
    parts: list[str] = [table]
    parts += _nics_and_disks_html(
        runtime.nics,
        runtime.disks,
        f"NICs kept as data ({len(runtime.nics)}), expanded at start time:",
        "no NIC: the executor adds -net none at start",
    )
    parts.append(_p("grey rows are host-only: the guest never sees them.", _MUTED))
    return _box(
        f"KVMRuntime {runtime.name}",
        *parts,
        subtitle=f"format {runtime.format}, {len(runtime.argv)} words, {len(rows) - 1} options",
    )


def runtime_text(runtime: KVMRuntime) -> str:
    """Plain-text counterpart of :func:`runtime_html`."""
    lines = [
        f"KVMRuntime {runtime.name} (format {runtime.format}, {len(runtime.argv)} words)",
        argv_text(runtime.argv, extra=runtime.hvparams.kvm_extra_args),
    ]
    for seq, nic in enumerate(runtime.nics):
        link = f" link {nic.link}" if nic.link else ""
        lines.append(f"nic {seq} (at start time): {nic.mac} {nic.mode}{link}")
    if not runtime.nics:
        lines.append("no NIC (-net none at start time)")
    for index, disk in enumerate(runtime.disks):
        lines.append(f"disk {index}: {disk.path} ({disk.mode})")
    return "\n".join(lines)


# --------------------------------------------------------------------------- diffs


def diff_html(diff: RuntimeDiff | TreeDiff) -> str:
    """The semantic diff of two runtimes; rendered by :mod:`kvmlab.diff`, which owns it."""
    from kvmlab.diff import render_html  # noqa: PLC0415 - display is imported on first use

    return render_html(diff)


def diff_text(diff: RuntimeDiff | TreeDiff) -> str:
    """Plain-text counterpart of :func:`diff_html`."""
    from kvmlab.diff import render_text  # noqa: PLC0415

    return render_text(diff)


# --------------------------------------------------------------------------- invariants


def report_html(report: InvariantReport) -> str:
    """Each checked invariant with its verdict, then every violation and its evidence."""
    from kvmlab.invariants import INVARIANTS  # noqa: PLC0415

    broken = {v.invariant for v in report.violations}
    rows = [
        (
            number,
            INVARIANTS.get(number, ""),
            _Html(f"<span style='{_BAD}'>violated</span>")
            if number in broken
            else _Html(f"<span style='{_OK}'>holds</span>"),
        )
        for number in report.checked
    ]
    parts = [_table(("#", "invariant", "verdict"), rows)]
    if report.violations:
        parts.append(
            _table(
                ("#", "violation"),
                [(v.invariant, _code(v.detail)) for v in report.violations],
                row_styles=["background:#ffebe9"] * len(report.violations),
            )
        )
    if report.ok:
        verdict = f"<span style='{_OK}'>all {len(report.checked)} hold</span>"
    else:
        count = len(report.violations)
        verdict = f"<span style='{_BAD}'>{count} violation{'s' if count > 1 else ''}</span>"
    return _box("Invariants", _Html(f" {verdict}"), *parts)


def report_text(report: InvariantReport) -> str:
    """Plain-text counterpart of :func:`report_html`."""
    from kvmlab.invariants import INVARIANTS  # noqa: PLC0415

    broken = {v.invariant for v in report.violations}
    lines = [
        f"[{'VIOLATED' if number in broken else 'ok'}] {number}. {INVARIANTS.get(number, '')}"
        for number in report.checked
    ]
    lines += [f"  {violation}" for violation in report.violations]
    head = "all invariants hold" if report.ok else f"{len(report.violations)} violation(s)"
    return "\n".join([f"Invariants: {head}", *lines])


# --------------------------------------------------------------------------- hypervisor


def _info_row(info: InstanceInfo) -> tuple[object, ...]:
    state = str(info.state)
    style = _OK if state == "running" else (_BAD if state == "invalid" else _MUTED)
    macs = ", ".join(nic.get("mac", "") for nic in info.nics) or None
    return (
        info.name,
        _Html(f"<span style='{style}'>{_e(state)}</span>"),
        info.pid,
        None if info.memory is None else f"{info.memory} MiB",
        info.vcpus,
        macs,
    )


def hypervisor_html(hypervisor: Hypervisor) -> str:
    """The lab at a glance: its state directory, backend, and one row per instance.

    Reads only the state directory and ``/proc`` (``list_instances``), never QMP, so it
    is instant and works whatever state the instances are in.
    """
    infos = hypervisor.list_instances()
    header = _p(
        f"state dir {hypervisor.layout.root} · backend {hypervisor.backend.describe()}", _MUTED
    )
    if not infos:
        return _box("Hypervisor", header, _p("no instance", _MUTED))
    table = _table(("name", "state", "pid", "memory", "vcpus", "NICs"), map(_info_row, infos))
    running = sum(1 for info in infos if str(info.state) == "running")
    return _box("Hypervisor", header, table, subtitle=f"{len(infos)} instances, {running} running")


def hypervisor_text(hypervisor: Hypervisor) -> str:
    """Plain-text counterpart of :func:`hypervisor_html`."""
    infos = hypervisor.list_instances()
    head = f"Hypervisor {hypervisor.layout.root} ({hypervisor.backend.describe()})"
    if not infos:
        return f"{head}: no instance"
    rows = [
        (
            info.name,
            str(info.state),
            info.pid,
            info.memory,
            info.vcpus,
            ", ".join(n.get("mac", "") for n in info.nics) or None,
        )
        for info in infos
    ]
    return head + "\n" + _text_table(("name", "state", "pid", "MiB", "vcpus", "NICs"), rows)


def info_html(info: InstanceInfo) -> str:
    """One instance's ``info``: state, pid, size, and the *live* argv (from ``/proc``)
    explained, with the start-time arguments marked against the saved argv."""
    summary = _table(("name", "state", "pid", "memory", "vcpus", "NICs"), [_info_row(info)])
    parts: list[str] = [summary]
    if info.extra:
        parts.append(_p(", ".join(f"{k}: {v}" for k, v in info.extra.items()), _MUTED))
    if info.argv:
        parts.append(argv_html(info.argv, saved=info.saved_argv, title=f"/proc/{info.pid}/cmdline"))
    elif info.saved_argv:
        parts.append(argv_html(info.saved_argv, title="saved argv (not running)"))
    return _box(f"Instance {info.name}", *parts)


def info_text(info: InstanceInfo) -> str:
    """Plain-text counterpart of :func:`info_html`."""
    head = (
        f"{info.name}: {info.state}, pid {info.pid}, {info.memory} MiB, {info.vcpus} vCPU(s),"
        f" {len(info.nics)} NIC(s)"
    )
    argv = info.argv or info.saved_argv
    return head + ("\n" + shlex.join(argv) if argv else "")


# --------------------------------------------------------------------------- guest facts


def _memory_fits(mem_kb: int, memory_mib: int) -> bool:
    """Whether a guest's ``MemTotal`` is what ``-m memory_mib`` gives.

    Linux reports RAM minus what the kernel reserves (4 to 15 % for small guests), so an
    exact match is impossible; a quarter is wide enough for 128 MiB guests and still tells
    256 MiB from 384 MiB.
    """
    total = memory_mib * 1024
    return 0.75 * total <= mem_kb <= total


def _facts_checks(facts: GuestFacts, expected: Instance) -> list[tuple[str, str, str, bool]]:
    macs = [nic.mac for nic in expected.nics]
    return [
        (
            "memory",
            f"{facts.mem_kb} kB (MemTotal)",
            f"{expected.memory} MiB",
            _memory_fits(facts.mem_kb, expected.memory),
        ),
        ("cpus", str(facts.cpus), str(expected.vcpus), facts.cpus == expected.vcpus),
        ("NICs", ", ".join(facts.macs) or "none", ", ".join(macs) or "none", facts.macs == macs),
    ]


def facts_html(facts: GuestFacts, expected: Instance | None = None) -> str:
    """What the guest reported on its console (``MEM``, ``CPUS``, ``NIC`` lines).

    :param expected: compare with this instance: each mismatch is shown in red, which is
        how a notebook shows that a soft reboot replayed the *old* runtime.
    """
    nics = _table(
        ("interface", "mac"),
        [(dev, _code(mac)) for dev, mac in facts.nics.items()] or [("none", None)],
    )
    summary = _p(
        f"MemTotal {facts.mem_kb} kB (~{facts.mem_kb / 1024:.0f} MiB) · {facts.cpus} CPU(s)"
        f" · {len(facts.nics)} NIC(s)"
    )
    parts: list[str] = [summary, nics]
    if expected is not None:
        checks = _facts_checks(facts, expected)
        rows = [
            (
                what,
                seen,
                want,
                _Html(f"<span style='{_OK}'>matches</span>")
                if ok
                else _Html(f"<span style='{_BAD}'>differs</span>"),
            )
            for what, seen, want, ok in checks
        ]
        styles = ["" if ok else "background:#ffebe9" for *_, ok in checks]
        parts.append(_p(f"compared with instance {expected.name}:"))
        parts.append(_table(("fact", "guest sees", "instance says", ""), rows, row_styles=styles))
    return _box("Guest facts", *parts)


def facts_text(facts: GuestFacts, expected: Instance | None = None) -> str:
    """Plain-text counterpart of :func:`facts_html`."""
    lines = [f"Guest facts: MemTotal {facts.mem_kb} kB, {facts.cpus} CPU(s)"]
    lines += [f"  {dev} {mac}" for dev, mac in facts.nics.items()] or ["  no NIC"]
    if expected is not None:
        for what, seen, want, ok in _facts_checks(facts, expected):
            verdict = "ok" if ok else "DIFFERS"
            lines.append(f"  [{verdict}] {what}: guest sees {seen}, {expected.name} says {want}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- capabilities

#: Fields of QemuCapabilities shown as counts (long lists) or not at all (the label).
_CAPS_COUNTED: Final = frozenset({"machines", "devices"})
_CAPS_HIDDEN: Final = frozenset({"profile"})


def _caps_value(key: str, value: object) -> str:
    if key in _CAPS_COUNTED and isinstance(value, list | tuple):
        return f"{len(value)} known" if value else "unknown"
    if key == "version" and isinstance(value, list | tuple):
        return ".".join(map(str, value))
    if isinstance(value, bool):
        return "yes" if value else "no"
    return "-" if value in (None, "") else str(value)


def _caps_rows(
    profiles: Mapping[str, QemuCapabilities], only_differing: bool
) -> list[tuple[str, list[str]]]:
    tables = {name: caps.to_dict() for name, caps in profiles.items()}
    keys = [key for key in next(iter(tables.values()), {}) if key not in _CAPS_HIDDEN]
    rows = []
    for key in keys:
        values = [_caps_value(key, table[key]) for table in tables.values()]
        if only_differing and len(profiles) > 1 and len(set(values)) == 1:
            continue
        rows.append((key, values))
    return rows


def capabilities_html(
    profiles: Mapping[str, QemuCapabilities], *, only_differing: bool = True
) -> str:
    """What each QEMU can do, side by side: one column per profile, one row per capability.

    :param only_differing: hide the capabilities every profile shares.
    """
    rows = _caps_rows(profiles, only_differing)
    table = _table(
        ["capability", *profiles],
        [
            [_code(key, breakable=False)]
            + [
                _Html(f"<span style='{_MUTED}'>no</span>") if value == "no" else value
                for value in values
            ]
            for key, values in rows
        ],
    )
    shown = "capabilities that differ" if only_differing else "all capabilities"
    return _box("QEMU capabilities", table, subtitle=f"{len(profiles)} profiles, {shown}")


def capabilities_text(
    profiles: Mapping[str, QemuCapabilities], *, only_differing: bool = True
) -> str:
    """Plain-text counterpart of :func:`capabilities_html`."""
    rows = [[key, *values] for key, values in _caps_rows(profiles, only_differing)]
    return _text_table(["capability", *profiles], rows, cap=32)


# --------------------------------------------------------------------------- capability matrix

#: Options whose value is the instance's own data (a name, a size, a path), not a spelling
#: QEMU's version chooses: in the matrix only the option itself counts.
_DATA_OPTIONS: Final = frozenset(
    {"-name", "-m", "-smp", "-pidfile", "-uuid", "-kernel", "-initrd", "-append", "-cpu", "-k"}
    | {"-mem-path", "-M", "-boot", "-vga"}
)
_SPLIT_COMMAS = re.compile(r"(?<!,),(?!,)")
_SHORT_VALUE = 12


#: Sub-options that name or locate something (``id=serial0``, ``path=...``): identities
#: and data, not spellings a QEMU version chooses.
_IDENTITY_KEYS: Final = frozenset({"id", "path", "file", "dir", "logfile", "chardev", "netdev"})


def _token_feature(option: str, token: str) -> str | None:
    key, eq, value = token.partition("=")
    if not eq:
        return f"{option} {token}"
    if key in _IDENTITY_KEYS:
        return None
    if "/" in value or len(value) > _SHORT_VALUE:
        return f"{option} {key}=…"
    return f"{option} {token}"


def option_features(argv: Sequence[str]) -> list[str]:
    """The spellings a command line uses, without the instance's own values.

    ``-device virtio-balloon`` and ``-balloon virtio`` are different features, and so
    are ``-monitor server=on`` and ``-monitor server``; ``-m 256`` is just ``-m``, and
    ``id=serial0`` or a path count for nothing. This is what changes between QEMU
    versions for the same instance. An option with sub-features is listed through them
    only (``-device virtio-balloon``, never a bare ``-device``).
    """
    features: list[str] = []
    for _, option, value in _split_options(argv):
        found: list[str] = []
        if value is not None and option not in _DATA_OPTIONS:
            tokens = _SPLIT_COMMAS.split(value)
            head, rest = tokens[0], tokens[1:]
            if "=" in head:
                rest = tokens
            elif option in {"-machine", "-vnc"} or head.startswith(("/", ":")):
                pass  # the machine type, a display address, a path: data, not a spelling
            elif ":" in head:
                found.append(f"{option} {head.split(':', 1)[0]}:")
            else:
                found.append(f"{option} {head}")
            found += filter(None, (_token_feature(option, token) for token in rest))
        features += found or [option]
    return list(dict.fromkeys(features))


@dataclass(frozen=True)
class CapabilityMatrix:
    """Which option spellings each QEMU profile gives each instance.

    :ivar present: ``(feature, profile)`` to the names of the instances whose argv has it.
    :ivar errors: ``(instance, profile)`` to the reason that QEMU cannot run it.
    """

    profiles: tuple[str, ...]
    instances: tuple[str, ...]
    features: tuple[str, ...]
    present: Mapping[tuple[str, str], frozenset[str]] = field(default_factory=dict)
    errors: Mapping[tuple[str, str], str] = field(default_factory=dict)
    versions: Mapping[str, str] = field(default_factory=dict)

    def generated(self, profile: str) -> int:
        """How many instances this profile could generate a runtime for."""
        return sum(1 for name in self.instances if (name, profile) not in self.errors)

    def failed(self, profile: str) -> frozenset[str]:
        """The instances this profile could not generate."""
        return frozenset(name for name in self.instances if (name, profile) in self.errors)

    def differing(self) -> tuple[str, ...]:
        """Features not given alike by every profile: the rows worth looking at.

        An instance a profile cannot generate says nothing either way, so it counts as
        agreeing with the other profiles.
        """
        if len(self.profiles) < 2:
            return self.features
        out = []
        for feature in self.features:
            seen = {
                self.present.get((feature, p), frozenset()) | self.failed(p) for p in self.profiles
            }
            if len(seen) > 1:
                out.append(feature)
        return tuple(out)

    def _repr_html_(self) -> str:
        return matrix_html(self)


def capability_matrix(
    instances: Sequence[Instance], profiles: Mapping[str, QemuCapabilities]
) -> CapabilityMatrix:
    """Generate every instance for every profile and record the spellings used.

    A combination a QEMU cannot express (a read-only disk on QEMU 0.12, ``-chroot`` on
    0.9) is recorded in ``errors`` with the generator's message instead of raising.
    """
    from kvmlab.errors import KvmlabError  # noqa: PLC0415
    from kvmlab.generator import generate_runtime  # noqa: PLC0415

    present: dict[tuple[str, str], set[str]] = {}
    errors: dict[tuple[str, str], str] = {}
    order: dict[str, None] = {}
    for profile, caps in profiles.items():
        for instance in instances:
            try:
                runtime = generate_runtime(instance, caps)
            except KvmlabError as err:
                errors[(instance.name, profile)] = str(err)
                continue
            for feature in option_features(runtime.argv):
                order.setdefault(feature)
                present.setdefault((feature, profile), set()).add(instance.name)
    return CapabilityMatrix(
        profiles=tuple(profiles),
        instances=tuple(instance.name for instance in instances),
        features=tuple(order),
        present={key: frozenset(names) for key, names in present.items()},
        errors=errors,
        versions={name: caps.version_string for name, caps in profiles.items()},
    )


def _matrix_rows(matrix: CapabilityMatrix, only_differing: bool) -> tuple[str, ...]:
    return matrix.differing() if only_differing else matrix.features


def _count_label(matrix: CapabilityMatrix, feature: str, profile: str) -> tuple[str, str]:
    names = matrix.present.get((feature, profile), frozenset())
    total = matrix.generated(profile)
    if not names:
        return "", ""
    ordered = ", ".join(n for n in matrix.instances if n in names)
    return ("✓" if len(names) == total else f"{len(names)}/{total}"), ordered


def matrix_html(matrix: CapabilityMatrix, *, only_differing: bool = True) -> str:
    """The matrix as a table: ✓ when every instance gets the spelling on that QEMU,
    ``k/n`` when only some do (hover for their names), then what could not be generated.

    :param only_differing: hide the rows every profile has alike (``-m``, ``-name``...).
    """
    rows = []
    for feature in _matrix_rows(matrix, only_differing):
        cells: list[object] = [_code(feature, breakable=False)]
        for profile in matrix.profiles:
            label, names = _count_label(matrix, feature, profile)
            cells.append(_Html(f"<span title='{_e(names)}'>{_e(label)}</span>") if label else "")
        rows.append(cells)
    headers = ["option"] + [
        f"{p} ({matrix.versions[p]})" if matrix.versions.get(p, p) not in p else p
        for p in matrix.profiles
    ]
    parts: list[str] = [_table(headers, rows)]
    if matrix.errors:
        parts.append(_p("cannot be generated:"))
        parts.append(
            _table(
                ("instance", "profile", "why"),
                [(inst, prof, why) for (inst, prof), why in matrix.errors.items()],
            )
        )
    shown = "options that differ between profiles" if only_differing else "all options"
    return _box(
        "Capability matrix",
        *parts,
        subtitle=f"{len(matrix.instances)} instances x {len(matrix.profiles)} profiles, {shown}",
    )


def matrix_text(matrix: CapabilityMatrix, *, only_differing: bool = True) -> str:
    """Plain-text counterpart of :func:`matrix_html`."""
    rows = [
        [feature] + [_count_label(matrix, feature, p)[0] for p in matrix.profiles]
        for feature in _matrix_rows(matrix, only_differing)
    ]
    out = _text_table(["option", *matrix.profiles], rows, cap=32)
    for (inst, prof), why in matrix.errors.items():
        out += f"\n{inst} on {prof}: {why}"
    return out


_SVG_CELL = 22
_SVG_FONT = "font-family:monospace;font-size:11px"


def matrix_svg(matrix: CapabilityMatrix, *, only_differing: bool = True) -> str:
    """The matrix as an inline SVG heat map: one column per profile, one row per option;
    the darker the cell, the more instances get that spelling on that QEMU. A crossed
    cell at the bottom marks an instance the profile cannot generate.

    Plain SVG text, so a notebook shows it with ``IPython.display.SVG`` or ``HTML`` and
    needs no plotting library.
    """
    features = _matrix_rows(matrix, only_differing)
    label_width = 8 + 7 * max([len(f) for f in features] + [len("cannot generate")])
    header_height = 8 + 7 * max([len(p) for p in matrix.profiles] + [4])
    rows = len(features) + 1  # the last row counts generation failures
    # The column labels are turned by 60 degrees: the last one reaches right by half its length.
    overhang = int(7 * 0.5 * max([len(p) for p in matrix.profiles] + [4]))
    width = label_width + _SVG_CELL * len(matrix.profiles) + overhang + 8
    height = header_height + _SVG_CELL * rows + 8
    out = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}'"
        f" viewBox='0 0 {width} {height}' role='img'>",
        "<title>kvmlab capability matrix</title>",
    ]
    for col, profile in enumerate(matrix.profiles):
        x = label_width + col * _SVG_CELL + _SVG_CELL // 2 + 4
        out.append(
            f"<text x='{x}' y='{header_height - 6}' transform='rotate(-60 {x} {header_height - 6})'"
            f" style='{_SVG_FONT}'>{_e(profile)}</text>"
        )
    for row, feature in enumerate(features):
        y = header_height + row * _SVG_CELL
        out.append(
            f"<text x='4' y='{y + _SVG_CELL * 0.7:.0f}' style='{_SVG_FONT}'>{_e(feature)}</text>"
        )
        for col, profile in enumerate(matrix.profiles):
            names = matrix.present.get((feature, profile), frozenset())
            total = matrix.generated(profile) or 1
            share = len(names) / total
            x = label_width + col * _SVG_CELL
            fill = f"rgba(31,111,235,{0.15 + 0.85 * share:.2f})" if names else "#f6f8fa"
            label = ", ".join(n for n in matrix.instances if n in names) or "none"
            out.append(
                f"<rect x='{x}' y='{y}' width='{_SVG_CELL - 2}' height='{_SVG_CELL - 2}'"
                f" fill='{fill}'><title>{_e(feature)} on {_e(profile)}: {_e(label)}</title></rect>"
            )
    y = header_height + len(features) * _SVG_CELL
    out.append(
        f"<text x='4' y='{y + _SVG_CELL * 0.7:.0f}' style='{_SVG_FONT}'>cannot generate</text>"
    )
    for col, profile in enumerate(matrix.profiles):
        failed = [n for n in matrix.instances if (n, profile) in matrix.errors]
        x = label_width + col * _SVG_CELL
        if failed:
            out.append(
                f"<rect x='{x}' y='{y}' width='{_SVG_CELL - 2}' height='{_SVG_CELL - 2}'"
                f" fill='#ffebe9' stroke='#cf222e'><title>{_e(profile)} cannot generate"
                f" {_e(', '.join(failed))}</title></rect>"
                f"<text x='{x + 5}' y='{y + 15}' style='{_SVG_FONT};fill:#cf222e'>"
                f"{len(failed)}</text>"
            )
    out.append("</svg>")
    return "".join(out)


# --------------------------------------------------------------------------- IPython

#: ``(module, class, HTML renderer, text renderer)`` for every class IPython should draw.
#: By name, so that registering imports none of these modules; a subclass inherits
#: its base's renderer. Diffs and capability matrices carry their own ``_repr_html_``.
FORMATTERS: Final[
    tuple[tuple[str, str, Callable[[Any], str], Callable[[Any], str] | None], ...]
] = (
    ("kvmlab.models", "Instance", instance_html, instance_text),
    ("kvmlab.runtime", "KVMRuntime", runtime_html, runtime_text),
    ("kvmlab.invariants", "InvariantReport", report_html, report_text),
    ("kvmlab.lifecycle", "Hypervisor", hypervisor_html, hypervisor_text),
    ("kvmlab.console", "GuestFacts", facts_html, None),
)


def _pretty(render: Callable[[Any], str]) -> Callable[[Any, Any, bool], None]:
    """An IPython pretty-printer (``printer.text``) from a text renderer."""

    def print_pretty(obj: Any, printer: Any, cycle: bool) -> None:
        printer.text(f"{type(obj).__name__}(...)" if cycle else render(obj))

    return print_pretty


def register(shell: Any) -> None:
    """Make ``shell`` (an IPython ``InteractiveShell``) draw kvmlab's objects.

    Called by ``import kvmlab`` when IPython is running; calling it again is harmless.

    :param shell: what ``IPython.get_ipython()`` returns.
    """
    formatters = shell.display_formatter.formatters
    for module, name, to_html, to_text in FORMATTERS:
        formatters["text/html"].for_type_by_name(module, name, to_html)
        if to_text is not None:
            formatters["text/plain"].for_type_by_name(module, name, _pretty(to_text))


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext kvmlab.display``: :func:`register` for a shell kvmlab was imported before."""
    register(ipython)
