"""Run commands inside a guest through its command channel, the second serial port.

The test guest (:mod:`kvmlab.guest.build`) runs a busybox ``sh`` loop on ``/dev/ttyS1``,
which QEMU connects to the unix socket ``ctrl/<name>.cmd``; the fake kvm answers the
same protocol from the state it simulates (``docs/fake-kvm.md``). The protocol, one
request at a time::

    host  -> guest   <nonce> <seconds> <command line>\\n
    guest -> host    <output of the command, stdout and stderr>\\nKVMLAB-EXIT <nonce> <status>\\n

The guest runs the line with ``sh -c`` (stdin ``/dev/null``) and kills it after
``<seconds>``. It always writes a newline before the marker, so output without a
trailing newline comes back exactly; a marker line with another nonce is output.
Before each command the client sends no-op pings (``:``) until the latest one is
answered, which waits out a guest still booting or still busy with a command a
previous call gave up on (its leftovers are read and dropped with the ping's reply).
A connection QEMU drops before any ping is answered is made again while the VM runs.
A connection lasts one call: QEMU serves one client at a time, so concurrent calls
on one VM take turns::

    shell = lab.guest("vm1")
    result = shell.run(["cat", "/proc/meminfo"], timeout=10)     # argv: each word quoted
    result = shell.run("cat /sys/class/net/*/address")           # str: a shell command line
    assert result.exit_code == 0

While it waits for the guest, a call looks at the instance's console and process a few
times a second (:mod:`~kvmlab.channels.guest_watch`): a guest that panicked, or whose
VM process exited, ends the call at once with :class:`~kvmlab.errors.GuestDownError`
(a :class:`GuestTimeoutError` too) and the console's last lines.
"""

from __future__ import annotations

import logging
import math
import re
import secrets
import shlex
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from kvmlab.channels.guest_watch import GuestWatch
from kvmlab.errors import GuestChannelError, GuestTimeoutError, InvalidInputError
from kvmlab.spec.inputs import check_seconds

__all__ = [
    "DEFAULT_READY_TIMEOUT",
    "DEFAULT_TIMEOUT",
    "MARKER",
    "READY_RECONNECTS",
    "GuestChannel",
    "GuestResult",
    "ReplyReader",
    "command_line",
    "encode_request",
]

log = logging.getLogger("kvmlab")

MARKER = "KVMLAB-EXIT"
#: Seconds a command may take.
DEFAULT_TIMEOUT = 30.0
#: Seconds the channel may take to answer (a guest still booting under TCG: ~10 s).
DEFAULT_READY_TIMEOUT = 60.0
#: A request line's longest length: far below anything a tty or busybox ``read`` minds.
MAX_LINE = 3000
_PING_INTERVALS = (0.1, 0.2, 0.5, 1.0)
#: Times a connection dropped before the guest answered a ping is made again.
READY_RECONNECTS = 2
#: Seconds between two looks at the guest's console and process while a call waits.
WATCH_INTERVAL = 0.25


@dataclass(frozen=True, slots=True)
class GuestResult:
    """What a command did in the guest: its exit status and its output.

    :ivar stdout: stdout and stderr together, as the guest wrote them (UTF-8, errors
        replaced), ``\\n`` line ends, exactly as many trailing newlines as printed.
    """

    exit_code: int
    stdout: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


def command_line(cmd: Sequence[str] | str) -> str:
    """The shell command line for ``cmd``.

    :param cmd: a list of words, each quoted (``["cat", "/tmp/a b"]`` runs ``cat`` with one
        argument, no globbing, no redirection); or a ``str``, sent as a shell command line
        as it is (globs, ``>``, ``;`` work; quoting is the caller's job).
    :raise InvalidInputError: an empty command, a NUL, newline or carriage return, or a
        line longer than the channel takes.
    """
    if isinstance(cmd, str):
        line = cmd
    else:
        words = list(cmd)
        if not words:
            raise InvalidInputError("empty command")
        for word in words:
            if not isinstance(word, str):
                raise InvalidInputError(f"command words must be strings, not {word!r}")
        line = shlex.join(words)
    if not line.strip():
        raise InvalidInputError("empty command")
    bad = sorted({char for char in line if char in "\x00\n\r"})
    if bad:
        raise InvalidInputError(
            f"a command may not contain {''.join(bad)!r} (one request is one line)"
        )
    if len(line.encode()) > MAX_LINE:
        raise InvalidInputError(f"command line of {len(line.encode())} bytes, over {MAX_LINE}")
    return line


