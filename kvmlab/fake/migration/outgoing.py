"""Live migration, the source side: QMP ``migrate`` and friends, and the transfer.

``migrate {"uri": "unix:PATH"|"tcp:HOST:PORT"}`` answers ``{}`` at once and runs in
the background on the event loop, through QEMU's states: ``setup`` (connect, send
the header :func:`~kvmlab.fake.migration.state.describe` makes), ``active`` (RAM is
"copied": ``ram.transferred`` grows with time at ``max-bandwidth``; nothing is
really sent), then the stop-and-copy (the vCPUs stop: ``STOP``, run state
``finish-migrate``; under QEMU 10 the ``device`` status), the guest state line,
the target's acknowledgement, ``completed`` and run state ``postmigrate``. A
connection error, or the target closing the connection (it refused the stream or
died), makes it ``failed`` with QEMU's ``error-desc`` and the VM runs on;
``migrate_cancel`` makes it ``cancelling`` then ``cancelled``. ``MIGRATION`` and
``MIGRATION_PASS`` events are sent when the ``events`` capability is on. The
``KVMLAB_FAKE_MIGRATE_STALL`` fault keeps it ``active`` forever (the guest dirties
memory as fast as it is sent), ``KVMLAB_FAKE_MIGRATE_TIME`` sets how long
``active`` lasts. Imported on the first migration command only.
"""

from __future__ import annotations

import _socket
import sys
import time

from kvmlab.fake.errors import QmpCommandError
from kvmlab.fake.lazy import json_module
from kvmlab.fake.migration.params import capabilities, parameters
from kvmlab.fake.migration.state import address, describe, die, snapshot

TYPE_CHECKING = False
if TYPE_CHECKING:
    from kvmlab.fake.machine_view import MachineView

__all__ = [
    "DOWNTIME",
    "Outgoing",
    "check_can_migrate",
    "migrate",
    "migrate_cancel",
    "query_migrate",
]

PAGE = 4096
#: RAM beyond ``-m`` that QEMU migrates too (ROMs, firmware): 520 KiB on a ``pc``.
_EXTRA_RAM = 532480
#: Device state sent during the downtime, as QEMU 7.2 reports ``downtime-bytes``.
_DEVICE_BYTES = 16423
_BROKEN_PIPE = "Unable to write to socket: Broken pipe"
#: How long the stop-and-copy takes without a return path (seconds).
DOWNTIME = 0.003


