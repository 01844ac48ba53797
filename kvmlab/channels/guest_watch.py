"""Whether a guest can still answer a wait: a kernel panic on its console, or its VM gone.

A test that waits for a console line or a command's reply from a guest that panicked,
or whose QEMU process exited, would wait out its whole timeout for something that can
no longer come. :class:`GuestWatch` tells the waits of :mod:`~kvmlab.channels.console`
and :mod:`~kvmlab.channels.guest_channel` at once, with what the guest printed.

A panic is Linux's ``Kernel panic - not syncing: ...`` line, as long as the guest did
not come back from it: a report announcing ``Rebooting in N seconds`` (``panic=N``), or
followed by output after its ``---[ end Kernel panic`` line (a guest that rebooted and
printed again), is not a panic any more. The process is the one named by the
instance's pidfile when the wait began, followed through a pidfd, so a pid reused
later is never mistaken for it.

The watch finds both files from the channel's own path when that path is a kvmlab
state directory's (:class:`~kvmlab.spec.layout.StateLayout`): a console or channel
built on other paths is not watched, and waits as before.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
from pathlib import Path

from kvmlab.errors import GuestDownError, LayoutError
from kvmlab.spec.layout import StateLayout

__all__ = ["PANIC_LINE", "GuestWatch", "panic_report", "tail_lines"]

#: What Linux's ``panic()`` prints first, whatever the reason.
PANIC_LINE = "Kernel panic - not syncing"
_END = "---[ end Kernel panic"
#: The panic's first line, not the ``---[ end Kernel panic - not syncing`` that closes it.
_PANIC = re.compile(r"(?<!end )" + re.escape(PANIC_LINE))
_REBOOTING = "Rebooting in "
#: Lines of console output a :class:`GuestDownError` carries.
TAIL_LINES = 30


def tail_lines(text: str, count: int = TAIL_LINES) -> str:
    """The last ``count`` lines of ``text`` (``\\r\\n`` line ends made ``\\n``)."""
    lines = text.replace("\r\n", "\n").rstrip("\n").split("\n")
    return "\n".join(lines[-count:])


def panic_report(text: str) -> str | None:
    """The guest's kernel panic report if it is the last thing the guest printed, else ``None``.

    :param text: the console output since this boot began.
    """
    starts = [match.start() for match in _PANIC.finditer(text)]
    if not starts:
        return None
    start = text.rfind("\n", 0, starts[-1]) + 1
    report = text[start:]
    if _REBOOTING in report:
        return None
    end = report.find(_END)
    if end >= 0:
        line_end = report.find("\n", end)
        if line_end >= 0 and report[line_end + 1 :].strip():
            return None
    return tail_lines(report)


class _Process:
    """The VM process as it was when the wait began; ``exited()`` once it is gone."""

    def __init__(self, pidfile: Path) -> None:
        self.pid: int | None = None
        self._pidfd: int | None = None
        try:
            text = pidfile.read_text(encoding="ascii", errors="replace").strip()
            cmdline = Path(f"/proc/{text}/cmdline").read_bytes() if text.isdigit() else b""
        except OSError:
            return
        # The pid is QEMU's only while that process was started with this pidfile.
        if os.fsencode(pidfile) + b"\0" not in cmdline:
            return
        self.pid = int(text)
        with contextlib.suppress(AttributeError, OSError):
            self._pidfd = os.pidfd_open(self.pid)

    def exited(self) -> bool:
        if self.pid is None:
            return True
        if self._pidfd is not None:
            readable, _, _ = select.select([self._pidfd], [], [], 0)
            return bool(readable)
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text(encoding="ascii", errors="replace")
        except OSError:
            return True
        return stat.rsplit(")", 1)[-1].split()[:1] == ["Z"]

    def close(self) -> None:
        fd, self._pidfd = self._pidfd, None
        if fd is not None:
            os.close(fd)


class GuestWatch:
    """Checks, during one wait, that the guest of ``name`` can still answer; :meth:`close` after.

    :param name: the instance, for messages.
    :param serial_log: its console log (``log/<name>.serial.log``).
    :param pidfile: its QEMU's pidfile.
    """

    def __init__(self, name: str, serial_log: Path, pidfile: Path) -> None:
        self.name = name
        self.serial_log = serial_log
        self.pidfile = pidfile
        self._process: _Process | None = None

    @classmethod
    def for_path(cls, name: str, path: Path, kind: str) -> GuestWatch | None:
        """The watch of the instance whose ``kind`` file is ``path``, in a state directory.

        :param kind: ``"serial_log"`` or ``"cmd_socket"``: the :class:`StateLayout` method
            that names ``path``; ``None`` when ``path`` is not that file of ``name``.
        """
        try:
            layout = StateLayout(path.parent.parent)
            if getattr(layout, kind)(name) != path:
                return None
        except (LayoutError, ValueError):
            return None
        return cls(name, layout.serial_log(name), layout.pidfile(name))

    def close(self) -> None:
        """Let go of the process (its pidfd); the next :meth:`check` looks it up again."""
        process, self._process = self._process, None
        if process is not None:
            process.close()

    def console(self) -> str:
        """The console output since this boot began (``""`` without a log)."""
        try:
            return self.serial_log.read_bytes().decode("utf-8", errors="replace")
        except OSError:
            return ""

    def check(self, console: str | None = None, pattern: str = "") -> None:
        """Raise when the guest panicked or its VM process is gone.

        :param console: the console output, when the caller just read it.
        :param pattern: what the caller waits for, for the error.
        :raise GuestDownError: ``reason`` ``"panic"`` or ``"exited"``.
        """
        text = self.console() if console is None else console
        report = panic_report(text)
        if report is not None:
            raise GuestDownError(
                f"the guest of {self.name} panicked:\n{report}",
                reason="panic",
                output=report,
                pattern=pattern,
            )
        if self._process is None:
            # The process of the wait's first check is the one followed from then on.
            self._process = _Process(self.pidfile)
        if self._process.exited():
            # The last bytes QEMU wrote may have landed after the read above.
            text = self.console()
            report = panic_report(text)
            tail = tail_lines(text)
            gone = "was not running" if self._process.pid is None else "exited"
            what = f"panicked and its VM process {gone}" if report else f"VM process {gone}"
            raise GuestDownError(
                f"the guest of {self.name} {what}; the console ended with:\n{tail}",
                reason="panic" if report else "exited",
                output=report or tail,
                pattern=pattern,
            )
