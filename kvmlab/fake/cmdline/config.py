"""What a fake VM is made of, as the command line describes it.

The parser (:mod:`kvmlab.fake.cmdline.parser`) fills a :class:`Config` and checks
nothing on disk; the machine (:mod:`kvmlab.fake.machine`) builds sockets,
files and its device list from it. Keeping these plain ``__slots__`` classes
apart from both lets each side be read (and tested) on its own, and gives
later features (hotplug, migration) one description of a device to reuse.
"""

from __future__ import annotations

from kvmlab.fake.cmdline.qemuopts import MIB

# ``typing`` costs ~3 ms to import; mypy honours a module constant of this name.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["BlockDevice", "ChardevSpec", "Config", "NetBackend", "Nic"]


class ChardevSpec:
    """One character device backend: a unix socket, a file, stdio or nothing.

    :ivar backend: ``socket``, ``file``, ``stdio`` or ``null``.
    :ivar where: the option that created it, for error messages.
    :ivar frontend: ``serial``, ``hmp``, ``qmp`` or ``""`` once something uses it.
    """

    __slots__ = (
        "backend",
        "frontend",
        "id",
        "logappend",
        "logfile",
        "path",
        "pretty",
        "server",
        "spec",
        "wait",
        "where",
    )

    def __init__(self, ident: str, backend: str, where: str, spec: str = "") -> None:
        self.id = ident
        self.backend = backend
        self.where = where
        self.spec = spec
        self.path: str | None = None
        self.server = False
        self.wait = True
        self.logfile: str | None = None
        self.logappend = False
        self.frontend = ""
        self.pretty = False


class NetBackend:
    """A host side of a NIC: ``-netdev`` or legacy ``-net user|tap``.

    :ivar kind: ``user`` or ``tap``.
    :ivar script: up-script path, or ``None`` (``script=no``, or an ``fd``).
    :ivar fd: an inherited tap file descriptor, or ``None``.
    """

    __slots__ = ("downscript", "fd", "id", "ifname", "kind", "script", "vnet_hdr", "where")

    def __init__(self, ident: str, kind: str, where: str) -> None:
        self.id = ident
        self.kind = kind
        self.where = where
        self.script: str | None = None
        self.downscript: str | None = None
        self.fd: int | None = None
        self.ifname: str | None = None
        self.vnet_hdr = False


class Nic:
    """A guest network card, in the order the guest enumerates it.

    :ivar model: the device model (``virtio-net-pci``, ``e1000``...).
    :ivar mac: normalised MAC address.
    :ivar netdev: the ``-netdev`` id it is plugged into, or ``None``.
    :ivar ident: the device ``id``, or ``None``.
    :ivar slot: its PCI slot when ``addr=`` gave one, else ``None``.
    :ivar bus: the PCIe root port it sits behind (``bus=``), ``None`` on the root bus.
    """

    __slots__ = ("bus", "ident", "mac", "model", "netdev", "slot", "where")

    def __init__(self, model: str, mac: str, netdev: str | None, where: str) -> None:
        self.model = model
        self.mac = mac
        self.netdev = netdev
        self.where = where
        self.ident: str | None = None
        self.slot: int | None = None
        self.bus: str | None = None


class BlockDevice:
    """A guest virtio disk: ``-drive if=virtio``, ``-device virtio-blk-pci`` or ``device_add``.

    :ivar path: the image file.
    :ivar drive: the drive id or block node it is plugged into (``None``: ``if=virtio``).
    :ivar legacy: its drive came from ``-drive`` (QEMU deletes such a drive with the
        device; a ``blockdev-add`` node stays until ``blockdev-del``).
    :ivar ident: the device ``id``, or ``None``.
    :ivar slot: its PCI slot when ``addr=`` gave one, else ``None``.
    :ivar index: the guest's disk number (``vda`` is 0), given when it appears.
    :ivar bus: the PCIe root port it sits behind (``bus=``), ``None`` on the root bus.
    """

    __slots__ = (
        "bus",
        "drive",
        "ident",
        "index",
        "legacy",
        "model",
        "path",
        "slot",
        "where",
        "writable",
    )

    def __init__(self, path: str, writable: bool, drive: str | None, where: str) -> None:
        self.model = "virtio-blk-pci"
        self.path = path
        self.writable = writable
        self.drive = drive
        self.legacy = True
        self.where = where
        self.ident: str | None = None
        self.slot: int | None = None
        self.bus: str | None = None
        self.index = 0


