"""A lab, its instances and what a guest reported, as HTML and as text."""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from kvmlab.display._markup import (
    _BAD,
    _MUTED,
    _OK,
    _box,
    _code,
    _e,
    _elide_temp,
    _Html,
    _p,
    _plural,
    _table,
    _text_table,
)
from kvmlab.display.argv_view import argv_html

if TYPE_CHECKING:
    from kvmlab.channels.console import GuestFacts
    from kvmlab.host.inventory import InstanceInfo
    from kvmlab.lifecycle.hypervisor import Hypervisor
    from kvmlab.lifecycle.snapshots.record import SnapshotInfo
    from kvmlab.spec.instance import Instance

__all__ = [
    "facts_html",
    "facts_text",
    "hypervisor_html",
    "hypervisor_text",
    "info_html",
    "info_text",
    "snapshot_html",
    "snapshot_text",
]

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
        f"state dir {_state_dir(hypervisor)} · backend {hypervisor.backend.describe()}", _MUTED
    )
    if not infos:
        return _box("Hypervisor", header, _p("no instance", _MUTED))
    table = _table(("name", "state", "pid", "memory", "vcpus", "NICs"), map(_info_row, infos))
    running = sum(1 for info in infos if str(info.state) == "running")
    subtitle = f"{_plural(len(infos), 'instance')}, {running} running"
    return _box("Hypervisor", header, table, subtitle=subtitle)


def _state_dir(hypervisor: Hypervisor) -> str:
    """The state directory; a temporary one by its name, the ``…`` its paths are shown with."""
    root = str(hypervisor.layout.root)
    shown = _elide_temp(root)
    return root if shown == root else f"… = $TMPDIR/{hypervisor.layout.root.name}"


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
    others = _other_extra(info)
    if others:
        parts.append(_p(", ".join(f"{k}: {v}" for k, v in others.items()), _MUTED))
    parts += _states_html(info)
    if info.argv:
        parts.append(argv_html(info.argv, saved=info.saved_argv, title=f"/proc/{info.pid}/cmdline"))
    elif info.saved_argv:
        parts.append(argv_html(info.saved_argv, title="saved argv (not running)"))
    return _box(f"Instance {info.name}", *parts)


def info_text(info: InstanceInfo) -> str:
    """Plain-text counterpart of :func:`info_html`."""
    process = "no process" if info.pid is None else f"pid {info.pid}"
    head = (
        f"{info.name}: {info.state}, {process}, {info.memory} MiB, {info.vcpus} vCPU(s),"
        f" {len(info.nics)} NIC(s)"
    )
    lines = [head]
    others = _other_extra(info)
    if others:
        lines.append(", ".join(f"{k}: {v}" for k, v in others.items()))
    lines += _states_lines(info)
    argv = info.argv or info.saved_argv
    if argv:
        lines.append(shlex.join(argv))
    return "\n".join(lines)


# --------------------------------------------------------------------------- machine states

#: The ``info`` keys :func:`state_records <kvmlab.lifecycle.queries.state_records>` fills,
#: drawn as a table rather than listed as they are.
_STATE_KEYS: Final = ("snapshots", "saved")
_STATE_HEADERS: Final = ("tag", "size", "taken", "QEMU", "machine", "VM was")
_SAVED_TAG: Final = "(saved state)"
#: The saved state's row: yellow, as the start-time words of an argv, for what waits
#: outside the saved runtime.
_WAITING: Final = "background:#fff8c5"


def _other_extra(info: InstanceInfo) -> dict[str, Any]:
    """``extra`` without the machine states (QEMU's status, pending records)."""
    return {key: value for key, value in info.extra.items() if key not in _STATE_KEYS}


def _machine_states(info: InstanceInfo) -> tuple[Mapping[str, Any] | None, list[Mapping[str, Any]]]:
    """The saved state (``None``: none waits) and the snapshots, as ``info`` lists them."""
    saved = info.extra.get("saved")
    snapshots = info.extra.get("snapshots") or ()
    return (
        saved if isinstance(saved, Mapping) else None,
        [state for state in snapshots if isinstance(state, Mapping)],
    )


def _state_cells(tag: object, state: Mapping[str, Any]) -> tuple[object, ...]:
    """One row: the cells :func:`snapshot_html` shows for one state, in its words."""
    size = state.get("size")
    running = state.get("running")
    return (
        tag,
        f"{size / 1e6:.1f} MB" if isinstance(size, int | float) else None,
        state.get("created"),
        state.get("qemu_version"),
        state.get("machine"),
        None if running is None else ("running" if running else "paused"),
    )


def _states_caption(saved: object, snapshots: Sequence[object]) -> str:
    """``machine states: the saved state and 2 snapshots (oldest first)``."""
    what = ["the saved state"] if saved is not None else []
    if snapshots:
        order = " (oldest first)" if len(snapshots) > 1 else ""
        what.append(_plural(len(snapshots), "snapshot") + order)
    return "machine states: " + " and ".join(what)