def encode_request(nonce: str, seconds: int, line: str) -> bytes:
    """One request: ``<nonce> <seconds> <line>\\n``."""
    return f"{nonce} {seconds} {line}\n".encode()


class ReplyReader:
    """Finds the end of one reply in a byte stream fed in chunks of any size.

    :param nonce: the request's nonce; markers with another one are output.
    """

    def __init__(self, nonce: str) -> None:
        self.nonce = nonce
        self._pattern = re.compile(
            rb"\r?\n" + re.escape(f"{MARKER} {nonce} ".encode()) + rb"(\d+)\r?\n"
        )
        self._buffer = bytearray()
        self._searched = 0
        #: Bytes that came after the marker (none when the guest is sequential).
        self.rest = b""
        self.result: GuestResult | None = None

    @property
    def output(self) -> str:
        """What was received so far, before any marker."""
        return self._buffer.decode("utf-8", errors="replace")

    def feed(self, data: bytes) -> GuestResult | None:
        """Add ``data``; return the result once the marker is complete (then keep it)."""
        if self.result is not None:
            self.rest += data
            return self.result
        self._buffer += data
        # A marker may straddle chunks: search again from shortly before the new bytes.
        start = max(0, self._searched - len(self.nonce) - 32)
        match = self._pattern.search(self._buffer, start)
        self._searched = len(self._buffer)
        if match is None:
            return None
        self.rest = bytes(self._buffer[match.end() :])
        stdout = self._buffer[: match.start()].decode("utf-8", errors="replace")
        self.result = GuestResult(int(match.group(1)), stdout)
        return self.result


