"""Instances, runtimes and invariant reports, as HTML and as text."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from kvmlab.display._markup import (
    _BAD,
    _MUTED,
    _OK,
    _box,
    _code,
    _Html,
    _p,
    _table,
)
from kvmlab.display.argv_view import (
    _ORIGIN_STYLE,
    HOST_ONLY_LEGEND,
    _code_or_none,
    argv_rows,
    argv_text,
)

if TYPE_CHECKING:
    from kvmlab.runtime.invariants import InvariantReport
    from kvmlab.runtime.saved import KVMRuntime
    from kvmlab.spec.instance import Disk, Instance, Nic

__all__ = [
    "instance_html",
    "instance_text",
    "report_html",
    "report_text",
    "runtime_html",
    "runtime_text",
]

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
    parts.append(_p(f"{HOST_ONLY_LEGEND}.", _MUTED + ";font-size:85%"))
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


# --------------------------------------------------------------------------- invariants


def report_html(report: InvariantReport) -> str:
    """Each checked invariant with its verdict, then every violation and its evidence."""
    from kvmlab.runtime.invariants import INVARIANTS  # noqa: PLC0415

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
    from kvmlab.runtime.invariants import INVARIANTS  # noqa: PLC0415

    broken = {v.invariant for v in report.violations}
    lines = [
        f"[{'VIOLATED' if number in broken else 'ok'}] {number}. {INVARIANTS.get(number, '')}"
        for number in report.checked
    ]
    lines += [f"  {violation}" for violation in report.violations]
    head = "all invariants hold" if report.ok else f"{len(report.violations)} violation(s)"
    return "\n".join([f"Invariants: {head}", *lines])
