"""The state the option handlers share while they turn a command line into a Config.

The walk over the options (:mod:`kvmlab.fake.cmdline.parser`) calls handlers that live in
several modules (:mod:`~kvmlab.fake.cmdline.chardev`, :mod:`~kvmlab.fake.cmdline.net`);
they all read and fill this state. It sits below all of them, so a handler module
never needs the module that merges the handler tables.
"""

from __future__ import annotations

from kvmlab.fake.cmdline.config import Config

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from kvmlab.fake.cmdline.config import ChardevSpec
    from kvmlab.fake.profiles import Profile

    #: ``handler(parser, value, where)``; ``where`` is ``"-option value"`` for messages.
    OptionHandler = Callable[["ParseState", str, str], None]

__all__ = ["ParseState"]


class ParseState:
    """What the option handlers share while a command line becomes a :class:`Config`.

    :ivar help_request: what a ``help`` value asked to print instead of starting.
    :ivar named: ``-chardev`` backends by id.
    :ivar netdev_ids: ``-netdev`` (and ``-nic``) ids, for the NICs that name them.
    :ivar used_netdevs: netdev id -> the option of the NIC plugged into it.
    """

    def __init__(self, profile: Profile, argv: Sequence[str]) -> None:
        self.profile = profile
        self.cfg = Config(argv)
        self.help_request: str | None = None
        self.named: dict[str, ChardevSpec] = {}
        self.netdev_ids: set[str] = set()
        self.used_netdevs: dict[str, str] = {}
        #: ``-machine accel=A:B``'s names, checked once the machine is chosen.
        self.accel_list: list[str] = []
        #: Devices created so far that give a ``usb-bus`` (a controller on the command line).
        self.usb_controllers = 0
        #: NICs given no ``mac=`` so far (QEMU numbers the MACs it invents).
        self.default_macs = 0
        #: ``(interface, where)`` of drives no controller takes (``if=scsi`` on a PC).
        self.orphans: list[tuple[str, str]] = []
        #: ``(phase, order, check)``: what QEMU does after reading the whole command line.
        self.deferred: list[tuple[float, int, Callable[[], None]]] = []

    def defer(self, phase: float, check: Callable[[], None]) -> None:
        """Run ``check`` after the option walk, in QEMU's ``phase`` (see ``PHASES``)."""
        self.deferred.append((phase, len(self.deferred), check))

    def run_deferred(self) -> None:
        """The deferred checks, earliest phase first, command-line order within one."""
        while self.deferred:
            item = min(self.deferred, key=lambda entry: entry[:2])
            self.deferred.remove(item)
            item[2]()

    def ask_help(self, kind: str) -> None:
        """A ``help`` value: print the profile's ``kind`` text instead of starting."""
        if self.help_request is None:
            self.help_request = self.profile.text(kind)

    def ask_help_text(self, text: str) -> None:
        """A ``help`` value whose answer is not recorded: print ``text``."""
        self.help_request = self.help_request or text
