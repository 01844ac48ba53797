"""The event log (``KVMLAB_FAKE_LOG``): what each fake process did, for tests to read.

Tests assert on what happened inside a daemonized fake (which QMP commands it
got, whether a script ran, why it exited) by reading one JSON object per line
from this log. Every module records through the one :class:`EventLog` the
machine holds, so the line format and the no-interleaving rule live here.
"""

from __future__ import annotations

import os
import time

from kvmlab.fake.lazy import json_module

__all__ = ["EventLog"]


class EventLog:
    """``KVMLAB_FAKE_LOG``: one JSON object per line, appended by every fake process.

    Each line is one ``write`` on an ``O_APPEND`` descriptor, so lines from
    several processes never interleave. Without a path, recording is free.
    """

    def __init__(self, path: str | None) -> None:
        self.path = os.path.abspath(path) if path else None

    def __call__(self, event: str, **fields: object) -> None:
        if self.path is None:
            return
        record = {"time": round(time.time(), 6), "pid": os.getpid(), "event": event, **fields}
        line = (json_module().dumps(record, default=str) + "\n").encode()
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError:
            return
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
