"""The QMP traffic kvmlab saw: ``log/<name>.qmp.log``, one JSON object per line.

QEMU sends its events (``STOP``, ``RESET``, ``SHUTDOWN``, ``DEVICE_DELETED``...) only
to a connected QMP client, and kvmlab connects only for its own commands: so this is
not everything the VM did, but what kvmlab's sessions sent and received while they
were connected, for a failing test's report (:mod:`kvmlab.testing.plugin`) and for a
human reading ``log/``. Each line is one of::

    {"time": 1718000000.123456, "command": "device_add", "arguments": {...}}
    {"time": 1718000000.125001, "command": "device_add", "error": "Duplicate device ID ..."}
    {"time": 1718000000.130542, "event": "DEVICE_DELETED", "data": {...}}

(an event's ``time`` is QEMU's own timestamp). Replies that succeed are not recorded,
only that the command was sent. The file is opened once per session and each record is
one ``write`` on an ``O_APPEND`` descriptor (no flush, no fsync: a few microseconds
against the round trip of a QMP command), so records of concurrent sessions never
interleave. It stays bounded: past :data:`MAX_BYTES` it becomes ``<name>.qmp.log.1``
(replacing the previous one) and a new file begins.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kvmlab.errors import LayoutError
from kvmlab.spec.layout import StateLayout

__all__ = ["MAX_BYTES", "QmpTrafficLog", "qmp_log_for_socket"]

#: Size after which the log starts over (the previous one kept as ``.1``).
MAX_BYTES = 256 * 1024


def qmp_log_for_socket(path: Path) -> Path | None:
    """``log/<name>.qmp.log`` for the QMP socket ``ctrl/<name>.qmp`` of a state directory.

    ``None`` when ``path`` is not an instance's QMP socket in a state directory whose
    ``log/`` exists (a socket of QEMU's own, a test's scratch socket).
    """
    if path.suffix != ".qmp":
        return None
    name = path.stem
    try:
        layout = StateLayout(path.parent.parent)
        if layout.qmp_socket(name) != path:
            return None
    except (LayoutError, ValueError):
        return None
    log = layout.qmp_log(name)
    return log if log.parent.is_dir() else None


class QmpTrafficLog:
    """The open log of one QMP session; every method is best effort and never raises.

    :param path: the log file.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._size = 0
        self._open()

    def _open(self) -> None:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._size = os.fstat(fd).st_size
        except OSError:
            return
        self._fd = fd

    def command(self, command: str, arguments: Mapping[str, object] | None) -> None:
        """Record a command about to be sent."""
        record: dict[str, Any] = {"time": round(time.time(), 6), "command": command}
        if arguments:
            record["arguments"] = arguments
        self._write(record)

    def error(self, command: str, message: str) -> None:
        """Record a command's error reply (or why no reply came)."""
        self._write({"time": round(time.time(), 6), "command": command, "error": message})

    def event(self, message: Mapping[str, Any]) -> None:
        """Record an event QEMU sent, at QEMU's timestamp."""
        stamp = message.get("timestamp")
        when = time.time()
        if isinstance(stamp, Mapping):
            seconds, micro = stamp.get("seconds"), stamp.get("microseconds")
            if isinstance(seconds, int) and isinstance(micro, int):
                when = seconds + micro / 1e6
        record: dict[str, Any] = {"time": round(when, 6), "event": message.get("event")}
        if message.get("data"):
            record["data"] = message["data"]
        self._write(record)

    def _write(self, record: Mapping[str, Any]) -> None:
        fd = self._fd
        if fd is None:
            return
        line = (json.dumps(record, default=str, separators=(",", ":")) + "\n").encode()
        try:
            if self._size + len(line) > MAX_BYTES:
                self._rotate()
                fd = self._fd
                if fd is None:
                    return
            os.write(fd, line)
        except OSError:
            return
        self._size += len(line)

    def _rotate(self) -> None:
        """Start a new file; the full one becomes ``.1``. Another session may have done it
        already: its size is looked at again first."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                if os.stat(self.path).st_size > MAX_BYTES // 2:
                    os.replace(self.path, self.path.with_name(self.path.name + ".1"))
            os.close(fd)
        self._open()

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
