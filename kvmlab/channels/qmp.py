"""A synchronous QMP session that also works inside a running event loop (Jupyter).

kvmlab speaks QMP through ``qemu.qmp``, QEMU's own asyncio client. Its ``legacy``
sync wrapper calls ``run_until_complete`` on the current loop, which fails in
Jupyter where a loop is always running. Here every coroutine runs on one private
event loop in a daemon thread, and callers wait on a ``concurrent.futures``
future with a deadline, whichever thread or loop they are in::

    with QmpSession("/var/lib/kvmlab/ctrl/vm1.qmp") as qmp:
        qmp.execute("query-status")          # {'status': 'running', ...}
        qmp.execute("system_powerdown")

Errors come back as :class:`QmpError` (``from`` the library's own exception).
``qemu.qmp`` also logs each failure it raises, at ERROR, under its client's logger:
here those records are details (DEBUG, shown only when kvmlab's own logger shows
debug), as the caller already gets the error once, as an exception.
``qemu.qmp`` is imported on first use: it costs ~50 ms and most CLI commands do
not need it.

A session on an instance's socket in a state directory records the commands it sends,
their error replies and the events it receives in ``log/<name>.qmp.log``
(:mod:`~kvmlab.channels.qmp_log`): the QMP traffic kvmlab saw, which a failing test's
report shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Coroutine, Mapping
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from kvmlab.channels.qmp_log import QmpTrafficLog, qmp_log_for_socket
from kvmlab.errors import QmpError

if TYPE_CHECKING:
    from qemu.qmp import EventListener, QMPClient

__all__ = ["QmpError", "QmpSession", "qmp_execute"]

T = TypeVar("T")
DEFAULT_TIMEOUT = 5.0


class _LibraryRecords(logging.Filter):
    """The library's records of a client, as DEBUG; kept only when kvmlab logs debug."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger("kvmlab").isEnabledFor(logging.DEBUG)


_LIBRARY_RECORDS = _LibraryRecords()


class _LoopThread:
    """One private asyncio loop in a daemon thread, shared by all sessions."""

    _lock = threading.Lock()
    _loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def loop(cls) -> asyncio.AbstractEventLoop:
        with cls._lock:
            if cls._loop is None or cls._loop.is_closed():
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name="kvmlab-qmp-loop", daemon=True
                )
                thread.start()
                cls._loop = loop
            return cls._loop

    @classmethod
    def run(cls, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, cls.loop())
        try:
            return future.result(timeout)
        except FutureTimeout:
            future.cancel()
            raise


