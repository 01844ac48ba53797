"""How the fake fails and stops: QEMU-worded errors and two control-flow exits.

Every module of the fake reports a refusal by raising :class:`FakeError` with
QEMU's wording; only :mod:`kvmlab.fake.program` and the machine's ``run`` turn
it into a line on stderr and an exit status, so the wording lives in one place
and the parsing code stays free of printing. :class:`EarlyExit` ends a
``-help``-style request with output, :class:`Shutdown` leaves the machine's loop.
"""

from __future__ import annotations

__all__ = ["EarlyExit", "FakeError", "QmpCommandError", "Shutdown"]


class FakeError(Exception):
    """A start failure, reported on stderr the way QEMU words it.

    :param message: what QEMU would say.
    :param where: the option it is about (``-drive file=x``), printed before
        the message like QEMU's ``error_report`` location, or ``""``.
    :param raw: print ``message`` as is, without ``<prog>:`` (QEMU's kernel
        loader writes ``qemu: could not open kernel file ...`` with ``fprintf``).
    """

    def __init__(self, message: str, where: str = "", *, raw: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.where = where
        self.raw = raw
        #: Errors QEMU reported and carried on from before this one (``falling back...``).
        self.notices: list[str] = []

    def render(self, prog: str) -> str:
        """The line(s) QEMU would print for this error."""
        before = "".join(f"{prog}: {notice}\n" for notice in self.notices)
        if self.raw:
            return before + self.message
        if self.where:
            return f"{before}{prog}: {self.where}: {self.message}"
        return f"{before}{prog}: {self.message}"


class EarlyExit(Exception):  # noqa: N818 - control flow, not an error
    """Stop early with ``code`` after printing ``output`` to stdout (``-help``)."""

    def __init__(self, code: int, output: str = "") -> None:
        super().__init__(code)
        self.code = code
        self.output = output


class Shutdown(Exception):  # noqa: N818 - control flow, not an error
    """Leave the machine's loop: clean up and exit with ``code``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class QmpCommandError(Exception):
    """A QMP command refused: the monitor answers with this text and QEMU's error class.

    :param desc: what QEMU would say.
    :param klass: QEMU's error class (``DeviceNotFound`` for an unknown device id).
    """

    def __init__(self, desc: str, klass: str = "GenericError") -> None:
        super().__init__(desc)
        self.klass = klass
