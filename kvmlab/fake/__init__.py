"""A fake ``qemu-system-x86_64``: kvmlab's life cycle without QEMU, KVM or root.

kvmlab's tests, CI and laptops need a process that takes the command line
kvmlab generates, daemonizes like QEMU, writes its pidfile, serves the QMP,
monitor and serial sockets, and "boots" a guest that prints the guest facts
(``KVMLAB-BOOT-OK``, ``MEM``, ``CPUS``, ``NIC`` lines, ``KVMLAB-FACTS-END``) on
its serial console, and that can be told to fail in the ways a real one fails.
This module is that program. It imports nothing but the standard library and
gets ready faster than QEMU itself, so a test suite can start hundreds of
"VMs". ``docs/fake-kvm.md`` describes every behaviour and message.

Usage::

    kvmlab-fake-kvm [--fake-profile NAME|PATH] QEMU-OPTIONS...
    python -m kvmlab.fake [--fake-profile NAME|PATH] QEMU-OPTIONS...

The profile (first argument ``--fake-profile``, else ``$KVMLAB_FAKE_PROFILE``,
else ``qemu-7.2``) is a recorded QEMU (``fixtures/profiles/NAME/help.txt``...),
a folder holding such files, or a bare ``-help`` text file (Ganeti's old
recordings). An option the profile's help text does not list is rejected as
``-foo: invalid option``, exactly as that QEMU would, so ``-no-acpi`` fails
under ``qemu-10.0``. ``-help``, ``-version``, ``-machine help`` and
``-device help`` print the recorded texts, so ``QemuCapabilities.probe()``
works on the fake.

Environment (read once at start; a fault sticks to the process it was given to):

``KVMLAB_FAKE_PROFILE=NAME|PATH``
    the profile when ``--fake-profile`` is not given.
``KVMLAB_FAKE_LOG=PATH``
    append one JSON object per line for each event (``start``, ``ready``,
    ``boot``, ``qmp``, ``hmp``, ``script``, ``powerdown``, ``signal``, ``crash``,
    ``fail``, ``exit``), each with ``time``, ``pid`` and ``event``.
``KVMLAB_FAKE_FAIL_START=MESSAGE``
    print ``<prog>: MESSAGE`` and exit 1 before daemonizing.
``KVMLAB_FAKE_CRASH_AFTER=SECONDS``
    the VM process dies of ``SIGABRT`` that long after it became ready,
    leaving its sockets and pidfile behind like a crashed QEMU.
``KVMLAB_FAKE_IGNORE_POWERDOWN=1``
    ``system_powerdown`` emits ``POWERDOWN`` but the guest never shuts down.
``KVMLAB_FAKE_SLOW_START=SECONDS``
    wait that long before creating sockets and becoming ready.
``KVMLAB_FAKE_HANG_START=1``
    never become ready: the pidfile is written, no socket is created and a
    ``-daemonize`` parent waits forever. The VM process exits when that parent
    is killed (a real QEMU would linger) or on ``SIGTERM``.
``KVMLAB_FAKE_TAP=run``
    as root, create a tap device (``tapN``; a made-up name where
    ``/dev/net/tun`` is unusable) and run each tap NIC's up-script with its
    name, failing like QEMU when it exits non-zero. Otherwise the script is
    only checked (it must be an executable file) and ``would run SCRIPT
    TAPNAME`` is logged.
``KVMLAB_FAKE_BOOT_DELAY=SECONDS``
    delay between start (or ``cont``) and the guest's boot output (default 0).
``KVMLAB_FAKE_POWERDOWN_DELAY=SECONDS``
    how long an ACPI guest takes to power off after ``system_powerdown``
    (default 0.1).

Layout: argv parsing (:func:`parse_argv`) gives a :class:`Config`; a
:class:`Machine` turns it into sockets, files and an ``epoll`` loop (one
thread, no asyncio: importing asyncio alone costs more than QEMU's start).

Start time is most of what a fake is for, so imports are chosen by their cost:
``_socket``, ``_signal`` and ``select.epoll`` instead of ``socket``, ``signal``
and ``selectors`` (their enums and ``collections`` cost ~15 ms), ``json`` only
once a QMP command or a log line needs it, plain ``__slots__`` classes instead
of dataclasses, and no ``kvmlab.capabilities`` (``dataclasses``, ``pathlib``,
``subprocess``, ``re``). The option set read here from the help text is what
``QemuCapabilities``' ``has_*`` booleans are computed from; a test keeps the
two in agreement.
"""

from __future__ import annotations

# ``signal`` builds its enums at import (~5 ms); the C module has the same functions.
import _signal  # type: ignore[import-not-found]
import _socket
import fcntl
import heapq
import os
import pwd
import resource
import select
import struct
import sys
import time

# ``typing`` costs ~3 ms to import; mypy honours a module constant of this name.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from types import ModuleType
    from typing import NoReturn

__all__ = [
    "Config",
    "FakeError",
    "Faults",
    "Machine",
    "NetBackend",
    "Nic",
    "Profile",
    "load_profile",
    "main",
    "parse_argv",
]

PROG = "kvmlab-fake-kvm"
DEFAULT_PROFILE = "qemu-7.2"
_MIB = 1024 * 1024
_PROFILE_FILES = ("help", "version", "machine", "device", "netdev", "chardev")

#: Options that take no argument (QEMU's ``qemu-options.hx`` over the versions
#: kvmlab knows); every other option takes exactly one.
_NO_ARG = frozenset(
    """
    h help version mem-prealloc audio-help snapshot usb nographic portrait full-screen
    win2k-hack no-fd-bootchk no-acpi no-hpet singlestep preconfig S s enable-kvm
    xen-attach xen-domid-restrict xen-create no-reboot no-shutdown daemonize
    only-migratable nodefaults no-user-config async-teardown enable-sync-profile
    perfmap jitdump no-kvm no-kvm-irqchip no-kvm-pit no-kvm-pit-reinjection no-quit
    alt-grab ctrl-grab no-frame sdl curses localtime nodefconfig semihosting std-vga
    old-param tdf rtc-td-hack enable-nesting no-kqemu kernel-kqemu enable-fips
    show-cursor
    """.split()  # noqa: SIM905 - a word list reads like QEMU's own documentation
)

#: QEMU 7.2's options, the built-in profile when no recording can be found.
_QEMU72_OPTIONS = """
    h help version machine cpu accel smp numa add-fd set global boot m mem-path
    mem-prealloc k audio-help audio audiodev device name uuid fda fdb hda hdb hdc hdd
    cdrom blockdev drive mtdblock sd snapshot fsdev virtfs iscsi usb usbdevice display
    nographic spice portrait rotate vga full-screen vnc win2k-hack no-fd-bootchk no-acpi
    no-hpet acpitable smbios netdev nic net chardev tpmdev bios pflash kernel append
    initrd dtb compat fw_cfg serial parallel monitor qmp qmp-pretty mon debugcon pidfile
    singlestep preconfig S overcommit gdb s d D dfilter seed L enable-kvm xen-domid
    xen-attach xen-domid-restrict no-reboot no-shutdown action loadvm daemonize
    option-rom rtc icount watchdog-action echr incoming only-migratable nodefaults
    chroot runas sandbox readconfig no-user-config trace plugin async-teardown msg
    dump-vmstate enable-sync-profile object
    """.split()  # noqa: SIM905

#: ``-device`` drivers that are network cards.
_NIC_DRIVERS = frozenset(
    """
    virtio-net-pci virtio-net-pci-transitional virtio-net-pci-non-transitional
    virtio-net-device e1000 e1000e e1000-82544gc e1000-82545em igb rtl8139 ne2k_pci
    pcnet vmxnet3 tulip i82550 i82551 i82557a i82557b i82557c i82558a i82558b i82559a
    i82559b i82559c i82559er i82562 i82801 usb-net
    """.split()  # noqa: SIM905
)
#: ``-net nic,model=`` names; ``virtio`` is the legacy alias of ``virtio-net-pci``.
_LEGACY_NIC_MODELS = {"virtio": "virtio-net-pci", **{name: name for name in _NIC_DRIVERS}}
_DEFAULT_NIC_MODEL = "e1000"
_NETDEV_TYPES = frozenset(
    {"user", "tap", "bridge", "socket", "stream", "dgram", "vde", "vhost-user", "vhost-vdpa"}
    | {"hubport", "l2tpv3"}
)
_BOOT_DEVICES = frozenset("abcdn")
_SIGHUP: int = _signal.SIGHUP
_SIGINT: int = _signal.SIGINT
_SIGTERM: int = _signal.SIGTERM
_SIGABRT: int = _signal.SIGABRT
#: QEMU exits cleanly on these (``terminating on signal N``).
_TERMINATING_SIGNALS = (_SIGTERM, _SIGINT, _SIGHUP)
#: Ignored by Python or by a daemon; reset to default for the scripts it runs.
_JOB_SIGNALS = (_signal.SIGTSTP, _signal.SIGTTOU, _signal.SIGTTIN)
_RESET_FOR_CHILDREN: tuple[int, ...] = (_signal.SIGPIPE, _signal.SIGXFSZ, *_JOB_SIGNALS)

_TUNSETIFF = 0x400454CA
_IFF_TAP = 0x0002
_IFF_NO_PI = 0x1000
_IFF_VNET_HDR = 0x4000


# --------------------------------------------------------------------------- errors


def _json() -> ModuleType:
    """``json``, imported on first use: with ``re`` it is the biggest import left."""
    import json  # noqa: PLC0415 - deferred for start-up time, see the module docstring

    return json


