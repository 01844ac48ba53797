"""The fake's migration stream as a file: what ``migrate fd:`` writes and ``-incoming`` reads.

A state file holds what the socket transfer sends, behind QEMU's magic so that a
reader can tell a state from anything else: ``QEVM\\0\\0\\0\\3`` (QEMU's file magic and
stream version), the header line :func:`~kvmlab.fake.migration.state.describe` makes
(with ``pad``, the length of what follows), ``pad`` zero bytes standing for the RAM
pages QEMU would write, and the guest state line
(:func:`~kvmlab.fake.migration.state.snapshot`). :func:`parse` is the loading side:
it returns the guest state or raises :class:`StreamError` with the lines QEMU prints
for the same damage (measured on 7.2 and 10.0): a stream cut in its first bytes lacks
the configuration section; one cut in the RAM fails in the RAM section (with an I/O
error); a header that does not fit this VM fails as a socket migration's does.
Loaded by a VM that writes or reads a state file only.
"""

from __future__ import annotations

import os

from kvmlab.fake.lazy import json_module
from kvmlab.fake.migration.state import mismatch

TYPE_CHECKING = False
if TYPE_CHECKING:
    from kvmlab.fake.machine_view import MachineView

__all__ = [
    "DEPRECATED_FD",
    "MAGIC",
    "StreamError",
    "deprecated_fd",
    "header",
    "parse",
    "ram_section_lost",
]

#: QEMU's ``QEMU_VM_FILE_MAGIC`` and ``QEMU_VM_FILE_VERSION``: the first 8 bytes of a state.
MAGIC = b"QEVM\x00\x00\x00\x03"
_INVALID = "load of migration failed: Invalid argument"
_IO = "load of migration failed: Input/output error"
#: What QEMU 10.0 prints (without its program name) when ``fd:`` names a regular file.
DEPRECATED_FD = "warning: fd: migration to a file is deprecated. Use file: instead."


class StreamError(Exception):
    """A stream this VM cannot load; ``lines`` are QEMU's messages for it."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("; ".join(lines))
        self.lines = lines


def header(description: dict[str, object], pad: int) -> bytes:
    """The magic and the header line: ``description`` plus the RAM padding's length."""
    line: str = json_module().dumps({**description, "pad": pad})
    return MAGIC + line.encode() + b"\n"


def ram_section_lost(m: MachineView) -> list[str]:
    """QEMU's lines for a stream that ends inside the RAM (its section id: 2 on 7.2, 1 on 10)."""
    if m.profile.version >= (9, 0, 0):
        return ["Getting RAM address failed", "error while loading state section id 1(ram)", _IO]
    return ["error while loading state section id 2(ram)", _IO]


def deprecated_fd(m: MachineView, fd: int) -> bool:
    """QEMU 10.0 warns when ``fd:`` names a regular file (it wants ``file:``)."""
    if m.profile.version < (9, 0, 0):
        return False
    import stat  # noqa: PLC0415 - kept beside its only use

    try:
        return stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError:
        return False


def parse(m: MachineView, data: bytes) -> dict[str, object]:
    """The guest state in ``data``, once the header has been checked against this VM.

    :raise StreamError: the stream is not a state, is cut short, or does not fit this VM.
    """
    if len(data) < len(MAGIC) or not data.startswith(MAGIC[:4]):
        raise StreamError(["Not a migration stream", _INVALID])
    line, newline, rest = data[len(MAGIC) :].partition(b"\n")
    if not newline:
        raise StreamError(["Configuration section missing", _INVALID])
    try:
        head = json_module().loads(line)
    except ValueError:
        raise StreamError(["Configuration section missing", _INVALID]) from None
    if not isinstance(head, dict):
        raise StreamError(["Configuration section missing", _INVALID])
    problems = mismatch(m, head)
    if problems:
        raise StreamError(problems)
    pad = head.get("pad")
    pad = pad if isinstance(pad, int) and pad >= 0 else 0
    if len(rest) < pad:
        raise StreamError(ram_section_lost(m))
    guest_line, newline, _ = rest[pad:].partition(b"\n")
    try:
        message = json_module().loads(guest_line) if newline else None
    except ValueError:
        message = None
    if not isinstance(message, dict) or not isinstance(message.get("guest"), dict):
        raise StreamError(ram_section_lost(m))  # cut after the RAM: the end is missing
    problems = mismatch(m, head, devices=True)
    if problems:
        raise StreamError(problems)
    guest: dict[str, object] = message["guest"]
    return guest
