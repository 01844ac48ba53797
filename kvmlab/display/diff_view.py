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

from kvmlab.display._markup import _e

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
_COLUMNS: Final = ("change", "section", "option", "A", "B", "impact", "details")


def _html_table(diff: RuntimeDiff) -> str:
    from kvmlab.golden.diff import show_value  # noqa: PLC0415

    if diff.equal:
        return "<p><em>no differences</em></p>"
    rows = []
    for change in diff.changes:
        impact = "guest-visible" if change.guest_visible else "host-only"
        weight = "font-weight:bold;" if change.guest_visible else ""
        details = "<br>".join(_e(detail) for detail in change.details)
        rows.append(
            f'<tr style="{_KIND_STYLE[change.kind]}">'
            f"<td>{_e(change.kind)}</td><td>{_e(change.section)}</td>"
            f"<td><code>{_e(change.label)}</code></td>"
            f"<td><code>{_e(show_value(change.old)) if change.present[0] else ''}</code></td>"
            f"<td><code>{_e(show_value(change.new)) if change.present[1] else ''}</code></td>"
            f'<td style="{weight}">{_e(impact)}</td><td>{details}</td></tr>'
        )
    head = "".join(f"<th>{name}</th>" for name in _COLUMNS)
    return f'<table class="kvmlab-diff"><tr>{head}</tr>{"".join(rows)}</table>'


def diff_html(diff: RuntimeDiff | TreeDiff) -> str:
    """An HTML fragment (a table per case) for notebooks; every value is escaped."""
    from kvmlab.golden.diff import RuntimeDiff  # noqa: PLC0415

    parts = [
        '<div class="kvmlab-diff">',
        f"<p><code>--- {_e(diff.a)}</code><br><code>+++ {_e(diff.b)}</code></p>",
    ]
    if isinstance(diff, RuntimeDiff):
        parts.append(_html_table(diff))
    else:
        summary = (
            f"{len(diff.changed)} changed, {len(diff.added)} added, {len(diff.removed)} removed,"
            f" {diff.unchanged} unchanged"
        )
        parts.append(f"<p>{_e(summary)}</p>")
        if diff.added or diff.removed:
            items = [f"<li>+ {_e(key)}</li>" for key in diff.added]
            items += [f"<li>- {_e(key)}</li>" for key in diff.removed]
            parts.append(f"<ul>{''.join(items)}</ul>")
        for key, runtime_diff in diff.changed:
            parts.append(f"<h4>{_e(key)}</h4>{_html_table(runtime_diff)}")
    parts.append("</div>")
    return "".join(parts)
