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
    from kvmlab.fake.config import Config, Nic
    from kvmlab.fake.faults import EventLog, Faults
    from kvmlab.fake.guest import Guest
    from kvmlab.fake.incoming import Incoming
    from kvmlab.fake.loop import EventLoop
    from kvmlab.fake.migration import Outgoing
    from kvmlab.fake.profiles import Profile

__all__ = ["MachineView"]


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
    netdevs: dict[str, str] | None
    pending_unplug: list[str]
    prog: str
    guest: Guest
    outgoing: Outgoing | None
    incoming: Incoming | None
    migrate_caps: dict[str, bool] | None
    migrate_params: dict[str, object] | None

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
