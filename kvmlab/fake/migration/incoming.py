"""Live migration, the target side: ``-incoming`` and ``migrate-incoming``.

A VM started with ``-incoming unix:PATH`` or ``-incoming tcp:HOST:PORT`` does not
boot: its run state is ``inmigrate`` and it listens (before a ``-daemonize`` parent
exits) for one source. ``-incoming defer`` waits for QMP ``migrate-incoming``. When
the source connects the incoming migration is ``active``; the header line is checked
against this VM's own command line (:func:`~kvmlab.fake.migration.state.mismatch`)
and a mismatch, or a stream that ends early (the source cancelled or died), prints
QEMU's errors, sends ``MIGRATION`` ``failed`` and exits with status 1, as QEMU does.
The guest state line completes it: the guest carries on where the source's left off
(no second boot), the VM runs (``RESUME``; stays ``paused`` under ``-S`` or when the
source was paused) and the source gets its acknowledgement. With
``KVMLAB_FAKE_MIGRATE_DIE`` the process dies of ``SIGKILL`` 5 ms after the source
connected, before reading anything.
"""

from __future__ import annotations

import _socket
import os
import sys

from kvmlab.fake.errors import FakeError, QmpCommandError, Shutdown
from kvmlab.fake.host import unlink
from kvmlab.fake.lazy import json_module
from kvmlab.fake.migration.state import address, die, mismatch, restore

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import NoReturn

    from kvmlab.fake.machine_view import IncomingSide, MachineView

__all__ = ["Incoming", "migrate_incoming"]


