"""The fake VM's event loop: one thread, ``epoll`` and a sorted list of timers.

Everything a fake VM does after start (accepting clients, answering QMP,
printing the boot, powering off later) is a callback on a file descriptor or a
timer here. ``asyncio`` would do the same but costs more to import than QEMU
takes to start, and ``selectors`` pulls in ``collections`` and enums (~15 ms).
There are never more than a few timers, so a list kept sorted does the job of
``heapq`` without its import (~0.3 ms at every start).

No delay a client sends can stop the loop: a timer later than :data:`FOREVER` (or not a
number) is due at ``FOREVER``, and one wait never passes the kernel more than
:data:`MAX_WAIT` (``epoll_wait`` takes at most ``INT_MAX`` ms, about 24.8 days, and
Python raises ``OverflowError`` beyond): the loop wakes, finds nothing due and waits
again, as QEMU's main loop does with its own timers.
"""

from __future__ import annotations

import select
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import NoReturn

__all__ = ["FOREVER", "MAX_WAIT", "EventLoop"]

#: The latest a timer can be due, in seconds from now (a hundred years).
FOREVER = 100 * 365 * 86400.0
#: The longest one ``epoll_wait`` of the loop, in seconds (a day).
MAX_WAIT = 86400.0


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
        if not delay <= FOREVER:  # too late, or nan: a timer that never comes
            delay = FOREVER
        self._timer_seq += 1
        self.timers.append((time.monotonic() + delay, self._timer_seq, callback))
        self.timers.sort()  # by time, then by order of scheduling (sequence numbers differ)

    def dispatch(self, timeout: float | None) -> None:
        """Wait up to ``timeout`` seconds (``None``: forever) and run the ready callbacks."""
        wait = -1 if timeout is None else min(timeout, MAX_WAIT)
        for fd, _events in self.poller.poll(wait):
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