class Config:
    """Everything a fake VM process needs, read from QEMU's argv.

    Filled in by :func:`~kvmlab.fake.cmdline.parser.parse_argv`; file-system facts
    (does the kernel exist?) are checked later, at start, where QEMU checks them.
    """

    __slots__ = (
        "accel",
        "acpi",
        "append",
        "argv",
        "chardevs",
        "chroot",
        "cpus",
        "daemonize",
        "disks",
        "drives",
        "incoming",
        "initrd",
        "kernel",
        "machine",
        "memory",
        "monitors",
        "name",
        "named_drives",
        "net_backends",
        "nics",
        "no_reboot",
        "no_shutdown",
        "nographic",
        "notices",
        "pidfile",
        "root_ports",
        "runas",
        "serials",
        "start_paused",
        "usb",
        "warnings",
    )

    def __init__(self, argv: Sequence[str]) -> None:
        self.argv = list(argv)
        self.name: str | None = None
        #: Guest RAM in bytes (QEMU's default is 128 MiB).
        self.memory = 128 * MIB
        self.cpus = 1
        self.machine: str | None = None
        self.accel = "tcg"
        self.acpi = True
        self.daemonize = False
        self.pidfile: str | None = None
        self.start_paused = False
        self.no_reboot = False
        self.no_shutdown = False
        self.nographic = False
        self.kernel: str | None = None
        self.initrd: str | None = None
        self.append: str | None = None
        #: ``(where, path, writable)`` for each disk image.
        self.drives: list[tuple[str, str, bool]] = []
        #: ``-drive if=none,id=ID`` drives by id: ``(path, writable)``, for a ``-device``.
        self.named_drives: dict[str, tuple[str, bool]] = {}
        #: The guest's virtio disks (``vda``, ``vdb``...): ``if=virtio`` drives and
        #: ``-device virtio-blk-pci``.
        self.disks: list[BlockDevice] = []
        self.chardevs: list[ChardevSpec] = []
        self.serials: list[ChardevSpec] = []
        #: Monitors: chardevs whose frontend is ``hmp`` or ``qmp``.
        self.monitors: list[ChardevSpec] = []
        self.net_backends: list[NetBackend] = []
        self.nics: list[Nic] = []
        #: ``-device pcie-root-port`` by id: its ``(slot, function)`` on the root bus.
        self.root_ports: dict[str, tuple[int, int]] = {}
        self.chroot: str | None = None
        #: ``-incoming``: ``unix:PATH``, ``tcp:HOST:PORT`` or ``defer``.
        self.incoming: str | None = None
        self.runas: tuple[str, str] | None = None
        #: Warnings QEMU would print at start (``netdev n0 has no peer``).
        self.warnings: list[str] = []
        #: Errors QEMU reports and starts anyway (``invalid accelerator foo``).
        self.notices: list[str] = []
        #: ``-usb`` or ``-machine usb=on``: the machine's own USB controller.
        self.usb = False

    @property
    def memory_mib(self) -> int:
        """``-m`` in MiB."""
        return self.memory // MIB

    @property
    def guest_mem_kb(self) -> int:
        """The ``MemTotal`` a Linux guest would report: RAM minus a 4 % kernel reserve."""
        total_kb = self.memory // 1024
        return total_kb - max(1, total_kb // 25)