class FakeError(Exception):
    """A start failure, reported on stderr the way QEMU words it.

    :param message: what QEMU would say.
    :param where: the option it is about (``-drive file=x``), printed before
        the message like QEMU's ``error_report`` location, or ``""``.
    :param raw: print ``message`` as is, without ``<prog>:`` (QEMU's kernel
        loader writes ``qemu: could not open kernel file ...`` with ``fprintf``).
    """

    def __init__(self, message: str, where: str = "", *, raw: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.where = where
        self.raw = raw

    def render(self, prog: str) -> str:
        """The line(s) QEMU would print for this error."""
        if self.raw:
            return self.message
        if self.where:
            return f"{prog}: {self.where}: {self.message}"
        return f"{prog}: {self.message}"


class _Exit(Exception):  # noqa: N818 - control flow, not an error
    """Stop early with ``code`` after printing ``output`` to stdout (``-help``)."""

    def __init__(self, code: int, output: str = "") -> None:
        super().__init__(code)
        self.code = code
        self.output = output


class _Shutdown(Exception):  # noqa: N818 - control flow, not an error
    """Leave the machine's loop: clean up and exit with ``code``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


# --------------------------------------------------------------------------- profiles


def _profile_dirs() -> list[str]:
    """Where recordings live: the installed package, then a source tree.

    The same places as :func:`kvmlab.capabilities.profile_dirs`, without its imports.
    """
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # kvmlab/
    candidates = [os.path.join(here, "_profiles"), os.path.join(here, "..", "fixtures", "profiles")]
    return [os.path.normpath(path) for path in candidates if os.path.isdir(path)]


def _option_names(help_text: str) -> frozenset[str]:
    """Every option a ``-help`` text lists, without dashes.

    ``-fda/-fdb file`` gives both names, ``-h or -help`` both spellings; this is
    the rule :meth:`QemuCapabilities.from_help` applies to the single names it asks about.
    """
    names: set[str] = set()
    for line in help_text.splitlines():
        if len(line) < 2 or line[0] != "-" or line[1] == " ":
            continue
        words = line.split()
        for name in words[0].split("[", 1)[0].split("/"):
            if name.strip("-"):
                names.add(name.lstrip("-"))
        if len(words) > 2 and words[1] == "or" and words[2].startswith("-"):
            names.add(words[2].lstrip("-"))
    return frozenset(names)


def _parse_version(help_text: str) -> tuple[tuple[int, int, int], str]:
    """``((7, 2, 22), "Debian 1:7.2+dfsg-7")`` from a help or version text's first lines.

    The same reading as ``QemuCapabilities``' regular expression, without ``re``:
    ``version 0.15.90,`` and ``version 1.0 (qemu-kvm-1.0)`` both parse.
    """
    for line in help_text.splitlines()[:3]:
        _, found, rest = line.partition("version ")
        if not found:
            continue
        rest = rest.lstrip()
        end = 0
        while end < len(rest) and (rest[end].isdigit() or rest[end] == "."):
            end += 1
        parts = rest[:end].rstrip(".").split(".")
        if len(parts) < 2 or not all(part.isdigit() for part in parts):
            continue
        numbers = [int(part) for part in parts[:3]] + [0]
        tail = rest[end:].lstrip()
        extra = tail[1 : tail.index(")")] if tail.startswith("(") and ")" in tail else ""
        return (numbers[0], numbers[1], numbers[2]), extra.strip()
    return (7, 2, 22), ""


class Profile:
    """The QEMU a fake process imitates: version, options and recorded texts.

    :param name: the profile's name (``qemu-7.2``) or the path it came from.
    :param help_text: the recorded ``-help`` output.
    :param folder: the folder holding the other recordings, or ``None``.
    :param texts: recordings given in memory (the built-in fallback).
    """

    __slots__ = ("_texts", "folder", "help_text", "name", "options", "version", "version_extra")

    def __init__(
        self,
        name: str,
        help_text: str,
        folder: str | None = None,
        texts: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.help_text = help_text
        self.folder = folder
        self._texts: dict[str, str] = dict(texts or {})
        self.options = _option_names(help_text)
        self.version, self.version_extra = _parse_version(help_text)

    @property
    def version_string(self) -> str:
        """``7.2.22``."""
        return "{}.{}.{}".format(*self.version)

    def accepts(self, option: str) -> bool:
        """Whether this QEMU knows ``-option`` (``-M`` is ``-machine``'s unlisted alias)."""
        return option in self.options or (option == "M" and "machine" in self.options)

    def text(self, kind: str) -> str:
        """A recorded text: ``help``, ``version``, ``machine``, ``device``, ``netdev``..."""
        if kind == "help":
            return self.help_text
        if kind not in self._texts:
            content = ""
            if self.folder is not None:
                try:
                    with open(os.path.join(self.folder, kind + ".txt"), encoding="utf-8") as f:
                        content = f.read()
                except OSError:
                    content = ""
            if kind == "version" and not content:
                head = self.help_text.splitlines()[:1]
                content = (head[0] + "\n") if head else ""
            self._texts[kind] = content
        return self._texts[kind]

    def machines(self) -> frozenset[str]:
        """Machine types from ``-machine help``; empty when not recorded (accept any)."""
        names = set()
        for line in self.text("machine").splitlines():
            if line.strip() and not line.startswith(("Supported machines", " ")):
                names.add(line.split()[0])
        return frozenset(names)

    def devices(self) -> dict[str, str]:
        """Device models (and their aliases) from ``-device help``, each to its real name.

        Empty when not recorded: then any model is accepted.
        """
        names: dict[str, str] = {}
        for line in self.text("device").splitlines():
            if line.startswith('name "'):
                name = line[6:].split('"', 1)[0]
                names[name] = name
                _, found, alias = line.partition(', alias "')
                if found:
                    names[alias.split('"', 1)[0]] = name
        return names


def _builtin_profile() -> Profile:
    """QEMU 7.2 as :class:`~kvmlab.capabilities.QemuCapabilities` defaults describe it.

    Used when no recording is installed, so the fake still runs from a bare checkout.
    """
    detail = {
        "chardev": "-chardev socket,id=id,path=path[,server=on|off][,logfile=PATH]",
        "netdev": "-netdev tap,id=str[,fd=h][,script=file][,downscript=dfile][,vhost=on|off]",
        "drive": "-drive [file=file][,if=type][,cache=none][,aio=threads|native][,readonly=on|off]",
    }
    lines = [
        "QEMU emulator version 7.2.22 (kvmlab-fake built-in profile)",
        "usage: qemu-system-x86_64 [options] [disk_image]",
        "",
    ]
    lines += [
        detail.get(name, f"-{name}" if name in _NO_ARG else f"-{name} arg")
        for name in _QEMU72_OPTIONS
    ]
    machine = (
        "Supported machines are:\n"
        "pc                   Standard PC (i440FX + PIIX, 1996) (alias of pc-i440fx-7.2)\n"
        "pc-i440fx-7.2        Standard PC (i440FX + PIIX, 1996) (default)\n"
        "q35                  Standard PC (Q35 + ICH9, 2009) (alias of pc-q35-7.2)\n"
        "pc-q35-7.2           Standard PC (Q35 + ICH9, 2009)\n"
    )
    return Profile("builtin-7.2", "\n".join(lines) + "\n", texts={"machine": machine})


def load_profile(spec: str | None = None) -> Profile:
    """Find the profile to imitate.

    :param spec: a recorded profile's name, a folder of recordings, a ``-help``
        text file, or ``None`` for ``qemu-7.2`` (built in when not recorded).
    :raise FakeError: when the name is unknown or the file cannot be read.
    """
    if spec is None or spec == "":
        for directory in _profile_dirs():
            folder = os.path.join(directory, DEFAULT_PROFILE)
            if os.path.isfile(os.path.join(folder, "help.txt")):
                return _profile_from_folder(DEFAULT_PROFILE, folder)
        return _builtin_profile()
    if os.sep in spec or spec.startswith("."):
        path = os.path.abspath(spec)
        if os.path.isdir(path):
            return _profile_from_folder(spec, path)
        try:
            with open(path, encoding="utf-8") as f:
                return Profile(spec, f.read())
        except OSError as err:
            raise FakeError(f"cannot read QEMU profile {spec!r}: {err.strerror}") from err
    if spec.replace("-", "").replace(".", "").replace("_", "").isalnum():
        for directory in _profile_dirs():
            folder = os.path.join(directory, spec)
            if os.path.isfile(os.path.join(folder, "help.txt")):
                return _profile_from_folder(spec, folder)
    known = sorted(
        {
            entry
            for directory in _profile_dirs()
            for entry in os.listdir(directory)
            if os.path.isfile(os.path.join(directory, entry, "help.txt"))
        }
    )
    raise FakeError(f"unknown QEMU profile {spec!r} (recorded: {', '.join(known) or 'none'})")


def _profile_from_folder(name: str, folder: str) -> Profile:
    try:
        with open(os.path.join(folder, "help.txt"), encoding="utf-8") as f:
            help_text = f.read()
    except OSError as err:
        raise FakeError(f"cannot read QEMU profile {name!r}: {err.strerror}") from err
    return Profile(name, help_text, folder)


# --------------------------------------------------------------------------- QemuOpts


def _split_opts(text: str) -> list[str]:
    """Split ``a=1,b=x,,y`` at single commas; ``,,`` is an escaped comma."""
    parts: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char == ",":
            if text.startswith(",,", i):
                current.append(",")
                i += 2
                continue
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
        i += 1
    parts.append("".join(current))
    return parts


def _parse_opts(
    text: str,
    where: str,
    implied: str | None = None,
    allowed: frozenset[str] | None = None,
) -> dict[str, str]:
    """Parse a QemuOpts string as QEMU does.

    A first element without ``=`` is the value of ``implied`` (``-netdev user,...``);
    any other bare ``key`` means ``key=on`` and ``nokey`` means ``key=off`` (the
    short booleans older profiles use: ``server,nowait``).

    :param where: the option, for error messages.
    :param implied: the key a bare first element sets.
    :param allowed: keys QEMU accepts here, or ``None`` to accept any.
    :raise FakeError: ``Invalid parameter 'x'`` for a key not in ``allowed``.
    """
    result: dict[str, str] = {}
    for index, part in enumerate(_split_opts(text)):
        if part == "":
            continue
        if "=" in part:
            key, value = part.split("=", 1)
        elif index == 0 and implied is not None:
            key, value = implied, part
        elif part.startswith("no") and len(part) > 2:
            key, value = part[2:], "off"
        else:
            key, value = part, "on"
        if allowed is not None and key not in allowed:
            raise FakeError(f"Invalid parameter '{key}'", where)
        result[key] = value
    return result


def _parse_bool(opts: dict[str, str], key: str, default: bool, where: str) -> bool:
    """A QemuOpts boolean (``on``/``off``, and the ``yes``/``no`` QEMU still takes)."""
    value = opts.get(key)
    if value is None:
        return default
    if value in ("on", "yes", "true", "y"):
        return True
    if value in ("off", "no", "false", "n"):
        return False
    raise FakeError(f"Parameter '{key}' expects 'on' or 'off'", where)


def _parse_size(text: str, where: str, default_unit: int = _MIB) -> int:
    """Bytes from ``512``, ``512M``, ``1G``, ``1.5G`` (QEMU's ``qemu_strtosz``)."""
    units = {"b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
    units["e"] = 1 << 60
    number, unit = text, default_unit
    if text and text[-1].lower() in units and not text[-1].isdigit():
        number, unit = text[:-1], units[text[-1].lower()]
    try:
        value = float(number) if "." in number else int(number, 10)
    except ValueError:
        value = -1
    if value < 0 or number.strip() != number or value * unit >= 1 << 64:
        raise FakeError(
            "Parameter 'size' expects a non-negative number below 2^64\n"
            "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n"
            "and exabytes, respectively.",
            where,
        )
    return int(value * unit)


def _parse_int(value: str, message: str, where: str = "") -> int:
    try:
        return int(value, 10)
    except ValueError:
        raise FakeError(message, where) from None


def _normal_mac(mac: str) -> str | None:
    """``52:54:00:12:34:56`` in lower case, or ``None`` when QEMU would refuse it."""
    parts = mac.replace("-", ":").split(":")
    hexdigits = "0123456789abcdefABCDEF"
    if len(parts) != 6 or not all(len(p) == 2 and all(c in hexdigits for c in p) for p in parts):
        return None
    return ":".join(parts).lower()


# --------------------------------------------------------------------------- configuration


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
    """

    __slots__ = ("mac", "model", "netdev", "where")

    def __init__(self, model: str, mac: str, netdev: str | None, where: str) -> None:
        self.model = model
        self.mac = mac
        self.netdev = netdev
        self.where = where


class Config:
    """Everything a fake VM process needs, read from QEMU's argv.

    Filled in by :func:`parse_argv`; file-system facts (does the kernel exist?)
    are checked later, at start, where QEMU checks them.
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
        "drives",
        "initrd",
        "kernel",
        "machine",
        "memory",
        "monitors",
        "name",
        "net_backends",
        "nics",
        "no_reboot",
        "no_shutdown",
        "nographic",
        "pidfile",
        "runas",
        "serials",
        "start_paused",
        "warnings",
    )

    def __init__(self, argv: Sequence[str]) -> None:
        self.argv = list(argv)
        self.name: str | None = None
        #: Guest RAM in bytes (QEMU's default is 128 MiB).
        self.memory = 128 * _MIB
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
        self.chardevs: list[ChardevSpec] = []
        self.serials: list[ChardevSpec] = []
        #: Monitors: chardevs whose frontend is ``hmp`` or ``qmp``.
        self.monitors: list[ChardevSpec] = []
        self.net_backends: list[NetBackend] = []
        self.nics: list[Nic] = []
        self.chroot: str | None = None
        self.runas: tuple[str, str] | None = None
        #: Warnings QEMU would print at start (``netdev n0 has no peer``).
        self.warnings: list[str] = []

    @property
    def memory_mib(self) -> int:
        """``-m`` in MiB."""
        return self.memory // _MIB

    @property
    def guest_mem_kb(self) -> int:
        """The ``MemTotal`` a Linux guest would report: RAM minus a 4 % kernel reserve."""
        total_kb = self.memory // 1024
        return total_kb - max(1, total_kb // 25)


class _Parser:
    """Turns QEMU options into a :class:`Config`, one handler per option."""

    def __init__(self, profile: Profile, argv: Sequence[str]) -> None:
        self.profile = profile
        self.cfg = Config(argv)
        self.help_request: str | None = None
        self.named: dict[str, ChardevSpec] = {}
        self.netdev_ids: set[str] = set()
        self.used_netdevs: dict[str, str] = {}
        self.handlers: dict[str, Callable[[str, str], None]] = {
            "name": self._name,
            "m": self._memory,
            "smp": self._smp,
            "machine": self._machine,
            "M": self._machine,
            "accel": self._accel,
            "boot": self._boot,
            "drive": self._drive,
            "hda": self._disk,
            "hdb": self._disk,
            "hdc": self._disk,
            "hdd": self._disk,
            "cdrom": self._cdrom,
            "kernel": self._kernel,
            "initrd": self._initrd,
            "append": self._append,
            "pidfile": self._pidfile,
            "chardev": self._chardev,
            "serial": self._serial,
            "monitor": self._monitor,
            "qmp": self._qmp,
            "qmp-pretty": self._qmp_pretty,
            "mon": self._mon,
            "netdev": self._netdev,
            "net": self._net,
            "nic": self._nic,
            "device": self._device,
            "cpu": self._cpu,
            "uuid": self._uuid,
            "runas": self._runas,
            "chroot": self._chroot,
            "run-with": self._run_with,
        }
        self.flags: dict[str, Callable[[], None]] = {
            "daemonize": self._daemonize,
            "S": self._paused,
            "no-acpi": self._no_acpi,
            "no-reboot": self._no_reboot,
            "no-shutdown": self._no_shutdown,
            "enable-kvm": self._enable_kvm,
            "nographic": self._nographic,
        }

    # -- driver

    def parse(self) -> Config:
        """Walk the options like QEMU's ``qemu_init``: one handler per option, then checks.

        :raise _Exit: for ``-help``, ``-version`` and the ``help`` values.
        :raise FakeError: for what QEMU refuses.
        """
        argv = self.cfg.argv
        index = 0
        while index < len(argv):
            arg = argv[index]
            index += 1
            if not arg.startswith("-") or arg == "-":
                self._disk(arg, arg)  # QEMU takes a bare argument as the first disk image
                continue
            name = arg[2:] if arg.startswith("--") else arg[1:]
            if not self.profile.accepts(name):
                raise FakeError(f"{arg}: invalid option")
            if name in _NO_ARG:
                if name in ("h", "help"):
                    raise _Exit(0, self.profile.text("help"))
                if name == "version":
                    raise _Exit(0, self.profile.text("version"))
                flag = self.flags.get(name)
                if flag is not None:
                    flag()
                continue
            if index >= len(argv):
                raise FakeError(f"{arg}: requires an argument")
            value = argv[index]
            index += 1
            handler = self.handlers.get(name)
            if handler is not None:
                handler(value, f"{arg} {value}")
        if self.help_request is not None:
            raise _Exit(0, self.help_request)
        self._finish()
        return self.cfg

    def _help(self, kind: str) -> None:
        if self.help_request is None:
            self.help_request = self.profile.text(kind)

    def _finish(self) -> None:
        """Cross-option checks QEMU makes before it touches any file."""
        cfg = self.cfg
        if cfg.kernel is None:
            if cfg.initrd is not None:
                raise FakeError("-initrd only allowed with -kernel option")
            if cfg.append is not None:
                raise FakeError("-append only allowed with -kernel option")
        for nic in cfg.nics:
            if nic.netdev is None:
                continue
            owner = "virtio-net-device" if nic.model.startswith("virtio-net") else nic.model
            if nic.netdev not in self.netdev_ids:
                raise FakeError(
                    f"Property '{owner}.netdev' can't find value '{nic.netdev}'", nic.where
                )
        if cfg.daemonize:
            if cfg.nographic:
                raise FakeError("-nographic cannot be used with -daemonize")
            for spec in cfg.chardevs:
                if spec.backend == "stdio" and spec.frontend:
                    raise FakeError("cannot use stdio with -daemonize", spec.where)
        for backend in cfg.net_backends:
            if backend.id not in self.used_netdevs and backend.id in self.netdev_ids:
                cfg.warnings.append(f"netdev {backend.id} has no peer")

    # -- general

    def _name(self, value: str, where: str) -> None:
        allowed = frozenset({"guest", "process", "debug-threads"})
        self.cfg.name = _parse_opts(value, where, "guest", allowed).get("guest")

    def _memory(self, value: str, where: str) -> None:
        opts = _parse_opts(value, where, "size", frozenset({"size", "slots", "maxmem"}))
        if "size" in opts:
            size = _parse_size(opts["size"], where)
            if size:
                self.cfg.memory = size

    def _smp(self, value: str, where: str) -> None:
        keys = "cpus maxcpus sockets dies clusters cores threads books drawers modules"
        opts = _parse_opts(value, where, "cpus", frozenset(keys.split()))
        numbers = {
            k: _parse_int(v, f"Parameter 'smp.{k}' expects integer") for k, v in opts.items()
        }
        topology = ("sockets", "dies", "cores", "threads")
        if "cpus" in numbers:
            cpus = numbers["cpus"]
        else:
            cpus = 1
            for key in topology:
                cpus *= numbers.get(key, 1)
        maxcpus = numbers.get("maxcpus", cpus)
        if all(key in numbers for key in ("sockets", "cores", "threads")):
            s, d, c, t = (numbers.get(key, 1) for key in topology)
            if s * d * c * t != maxcpus:
                raise FakeError(
                    "Invalid CPU topology: product of the hierarchy must match maxcpus: "
                    f"sockets ({s}) * dies ({d}) * cores ({c}) * threads ({t}) "
                    f"!= maxcpus ({maxcpus})"
                )
        if cpus > maxcpus:
            raise FakeError(f"maxcpus must be equal to or greater than smp ({cpus} > {maxcpus})")
        self.cfg.cpus = max(cpus, 1)

    def _machine(self, value: str, where: str) -> None:
        opts = _parse_opts(value, where, "type")
        kind = opts.get("type")
        if kind in ("help", "?"):
            self._help("machine")
            return
        if kind is not None:
            machines = self.profile.machines()
            if machines and kind not in machines:
                raise FakeError(
                    "unsupported machine type\nUse -machine help to list supported machines"
                )
            self.cfg.machine = kind
        if "accel" in opts:
            self.cfg.accel = opts["accel"].split(":")[0]
        if "acpi" in opts:
            if opts["acpi"] not in ("on", "off", "auto"):
                raise FakeError(f"Parameter 'acpi' does not accept value '{opts['acpi']}'")
            self.cfg.acpi = opts["acpi"] != "off" and self.cfg.acpi

    def _accel(self, value: str, where: str) -> None:
        accel = _parse_opts(value, where, "accel").get("accel", "tcg")
        if accel in ("help", "?"):
            raise _Exit(0, "Accelerators supported in QEMU binary:\ntcg\nkvm\n")
        self.cfg.accel = accel

    def _boot(self, value: str, where: str) -> None:
        opts = _parse_opts(value, where, "order")
        for key in ("order", "once"):
            for device in opts.get(key, ""):
                if device not in _BOOT_DEVICES:
                    raise FakeError(f"Invalid boot device '{device}'")

    def _cpu(self, value: str, where: str) -> None:
        if value.split(",", 1)[0] in ("help", "?"):
            self.help_request = self.help_request or (
                "Available CPUs:\nx86 host\nx86 max\nx86 qemu64\nx86 kvm64\n"
            )

    def _uuid(self, value: str, where: str) -> None:
        groups = value.split("-")
        if [len(g) for g in groups] != [8, 4, 4, 4, 12] or not all(
            all(c in "0123456789abcdefABCDEF" for c in g) for g in groups
        ):
            raise FakeError("failed to parse UUID string: wrong format", where)

    # -- flags

    def _daemonize(self) -> None:
        self.cfg.daemonize = True

    def _paused(self) -> None:
        self.cfg.start_paused = True

    def _no_acpi(self) -> None:
        self.cfg.acpi = False

    def _no_reboot(self) -> None:
        self.cfg.no_reboot = True

    def _no_shutdown(self) -> None:
        self.cfg.no_shutdown = True

    def _enable_kvm(self) -> None:
        self.cfg.accel = "kvm"

    def _nographic(self) -> None:
        self.cfg.nographic = True

    # -- disks and boot files

    def _drive(self, value: str, where: str) -> None:
        opts = _parse_opts(value, where)
        if opts.get("file"):
            readonly = _parse_bool(opts, "readonly", False, where)
            self.cfg.drives.append((where, opts["file"], not readonly))

    def _disk(self, value: str, where: str) -> None:
        self.cfg.drives.append((where, value, True))

    def _cdrom(self, value: str, where: str) -> None:
        self.cfg.drives.append((where, value, False))

    def _kernel(self, value: str, where: str) -> None:
        self.cfg.kernel = value

    def _initrd(self, value: str, where: str) -> None:
        self.cfg.initrd = value

    def _append(self, value: str, where: str) -> None:
        self.cfg.append = value

    def _pidfile(self, value: str, where: str) -> None:
        self.cfg.pidfile = os.path.abspath(value)

    # -- privileges

    def _runas(self, value: str, where: str) -> None:
        self.cfg.runas = (value, where)

    def _chroot(self, value: str, where: str) -> None:
        self.cfg.chroot = value

    def _run_with(self, value: str, where: str) -> None:
        opts = _parse_opts(value, where, None, frozenset({"chroot", "user", "async-teardown"}))
        if "chroot" in opts:
            self.cfg.chroot = opts["chroot"]
        if "user" in opts:
            self.cfg.runas = (opts["user"], where)

    # -- character devices

    def _chardev(self, value: str, where: str) -> None:
        opts = _parse_opts(value, where, "backend")
        backend = opts.get("backend", "")
        if backend in ("help", "?"):
            self._help("chardev")
            return
        ident = opts.get("id")
        if not ident:
            raise FakeError("chardev: no id specified", where)
        if ident in self.named:
            raise FakeError(
                f"attempt to add duplicate property '{ident}' to object (type 'container')", where
            )
        spec = self._make_chardev(ident, backend, opts, where, value)
        self.named[ident] = spec

    def _make_chardev(
        self, ident: str, backend: str, opts: dict[str, str], where: str, text: str
    ) -> ChardevSpec:
        if backend in ("vc", "null", "pty", "msmouse", "ringbuf", "memory"):
            backend = "null"  # nothing a test can see: output is dropped
        elif backend not in ("socket", "file", "stdio"):
            raise FakeError(f"chardev backend '{backend}' is not simulated by kvmlab-fake", where)
        spec = ChardevSpec(ident, backend, where, text)
        spec.logfile = os.path.abspath(opts["logfile"]) if opts.get("logfile") else None
        spec.logappend = _parse_bool(opts, "logappend", False, where)
        if backend in ("socket", "file"):
            path = opts.get("path")
            if not path:
                if backend == "socket":
                    raise FakeError("chardev: socket: no host given", where)
                raise FakeError("chardev: file: no filename given", where)
            spec.path = os.path.abspath(path)
        if backend == "socket":
            spec.server = _parse_bool(opts, "server", False, where)
            spec.wait = _parse_bool(opts, "wait", True, where)
            if not spec.server:
                raise FakeError("kvmlab-fake simulates server sockets only (server=on)", where)
        self.cfg.chardevs.append(spec)
        return spec

    def _compat_chardev(self, value: str, where: str, label: str) -> ChardevSpec | None:
        """The ``-serial``/``-monitor``/``-qmp`` shorthand: ``unix:PATH,server=on,wait=off``..."""
        ident = f"compat_{label}{len(self.cfg.chardevs)}"
        if value in ("none",):
            return None
        if value.startswith("chardev:"):
            spec = self.named.get(value[8:])
            if spec is None:
                return None
            return spec
        if value.startswith("unix:"):
            opts = _parse_opts(value[5:], where, "path")
            return self._make_chardev(ident, "socket", opts, where, value)
        if value.startswith("file:"):
            return self._make_chardev(ident, "file", {"path": value[5:]}, where, value)
        if value in ("stdio", "null", "vc", "pty") or value.startswith("vc:"):
            return self._make_chardev(ident, value.split(":", 1)[0], {}, where, value)
        raise FakeError(f"chardev '{value}' is not simulated by kvmlab-fake", where)

    def _use(self, spec: ChardevSpec, frontend: str, where: str) -> None:
        if spec.frontend:
            raise FakeError(f"Device '{spec.id}' is in use", where)
        spec.frontend = frontend

    def _serial(self, value: str, where: str) -> None:
        spec = self._compat_chardev(value, where, "serial")
        if spec is None:
            if value.startswith("chardev:"):
                raise FakeError(
                    f"could not connect serial device to character backend '{value}'", where
                )
            return
        self._use(spec, "serial", where)
        self.cfg.serials.append(spec)

    def _monitor(self, value: str, where: str) -> None:
        self._add_monitor(value, where, "hmp")

    def _qmp(self, value: str, where: str) -> None:
        self._add_monitor(value, where, "qmp")

    def _qmp_pretty(self, value: str, where: str) -> None:
        spec = self._add_monitor(value, where, "qmp")
        if spec is not None:
            spec.pretty = True

    def _add_monitor(self, value: str, where: str, frontend: str) -> ChardevSpec | None:
        spec = self._compat_chardev(value, where, frontend)
        if spec is None:
            if value.startswith("chardev:"):
                raise FakeError(f'chardev "{value[8:]}" not found', where)
            return None
        self._use(spec, frontend, where)
        self.cfg.monitors.append(spec)
        return spec

    def _mon(self, value: str, where: str) -> None:
        opts = _parse_opts(
            value, where, "chardev", frozenset({"chardev", "mode", "pretty", "id", "default"})
        )
        ident = opts.get("chardev", "")
        spec = self.named.get(ident)
        if spec is None:
            raise FakeError(f'chardev "{ident}" not found', where)
        mode = opts.get("mode", "readline")
        if mode not in ("readline", "control"):
            raise FakeError(f"Parameter 'mode' does not accept value '{mode}'", where)
        self._use(spec, "qmp" if mode == "control" else "hmp", where)
        spec.pretty = _parse_bool(opts, "pretty", False, where)
        self.cfg.monitors.append(spec)

    # -- network

    def _backend(self, kind: str, ident: str, opts: dict[str, str], where: str) -> NetBackend:
        backend = NetBackend(ident, kind, where)
        if kind == "tap":
            backend.ifname = opts.get("ifname") or None
            backend.vnet_hdr = _parse_bool(opts, "vnet_hdr", False, where)
            _parse_bool(opts, "vhost", False, where)
            if "fd" in opts:
                backend.fd = _parse_int(
                    opts["fd"], f"{ident}: Can't use file descriptor {opts['fd']}", where
                )
            else:
                script = opts.get("script", "/etc/qemu-ifup")
                backend.script = None if script in ("", "no") else script
                down = opts.get("downscript", "/etc/qemu-ifdown")
                backend.downscript = None if down in ("", "no") else down
        self.cfg.net_backends.append(backend)
        return backend

    def _netdev(self, value: str, where: str) -> None:
        opts = _parse_opts(value, where, "type")
        kind = opts.get("type", "")
        if kind in ("help", "?"):
            self._help("netdev")
            return
        if kind not in _NETDEV_TYPES:
            raise FakeError(f"Parameter 'type' does not accept value '{kind}'", where)
        ident = opts.get("id")
        if not ident:
            raise FakeError("Parameter 'id' is missing", where)
        if ident in self.netdev_ids:
            raise FakeError(f"Duplicate ID '{ident}' for netdev", where)
        if kind not in ("user", "tap"):
            raise FakeError(f"-netdev {kind} is not simulated by kvmlab-fake", where)
        self.netdev_ids.add(ident)
        self._backend(kind, ident, opts, where)

    def _check_vlan(self, opts: dict[str, str], where: str) -> None:
        # QEMU 3.0 removed the "vlan" hubs; older recordings still take it.
        if "vlan" in opts and self.profile.version >= (3, 0, 0):
            raise FakeError("Invalid parameter 'vlan'", where)

    def _net(self, value: str, where: str) -> None:
        opts = _parse_opts(value, where, "type")
        kind = opts.get("type", "")
        self._check_vlan(opts, where)
        if kind == "none":
            return
        if kind == "nic":
            model = opts.get("model", _DEFAULT_NIC_MODEL)
            if model in ("help", "?"):
                self.help_request = self.help_request or "Available NIC models:\n" + "\n".join(
                    sorted(_LEGACY_NIC_MODELS)
                )
                return
            if model not in _LEGACY_NIC_MODELS:
                raise FakeError(f"Unsupported NIC model: {model}")
            self._add_nic(_LEGACY_NIC_MODELS[model], opts.get("macaddr"), None, where, "macaddr")
            return
        if kind not in ("user", "tap"):
            if kind in _NETDEV_TYPES or kind in ("dump", "socket"):
                raise FakeError(f"-net {kind} is not simulated by kvmlab-fake", where)
            raise FakeError(f"Parameter 'type' does not accept value '{kind}'", where)
        ident = opts.get("name") or opts.get("id") or f"{kind}.{len(self.cfg.net_backends)}"
        self._backend(kind, ident, opts, where)

    def _nic(self, value: str, where: str) -> None:
        opts = _parse_opts(value, where, "type")
        kind = opts.get("type", "user")
        if kind == "none":
            return
        if kind not in ("user", "tap"):
            raise FakeError(f"-nic {kind} is not simulated by kvmlab-fake", where)
        model = opts.get("model", _DEFAULT_NIC_MODEL)
        if model not in _LEGACY_NIC_MODELS:
            raise FakeError(f"Unsupported NIC model: {model}")
        ident = opts.get("id") or f"__org.qemu.nic{len(self.cfg.nics)}"
        self.netdev_ids.add(ident)
        self._backend(kind, ident, opts, where)
        self._add_nic(_LEGACY_NIC_MODELS[model], opts.get("mac"), ident, where, "mac")

    def _add_nic(
        self, model: str, mac: str | None, netdev: str | None, where: str, key: str
    ) -> None:
        owner = "virtio-net-device" if model.startswith("virtio-net") else model
        if mac is None:
            # Real QEMU would invent 52:54:00:12:34:5x; kvmlab always gives one,
            # so a missing MAC is a generator bug worth failing on.
            raise FakeError(
                f"NIC {model} has no MAC address ({key}= is missing); "
                "kvmlab always gives one (real QEMU would invent 52:54:00:12:34:56)",
                where,
            )
        normal = _normal_mac(mac)
        if normal is None:
            raise FakeError(f"Property '{owner}.mac' doesn't take value '{mac}'", where)
        if netdev is not None:
            user = self.used_netdevs.get(netdev)
            if user is not None:
                raise FakeError(
                    f"Property '{owner}.netdev' can't take value '{netdev}', it's in use", where
                )
            self.used_netdevs[netdev] = where
        self.cfg.nics.append(Nic(model, normal, netdev, where))

    def _device(self, value: str, where: str) -> None:
        opts = _parse_opts(value, where, "driver")
        driver = opts.get("driver", "")
        if driver in ("help", "?"):
            self._help("device")
            return
        devices = self.profile.devices()
        if devices and driver not in devices:
            raise FakeError(f"'{driver}' is not a valid device model name", where)
        driver = devices.get(driver, driver)
        if opts.get("help") == "on" or opts.get("?") == "on":
            self.help_request = self.help_request or f"{driver} options:\n"
            return
        if driver in _NIC_DRIVERS:
            self._add_nic(driver, opts.get("mac"), opts.get("netdev"), where, "mac")


def parse_argv(argv: Sequence[str], profile: Profile | None = None) -> Config:
    """Read a QEMU command line (without the program name) into a :class:`Config`.

    :param argv: the options, as kvmlab's executor passes them.
    :param profile: the QEMU to imitate; the default profile when ``None``.
    :raise FakeError: for anything that QEMU would refuse before opening a file.
    """
    profile = profile or load_profile()
    return _Parser(profile, argv).parse()


# --------------------------------------------------------------------------- faults, log


def _env_float(name: str, default: float | None) -> float | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise FakeError(f"{name}={raw!r}: expected a number of seconds") from None
    if value < 0:
        raise FakeError(f"{name}={raw!r}: expected a number of seconds") from None
    return value


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


class Faults:
    """The misbehaviour asked for through ``KVMLAB_FAKE_*`` variables, read once."""

    __slots__ = (
        "boot_delay",
        "crash_after",
        "fail_start",
        "hang_start",
        "ignore_powerdown",
        "powerdown_delay",
        "slow_start",
        "tap_run",
    )

    def __init__(self) -> None:
        self.fail_start: str | None = None
        self.crash_after: float | None = None
        self.ignore_powerdown = False
        self.slow_start = 0.0
        self.hang_start = False
        self.tap_run = False
        self.boot_delay = 0.0
        self.powerdown_delay = 0.1

    @classmethod
    def from_env(cls) -> Faults:
        """Read the environment.

        :raise FakeError: when a number of seconds is not a number.
        """
        faults = cls()
        faults.fail_start = os.environ.get("KVMLAB_FAKE_FAIL_START") or None
        faults.crash_after = _env_float("KVMLAB_FAKE_CRASH_AFTER", None)
        faults.ignore_powerdown = _env_flag("KVMLAB_FAKE_IGNORE_POWERDOWN")
        faults.slow_start = _env_float("KVMLAB_FAKE_SLOW_START", 0.0) or 0.0
        faults.hang_start = _env_flag("KVMLAB_FAKE_HANG_START")
        faults.tap_run = os.environ.get("KVMLAB_FAKE_TAP", "") == "run" and os.geteuid() == 0
        faults.boot_delay = _env_float("KVMLAB_FAKE_BOOT_DELAY", 0.0) or 0.0
        faults.powerdown_delay = _env_float("KVMLAB_FAKE_POWERDOWN_DELAY", 0.1) or 0.0
        return faults

    def to_dict(self) -> dict[str, object]:
        """The active faults, for the log."""
        return {key: getattr(self, key) for key in self.__slots__}


class _EventLog:
    """``KVMLAB_FAKE_LOG``: one JSON object per line, appended by every fake process.

    Each line is one ``write`` on an ``O_APPEND`` descriptor, so lines from
    several processes never interleave.
    """

    def __init__(self, path: str | None) -> None:
        self.path = os.path.abspath(path) if path else None

    def __call__(self, event: str, **fields: object) -> None:
        if self.path is None:
            return
        record = {"time": round(time.time(), 6), "pid": os.getpid(), "event": event, **fields}
        line = (_json().dumps(record, default=str) + "\n").encode()
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError:
            return
        try:
            os.write(fd, line)
        finally:
            os.close(fd)


# --------------------------------------------------------------------------- machine

#: Members a QMP request may have.
_QMP_MEMBERS = frozenset({"execute", "exec-oob", "arguments", "id", "control"})
_NO_ARGS: tuple[frozenset[str], tuple[str, ...]] = (frozenset(), ())
#: QMP commands the fake answers: allowed and required argument names.
_QMP_COMMANDS: dict[str, tuple[frozenset[str], tuple[str, ...]]] = {
    "qmp_capabilities": (frozenset({"enable"}), ()),
    "query-status": _NO_ARGS,
    "query-version": _NO_ARGS,
    "query-name": _NO_ARGS,
    "query-kvm": _NO_ARGS,
    "query-cpus-fast": _NO_ARGS,
    "query-memory-size-summary": _NO_ARGS,
    "query-commands": _NO_ARGS,
    "stop": _NO_ARGS,
    "cont": _NO_ARGS,
    "system_powerdown": _NO_ARGS,
    "system_reset": _NO_ARGS,
    "quit": _NO_ARGS,
    "human-monitor-command": (frozenset({"command-line", "cpu-index"}), ("command-line",)),
}
_HMP_STATUS = {
    "running": "running",
    "prelaunch": "paused (prelaunch)",
    "paused": "paused",
    "shutdown": "paused (shutdown)",
}


class _JsonSplitter:
    """Cut a QMP byte stream into JSON texts, newline or not (like QEMU's streamer)."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.depth = 0
        self.in_string = False
        self.escaped = False
        self.start = 0

    def feed(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        for byte in data:
            buf = self.buffer
            if self.depth == 0 and not buf and byte in b" \t\r\n":
                continue
            buf.append(byte)
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif byte == 0x5C:  # backslash
                    self.escaped = True
                elif byte == 0x22:  # quote
                    self.in_string = False
            elif byte == 0x22:
                self.in_string = True
            elif byte in b"{[":
                self.depth += 1
            elif byte in b"}]":
                self.depth -= 1
            ended = byte in b"}] \t\r\n" or self.depth < 0
            if self.depth <= 0 and not self.in_string and ended:
                out.append(bytes(buf).strip())
                self.buffer = bytearray()
                self.depth = 0
        return out


class _Chardev:
    """A character device at run time: listener, at most one client, log file."""

    def __init__(self, spec: ChardevSpec) -> None:
        self.spec = spec
        self.listener: _socket.socket | None = None
        self.client: _socket.socket | None = None
        self.out_fd: int | None = None
        self.log_fd: int | None = None
        self.inbuf = b""
        self.negotiated = False
        self.splitter = _JsonSplitter()


class Machine:
    """One fake VM process: files and sockets from a :class:`Config`, then the loop.

    :param cfg: the parsed command line.
    :param profile: the QEMU imitated (version strings, recorded texts).
    :param faults: injected misbehaviour.
    :param log: the event log.
    :param prog: program name for messages.
    """

    def __init__(
        self, cfg: Config, profile: Profile, faults: Faults, log: _EventLog, prog: str
    ) -> None:
        self.cfg = cfg
        self.profile = profile
        self.faults = faults
        self.log = log
        self.prog = prog
        self.status = "prelaunch"
        self.booted_at: float | None = None
        #: The guest boots (prints its facts) at the next run: at start, after a reset.
        self.needs_boot = True
        #: Counts resets, so a power-off scheduled before one does not hit the next boot.
        self.boots = 0
        self.pending_powerdown = False
        #: The event loop: ``epoll`` and a callback for each file descriptor.
        self.poller = select.epoll()
        self.callbacks: dict[int, Callable[[], None]] = {}
        self.timers: list[tuple[float, int, Callable[[], None]]] = []
        self._timer_seq = 0
        self.devs: list[_Chardev] = []
        self.serial: _Chardev | None = None
        self.pid_fd: int | None = None
        self.sockets: list[str] = []
        self.taps: list[tuple[int | None, str, str | None]] = []
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        # Signals become bytes on a pipe the loop selects on; the previous
        # handlers come back at cleanup (main() may run inside a test process).
        self.old_wakeup_fd: int = _signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        self.old_handlers: dict[int, object] = {
            signum: _signal.signal(signum, _ignore_signal) for signum in _TERMINATING_SIGNALS
        }
        self._watch(self.wake_r, self._on_signal)

    # -- life cycle

    def run(self, ready_fd: int | None = None) -> int:
        """Start, tell the waiting parent, serve until the VM ends.

        :param ready_fd: the ``-daemonize`` pipe: a zero byte on it means ready.
        :return: the process exit status.
        """
        try:
            self._setup(ready_fd)
            if ready_fd is not None:
                self._detach(ready_fd)
            self.log("ready", status="prelaunch" if self.cfg.start_paused else "running")
            if not self.cfg.start_paused:
                self._resume(quiet=True)
            if self.faults.crash_after is not None:
                self._after(self.faults.crash_after, self._crash)
            self._loop()
        except FakeError as err:
            print(err.render(self.prog), file=sys.stderr)
            self.log("fail", message=err.render(self.prog))
            self._cleanup(1, "start failed")
            return 1
        except _Shutdown as stop:
            self._cleanup(stop.code, stop.reason)
            return stop.code
        return 0  # pragma: no cover - the loop only ends by _Shutdown

    def _setup(self, ready_fd: int | None) -> None:
        """Everything QEMU does before it is ready, in QEMU's order."""
        cfg = self.cfg
        if self.faults.slow_start:
            self._sleep(self.faults.slow_start)
        if cfg.pidfile is not None:
            self._write_pidfile(cfg.pidfile)
        if self.faults.hang_start:
            self._hang(ready_fd)
        if cfg.runas is not None:
            self._check_user(*cfg.runas)
        for spec in cfg.chardevs:
            self._open_chardev(spec)
        for backend in cfg.net_backends:
            self._start_backend(backend)
        for where, path, writable in cfg.drives:
            self._check_file(path, where, writable)
        self._check_boot_files()
        if cfg.chroot is not None and not os.path.isdir(cfg.chroot):
            raise FakeError("chroot failed")
        for dev in self.devs:
            if dev.listener is not None and dev.spec.wait:
                self._wait_for_client(dev)

    def _detach(self, ready_fd: int) -> None:
        """QEMU's ``os_setup_post``: leave the caller's terminal, then say ready."""
        os.chdir("/")
        null = os.open(os.devnull, os.O_RDWR)
        sys.stdout.flush()
        sys.stderr.flush()
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.close(null)
        try:
            os.write(ready_fd, b"\0")
        except OSError:
            raise _Shutdown(1, "parent gone before ready") from None
        finally:
            os.close(ready_fd)

    def _watch(self, fd: int, callback: Callable[[], None]) -> None:
        self.poller.register(fd, select.EPOLLIN)
        self.callbacks[fd] = callback

    def _unwatch(self, fd: int) -> None:
        self.poller.unregister(fd)
        del self.callbacks[fd]

    def _dispatch(self, timeout: float | None) -> None:
        """Wait up to ``timeout`` seconds (``None``: forever) and run the ready callbacks."""
        for fd, _events in self.poller.poll(-1 if timeout is None else timeout):
            callback = self.callbacks.get(fd)
            if callback is not None:
                callback()

    def _loop(self) -> NoReturn:
        while True:
            timeout = None
            if self.timers:
                timeout = max(0.0, self.timers[0][0] - time.monotonic())
            self._dispatch(timeout)
            now = time.monotonic()
            while self.timers and self.timers[0][0] <= now:
                _, _, callback = heapq.heappop(self.timers)
                callback()

    def _after(self, delay: float, callback: Callable[[], None]) -> None:
        self._timer_seq += 1
        heapq.heappush(self.timers, (time.monotonic() + delay, self._timer_seq, callback))

    def _cleanup(self, code: int, reason: str) -> None:
        """Close and remove what this process created, like QEMU at exit."""
        self.log("exit", code=code, reason=reason)
        for dev in self.devs:
            for sock in (dev.client, dev.listener):
                if sock is not None:
                    sock.close()
            for fd in (dev.log_fd, dev.out_fd):
                if fd is not None and fd > 2:
                    os.close(fd)
        for path in self.sockets:
            _unlink(path)
        for fd, tap, downscript in self.taps:
            if downscript is not None and self.faults.tap_run:
                _spawn_wait([downscript, tap])
            if fd is not None:
                os.close(fd)
        if self.pid_fd is not None and self.cfg.pidfile is not None:
            _unlink(self.cfg.pidfile)
            os.close(self.pid_fd)
        _signal.set_wakeup_fd(self.old_wakeup_fd)
        for signum, handler in self.old_handlers.items():
            _signal.signal(signum, handler)
        os.close(self.wake_r)
        os.close(self.wake_w)
        self.poller.close()

    # -- signals, sleeping, hanging

    def _on_signal(self) -> None:
        try:
            received = os.read(self.wake_r, 64)
        except BlockingIOError:
            return
        for signum in received:
            if signum in _TERMINATING_SIGNALS:
                message = f"{self.prog}: terminating on signal {signum}"
                print(message, file=sys.stderr)
                self.log("signal", signal=signum)
                self._event("SHUTDOWN", {"guest": False, "reason": "host-signal"})
                raise _Shutdown(0, f"signal {signum}")

    def _sleep(self, seconds: float) -> None:
        """Sleep, but end the process on SIGTERM like QEMU would."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self._dispatch(left)

    def _hang(self, ready_fd: int | None) -> NoReturn:
        """``KVMLAB_FAKE_HANG_START``: never get ready; exit when the parent is gone."""
        self.log("hang")
        poller = select.poll()
        poller.register(self.wake_r, select.POLLIN)
        if ready_fd is not None:
            poller.register(ready_fd, 0)  # POLLERR comes when the reading parent is gone
        while True:
            for fd, _events in poller.poll():
                if fd == self.wake_r:
                    self._on_signal()
                else:
                    raise _Shutdown(1, "parent gone while hanging")

    # -- files

    def _write_pidfile(self, path: str) -> None:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as err:
            raise FakeError(
                f"cannot create PID file: Could not create '{path}': {err.strerror}"
            ) from None
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            raise FakeError(
                f"cannot create PID file: Cannot lock pid file: {err.strerror}"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.pid_fd = fd

    def _check_file(self, path: str, where: str, writable: bool) -> None:
        try:
            fd = os.open(path, os.O_RDWR if writable else os.O_RDONLY)
        except OSError as err:
            raise FakeError(f"Could not open '{path}': {err.strerror}", where) from None
        os.close(fd)

    def _check_boot_files(self) -> None:
        cfg = self.cfg
        if cfg.kernel is not None:
            try:
                os.close(os.open(cfg.kernel, os.O_RDONLY))
            except OSError as err:
                message = f"qemu: could not open kernel file '{cfg.kernel}': {err.strerror}"
                raise FakeError(message, raw=True) from None
        if cfg.initrd is not None:
            try:
                os.close(os.open(cfg.initrd, os.O_RDONLY))
            except OSError as err:
                message = (
                    f"qemu: error reading initrd {cfg.initrd}: Failed to open file "
                    f"\u201c{cfg.initrd}\u201d: open() failed: {err.strerror}"
                )
                raise FakeError(message, raw=True) from None

    def _check_user(self, user: str, where: str) -> None:
        try:
            pwd.getpwnam(user)
            return
        except KeyError:
            pass
        uid, sep, gid = user.partition(":")
        if not (sep and uid.isdigit() and gid.isdigit()):
            raise FakeError(f'User "{user}" doesn\'t exist (and is not <uid>:<gid>)', where)

    # -- character devices

    def _open_chardev(self, spec: ChardevSpec) -> None:
        dev = _Chardev(spec)
        self.devs.append(dev)
        if self.cfg.serials and spec is self.cfg.serials[0]:
            self.serial = dev  # the first -serial is the guest's console, ttyS0
        if spec.logfile is not None:
            flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if spec.logappend else os.O_TRUNC)
            try:
                dev.log_fd = os.open(spec.logfile, flags, 0o666)
            except OSError as err:
                raise FakeError(
                    f"Could not create '{spec.logfile}': {err.strerror}", spec.where
                ) from None
        if spec.backend == "stdio":
            dev.out_fd = 1
        elif spec.backend == "file" and spec.path is not None:
            try:
                dev.out_fd = os.open(spec.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
            except OSError as err:
                raise FakeError(
                    f"Could not open '{spec.path}': {err.strerror}", spec.where
                ) from None
        elif spec.backend == "socket" and spec.path is not None:
            dev.listener = self._listen(spec)
            self._watch(dev.listener.fileno(), self._make_accept(dev))

    def _listen(self, spec: ChardevSpec) -> _socket.socket:
        path = spec.path or ""
        if len(os.fsencode(path)) >= 108:
            raise FakeError(f"UNIX socket path '{path}' is too long", spec.where)
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            _unlink(path)
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
        self.sockets.append(path)
        return sock

    def _wait_for_client(self, dev: _Chardev) -> None:
        """``server=on`` without ``wait=off``: QEMU blocks until a client connects."""
        spec = dev.spec
        print(
            f"{self.prog}: {spec.where}: info: QEMU waiting for connection on: "
            f"disconnected:unix:{spec.path},server=on",
            file=sys.stderr,
        )
        while dev.client is None:
            self._dispatch(None)

    def _make_accept(self, dev: _Chardev) -> Callable[[], None]:
        def accept() -> None:
            assert dev.listener is not None
            try:
                fd, _ = dev.listener._accept()  # type: ignore[attr-defined]  # socket.accept's core
            except OSError:
                return
            conn = _socket.socket(fileno=fd)
            conn.settimeout(2.0)
            dev.client = conn
            dev.inbuf = b""
            dev.negotiated = False
            dev.splitter = _JsonSplitter()
            # QEMU serves one client at a time; others wait in the backlog.
            self._unwatch(dev.listener.fileno())
            self._watch(conn.fileno(), self._make_reader(dev))
            if dev.spec.frontend == "hmp":
                version = self.profile.version_string
                banner = f"QEMU {version} monitor - type 'help' for more information\r\n(qemu) "
                self._send(dev, banner.encode())
            elif dev.spec.frontend == "qmp":
                self._send(dev, self._greeting(dev.spec.pretty))

        return accept

    def _make_reader(self, dev: _Chardev) -> Callable[[], None]:
        def read() -> None:
            assert dev.client is not None
            try:
                data = dev.client.recv(65536)
            except OSError:
                data = b""
            if not data:
                self._drop_client(dev)
                return
            if dev.spec.frontend == "qmp":
                for text in dev.splitter.feed(data):
                    self._qmp_message(dev, text)
            elif dev.spec.frontend == "hmp":
                self._hmp_input(dev, data)

        return read

    def _drop_client(self, dev: _Chardev) -> None:
        if dev.client is None:
            return
        self._unwatch(dev.client.fileno())
        dev.client.close()
        dev.client = None
        dev.negotiated = False
        if dev.listener is not None:
            self._watch(dev.listener.fileno(), self._make_accept(dev))

    def _send(self, dev: _Chardev, data: bytes) -> None:
        """Write to a chardev: its client, its file or stdout, its log file."""
        if dev.log_fd is not None:
            try:
                os.write(dev.log_fd, data)
            except OSError:  # a full disk: stop logging, keep running
                os.close(dev.log_fd)
                dev.log_fd = None
        if dev.out_fd is not None:
            try:
                os.write(dev.out_fd, data)
            except OSError:
                dev.out_fd = None
        if dev.client is not None:
            try:
                dev.client.sendall(data)
            except OSError:
                self._drop_client(dev)

    def _send_json(self, dev: _Chardev, obj: object) -> None:
        indent = 4 if dev.spec.pretty else None
        self._send(dev, (_json().dumps(obj, indent=indent) + "\r\n").encode())

    # -- the guest

    def _console(self, text: str) -> None:
        if self.serial is not None:
            self._send(self.serial, text.encode())

    def _uptime(self) -> str:
        elapsed = time.monotonic() - self.booted_at if self.booted_at is not None else 0.0
        return f"[{elapsed + 0.6:12.6f}]"

    def _resume(self, quiet: bool = False) -> None:
        """Run the vCPUs: boot the guest the first time, deliver a pending ACPI event."""
        if self.status == "running":
            return
        self.status = "running"
        if not quiet:
            self._event("RESUME")
        if self.needs_boot:
            self.needs_boot = False
            self._after(self.faults.boot_delay, self._boot)
        if self.pending_powerdown:
            self.pending_powerdown = False
            self._schedule_poweroff()

    def _stop(self) -> None:
        if self.status == "running":
            self.status = "paused"
            self._event("STOP")

    def _boot(self) -> None:
        """Print a boot and the guest facts, as kvmlab's test guest does."""
        cfg = self.cfg
        self.booted_at = time.monotonic()
        lines = [
            "SeaBIOS (version 1.16.2-debian-1.16.2-1)",
            "Booting from ROM.." if cfg.kernel else "Booting from Hard Disk...",
            "[    0.000000] Linux version 6.1.0-kvmlab-fake (kvmlab@fake) #1 SMP",
        ]
        if cfg.append is not None:
            lines.append(f"[    0.000000] Command line: {cfg.append}")
        lines += [
            f"[    0.010000] Memory: {cfg.guest_mem_kb}K available",
            f"[    0.100000] smp: Brought up 1 node, {cfg.cpus} CPUs",
            "[    0.500000] Run /init as init process",
            "KVMLAB-BOOT-OK",
            f"MEM {cfg.guest_mem_kb}",
            f"CPUS {cfg.cpus}",
        ]
        lines += [f"NIC eth{index} {nic.mac}" for index, nic in enumerate(cfg.nics)]
        lines.append("KVMLAB-FACTS-END")
        self._console("".join(line + "\r\n" for line in lines))
        self.log("boot", nics=[nic.mac for nic in cfg.nics], cpus=cfg.cpus, mem_kb=cfg.guest_mem_kb)

    def _powerdown(self) -> None:
        """The ACPI power button: a guest with ACPI powers off soon after."""
        self._event("POWERDOWN")
        acpi = self.cfg.acpi
        ignored = self.faults.ignore_powerdown
        self.log("powerdown", acpi=acpi, ignored=ignored, status=self.status)
        if not acpi or ignored:
            return
        if self.status == "running":
            self._schedule_poweroff()
        else:
            self.pending_powerdown = True

    def _schedule_poweroff(self) -> None:
        boots = self.boots
        self._after(self.faults.powerdown_delay, lambda: self._guest_poweroff(boots))

    def _guest_poweroff(self, boots: int) -> None:
        if boots != self.boots:
            return  # reset since the button was pressed
        if self.status != "running":
            self.pending_powerdown = True
            return
        self._console(f"{self._uptime()} reboot: Power down\r\n")
        self._shutdown(guest=True, reason="guest-shutdown")

    def _shutdown(self, guest: bool, reason: str) -> None:
        self._event("SHUTDOWN", {"guest": guest, "reason": reason})
        if self.cfg.no_shutdown and guest:
            self.status = "shutdown"
            self._event("STOP")
            return
        raise _Shutdown(0, reason)

    def _reset(self) -> None:
        self._event("RESET", {"guest": False, "reason": "host-qmp-system-reset"})
        if self.cfg.no_reboot:
            self._shutdown(guest=False, reason="host-qmp-system-reset")
        self.boots += 1
        self.pending_powerdown = False
        if self.status == "running":
            self._after(self.faults.boot_delay, self._boot)
        else:
            self.needs_boot = True

    def _crash(self) -> NoReturn:
        """``KVMLAB_FAKE_CRASH_AFTER``: die like an aborting QEMU, leaving files behind."""
        self.log("crash", after=self.faults.crash_after)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        _signal.signal(_SIGABRT, _signal.SIG_DFL)
        os.kill(os.getpid(), _SIGABRT)
        os._exit(134)  # pragma: no cover - not reached

    # -- network

    def _start_backend(self, backend: NetBackend) -> None:
        """Check or run a tap NIC's host side before ready, as QEMU does."""
        if backend.kind != "tap":
            return
        if backend.fd is not None:
            try:
                os.fstat(backend.fd)
            except OSError as err:
                raise FakeError(
                    f"{backend.id}: Can't use file descriptor {backend.fd}: {err.strerror}",
                    backend.where,
                ) from None
            self.log("tap", netdev=backend.id, fd=backend.fd)
            return
        index = len(self.taps)
        fd, tap = None, backend.ifname or f"tap{index}"
        if self.faults.tap_run:
            fd, tap = _open_tap(backend, tap)
        self.taps.append((fd, tap, backend.downscript))
        script = backend.script
        if script is None:
            return
        if self.faults.tap_run:
            status = _spawn_wait([script, tap])
            self.log("script", action="run", script=script, tap=tap, status=status)
        else:
            runnable = os.path.isfile(script) and os.access(script, os.X_OK)
            status = 0 if runnable else 256  # QEMU's child exits 1 when exec fails
            self.log(
                "script",
                action="would run",
                script=script,
                tap=tap,
                message=f"would run {script} {tap}",
                runnable=runnable,
            )
        if status != 0:
            raise FakeError(f"network script {script} failed with status {status}", backend.where)

    # -- QMP

    def _greeting(self, pretty: bool) -> bytes:
        """The QMP greeting, formatted without ``json`` so that it is not imported yet."""
        if pretty:
            greeting = {"QMP": {"version": self._version(), "capabilities": []}}
            pretty_text: str = _json().dumps(greeting, indent=4)
            return (pretty_text + "\r\n").encode()
        major, minor, micro = self.profile.version
        qemu = f'{{"major": {major}, "minor": {minor}, "micro": {micro}}}'
        text = f'{{"QMP": {{"version": {{"qemu": {qemu}, "package": "kvmlab-fake"}}, '
        return (text + '"capabilities": []}}\r\n').encode()

    def _version(self) -> dict[str, object]:
        major, minor, micro = self.profile.version
        qemu = {"major": major, "minor": minor, "micro": micro}
        return {"qemu": qemu, "package": "kvmlab-fake"}

    def _event(self, name: str, data: dict[str, object] | None = None) -> None:
        now = time.time()
        seconds = int(now)
        event: dict[str, object] = {
            "timestamp": {"seconds": seconds, "microseconds": int((now - seconds) * 1e6)},
            "event": name,
        }
        if data is not None:
            event["data"] = data
        for dev in self.devs:
            if dev.spec.frontend == "qmp" and dev.client is not None and dev.negotiated:
                self._send_json(dev, event)

    def _qmp_message(self, dev: _Chardev, text: bytes) -> None:
        """Check one QMP request the way QEMU's dispatcher does, run it, answer."""
        try:
            message = _json().loads(text)
        except ValueError as err:
            self._qmp_error(dev, None, "GenericError", f"JSON parse error, {err}")
            return
        if not isinstance(message, dict):
            self._qmp_error(dev, None, "GenericError", "QMP input must be a JSON object")
            return
        ident = message.get("id")
        unexpected = [key for key in message if key not in _QMP_MEMBERS]
        command = message.get("execute", message.get("exec-oob"))
        arguments = message.get("arguments", {})
        problem = ""
        if unexpected:
            problem = f"QMP input member '{unexpected[0]}' is unexpected"
        elif command is None:
            problem = "QMP input lacks member 'execute'"
        elif not isinstance(command, str):
            problem = "QMP input member 'execute' must be a string"
        elif not isinstance(arguments, dict):
            problem = "QMP input member 'arguments' must be an object"
        if problem or not isinstance(command, str) or not isinstance(arguments, dict):
            self._qmp_error(dev, ident, "GenericError", problem)
            return
        self.log("qmp", command=command, arguments=arguments)
        signature = _QMP_COMMANDS.get(command)
        if signature is None:
            desc = f"The command {command} has not been found"
            self._qmp_error(dev, ident, "CommandNotFound", desc)
            return
        if not dev.negotiated and command != "qmp_capabilities":
            desc = "Expecting capabilities negotiation with 'qmp_capabilities'"
            self._qmp_error(dev, ident, "CommandNotFound", desc)
            return
        if dev.negotiated and command == "qmp_capabilities":
            desc = "Capabilities negotiation is already complete, command ignored"
            self._qmp_error(dev, ident, "CommandNotFound", desc)
            return
        allowed, required = signature
        for key in arguments:
            if key not in allowed:
                self._qmp_error(dev, ident, "GenericError", f"Parameter '{key}' is unexpected")
                return
        for key in required:
            if key not in arguments:
                self._qmp_error(dev, ident, "GenericError", f"Parameter '{key}' is missing")
                return
        if command == "qmp_capabilities":
            dev.negotiated = True
        # Work that ends or resets the machine runs once the reply is sent.
        reply, after = self._qmp_run(command, arguments)
        response: dict[str, object] = {"return": reply}
        if ident is not None:
            response["id"] = ident
        self._send_json(dev, response)
        if after is not None:
            after()

    def _qmp_error(self, dev: _Chardev, ident: object, klass: str, desc: str) -> None:
        response: dict[str, object] = {"error": {"class": klass, "desc": desc}}
        if ident is not None:
            response["id"] = ident
        self._send_json(dev, response)

    def _qmp_run(
        self, command: str, arguments: dict[str, object]
    ) -> tuple[object, Callable[[], None] | None]:
        """Run a checked QMP command: its ``return`` value and what to do after replying."""
        cfg = self.cfg
        if command == "query-status":
            return self._status(), None
        if command == "query-version":
            return self._version(), None
        if command == "query-name":
            return ({"name": cfg.name} if cfg.name is not None else {}), None
        if command == "query-kvm":
            return {"enabled": cfg.accel == "kvm", "present": True}, None
        if command == "query-cpus-fast":
            return self._cpus(), None
        if command == "query-memory-size-summary":
            return {"base-memory": cfg.memory, "plugged-memory": 0}, None
        if command == "query-commands":
            return [{"name": name} for name in sorted(_QMP_COMMANDS)], None
        if command == "stop":
            self._stop()
        elif command == "cont":
            return {}, self._resume
        elif command == "system_powerdown":
            self._powerdown()
        elif command == "system_reset":
            return {}, self._reset
        elif command == "quit":
            # QEMU 7.2 sends SHUTDOWN before quit's reply, then exits.
            self._event("SHUTDOWN", {"guest": False, "reason": "host-qmp-quit"})
            return {}, self._quit
        elif command == "human-monitor-command":
            return self._hmp(str(arguments["command-line"])), None
        return {}, None

    def _quit(self) -> NoReturn:
        raise _Shutdown(0, "quit")

    def _host_quit(self) -> NoReturn:
        self._event("SHUTDOWN", {"guest": False, "reason": "host-qmp-quit"})
        self._quit()

    def _status(self) -> dict[str, object]:
        status: dict[str, object] = {"status": self.status}
        if self.profile.version < (9, 0, 0):
            status["singlestep"] = False
        status["running"] = self.status == "running"
        return status

    def _cpus(self) -> list[dict[str, object]]:
        # Every vCPU reports the process's own pid: a fake thread id could name
        # another process, and a test pinning vCPUs would then pin that.
        pid = os.getpid()
        return [
            {
                "thread-id": pid,
                "props": {"core-id": index, "thread-id": 0, "socket-id": 0},
                "qom-path": f"/machine/unattached/device[{index}]",
                "cpu-index": index,
                "target": "x86_64",
            }
            for index in range(self.cfg.cpus)
        ]

    # -- the human monitor

    def _hmp_input(self, dev: _Chardev, data: bytes) -> None:
        dev.inbuf += data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        while b"\n" in dev.inbuf:
            raw, dev.inbuf = dev.inbuf.split(b"\n", 1)
            line = raw.decode("utf-8", "replace").strip()
            self.log("hmp", command=line)
            self._send(dev, (line + "\r\n").encode())
            if line in ("quit", "q"):
                self._host_quit()
            output = self._hmp(line)
            self._send(dev, (output + "(qemu) ").encode())

    def _hmp(self, line: str) -> str:
        """Run a human monitor command; its output, ``\\r\\n``-terminated lines."""
        words = line.split()
        if not words:
            return ""
        command, rest = words[0], words[1:]
        if command in ("quit", "q"):
            self._after(0.0, self._host_quit)  # after human-monitor-command's reply
            return ""
        if command == "info" and rest:
            what = rest[0]
            if what == "status":
                return f"VM status: {_HMP_STATUS[self.status]}\r\n"
            if what == "name":
                return f"{self.cfg.name}\r\n" if self.cfg.name else ""
            if what == "version":
                return f"{self.profile.version_string} (kvmlab-fake)\r\n"
            if what == "kvm":
                return f"kvm support: {'enabled' if self.cfg.accel == 'kvm' else 'disabled'}\r\n"
            if what == "cpus":
                pid = os.getpid()
                marks = ("*", " ")
                return "".join(
                    f"{marks[min(i, 1)]} CPU #{i}: thread_id={pid}\r\n"
                    for i in range(self.cfg.cpus)
                )
        elif command in ("stop", "s"):
            self._stop()
            return ""
        elif command in ("cont", "c"):
            self._resume()
            return ""
        elif command == "system_powerdown":
            self._powerdown()
            return ""
        elif command == "system_reset":
            self._after(0.0, self._reset)
            return ""
        elif command in ("help", "?"):
            return (
                "cont|c  -- resume emulation\r\ninfo [subcommand] -- show various information\r\n"
                "quit|q  -- quit the emulator\r\nstop|s  -- stop emulation\r\n"
                "system_powerdown  -- send system power down event\r\n"
                "system_reset  -- reset the system\r\n"
            )
        return f"unknown command: '{line}'\r\n"


def _ignore_signal(signum: int, frame: object) -> None:
    """Python-level handler: the byte on the wakeup fd does the work."""


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError:
        pass


def _spawn_wait(argv: list[str]) -> int:
    """Run a script like QEMU's ``launch_script``: fork, exec, wait; the raw wait status."""
    try:
        pid = os.posix_spawn(argv[0], argv, os.environ, setsigdef=_RESET_FOR_CHILDREN)
    except OSError:
        return 256  # QEMU's child does _exit(1) when execv fails
    _, status = os.waitpid(pid, 0)
    return status


def _open_tap(backend: NetBackend, fallback: str) -> tuple[int | None, str]:
    """Create a real tap device, so an up-script can configure it.

    Where ``/dev/net/tun`` cannot be used (a container without ``CAP_NET_ADMIN``)
    the script still runs, with a ``tapN`` name and no device behind it.
    """
    flags = _IFF_TAP | _IFF_NO_PI | (_IFF_VNET_HDR if backend.vnet_hdr else 0)
    name = (backend.ifname or "tap%d").encode()
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR)
    except OSError:
        return None, fallback
    try:
        result = fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH22x", name, flags))
    except OSError:
        os.close(fd)
        return None, fallback
    return fd, result[:16].rstrip(b"\0").decode()


# --------------------------------------------------------------------------- main


def _prog_name() -> str:
    """QEMU prefixes messages with its argv[0]'s base name."""
    base = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if not base or base.endswith(".py") or base in ("-c", "-m", "__main__.py"):
        return PROG
    return base


def _split_profile(args: list[str]) -> tuple[str | None, list[str]]:
    """Take ``--fake-profile NAME`` (first argument only) off the command line."""
    if args and args[0] == "--fake-profile":
        if len(args) < 2:
            raise FakeError("--fake-profile: requires an argument")
        return args[1], args[2:]
    if args and args[0].startswith("--fake-profile="):
        return args[0].split("=", 1)[1], args[1:]
    return os.environ.get("KVMLAB_FAKE_PROFILE") or None, args


def _daemonize(make_machine: Callable[[], Machine]) -> int:
    """QEMU's ``os_daemonize``: fork, setsid, fork; the first parent waits on a pipe.

    The caller sees exit status 0 only once the VM process is ready (pidfile
    written, sockets listening, scripts run), and 1 if it died before that.
    """
    read_fd, write_fd = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid > 0:
        os.close(write_fd)
        os.waitpid(pid, 0)  # the middle process exits at once
        status = b""
        while True:
            try:
                status = os.read(read_fd, 1)
                break
            except InterruptedError:  # pragma: no cover - PEP 475 retries
                continue
        os.close(read_fd)
        return 0 if status == b"\0" else 1
    code = 1
    try:
        os.close(read_fd)
        os.setsid()
        if os.fork() > 0:
            os._exit(0)
        os.umask(0o027)
        for signum in _JOB_SIGNALS:
            _signal.signal(signum, _signal.SIG_IGN)
        code = make_machine().run(write_fd)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def main(argv: list[str] | None = None) -> int:
    """Run the fake QEMU.

    :param argv: options without the program name; ``sys.argv[1:]`` when ``None``
        (then ``sys.argv[0]``'s base name prefixes messages, as in QEMU).
    :return: the exit status: 0, or 1 when QEMU would have failed.
    """
    prog = _prog_name() if argv is None else PROG
    args = list(sys.argv[1:] if argv is None else argv)
    log = _EventLog(os.environ.get("KVMLAB_FAKE_LOG"))
    try:
        profile_spec, args = _split_profile(args)
        profile = load_profile(profile_spec)
        cfg = parse_argv(args, profile)
        faults = Faults.from_env()
    except _Exit as done:
        sys.stdout.write(done.output)
        sys.stdout.flush()
        return done.code
    except FakeError as err:
        print(err.render(prog), file=sys.stderr)
        log("fail", message=err.render(prog), argv=args)
        return 1
    log("start", argv=args, profile=profile.name, faults=faults.to_dict())
    if faults.fail_start is not None:
        print(f"{prog}: {faults.fail_start}", file=sys.stderr)
        log("fail", message=faults.fail_start, fault="KVMLAB_FAKE_FAIL_START")
        return 1
    for warning in cfg.warnings:
        print(f"{prog}: warning: {warning}", file=sys.stderr)
    if cfg.daemonize:
        return _daemonize(lambda: Machine(cfg, profile, faults, log, prog))
    return Machine(cfg, profile, faults, log, prog).run()
