"""A migration into a descriptor or a file: ``migrate {"uri": "fd:NAME"}`` (and ``file:``).

What a snapshot is made of in QEMU: the stream goes into a descriptor passed with
``getfd`` (taken out of the table, closed at the end) or, on QEMU 10.0, a file named by
``file:PATH``. It runs through the states of a socket migration (``setup``,
``active``, the stop-and-copy with ``device`` on 10.0, ``completed``, run state
``postmigrate``; ``cont`` runs the VM again) and writes the stream
:mod:`~kvmlab.fake.migration.stream` describes: magic and header first, the RAM
padding when the ``active`` phase ends, the guest state line in the stop-and-copy. A
write that fails (``KVMLAB_FAKE_STATE_TRUNCATE=N``: the disk is full after ``N``
bytes; or a real error) makes it ``failed`` with QEMU's ``error-desc``, and the VM
stays as it was (stopped, as QEMU leaves it); ``KVMLAB_FAKE_MIGRATE_STALL`` keeps it
``active`` without writing the RAM, until ``migrate_cancel``.
"""

from __future__ import annotations

import errno
import os
import sys
import time

from kvmlab.fake.errors import QmpCommandError
from kvmlab.fake.lazy import json_module
from kvmlab.fake.migration.outgoing import DOWNTIME, Outgoing, check_can_migrate
from kvmlab.fake.migration.state import describe, snapshot
from kvmlab.fake.migration.stream import DEPRECATED_FD, deprecated_fd, header

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from kvmlab.fake.machine_view import MachineView

__all__ = ["FileOutgoing", "migrate_to_file"]

_CHUNK = 1 << 20


class FileOutgoing(Outgoing):
    """An outgoing migration whose stream is written to a descriptor, not sent to a target."""

    def __init__(self, m: MachineView, uri: str, fd: int) -> None:
        super().__init__(m, uri)
        self.fd: int | None = fd
        self.written = 0
        #: ``KVMLAB_FAKE_STATE_TRUNCATE``: the bytes that fit before the disk is full.
        self.room = m.faults.state_truncate

    def _connect(self) -> None:
        if self.status != "setup" or self.fd is None:
            return
        self.active_at = time.monotonic()
        self.status = "active"
        self._event("pass", 1)
        self._event("active")
        if not self._write(header(describe(self.m), self.stream), setup=True):
            return
        if self.m.faults.migrate_die:
            self.m.loop.after(min(self.duration / 2, 0.005), self._die)
        if not self.stall:
            self.m.loop.after(self.duration, self._stop_and_copy)

    def _stop_and_copy(self) -> None:
        if self.status != "active" or self.fd is None:
            return
        left = self.stream
        while left:  # the RAM pages (QEMU writes them all during ``active``)
            if not self._write(bytes(min(left, _CHUNK))):
                return
            left -= min(left, _CHUNK)
        m = self.m
        self.stopped_at = time.monotonic()
        runstate = m.status  # ``paused`` or ``prelaunch``: the target takes it over
        self.was_running = runstate == "running"
        m.status = "finish-migrate"
        if self.was_running:
            m.event("STOP")
        if m.profile.version >= (9, 0, 0):
            self.status = "device"
            self._event("device")
        self._event("pass", 2)
        guest = {**snapshot(m, self.was_running), "runstate": runstate}
        if self._write((json_module().dumps({"guest": guest}) + "\n").encode()):
            self.m.loop.after(DOWNTIME, self._complete)

    def _write(self, data: bytes, setup: bool = False) -> bool:
        """Write ``data`` whole; on an error (or the full-disk fault) fail as QEMU does."""
        assert self.fd is not None
        view = memoryview(data)
        while view:
            size = len(view)
            if self.room is not None:
                size = min(size, self.room - self.written)
            try:
                if size <= 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                done = os.write(self.fd, view[:size])
            except OSError as err:
                self._write_failed(err, setup)
                return False
            self.written += done
            view = view[done:]
        return True

    def _write_failed(self, err: OSError, setup: bool) -> None:
        ten = self.m.profile.version >= (9, 0, 0)
        if setup and ten:
            self.fail("ram_save_setup failed: Input/output error")
            return
        if not setup:  # QEMU names the section it was writing (RAM: id 2 on 7.2, 1 on 10)
            section = 1 if ten else 2
            line = f"failed to save SaveStateEntry with id(name): {section}(ram): -5"
            print(f"{self.m.prog}: {line}", file=sys.stderr)
        self.fail(f"Unable to write to file: {err.strerror}")

    def _close_socket(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def close(self) -> None:
        """At exit: close the descriptor."""
        self._close_socket()


def migrate_to_file(m: MachineView, uri: str, open_fd: Callable[[], int]) -> object:
    """``migrate`` to ``fd:NAME`` or (QEMU 10.0) ``file:PATH``: starts in the background.

    :param open_fd: takes the descriptor (the monitor's table, or the file, opened).

    :raise QmpCommandError: QEMU's error for an unknown descriptor; the status is
        ``failed`` with it as ``error-desc``, as in QEMU.
    """
    check_can_migrate(m)
    try:
        fd = open_fd()
    except QmpCommandError as err:
        failed = Outgoing(m, uri)
        failed.status = "failed"
        failed.error = str(err)
        failed.ended_at = time.monotonic()
        m.outgoing = failed
        raise
    if uri.startswith("fd:") and deprecated_fd(m, fd):
        print(DEPRECATED_FD, file=sys.stderr)
    outgoing = FileOutgoing(m, uri, fd)
    m.outgoing = outgoing
    outgoing.begin()
    return {}
