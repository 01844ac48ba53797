"""A semantic diff (:mod:`kvmlab.golden.diff`) as text and as HTML.

The diff itself only computes; how it reads is decided here. The text is what
``kvmlab diff A B`` prints and what a failing test shows: guest-visible changes first,
each with the sub-options that changed, and for two golden trees one block per case
and a summary line. The HTML is a table per case for notebooks, where IPython finds it
through :data:`kvmlab.display.FORMATTERS`; every value in it is escaped.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Final

from kvmlab.display._markup import (
    _CELL,
    _HEAD,
    _MUTED,
    _ROW,
    _TABLE,
    _box,
    _cell,
    _code,
    _e,
    _header,
    _Html,
    _p,
    _plural,
)

if TYPE_CHECKING:
    from kvmlab.golden.diff import RuntimeDiff, TreeDiff

__all__ = ["diff_html", "diff_text"]

# --------------------------------------------------------------------------- text


def _runtime_lines(diff: RuntimeDiff, indent: str = "") -> Iterator[str]:
    if diff.equal:
        yield f"{indent}no differences"
        return
    for title, group in (("guest-visible", diff.guest_visible), ("host-only", diff.host_only)):
        if not group:
            continue
        yield f"{indent}{title} ({len(group)}):"
        for change in group:
            yield f"{indent}  {change}"
            for detail in change.details:
                yield f"{indent}      {detail}"


def diff_text(diff: RuntimeDiff | TreeDiff) -> str:
    """A plain-text report, for terminals and test failures (what ``kvmlab diff`` prints)."""
    from kvmlab.golden.diff import RuntimeDiff  # noqa: PLC0415 - display is imported on first use

    lines = [f"--- {diff.a}", f"+++ {diff.b}"]
    if isinstance(diff, RuntimeDiff):
        lines += _runtime_lines(diff)
        return "\n".join(lines) + "\n"
    lines += [f"+ case {key} (only in {diff.b})" for key in diff.added]
    lines += [f"- case {key} (only in {diff.a})" for key in diff.removed]
    for key, runtime_diff in diff.changed:
        lines.append(f"~ case {key}:")
        lines += _runtime_lines(runtime_diff, "    ")
    lines.append(
        f"{len(diff.changed)} changed, {len(diff.added)} added, {len(diff.removed)} removed,"
        f" {diff.unchanged} unchanged; {len(diff.guest_visible)} guest-visible changes"
    )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- HTML

_KIND_STYLE: Final = {
    "added": "color:#1a7f37",
    "removed": "color:#cf222e",
    "changed": "color:#9a6700",
}


def _absent() -> _Html:
    return _Html(f"<span style='{_MUTED}'>&mdash;</span>")


def _html_table(diff: RuntimeDiff, labels: tuple[str, str]) -> str:
    """One row per change; its details (the sub-options that changed) in a row of their own
    under it, across the table, so the two values keep the width."""
    from kvmlab.golden.diff import show_value  # noqa: PLC0415

    if diff.equal:
        return "<p><em>no differences</em></p>"
    columns = ("change", "section", "option", *labels, "impact")
    rows: list[str] = []
    for change in diff.changes:
        impact = "guest-visible" if change.guest_visible else "host-only"
        weight = "font-weight:bold" if change.guest_visible else _MUTED
        cells = (
            _Html(f"<span style='{_KIND_STYLE[change.kind]}'>{_e(change.kind)}</span>"),
            _e(change.section),
            _code(change.label),
            _code(show_value(change.old)) if change.present[0] else _absent(),
            _code(show_value(change.new)) if change.present[1] else _absent(),
            _Html(f"<span style='white-space:nowrap;{weight}'>{_e(impact)}</span>"),
        )
        rows.append(_row(cells))
        if change.details:
            details = "<br>".join(_e(detail) for detail in change.details)
            rows.append(
                f"<tr style='{_ROW}'><td colspan='{len(columns)}' style='{_CELL};"
                f"padding-left:24px;font-size:90%;{_MUTED}'>{details}</td></tr>"
            )
    head = "".join(f"<th style='{_HEAD}'>{_header(name)}</th>" for name in columns)
    return (
        f"<table style='{_TABLE}'><thead><tr style='{_ROW}'>{head}</tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _row(cells: tuple[object, ...]) -> str:
    tds = "".join(f"<td style='{_CELL};border-bottom:none'>{_cell(value)}</td>" for value in cells)
    return f"<tr style='{_ROW};border-top:1px solid #ddd'>{tds}</tr>"


def _labels(diff: RuntimeDiff | TreeDiff, labels: tuple[str, str] | None) -> tuple[str, str]:
    return labels if labels is not None else (str(diff.a), str(diff.b))


def diff_html(diff: RuntimeDiff | TreeDiff, *, labels: tuple[str, str] | None = None) -> str:
    """An HTML fragment (a table per case) for notebooks; every value is escaped.

    :param labels: what the two sides are, for the heading and the value columns
        (``("QEMU 7.2", "QEMU 10.0")``); the diff's own names by default.
    """
    from kvmlab.golden.diff import RuntimeDiff  # noqa: PLC0415

    a, b = _labels(diff, labels)
    parts = ['<div class="kvmlab-diff">']
    if isinstance(diff, RuntimeDiff):
        counts = f"{_plural(len(diff.changes), 'change')}, {len(diff.guest_visible)} guest-visible"
        parts.append(_box(f"{a} \u2192 {b}", _html_table(diff, (a, b)), subtitle=counts))
    else:
        summary = (
            f"{len(diff.changed)} changed, {len(diff.added)} added, {len(diff.removed)} removed,"
            f" {diff.unchanged} unchanged"
        )
        parts.append(_box(f"{a} \u2192 {b}", _p(summary)))
        if diff.added or diff.removed:
            items = [f"<li>+ {_e(key)}</li>" for key in diff.added]
            items += [f"<li>- {_e(key)}</li>" for key in diff.removed]
            parts.append(f"<ul>{''.join(items)}</ul>")
        for key, runtime_diff in diff.changed:
            parts.append(f"<h4>{_e(key)}</h4>{_html_table(runtime_diff, (a, b))}")
    parts.append("</div>")
    return "".join(parts)
