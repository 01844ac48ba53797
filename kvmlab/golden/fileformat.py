"""The golden file format: how a pinned command line is written and read back.

Two layers read golden files: :mod:`kvmlab.golden.cases` writes and compares them, and
:mod:`kvmlab.golden.diff` compares whole golden trees. The format (the fixed state directory
the runtimes are generated for, the ``.args``/``.error`` suffixes, one argument per
line with a marker line between the saved argv and the start-time arguments) is the
vocabulary both share, so it lives here, below both, and imports only the layout.
See ``docs/golden.md`` for the files themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Final

from kvmlab.errors import GoldenError
from kvmlab.spec.layout import StateLayout

__all__ = [
    "ARGS_SUFFIX",
    "ERROR_SUFFIX",
    "GOLDEN_LAYOUT",
    "START_MARKER",
    "GoldenError",
    "parse_args_text",
    "render_args",
]

#: The state directory every golden runtime is generated for: fixed, so the pidfile,
#: socket and log paths in the files do not depend on the machine or the user.
GOLDEN_LAYOUT: Final = StateLayout(Path("/var/lib/kvmlab"))
#: The line between the saved argv and the start-time arguments in a ``.args`` file.
START_MARKER: Final = "#--- start-time arguments (placeholder NIC plans, docs/golden.md) ---#"
ARGS_SUFFIX: Final = ".args"
ERROR_SUFFIX: Final = ".error"


def render_args(argv: Sequence[str], start_args: Sequence[str]) -> str:
    """The ``.args`` text: one argument per line, the marker, the start-time arguments.

    :raise GoldenError: an argument holds a newline or equals the marker line, which
        would make the file ambiguous (the models forbid both; this is a safety net).
    """
    for word in (*argv, *start_args):
        if "\n" in word or "\r" in word or word == START_MARKER:
            raise GoldenError(f"argument {word!r} cannot be written one per line")
    return "\n".join([*argv, START_MARKER, *start_args]) + "\n"


def parse_args_text(text: str, source: str = "") -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Read an ``.args`` text back into (saved argv, start-time arguments).

    :raise GoldenError: the marker line is missing or repeated, or the text does not
        end with a newline (a truncated file).
    """
    where = f"{source}: " if source else ""
    if not text.endswith("\n"):
        raise GoldenError(f"{where}golden .args file does not end with a newline")
    lines = text[:-1].split("\n")
    if lines.count(START_MARKER) != 1:
        raise GoldenError(
            f"{where}golden .args file needs exactly one marker line {START_MARKER!r}"
        )
    cut = lines.index(START_MARKER)
    return tuple(lines[:cut]), tuple(lines[cut + 1 :])