def used_ram(memory: int) -> int:
    """What the fake guest has touched (a busybox initramfs): 2 MiB + 1/256 of RAM, in pages.

    With the zero pages, at the default 128 MiB/s, that is ~40 ms for 512 MiB, ~115 ms for 2 GiB.
    """
    return min(memory, 2 * 1024 * 1024 + memory // 256) // PAGE * PAGE


class Outgoing:
    """One outgoing migration: its status, its clock and its connection to the target."""

    def __init__(self, m: MachineView, uri: str) -> None:
        self.m = m
        self.uri = uri
        self.status = "setup"
        self.error: str | None = None
        self.sock: _socket.socket | None = None
        self.was_running = m.status == "running"
        self.started = time.monotonic()
        self.active_at: float | None = None
        self.stopped_at: float | None = None
        self.ended_at: float | None = None
        self.ram_total = m.cfg.memory + _EXTRA_RAM
        self.normal = used_ram(m.cfg.memory) // PAGE
        self.duplicate = self.ram_total // PAGE - self.normal
        #: Bytes of the RAM stream: whole pages, and 9 bytes per zero page.
        self.stream = self.normal * (PAGE + 8) + self.duplicate * 9
        params = parameters(m)
        self.bandwidth = int(str(params["max-bandwidth"])) or 10 * 1024**3  # 0: no limit
        self.downtime_limit = int(str(params["downtime-limit"]))
        limit = m.faults.migrate_time
        self.duration = self.stream / self.bandwidth if limit is None else limit
        self.stall = m.faults.migrate_stall
        #: The ``return-path`` capability: the source waits for the target's verdict.
        self.return_path = bool(capabilities(m).get("return-path"))
        #: What the target said; it has accepted the header; the RAM phase is over.
        self.replies = b""
        self.loading = False
        self.due = False

    # -- the run

    def begin(self) -> None:
        self._event("setup")
        self.m.log("migrate", uri=self.uri, status="setup")
        self.m.loop.after(0.001, self._connect)

    def _connect(self) -> None:
        if self.status != "setup":
            return
        try:
            family, where = address(self.uri)
        except OSError as err:
            self.fail(str(err.strerror))
            return
        sock = _socket.socket(family, _socket.SOCK_STREAM)
        sock.settimeout(2.0)
        try:
            sock.connect(where)
            header = json_module().dumps(describe(self.m)) + "\n"
            sock.sendall(header.encode())
        except OSError as err:
            sock.close()
            shown = where if isinstance(where, str) else f"{where[0]}:{where[1]}"
            self.fail(f"Failed to connect to '{shown}': {err.strerror}")
            return
        self.sock = sock
        self.m.loop.watch(sock.fileno(), self._readable)
        self.active_at = time.monotonic()
        self.status = "active"
        self._event("pass", 1)
        self._event("active")
        if self.m.faults.migrate_die:
            self.m.loop.after(min(self.duration / 2, 0.005), self._die)
        if not self.stall:
            self.m.loop.after(self.duration, self._stop_and_copy)

    def _die(self) -> None:
        if self.status == "active":  # not once cancelled
            die(self.m)

    def _stop_and_copy(self) -> None:
        if self.status != "active" or self.sock is None:
            return
        if not self.loading:
            # The target has not read the header yet: a real stream would be held up
            # by the full socket buffer until it reads (or refuses) it.
            self.due = True
            return
        m = self.m
        self.stopped_at = time.monotonic()
        # The run state the target takes over: a VM paused meanwhile stays paused.
        self.was_running = m.status == "running"
        m.status = "finish-migrate"
        if self.was_running:
            m.event("STOP")
        if m.profile.version >= (9, 0, 0):
            self.status = "device"
            self._event("device")
        self._event("pass", 2)
        line = json_module().dumps({"guest": snapshot(m, self.was_running)}) + "\n"
        try:
            self.sock.sendall(line.encode())
        except OSError:
            self.fail(_BROKEN_PIPE)
            return
        if not self.return_path:
            # All is written: QEMU calls it done without hearing from the target,
            # which may still refuse the device state and exit.
            self.m.loop.after(DOWNTIME, self._complete)

    def _readable(self) -> None:
        """The target's lines: ``loading`` (header accepted), ``ok`` (state loaded), or EOF."""
        assert self.sock is not None
        try:
            data = self.sock.recv(4096)
        except OSError:
            data = b""
        self.replies += data
        if b"loading\n" in self.replies and not self.loading:
            self.loading = True
            if self.due:  # the RAM is "sent": it could not be before the target read it
                self._stop_and_copy()
                return
        if self.stopped_at is None:
            if not data:  # the target refused the stream, or died
                self.fail(_BROKEN_PIPE)
        elif self.return_path:  # the target's answer on the return path
            if b"ok\n" in self.replies:
                self._complete()
            elif not data:
                self.fail(None)
        elif not data:
            self._close_socket()

    def _complete(self) -> None:
        if self.status not in ("active", "device"):
            return
        self._close_socket()
        self.ended_at = time.monotonic()
        self.status = "completed"
        self.m.log("migrate", uri=self.uri, status="completed", ms=self._ms(self.ended_at))
        self._event("completed")
        delay = self.m.faults.finalize_delay
        if delay:  # QEMU 7.2: ``completed`` shows before the migration thread ends
            self.m.loop.after(delay, self._finalized)
        else:
            self._finalized()

    def _finalized(self) -> None:
        self.m.status = "postmigrate"

    def fail(self, desc: str | None) -> None:
        """End as ``failed`` (``desc``: QEMU's ``error-desc``, if it gives one); the VM runs on."""
        self._close_socket()
        self.ended_at = time.monotonic()
        self.status = "failed"
        self.error = desc
        if desc is not None:
            print(f"{self.m.prog}: {desc}", file=sys.stderr)
        self.m.log("migrate", uri=self.uri, status="failed", error=desc)
        self._event("failed")
        self._restart()

    def cancel(self) -> None:
        """``migrate_cancel``: ``cancelling`` now, ``cancelled`` once the stream is closed."""
        if self.status not in ("setup", "active", "device"):
            return
        self._close_socket()
        self.status = "cancelling"
        self._event("cancelling")
        self.m.loop.after(0.002, self._cancelled)

    def _cancelled(self) -> None:
        self.ended_at = time.monotonic()
        self.status = "cancelled"
        self.m.log("migrate", uri=self.uri, status="cancelled")
        self._event("cancelled")
        self._restart()

    def _restart(self) -> None:
        if self.m.status == "finish-migrate":
            self.m.status = "paused"
            if self.was_running:
                self.m.resume()

    def _close_socket(self) -> None:
        if self.sock is not None:
            self.m.loop.unwatch(self.sock.fileno())
            self.sock.close()
            self.sock = None

    def close(self) -> None:
        """At exit: drop the connection."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def _event(self, status: str, passes: int = 0) -> None:
        if capabilities(self.m).get("events"):
            if passes:
                self.m.event("MIGRATION_PASS", {"pass": passes})
            else:
                self.m.event("MIGRATION", {"status": status})

    # -- query-migrate

    def _ms(self, until: float | None = None) -> int:
        return int(((until or time.monotonic()) - self.started) * 1000)

    def query(self) -> dict[str, object]:
        """``query-migrate``'s answer, with the fields QEMU gives in each status."""
        status = self.status
        if status in ("setup", "cancelling", "cancelled"):
            return {"status": status}
        if status == "failed" and self.error is None:
            return {"status": status}
        if status == "failed":
            return {"status": status, "error-desc": self.error}
        assert self.active_at is not None
        now = self.ended_at or time.monotonic()
        copying = min(now, self.stopped_at or now) - self.active_at
        setup = self._ms(self.active_at) or 1
        info: dict[str, object]  # in QEMU's order
        if status == "completed" and self.stopped_at is not None:
            downtime = int((now - self.stopped_at) * 1000)
            info = {"status": status, "setup-time": setup, "downtime": downtime}
        else:
            expected = self.downtime_limit
            if self.stall:  # what is left to send, at the bandwidth: never under the limit
                left = self.ram_total // 10 * 1000 // self.bandwidth
                expected = max(left, 2 * self.downtime_limit)
            info = {"expected-downtime": expected, "status": status, "setup-time": setup}
        info["total-time"] = self._ms(now)
        info["ram"] = self._ram(copying, status == "completed")
        return info

    def _passes(self, copying: float) -> int:
        """Under the stall fault, the passes over RAM completed so far."""
        return int(copying * self.bandwidth / self.stream) if self.stall else 0

    def _ram(self, copying: float, done: bool) -> dict[str, object]:
        if self.stall:
            fraction = min(copying * self.bandwidth / self.stream, 0.9)
            transferred = int(copying * self.bandwidth)
        else:
            fraction = 1.0 if done else min(copying / max(self.duration, 1e-6), 1.0)
            transferred = int(self.stream * fraction)
        normal = int(self.normal * fraction)
        downtime_bytes = _DEVICE_BYTES if done else 0
        remaining = 0 if done else (self.ram_total - int(self.ram_total * fraction)) // PAGE * PAGE
        seconds = max(copying, 1e-3)
        ram: dict[str, object] = {
            "total": self.ram_total,
            "postcopy-requests": 0,
            "dirty-sync-count": 2 if done else 1 + self._passes(copying),
            "multifd-bytes": 0,
            "pages-per-second": int((normal + int(self.duplicate * fraction)) / seconds),
            "downtime-bytes": downtime_bytes,
            "page-size": PAGE,
            "remaining": remaining,
            "postcopy-bytes": 0,
            "mbps": transferred * 8 / 1e6 / seconds,
            "transferred": transferred + downtime_bytes,
            "dirty-sync-missed-zero-copy": 0,
            "precopy-bytes": transferred,
            "duplicate": int(self.duplicate * fraction),
            "dirty-pages-rate": self.bandwidth // PAGE if self.stall else 0,
            "skipped": 0,
            "normal-bytes": (normal + (2 if done else 0)) * PAGE,
            "normal": normal + (2 if done else 0),
        }
        if self.m.profile.version >= (9, 0, 0):
            del ram["skipped"]
        return ram


# --------------------------------------------------------------------------- QMP


def check_can_migrate(m: MachineView) -> None:
    """Refuse a ``migrate`` while this VM cannot start one, as QEMU does (any URI).

    :raise QmpCommandError: QEMU's error.
    """
    current = m.outgoing
    if m.status == "inmigrate":
        raise QmpCommandError("Guest is waiting for an incoming migration")
    if current is not None and current.status in ("setup", "active", "device", "cancelling"):
        raise QmpCommandError("There's a migration process in progress")
    if m.status == "postmigrate":
        raise QmpCommandError("Can't migrate the vm that was paused due to previous migration")


def migrate(m: MachineView, arguments: dict[str, object]) -> object:
    uri = str(arguments["uri"])
    check_can_migrate(m)
    try:
        address(uri)
    except OSError:
        pass  # a bad port: found by the connection, after the reply, as in QEMU
    except ValueError:
        if m.profile.version >= (9, 0, 0):
            raise QmpCommandError(f"unknown migration protocol: {uri}") from None
        # QEMU 7.2 (``file:`` among others) marks the migration failed, with no error-desc.
        failed = Outgoing(m, uri)
        failed.status = "failed"
        failed.ended_at = time.monotonic()
        m.outgoing = failed
        raise QmpCommandError("Parameter 'uri' expects a valid migration protocol") from None
    outgoing = Outgoing(m, uri)
    m.outgoing = outgoing
    outgoing.begin()
    return {}


def migrate_cancel(m: MachineView, arguments: dict[str, object]) -> object:
    if m.outgoing is not None:
        m.outgoing.cancel()
    return {}


def query_migrate(m: MachineView, arguments: dict[str, object]) -> object:
    # The latest migration: a VM that arrived by one and is now sent on reports the
    # outgoing one, as QEMU does (its migration state is replaced by ``migrate``).
    if m.outgoing is not None:
        return m.outgoing.query()
    return m.incoming.query() if m.incoming is not None else {}
