"""What a notebook needs besides pictures: progress while a guest boots, the live command
line of a VM, a clean console tail, and the example files kvmlab ships.

A notebook should read as a user's story; a polling loop or ``/proc`` parsing in a cell
hides it. These helpers read consoles and ``/proc`` (nothing here writes or starts
anything) and show progress through IPython when it runs, by one display line updated in
place; outside IPython they only wait.
"""

from __future__ import annotations

import html
import importlib
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kvmlab.display.argv_view import _split_options

if TYPE_CHECKING:
    from kvmlab.channels.console import Console, GuestFacts

__all__ = [
    "console_tail",
    "example_file",
    "example_files",
    "live_argv",
    "option_values",
    "wait_for_facts",
]

#: The last line of the facts block the test guest and the fake kvm print.
_FACTS_END = "KVMLAB-FACTS-END"
#: Terminal queries and colours a guest's shell sends (``ESC [ 6 n``): noise in a notebook.
_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class _Progress:
    """One line in the notebook, updated in place; nothing outside IPython."""

    def __init__(self, text: str) -> None:
        self._handle: Any = None
        try:
            ipython: Any = importlib.import_module("IPython")
            shown: Any = importlib.import_module("IPython.display")
        except ModuleNotFoundError:
            return
        if ipython.get_ipython() is not None:
            self._html = shown.HTML
            self._handle = shown.display(shown.HTML(self._line(text)), display_id=True)

    @staticmethod
    def _line(text: str) -> str:
        return f"<code style='white-space:pre-wrap'>{html.escape(text)}</code>"

    def update(self, text: str) -> None:
        if self._handle is not None:
            self._handle.update(self._html(self._line(text)))


def wait_for_facts(console: Console, timeout: float = 240.0, poll: float = 0.5) -> GuestFacts:
    """Wait until the guest has printed its facts, showing how long and its last line.

    :param console: ``lab.console(name)``.
    :raise TimeoutError: after ``timeout`` seconds, with the end of the console.
    """
    progress = _Progress("waiting for the guest...")
    began = time.monotonic()
    while True:
        text = console.read()
        elapsed = time.monotonic() - began
        if _FACTS_END in text:
            progress.update(f"guest facts after {elapsed:.1f} s")
            return console.facts(timeout=5)
        if elapsed > timeout:
            raise TimeoutError(f"no guest facts after {timeout:.0f} s; console:\n{text[-2000:]}")
        lines = _ESCAPES.sub("", text).strip().splitlines()
        last = lines[-1][-100:] if lines else ""
        progress.update(f"{elapsed:5.1f} s, {len(lines)} console lines: {last}")
        time.sleep(poll)


def console_tail(console: Console, lines: int = 12) -> str:
    """The last ``lines`` lines of this boot's console, without terminal escape sequences."""
    return "\n".join(_ESCAPES.sub("", console.read()).splitlines()[-lines:])


def live_argv(pid: int) -> tuple[str, ...]:
    """The command line a running process was started with, from ``/proc/PID/cmdline``.

    :raise ProcessLookupError: when no process has that pid.
    """
    from kvmlab.host.process import read_cmdline  # noqa: PLC0415

    argv = read_cmdline(pid)
    if argv is None:
        raise ProcessLookupError(f"no process {pid}: /proc/{pid}/cmdline cannot be read")
    return argv


def option_values(argv: Sequence[str], option: str) -> list[str]:
    """Every value ``option`` has in a command line: ``option_values(argv, "-m") == ["256"]``."""
    return [value for _, name, value in _split_options(argv) if name == option and value]


# --------------------------------------------------------------------------- examples


def _example_dirs() -> list[Path]:
    """The installed package's examples, then a source tree's ``fixtures/``."""
    package = Path(__file__).resolve().parents[1]
    return [path for path in (package / "_examples", package.parent / "fixtures") if path.is_dir()]


def example_file(*parts: str) -> Path:
    """A file kvmlab ships for notebooks and docs: ``example_file("legacy-runtimes",
    "spice-era-with-disks.json")``. Works from any directory, installed or in a source tree.

    :raise FileNotFoundError: naming the file and where it was looked for.
    """
    if not parts or any(part in {"", ".", ".."} or "/" in part for part in parts):
        raise FileNotFoundError(f"not an example file name: {'/'.join(parts)!r}")
    for base in _example_dirs():
        path = base.joinpath(*parts)
        if path.is_file():
            return path
    looked = ", ".join(str(base) for base in _example_dirs()) or "no example folder"
    raise FileNotFoundError(f"no example file {'/'.join(parts)!r} in {looked}")


def example_files(folder: str) -> list[str]:
    """The names of the example files in one folder (``"legacy-runtimes"``), sorted."""
    names = {
        path.name
        for base in _example_dirs()
        if (base / folder).is_dir()
        for path in (base / folder).iterdir()
        if path.is_file()
    }
    return sorted(names)