class QmpSession:
    """A connected QMP client; use as a context manager.

    :param path: the unix socket QEMU listens on (``-qmp unix:PATH,server=on``).
    :param timeout: seconds for connecting and for each command.
    """

    def __init__(self, path: str | Path, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.path = str(path)
        self.timeout = timeout
        self._client: QMPClient | None = None
        self._log: QmpTrafficLog | None = None

    def __enter__(self) -> QmpSession:
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def connect(self) -> None:
        """Connect and negotiate capabilities.

        :raise QmpError: no socket, refused, or no greeting within the timeout.
        """
        from qemu.qmp import QMPClient, QMPError  # noqa: PLC0415 - 50 ms import

        client = QMPClient("kvmlab")
        client.logger.addFilter(_LIBRARY_RECORDS)  # once: addFilter keeps no duplicates
        log_path = qmp_log_for_socket(Path(self.path))
        log = QmpTrafficLog(log_path) if log_path is not None else None
        if log is not None:
            # Before connecting: an event that follows the greeting at once is recorded.
            client.register_listener(_recorder(log))
        try:
            _LoopThread.run(client.connect(self.path), self.timeout)
        except (QMPError, OSError, FutureTimeout) as err:
            if log is not None:
                log.close()
            raise QmpError(f"cannot connect to QMP at {self.path}: {_describe(err)}") from err
        self._client = client
        self._log = log

    def execute(self, command: str, arguments: Mapping[str, object] | None = None) -> Any:
        """Run one command and return its ``return`` value.

        :raise QmpError: not connected, the command failed, or the timeout passed.
        """
        from qemu.qmp import QMPError  # noqa: PLC0415

        if self._client is None:
            raise QmpError(f"QMP session to {self.path} is not connected")
        log = self._log
        if log is not None:
            log.command(command, arguments)
        try:
            return _LoopThread.run(self._client.execute(command, arguments), self.timeout)
        except (QMPError, OSError, FutureTimeout) as err:
            if log is not None:
                log.error(command, _describe(err))
            raise QmpError(f"QMP {command} failed: {_describe(err)}") from err

    def send_fd(self, fd: int) -> None:
        """Pass ``fd`` to QEMU over the socket (``SCM_RIGHTS``), for a ``getfd`` to name it.

        The library's ``send_fd_scm`` runs on the session's loop, like every other
        call; the descriptor stays open here (the caller closes its copy).

        :raise QmpError: not connected, or the socket refused it.
        """
        from qemu.qmp import QMPError  # noqa: PLC0415

        client = self._client
        if client is None:
            raise QmpError(f"QMP session to {self.path} is not connected")

        async def send() -> None:
            client.send_fd_scm(fd)

        try:
            _LoopThread.run(send(), self.timeout)
        except (QMPError, OSError, FutureTimeout) as err:
            raise QmpError(f"QMP cannot pass a descriptor: {_describe(err)}") from err

    def execute_and_wait(
        self,
        command: str,
        arguments: Mapping[str, object] | None,
        event: str,
        match: Mapping[str, object],
        timeout: float,
    ) -> dict[str, Any]:
        """Run ``command``, then wait up to ``timeout`` for ``event`` whose data has ``match``.

        The listener is registered before the command is sent, so an event that
        follows the reply at once is not missed (``device_del`` -> ``DEVICE_DELETED``).

        :raise QmpError: the command failed, or no such event came in time.
        """
        from qemu.qmp import EventListener, QMPError  # noqa: PLC0415

        client = self._client
        if client is None:
            raise QmpError(f"QMP session to {self.path} is not connected")

        log = self._log
        if log is not None:
            log.command(command, arguments)

        async def run() -> dict[str, Any]:
            listener = EventListener(names=(event,))
            with client.listen(listener):
                await asyncio.wait_for(client.execute(command, arguments), self.timeout)

                async def wait() -> dict[str, Any]:
                    while True:
                        got: Mapping[str, Any] = await listener.get()
                        data = got.get("data", {})
                        if all(data.get(key) == value for key, value in match.items()):
                            return dict(got)

                return await asyncio.wait_for(wait(), timeout)

        try:
            return _LoopThread.run(run(), self.timeout + timeout + 1.0)
        except (TimeoutError, FutureTimeout) as err:
            if log is not None:
                log.error(command, f"no {event} within {timeout:g}s")
            raise QmpError(f"QMP {command}: no {event} within {timeout:g}s") from err
        except (QMPError, OSError) as err:
            if log is not None:
                log.error(command, _describe(err))
            raise QmpError(f"QMP {command} failed: {_describe(err)}") from err

    def close(self) -> None:
        """Disconnect; never raises (the peer may already be gone)."""
        client, self._client = self._client, None
        log, self._log = self._log, None
        if client is None:
            return
        # Best effort: QEMU may have exited already (after quit or powerdown).
        with contextlib.suppress(Exception):
            _LoopThread.run(client.disconnect(), self.timeout)
        if log is not None:
            log.close()


def _recorder(log: QmpTrafficLog) -> EventListener:
    """A listener of the library whose filter writes each event to ``log`` and keeps none."""
    from qemu.qmp import EventListener  # noqa: PLC0415

    def record(event: Mapping[str, Any]) -> bool:
        log.event(event)
        return False

    return EventListener(event_filter=record)


def _describe(err: BaseException) -> str:
    if isinstance(err, FutureTimeout):
        return "timed out"
    text = str(err) or type(err).__name__
    cause = err.__cause__ or getattr(err, "exc", None)
    if cause is not None and str(cause) and str(cause) not in text:
        text = f"{text}: {cause}"
    return text


def qmp_execute(
    path: str | Path,
    command: str,
    arguments: Mapping[str, object] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Any:
    """Connect, run one command, disconnect."""
    with QmpSession(path, timeout) as session:
        return session.execute(command, arguments)
