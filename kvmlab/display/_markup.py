"""The HTML and text toolkit every renderer shares: escaping, tables, boxes.

One place decides how a table or a value looks, and that every outside string is
escaped with :func:`html.escape`, so the renderers of each object cannot drift apart.
"""

from __future__ import annotations

import html
import importlib
import re
import tempfile
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = [
    "_BAD",
    "_CELL",
    "_HEAD",
    "_MUTED",
    "_OK",
    "_ROW",
    "_TABLE",
    "_Html",
    "_box",
    "_cell",
    "_chunks",
    "_code",
    "_e",
    "_elide_temp",
    "_header",
    "_p",
    "_plain",
    "_plural",
    "_require",
    "_table",
    "_text_table",
]

# --------------------------------------------------------------------------- helpers


class _Html(str):
    """Already-built markup: table cells of this type are inserted as they are."""

    __slots__ = ()


def _temp_dirs() -> re.Pattern[str]:
    """A directory made in the temporary folder: a path goes on inside it, or its name ends
    in the eight random characters :func:`tempfile.mkdtemp` adds (``kvmlab-notebook-x1y2z3_4``).
    """
    root = re.escape(tempfile.gettempdir().rstrip("/"))
    return re.compile(rf"{root}/(?:[^/\s,'\"<>]+(?=/)|[^/\s,'\"<>]*[-_.][a-z0-9_]{{8}}\b)")


def _elide_temp(text: str) -> str:
    """``/tmp/kvmlab-notebook-x1y2z3_4/pid/vm1`` as ``…/pid/vm1``.

    A temporary state directory belongs to one run: its random name says nothing to a reader
    and fills the tables, so every HTML view shows the paths inside it from ``…`` on.
    """
    return _temp_dirs().sub("…", text)


def _e(value: object) -> str:
    return html.escape(_elide_temp(str(value)), quote=True)


#: Where a long value may wrap: after a comma, never at a hyphen inside a name or path.
_BREAK_AFTER = re.compile(r"(?<=,)")
_EMPTY = "<span style='color:#6e7781;font-style:italic'>empty</span>"


def _code(value: object, *, breakable: bool = True) -> _Html:
    """A value in code type. An empty string shows as *empty*, not as an empty grey box.

    Long values (sockets, drives) wrap after their commas, and a long path after its
    slashes; never at a hyphen, so ``web1-serial.log`` is never split.
    """
    if str(value) == "":
        return _Html(_EMPTY)
    if not breakable:
        return _Html(f"<code style='white-space:nowrap'>{_e(value)}</code>")
    pieces = [piece for piece in _BREAK_AFTER.split(_elide_temp(str(value))) if piece]
    return _Html(f"<code>{'<wbr>'.join(map(_whole, pieces))}</code>")


#: A piece longer than this may also wrap after a slash inside a path.
_LONG_PIECE = 32
_SLASH = re.compile(r"(?<=[\w.-]/)(?=[\w.-])")


def _whole(piece: str) -> str:
    """One piece of a value, escaped; kept on one line when a hyphen inside could split it.

    A long piece (a socket path) may wrap after a slash as well, as a path reads.
    """
    parts = [part for part in _SLASH.split(piece) if part] if len(piece) > _LONG_PIECE else []
    if len(parts) > 1:
        return "<wbr>".join(map(_whole, parts))
    text = html.escape(piece, quote=True)
    return f"<span style='white-space:nowrap'>{text}</span>" if "-" in piece[1:] else text


def _plural(count: int, noun: str) -> str:
    """``1 instance``, ``2 instances``."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


#: Every table sets its own alignment and row backgrounds: JupyterLab right-aligns cells and
#: stripes rows, which would mix with the colours that carry meaning here.
_TABLE = "border-collapse:collapse;margin:4px 0;font-size:90%;max-width:100%"
_CELL = (
    "padding:2px 8px;text-align:left;vertical-align:top;border-bottom:1px solid #ddd;"
    "overflow-wrap:break-word"
)
_HEAD = _CELL + ";border-bottom:2px solid #999"
_ROW = "background:transparent"
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
    head = "".join(f"<th style='{_HEAD}'>{_header(h)}</th>" for h in headers)
    body: list[str] = []
    for number, row in enumerate(rows):
        style = row_styles[number] if number < len(row_styles) else ""
        cells = "".join(f"<td style='{_CELL}'>{_cell(value)}</td>" for value in row)
        body.append(f"<tr style='{_ROW};{style}'>{cells}</tr>")
    return _Html(
        f"<table style='{_TABLE}'><thead><tr style='{_ROW}'>{head}</tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def _header(text: str) -> str:
    """A column heading that may wrap between its words, never inside one
    (``qemu-7.2 (7.2.22)`` over two lines, never ``qemu-`` and ``7.2``)."""
    return " ".join(
        f"<span style='white-space:nowrap'>{_e(word)}</span>" if "-" in word else _e(word)
        for word in text.split(" ")
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


def _require(module: str, what: str) -> Any:
    """An optional module (matplotlib, pandas), imported when first needed.

    :raise ModuleNotFoundError: naming what needs it and the extra that installs it.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        err.msg = f"{what} need {module}: pip install 'kvmlab[notebooks]'"
        raise
