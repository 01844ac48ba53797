"""Character devices at run time: listening sockets, one client each, files, log files.

Every socket kvmlab talks to (QMP, the human monitor, the serial console) is a
:class:`Chardev`: it owns the listener, at most one client (QEMU serves one at
a time; the next waits in the backlog), the output file and the ``logfile=``.
What the bytes mean is left to its :class:`Frontend` (the QMP server, the
human monitor; the serial console ignores input), so a new kind of port, such
as a guest command channel on a second serial port, is a new frontend.
"""

from __future__ import annotations

import _socket
import os
import sys

from kvmlab.fake.errors import FakeError
from kvmlab.fake.host import unlink

TYPE_CHECKING = False
if TYPE_CHECKING:
    from kvmlab.fake.cmdline.config import ChardevSpec
    from kvmlab.fake.loop import EventLoop

__all__ = ["Chardev", "Frontend"]

#: Ancillary space for the descriptors of one message (QEMU takes up to 253).
_FD_SPACE: int = _socket.CMSG_SPACE(16 * 4)


class Frontend:
    """What a chardev's bytes go to; this base ignores them (the serial console's input)."""

    def connected(self) -> None:
        """A client connected: send a greeting, reset per-client state."""

    def received(self, data: bytes) -> None:
        """The client sent ``data`` (any chunk: not split at lines or messages)."""

    def disconnected(self) -> None:
        """The client went away."""


class Chardev:
    """A character device backend from a :class:`~kvmlab.fake.cmdline.config.ChardevSpec`.

    :param spec: what the command line asked for.
    :param loop: where the listener and the client are watched.
    :param prog: program name for messages.
    :ivar bound: the socket path this process created, removed at a clean exit.
    """

    def __init__(self, spec: ChardevSpec, loop: EventLoop, prog: str) -> None:
        self.spec = spec
        self.loop = loop
        self.prog = prog
        self.frontend = Frontend()
        self.listener: _socket.socket | None = None
        self.client: _socket.socket | None = None
        self.out_fd: int | None = None
        self.log_fd: int | None = None
        self.bound: str | None = None
        #: Descriptors the client sent with ``SCM_RIGHTS`` and nobody took yet.
        self.received_fds: list[int] = []

    def open(self) -> None:
        """Create the log file, the output file or the listening socket, as QEMU does."""
        spec = self.spec
        if spec.logfile is not None:
            flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if spec.logappend else os.O_TRUNC)
            try:
                self.log_fd = os.open(spec.logfile, flags, 0o666)
            except OSError as err:
                raise FakeError(
                    f"Could not create '{spec.logfile}': {err.strerror}", spec.where
                ) from None
        if spec.backend == "stdio":
            self.out_fd = 1
        elif spec.backend == "file" and spec.path is not None:
            try:
                self.out_fd = os.open(spec.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
            except OSError as err:
                raise FakeError(
                    f"Could not open '{spec.path}': {err.strerror}", spec.where
                ) from None
        elif spec.backend == "socket" and spec.path is not None:
            self.listener = self._listen()
            self.loop.watch(self.listener.fileno(), self._accept)

    def _listen(self) -> _socket.socket:
        spec = self.spec
        path = spec.path or ""
        if len(os.fsencode(path)) >= 108:
            raise FakeError(f"UNIX socket path '{path}' is too long", spec.where)
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            unlink(path)
            sock.bind(path)
            sock.listen(1)
        except OSError as err:
            sock.close()
            message = f"Failed to bind socket to {path}: {err.strerror}"
            if spec.frontend == "serial" and spec.id.startswith("compat_"):
                message += (
                    f"\n{self.prog}: {spec.where}: could not connect serial device "
                    f"to character backend '{spec.spec}'"
                )
            raise FakeError(message, spec.where) from None
        self.bound = path
        return sock

    def wait_for_client(self) -> None:
        """``server=on`` without ``wait=off``: QEMU blocks until a client connects."""
        spec = self.spec
        print(
            f"{self.prog}: {spec.where}: info: QEMU waiting for connection on: "
            f"disconnected:unix:{spec.path},server=on",
            file=sys.stderr,
        )
        while self.client is None:
            self.loop.dispatch(None)

    def _accept(self) -> None:
        assert self.listener is not None
        try:
            fd, _ = self.listener._accept()  # type: ignore[attr-defined]  # socket.accept's core
        except OSError:
            return
        conn = _socket.socket(fileno=fd)
        conn.settimeout(2.0)
        self.client = conn
        # QEMU serves one client at a time; others wait in the backlog.
        self.loop.unwatch(self.listener.fileno())
        self.loop.watch(conn.fileno(), self._read)
        self.frontend.connected()

    def _read(self) -> None:
        assert self.client is not None
        try:
            data, ancillary, _, _ = self.client.recvmsg(65536, _FD_SPACE)
        except OSError:
            data, ancillary = b"", []
        if ancillary:
            self._keep_fds(ancillary)
        if not data:
            self.drop_client()
            return
        self.frontend.received(data)

    def _keep_fds(self, ancillary: list[tuple[int, int, bytes]]) -> None:
        """Keep the descriptors of one message, closing unclaimed ones (as QEMU does)."""
        self._close_fds()
        for level, kind, payload in ancillary:
            if level != _socket.SOL_SOCKET or kind != _socket.SCM_RIGHTS:
                continue
            for start in range(0, len(payload) - len(payload) % 4, 4):
                fd = int.from_bytes(payload[start : start + 4], sys.byteorder, signed=True)
                os.set_inheritable(fd, False)  # not into the scripts the fake runs
                self.received_fds.append(fd)

    def _close_fds(self) -> None:
        while self.received_fds:
            os.close(self.received_fds.pop())

    def drop_client(self) -> None:
        """Close the client's connection and listen for the next one."""
        if self.client is None:
            return
        self.loop.unwatch(self.client.fileno())
        self.client.close()
        self.client = None
        self._close_fds()
        self.frontend.disconnected()
        if self.listener is not None:
            self.loop.watch(self.listener.fileno(), self._accept)

    def send(self, data: bytes) -> None:
        """Write to the log file, the output file or stdout, and the client."""
        if self.log_fd is not None:
            try:
                os.write(self.log_fd, data)
            except OSError:  # a full disk: stop logging, keep running
                os.close(self.log_fd)
                self.log_fd = None
        if self.out_fd is not None:
            try:
                os.write(self.out_fd, data)
            except OSError:
                self.out_fd = None
        if self.client is not None:
            try:
                self.client.sendall(data)
            except OSError:
                self.drop_client()

    def close(self) -> None:
        """Close the sockets and files (not stdout); the socket file stays for the caller."""
        for sock in (self.client, self.listener):
            if sock is not None:
                sock.close()
        for fd in (self.log_fd, self.out_fd):
            if fd is not None and fd > 2:
                os.close(fd)
