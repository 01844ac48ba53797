"""The HTML and text toolkit every renderer shares: escaping, tables, boxes.

One place decides how a table or a value looks, and that every outside string is
escaped with :func:`html.escape`, so the renderers of each object cannot drift apart.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    pass

__all__ = [
    "_BAD",
    "_CELL",
    "_HEAD",
    "_MUTED",
    "_OK",
    "_TABLE",
    "_Html",
    "_box",
    "_cell",
    "_chunks",
    "_code",
    "_e",
    "_p",
    "_plain",
    "_table",
    "_text_table",
]

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