class Incoming:
    """The incoming migration of a VM started with ``-incoming``.

    :ivar status: ``None`` before a source connects, then ``active``, ``completed``.
    :ivar autostart: run the VM once the migration completes (no ``-S``, or a ``cont``).
    """

    def __init__(self, m: MachineView, uri: str) -> None:
        self.m = m
        self.status: str | None = None
        self.autostart = not m.cfg.start_paused
        self.listener: _socket.socket | None = None
        self.conn: _socket.socket | None = None
        self.bound: str | None = None
        self.socket_address: dict[str, object] | None = None
        self.buffer = b""
        self.header: dict[str, object] | None = None
        self.deferred = uri == "defer"
        if not self.deferred:
            self.listen(uri, f"-incoming {uri}")

    def waiting(self) -> bool:
        """The VM is still ``inmigrate`` (``cont`` and ``stop`` only set ``autostart``)."""
        return self.m.status == "inmigrate"

    def listen(self, uri: str, where: str) -> None:
        """Listen for the source, as QEMU's ``qemu_start_incoming_migration``.

        :raise FakeError: the socket cannot be bound (QEMU's message).
        """
        try:
            family, addr = address(uri)
        except ValueError as err:
            raise FakeError(str(err), where) from None
        except OSError as err:
            raise FakeError(str(err.strerror), where) from None
        sock = _socket.socket(family, _socket.SOCK_STREAM)
        try:
            if isinstance(addr, str):
                unlink(addr)
            else:
                sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
            sock.bind(addr)
            sock.listen(1)
        except OSError as err:
            sock.close()
            raise FakeError(f"Failed to bind socket to {addr}: {err.strerror}", where) from None
        if isinstance(addr, str):
            self.bound = addr
            self.socket_address = {"path": addr, "type": "unix"}
        else:
            host, port = sock.getsockname()[:2]
            self.socket_address = {"port": str(port), "host": host, "type": "inet"}
        self.listener = sock
        self.m.loop.watch(sock.fileno(), self._accept)
        self.m.log("incoming", uri=uri, address=self.socket_address)

    def _accept(self) -> None:
        assert self.listener is not None
        try:
            fd, _ = self.listener._accept()  # type: ignore[attr-defined]
        except OSError:
            return
        self.conn = _socket.socket(fileno=fd)
        self.conn.settimeout(2.0)
        # QEMU takes one source: the listener goes away once it has connected.
        self.m.loop.unwatch(self.listener.fileno())
        self.listener.close()
        self.listener = None
        self.status = "active"
        self._event("active")
        if self.m.faults.migrate_die:
            # Dies before it has read the header: the source cannot have finished.
            self.m.loop.after(0.005, lambda: die(self.m))
            return
        self.m.loop.watch(self.conn.fileno(), self._readable)

    def _readable(self) -> None:
        assert self.conn is not None
        try:
            data = self.conn.recv(65536)
        except OSError:
            data = b""
        if not data:  # the source cancelled or died: QEMU reads zeros in the RAM section
            self._fail(
                [
                    "Unknown combination of migration flags: 0x0",
                    "error while loading state section id 2(ram)",
                    "load of migration failed: Invalid argument",
                ]
            )
        self.buffer += data
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            try:
                message = json_module().loads(line)
            except ValueError:
                self._fail(["Not a migration stream", "load of migration failed: Invalid argument"])
            if not isinstance(message, dict):
                self._fail(["load of migration failed: Invalid argument"])
            if self.header is None:
                self.header = message
                problems = mismatch(self.m, message)
                if problems:
                    self._fail(problems)
                self._reply(b"loading\n")
            else:
                problems = mismatch(self.m, self.header, devices=True)
                if problems:
                    self._fail(problems)
                guest = message.get("guest")
                self._complete(guest if isinstance(guest, dict) else {})

    def load(self, fd: int) -> None:
        """Load a state from ``fd`` (``migrate-incoming`` of ``fd:``/``file:``), shortly."""
        self.status = "setup"
        if self.m.profile.version >= (9, 0, 0):  # 7.2 sent it already, whatever ``events`` says
            self._event("setup")
        self.m.loop.after(0.001, lambda: self._load(fd))

    def _load(self, fd: int) -> None:
        """Read the whole stream (a file cannot be polled: it is read at once), then load it."""
        from kvmlab.fake.migration.stream import StreamError, parse  # noqa: PLC0415

        self.status = "active"
        self._event("active")
        if self.m.faults.migrate_die:
            die(self.m)
        chunks = []
        try:
            while chunk := os.read(fd, 1 << 20):
                chunks.append(chunk)
        except OSError:
            pass  # what was read is what QEMU would load: the stream ends here
        finally:
            os.close(fd)
        try:
            state = parse(self.m, b"".join(chunks))
        except StreamError as err:
            self._fail(err.lines)
        self._complete(state)

    def _complete(self, state: dict[str, object]) -> None:
        m = self.m
        restore(m, state)
        # QEMU takes the source's run state over: a VM never started stays ``prelaunch``.
        m.status = "prelaunch" if state.get("runstate") == "prelaunch" else "paused"
        self.status = "completed"
        m.log("incoming", status="completed")
        self._reply(b"ok\n")
        self._close_conn()
        if self.autostart and state.get("running", True):
            m.resume()
        self._event("completed")

    def _reply(self, line: bytes) -> None:
        """Tell the source (the fake's stand-in for the stream's flow control and return path)."""
        if self.conn is not None:
            # Not ``contextlib.suppress``: the fake imports no ``contextlib`` (start-up).
            try:  # noqa: SIM105
                self.conn.sendall(line)
            except OSError:  # the source went away: the stream ends, and so do we
                pass

    def _fail(self, lines: list[str]) -> NoReturn:
        for line in lines:
            print(f"{self.m.prog}: {line}", file=sys.stderr)
        self.m.log("incoming", status="failed", message=lines)
        self._event("failed")
        raise Shutdown(1, "incoming migration failed")

    def _event(self, status: str) -> None:
        from kvmlab.fake.migration.params import capabilities  # noqa: PLC0415

        if capabilities(self.m).get("events"):
            self.m.event("MIGRATION", {"status": status})

    def query(self) -> dict[str, object]:
        """``query-migrate`` on the target, as QEMU 7.2 and 10.0 answer it."""
        if self.status == "completed":
            return {"status": self.status}
        info: dict[str, object] = {}
        if self.status is not None:
            info["status"] = self.status
        elif self.m.profile.version >= (9, 0, 0) and self.socket_address is not None:
            info["status"] = "setup"
        if self.socket_address is not None:
            info["socket-address"] = [self.socket_address]
        return info

    def _close_conn(self) -> None:
        if self.conn is not None:
            self.m.loop.unwatch(self.conn.fileno())
            self.conn.close()
            self.conn = None

    def close(self) -> None:
        """At exit: close the sockets and remove the unix socket this process bound."""
        for sock in (self.conn, self.listener):
            if sock is not None:
                sock.close()
        self.conn = self.listener = None
        if self.bound is not None:
            unlink(self.bound)


def migrate_incoming(
    m: MachineView, arguments: dict[str, object], open_fd: Callable[[], int] | None = None
) -> object:
    """``migrate-incoming``; ``open_fd`` takes the descriptor of an ``fd:``/``file:`` URI."""
    incoming = m.incoming
    if incoming is not None and (incoming.listener is not None or incoming.status is not None):
        raise QmpCommandError("The incoming migration has already been started")
    if incoming is None or m.status != "inmigrate":
        raise QmpCommandError("'-incoming' was not specified on the command line")
    uri = str(arguments["uri"])
    if m.profile.version < (9, 0, 0):
        # QEMU 7.2 sends this one whatever the ``events`` capability says.
        m.event("MIGRATION", {"status": "setup"})
    if open_fd is not None:
        _load_from(m, incoming, uri, open_fd())
        return {}
    try:
        incoming.listen(uri, "")
    except FakeError as err:
        raise QmpCommandError(err.message) from None
    return {}


def _load_from(m: MachineView, incoming: IncomingSide, uri: str, fd: int) -> None:
    """``migrate-incoming`` of a descriptor (``fd:NAME``) or, on QEMU 10.0, ``file:PATH``."""
    from kvmlab.fake.migration.stream import DEPRECATED_FD, deprecated_fd  # noqa: PLC0415

    if uri.startswith("fd:") and deprecated_fd(m, fd):
        print(DEPRECATED_FD, file=sys.stderr)
    m.log("incoming", uri=uri)
    incoming.load(fd)