class GuestChannel:
    """The command channel of one instance.

    :param name: the instance, for messages.
    :param socket_path: ``ctrl/<name>.cmd``.
    :param check: called before each command; raises when the instance cannot answer
        (the lifecycle passes a not-running check).
    """

    def __init__(
        self, name: str, socket_path: Path, check: Callable[[], None] | None = None
    ) -> None:
        self.name = name
        self.socket_path = socket_path
        self._check = check

    def __repr__(self) -> str:
        return f"GuestChannel({self.name!r}, {str(self.socket_path)!r})"

    def run(
        self,
        cmd: Sequence[str] | str,
        timeout: float = DEFAULT_TIMEOUT,
        *,
        ready_timeout: float = DEFAULT_READY_TIMEOUT,
    ) -> GuestResult:
        """Run ``cmd`` in the guest and return its exit status and output.

        :param cmd: words (each quoted) or a shell command line, see :func:`command_line`.
        :param timeout: seconds the command may take once sent; the guest kills it a
            second after that, so a later call finds the channel free again.
        :param ready_timeout: seconds the channel may take to answer first (booting,
            or busy with the remains of a command a previous call gave up on).
        :raise InvalidInputError: a command that cannot be sent, or a timeout out of
            range (:func:`~kvmlab.spec.inputs.check_seconds`).
        :raise GuestTimeoutError: no answer or no end of output in time.
        :raise GuestDownError: the guest panicked, or its VM process exited, meanwhile.
        :raise GuestChannelError: the socket is missing or closed mid-reply.
        """
        line = command_line(cmd)
        timeout = check_seconds("timeout", timeout)
        ready_timeout = check_seconds("ready_timeout", ready_timeout)
        if self._check is not None:
            self._check()
        watch = GuestWatch.for_path(self.name, self.socket_path, "cmd_socket")
        try:
            sock, leftover = self._ready_connection(
                time.monotonic() + ready_timeout, ready_timeout, watch
            )
            with sock:
                nonce = secrets.token_hex(8)
                reader = ReplyReader(nonce)
                reader.feed(leftover)
                sock.sendall(encode_request(nonce, math.ceil(timeout) + 1, line))
                result = self._read_reply(sock, reader, time.monotonic() + timeout, watch)
                if result is None:
                    raise GuestTimeoutError(
                        f"command in {self.name} did not finish within {timeout:g} s: {line}",
                        output=reader.output,
                    )
                return result
        finally:
            if watch is not None:
                watch.close()

    def _ready_connection(
        self, deadline: float, ready_timeout: float, watch: GuestWatch | None
    ) -> tuple[socket.socket, bytes]:
        """A connection whose latest ping was answered, and the bytes after that answer.

        QEMU may drop a client it has not served yet while the guest brings up its serial
        ports (seen, rarely, as a reset right after a start). Nothing but pings has been
        sent then, so a VM process that is still there gets a new connection, up to
        :data:`READY_RECONNECTS` times within the same deadline.
        """
        dropped: GuestChannelError | None = None
        for _ in range(READY_RECONNECTS + 1):
            try:
                sock = self._connect(deadline)
            except GuestChannelError as err:
                if dropped is None:
                    raise
                raise GuestChannelError(f"{dropped}, and {err}") from err
            try:
                return sock, self._wait_ready(sock, deadline, ready_timeout, watch)
            except BaseException as err:
                sock.close()
                # A reset or a close is the connection's end; a timeout is the wait's.
                if isinstance(err, GuestTimeoutError) or not isinstance(err, GuestChannelError):
                    raise
                if watch is not None:
                    watch.check()  # a VM that went away says so, with its console
                dropped = err
                log.warning("%s: connecting again", err)
        assert dropped is not None
        raise dropped

    def _connect(self, deadline: float) -> socket.socket:
        """Connect, waiting for a turn until ``deadline``.

        QEMU accepts one client at a time and listens with a backlog of one: a
        connect while the queue is full fails at once with ``EAGAIN`` on a unix
        socket (it does not wait, as TCP would), so concurrent callers retry.
        """
        pause = 0.01
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(5.0)
                sock.connect(str(self.socket_path))
            except BlockingIOError:
                sock.close()
                if time.monotonic() + pause < deadline:
                    time.sleep(pause)
                    pause = min(pause * 2, 0.2)
                    continue
                raise GuestTimeoutError(
                    f"the command channel of {self.name} stayed busy (other clients queued)"
                ) from None
            except OSError as err:
                sock.close()
                raise GuestChannelError(
                    f"cannot reach the command channel of {self.name} ({self.socket_path}):"
                    f" {err.strerror or err}"
                ) from err
            return sock

    def _wait_ready(
        self, sock: socket.socket, deadline: float, ready_timeout: float, watch: GuestWatch | None
    ) -> bytes:
        """Ping until the latest ping is answered; return bytes after its marker."""
        attempt = 0
        while True:
            nonce = secrets.token_hex(8)
            # Markers of earlier pings may come first: only the latest counts, then
            # nothing the guest was asked is still queued.
            reader = ReplyReader(nonce)
            sock.sendall(encode_request(nonce, 5, ":"))
            interval = _PING_INTERVALS[min(attempt, len(_PING_INTERVALS) - 1)]
            attempt += 1
            if (
                self._read_reply(sock, reader, min(deadline, time.monotonic() + interval), watch)
                is not None
            ):
                return reader.rest
            if time.monotonic() >= deadline:
                raise GuestTimeoutError(
                    f"the command channel of {self.name} did not answer within"
                    f" {ready_timeout:g} s (guest not booted, or no command loop on ttyS1)"
                )

    def _read_reply(
        self,
        sock: socket.socket,
        reader: ReplyReader,
        deadline: float,
        watch: GuestWatch | None,
    ) -> GuestResult | None:
        """Feed ``reader`` until its marker arrives (the result) or the deadline (``None``)."""
        while reader.result is None:
            data = self._recv(sock, deadline, watch)
            if data is None:
                return None
            reader.feed(data)
        return reader.result

    def _recv(self, sock: socket.socket, deadline: float, watch: GuestWatch | None) -> bytes | None:
        """Bytes from the guest, or ``None`` at the deadline.

        Waits in slices of :data:`WATCH_INTERVAL`, looking at the guest between them.

        :raise GuestDownError: the guest panicked or its VM process exited.
        :raise GuestChannelError: the connection closed (the VM went away).
        """
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            sock.settimeout(min(remaining, WATCH_INTERVAL) if watch is not None else remaining)
            try:
                data = sock.recv(65536)
            except TimeoutError:
                if watch is not None:
                    watch.check()
                continue
            except OSError as err:
                raise GuestChannelError(
                    f"the command channel of {self.name} failed: {err.strerror or err}"
                ) from err
            if not data:
                if watch is not None:
                    watch.check()
                raise GuestChannelError(f"the command channel of {self.name} closed (VM stopped?)")
            return data