def _states_html(info: InstanceInfo) -> list[str]:
    """The table of the saved state and the snapshots, and how a saved state continues."""
    saved, snapshots = _machine_states(info)
    if saved is None and not snapshots:
        return []
    rows = [_state_cells(_code(state.get("tag", "")), state) for state in snapshots]
    styles = [""] * len(rows)
    if saved is not None:
        rows.insert(0, _state_cells(_Html(f"<em>{_e(_SAVED_TAG)}</em>"), saved))
        styles.insert(0, _WAITING)
    parts: list[str] = [
        _p(_states_caption(saved, snapshots), _MUTED),
        _table(_STATE_HEADERS, rows, row_styles=styles),
    ]
    if saved is not None:
        command = _code(f"kvmlab restore {info.name}", breakable=False)
        parts.append(
            _Html(f"<div style='margin-bottom:6px'>saved state waits: {command} continues it</div>")
        )
    return parts


def _states_lines(info: InstanceInfo) -> list[str]:
    """Plain-text counterpart of :func:`_states_html`."""
    saved, snapshots = _machine_states(info)
    if saved is None and not snapshots:
        return []
    rows = [_state_cells(state.get("tag"), state) for state in snapshots]
    lines = [_states_caption(saved, snapshots)]
    if saved is not None:
        rows.insert(0, _state_cells(_SAVED_TAG, saved))
    lines.append(_text_table(_STATE_HEADERS, rows))
    if saved is not None:
        lines.append(f"saved state waits: `kvmlab restore {info.name}` continues it")
    return lines


# --------------------------------------------------------------------------- snapshots


def _snapshot_title(snapshot: SnapshotInfo) -> str:
    if snapshot.tag is None:
        return f"saved state of {snapshot.name}"
    return f"snapshot {snapshot.tag} of {snapshot.name}"


def snapshot_html(snapshot: SnapshotInfo) -> str:
    """One machine state (:class:`~kvmlab.lifecycle.snapshots.record.SnapshotInfo`): what
    wrote it, its size and digest, and where it is."""
    took = f" in {snapshot.elapsed_ms} ms" if snapshot.elapsed_ms is not None else ""
    rows = [
        ("taken", f"{snapshot.created}{took}"),
        ("QEMU", f"{snapshot.qemu_version} · {snapshot.machine}"),
        ("VM was", "running" if snapshot.running else "paused"),
        ("size", f"{snapshot.size / 1e6:.1f} MB"),
        ("SHA-256", _code(snapshot.sha256)),
        ("file", _code(snapshot.state_file)),
    ]
    return _box(_snapshot_title(snapshot), _table(("", ""), rows))


def snapshot_text(snapshot: SnapshotInfo) -> str:
    """Plain-text counterpart of :func:`snapshot_html`."""
    return (
        f"{_snapshot_title(snapshot)}: {snapshot.size / 1e6:.1f} MB, {snapshot.created},"
        f" QEMU {snapshot.qemu_version} {snapshot.machine}, {snapshot.state_file}"
    )


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
    seen = list(_guest_nics(facts).values())
    return [
        (
            "memory",
            f"{facts.mem_kb} kB (MemTotal)",
            f"{expected.memory} MiB",
            _memory_fits(facts.mem_kb, expected.memory),
        ),
        ("cpus", str(facts.cpus), str(expected.vcpus), facts.cpus == expected.vcpus),
        ("NICs", ", ".join(seen) or "none", ", ".join(macs) or "none", seen == macs),
    ]


#: What the guest's loopback reports: never one of the instance's NICs.
_LOOPBACK_MAC = "00:00:00:00:00:00"


def _guest_nics(facts: GuestFacts) -> dict[str, str]:
    return {dev: mac for dev, mac in facts.nics.items() if mac != _LOOPBACK_MAC}


def facts_html(facts: GuestFacts, expected: Instance | None = None, *, title: str = "") -> str:
    """What the guest reported on its console (``MEM``, ``CPUS``, ``NIC`` lines).

    :param expected: compare with this instance: each mismatch is shown in red, which is
        how a notebook shows that a soft reboot replayed the *old* runtime.
    :param title: the heading; by default it names the instance compared with and its size,
        so two comparisons of one guest never carry the same heading.
    """
    nics = _guest_nics(facts)
    nic_table = _table(
        ("interface", "mac"),
        [(dev, _code(mac)) for dev, mac in nics.items()] or [("none", None)],
    )
    summary = _p(
        f"MemTotal {facts.mem_kb} kB (~{facts.mem_kb / 1024:.0f} MiB) · {facts.cpus} CPU(s)"
        f" · {_plural(len(nics), 'NIC')}"
    )
    parts: list[str] = [summary, nic_table]
    subtitle = ""
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
        parts.append(_table(("fact", "guest sees", "instance says", ""), rows, row_styles=styles))
        subtitle = (
            f"against instance {expected.name}: {expected.memory} MiB,"
            f" {expected.vcpus} vCPU(s), {_plural(len(expected.nics), 'NIC')}"
        )
    return _box(title or "Guest facts", *parts, subtitle=subtitle)


def facts_text(facts: GuestFacts, expected: Instance | None = None) -> str:
    """Plain-text counterpart of :func:`facts_html`."""
    lines = [f"Guest facts: MemTotal {facts.mem_kb} kB, {facts.cpus} CPU(s)"]
    lines += [f"  {dev} {mac}" for dev, mac in facts.nics.items()] or ["  no NIC"]
    if expected is not None:
        for what, seen, want, ok in _facts_checks(facts, expected):
            verdict = "ok" if ok else "DIFFERS"
            lines.append(f"  [{verdict}] {what}: guest sees {seen}, {expected.name} says {want}")
    return "\n".join(lines)
