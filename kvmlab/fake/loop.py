"""The fake VM's event loop: one thread, ``epoll`` and a sorted list of timers.

Everything a fake VM does after start (accepting clients, answering QMP,
printing the boot, powering off later) is a callback on a file descriptor or a
timer here. ``asyncio`` would do the same but costs more to import than QEMU
takes to start, and ``selectors`` pulls in ``collections`` and enums (~15 ms).
There are never more than a few timers, so a list kept sorted does the job of
``heapq`` without its import (~0.3 ms at every start).
"""

from __future__ import annotations

import select
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import NoReturn

__all__ = ["EventLoop"]


class EventLoop:
    """Callbacks for readable file descriptors, and timers; runs until one raises."""

    def __init__(self) -> None:
        self.poller = select.epoll()
        self.callbacks: dict[int, Callable[[], None]] = {}
        self.timers: list[tuple[float, int, Callable[[], None]]] = []
        self._timer_seq = 0

    def watch(self, fd: int, callback: Callable[[], None]) -> None:
        """Call ``callback`` whenever ``fd`` is readable."""
        self.poller.register(fd, select.EPOLLIN)
        self.callbacks[fd] = callback

    def unwatch(self, fd: int) -> None:
        """Stop watching ``fd`` (before it is closed)."""
        self.poller.unregister(fd)
        del self.callbacks[fd]

    def after(self, delay: float, callback: Callable[[], None]) -> None:
        """Call ``callback`` once, ``delay`` seconds from now (in order, for equal times)."""
        self._timer_seq += 1
        self.timers.append((time.monotonic() + delay, self._timer_seq, callback))
        self.timers.sort()  # by time, then by order of scheduling (sequence numbers differ)

    def dispatch(self, timeout: float | None) -> None:
        """Wait up to ``timeout`` seconds (``None``: forever) and run the ready callbacks."""
        for fd, _events in self.poller.poll(-1 if timeout is None else timeout):
            callback = self.callbacks.get(fd)
            if callback is not None:
                callback()

    def run(self) -> NoReturn:
        """Serve callbacks and timers forever; a callback ends it by raising."""
        while True:
            timeout = None
            if self.timers:
                timeout = max(0.0, self.timers[0][0] - time.monotonic())
            self.dispatch(timeout)
            now = time.monotonic()
            while self.timers and self.timers[0][0] <= now:
                _, _, callback = self.timers.pop(0)
                callback()

    def sleep(self, seconds: float) -> None:
        """Sleep while still serving callbacks (a signal can end the process meanwhile)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.dispatch(left)

    def close(self) -> None:
        """Release the ``epoll`` descriptor."""
        self.poller.close()
