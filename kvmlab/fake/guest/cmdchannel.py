"""The guest command channel: the second ``-serial`` (ttyS1), answered like the test guest.

kvmlab's test guest runs a busybox ``sh`` loop on ttyS1 (``kvmlab.guest_channel``
has the protocol): a request line ``<nonce> <seconds> <command line>`` is answered
by the command's output, a newline and ``KVMLAB-EXIT <nonce> <status>``. This
frontend does the same for the commands :mod:`kvmlab.fake.guest.shell` knows,
computed from the simulated machine. As in the real guest, requests are handled
one at a time in arrival order (a ``sleep`` holds up the next), nothing is
answered before the guest has booted or while it is paused, and a reset loses
the queue, the files written and the boot id. The interpreter is imported at the
first request, so a start costs no more than before.
"""

from __future__ import annotations

from kvmlab.fake.chardevs import Frontend

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Generator

    from kvmlab.fake.chardevs import Chardev
    from kvmlab.fake.guest.boot import Guest
    from kvmlab.fake.guest.shell import GuestShell
    from kvmlab.fake.machine_view import MachineView

__all__ = ["CommandChannel"]

#: How often a queue waiting for a paused or unbooted guest looks again.
_POLL = 0.05


class CommandChannel(Frontend):
    """ttyS1's frontend: a queue of request lines and the command running now."""

    def __init__(self, machine: MachineView, dev: Chardev, guest: Guest) -> None:
        self.machine = machine
        self.dev = dev
        self.guest = guest
        self.pending = b""
        self.queue: list[bytes] = []
        self.shell: GuestShell | None = None
        #: The guest boot (``Guest.boots``, counting resets) the queue belongs to.
        self.boot: int | None = None
        self.busy = False
        #: Bumped when the running command ends or is dropped, so stale timers do nothing.
        self.generation = 0
        self.polling = False
        self.current_nonce = ""
        self.current_command = ""

    def received(self, data: bytes) -> None:
        """Bytes typed on ttyS1: complete lines join the queue."""
        self._sync()  # what was queued before a reset went with the old boot
        self.pending += data
        *lines, self.pending = self.pending.split(b"\n")
        self.queue.extend(lines)
        self._next()

    def _sync(self) -> None:
        """After a reset, the tty's queue, the running command and the files are gone."""
        if self.guest.boots != self.boot:
            if self.boot is not None:
                self.queue.clear()
                self.pending = b""
                self.busy = False
                self.generation += 1
            self.boot = self.guest.boots

    def _up(self) -> bool:
        """The guest's loop is running: booted since the last reset, and not paused."""
        self._sync()
        guest = self.guest
        return self.machine.status == "running" and guest.booted == guest.boots

    def _next(self) -> None:
        if self.busy or not self.queue:
            return
        if not self._up():
            if not self.polling:
                self.polling = True
                self.machine.loop.after(_POLL, self._poll)
            return
        if not self.queue:
            return
        line = self.queue.pop(0).decode("utf-8", errors="replace")
        nonce, _, rest = line.partition(" ")
        secs, _, command = rest.partition(" ")
        self.current_nonce = nonce
        self.current_command = command
        self.shell = self.guest.shell()
        try:
            limit = max(int(secs), 0)
        except ValueError:
            self._answer(nonce, f"timeout: invalid number '{secs}'\n", 1)
            return
        self.busy = True
        self.generation += 1
        generation = self.generation
        run = self.shell.run(command or secs)
        self.machine.loop.after(limit, lambda: self._kill(generation, run))
        self._step(generation, run)

    def _poll(self) -> None:
        self.polling = False
        self._next()

    def _step(self, generation: int, run: Generator[float, None, int]) -> None:
        """Run the command until it sleeps (resumed by a timer) or ends."""
        if generation != self.generation:
            return
        try:
            delay = next(run)
        except StopIteration as stop:
            self._finish(int(stop.value))
            return
        self.machine.loop.after(delay, lambda: self._step(generation, run))

    def _kill(self, generation: int, run: Generator[float, None, int]) -> None:
        """``timeout -s KILL``: the command dies, status 137."""
        if generation != self.generation:
            return
        run.close()
        self._finish(137)

    def _finish(self, status: int) -> None:
        assert self.shell is not None
        output = self.shell.take_output()
        self.busy = False
        self.generation += 1
        self.machine.log("guest-command", command=self.current_command, status=status)
        self._answer(self.current_nonce, output, status)

    def _answer(self, nonce: str, output: str, status: int) -> None:
        self.dev.send(f"{output}\nKVMLAB-EXIT {nonce} {status}\n".encode())
        self._next()
