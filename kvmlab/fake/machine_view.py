"""What the guest, the monitors and their command tables may ask of the machine.

:class:`~kvmlab.fake.machine.Machine` owns the guest, the QMP and HMP monitors; they
in turn act on it (pause it, power it down, print on its console, emit an event).
Typing those components with the concrete ``Machine`` would make each of them import
the module that imports them, a ring in the design even when it only serves type
hints. They depend on this protocol instead, which imports nothing the machine
does, and the machine satisfies it structurally (mypy checks it where a ``Machine``
is handed over).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NoReturn, Protocol

if TYPE_CHECKING:
    from kvmlab.fake.cmdline.config import BlockDevice, Config, Nic
    from kvmlab.fake.faults import EventLog, Faults
    from kvmlab.fake.host import Taps
    from kvmlab.fake.loop import EventLoop
    from kvmlab.fake.profiles import Profile

__all__ = ["GuestState", "IncomingSide", "MachineView", "OutgoingSide", "ShellState"]


# The guest and the two migration sides import this module (to be typed with the
# machine), so the machine's view of them is a protocol too, not their classes.


class ShellState(Protocol):
    """What a migration moves of the guest's command-channel shell."""

    boot_id: str
    files: dict[str, str]


class GuestState(Protocol):
    """The guest as a migration reads and restores it (:class:`~kvmlab.fake.guest.boot.Guest`)."""

    booted_at: float | None
    needs_boot: bool
    boots: int
    booted: int
    pending_powerdown: bool

    def shell(self) -> ShellState: ...

    def current_shell(self) -> ShellState | None: ...


class OutgoingSide(Protocol):
    """The source side of a migration (:class:`~kvmlab.fake.migration.outgoing.Outgoing`)."""

    @property
    def status(self) -> str: ...

    def query(self) -> dict[str, object]: ...

    def cancel(self) -> None: ...

    def close(self) -> None: ...


class IncomingSide(Protocol):
    """The target side of a migration (:class:`~kvmlab.fake.migration.incoming.Incoming`)."""

    @property
    def status(self) -> str | None: ...

    #: Whether the guest runs once the migration is in (``cont``/``stop`` decide).
    autostart: bool

    @property
    def listener(self) -> object | None: ...

    def query(self) -> dict[str, object]: ...

    def listen(self, uri: str, where: str) -> None: ...

    def load(self, fd: int) -> None: ...

    def waiting(self) -> bool: ...

    def close(self) -> None: ...


class MachineView(Protocol):
    """The machine as its components see it.

    :ivar status: QEMU's run state: ``prelaunch``, ``running``, ``paused``, ``shutdown``,
        ``inmigrate``, ``finish-migrate``, ``postmigrate``.
    """

    cfg: Config
    profile: Profile
    faults: Faults
    log: EventLog
    loop: EventLoop
    status: str
    devices: list[Nic]
    disks: list[BlockDevice]
    block_nodes: dict[str, tuple[str, bool]]
    netdevs: dict[str, str] | None
    pending_unplug: list[str]
    #: Descriptors the current QMP client sent (``SCM_RIGHTS``), for ``getfd``.
    scm_fds: list[int]
    taps: Taps
    prog: str
    outgoing: OutgoingSide | None
    incoming: IncomingSide | None
    migrate_caps: dict[str, bool] | None
    migrate_params: dict[str, object] | None

    @property
    def guest(self) -> GuestState: ...

    @property
    def nics(self) -> list[Nic]:
        """The guest's network cards, in enumeration order."""
        ...

    def console(self, text: str) -> None:
        """Write to the guest's serial console."""
        ...

    def event(self, name: str, data: dict[str, object] | None = None) -> None:
        """Send a QMP event to every monitor."""
        ...

    def resume(self, quiet: bool = False) -> None: ...

    def stop(self) -> None: ...

    def powerdown(self) -> None: ...

    def reset(self) -> None: ...

    def shutdown(self, guest: bool, reason: str) -> None: ...

    def quit(self) -> NoReturn: ...

    def host_quit(self) -> NoReturn: ...
