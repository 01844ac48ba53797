"""Which QEMU the fake imitates: its version, the options it accepts, its texts.

A profile is read from a recording (``fixtures/profiles/NAME/help.txt`` and
friends, installed as ``kvmlab/_profiles/NAME/``), from a folder or a bare
``-help`` file given by path, or built in (QEMU 7.2) when nothing is recorded.
The command-line parser asks it whether an option exists, which machine types
and devices there are, and what ``-help``/``-version`` print; the monitors ask
it for the version. The option set is read with the rule
``QemuCapabilities.from_help`` uses for its ``has_*`` booleans, without that
module's imports (a test keeps the two in agreement).
"""

from __future__ import annotations

import os

from kvmlab.fake.errors import FakeError

__all__ = [
    "DEFAULT_PROFILE",
    "NO_ARG_OPTIONS",
    "Profile",
    "builtin_profile",
    "load_profile",
]

DEFAULT_PROFILE = "qemu-7.2"
#: The recorded texts a profile folder may hold, as ``NAME.txt``.
PROFILE_FILES = ("help", "version", "machine", "device", "netdev", "chardev", "cpu", "accel")
#: Facts ``tools/record_profiles.py`` derived from the binary (``# `` lines are provenance).
FACT_FILES = ("machine-cpus", "drive", "usb")

#: Options that take no argument (QEMU's ``qemu-options.hx`` over the versions
#: kvmlab knows); every other option takes exactly one.
NO_ARG_OPTIONS = frozenset(
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

    __slots__ = (
        "_devices",
        "_facts",
        "_machines",
        "_texts",
        "folder",
        "help_text",
        "name",
        "options",
        "version",
        "version_extra",
    )

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
        self._machines: frozenset[str] | None = None
        self._devices: dict[str, str] | None = None
        self._facts: dict[str, object] = {}
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
        """A recorded text (one of :data:`PROFILE_FILES`): ``help``, ``version``, ``machine``..."""
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
        if self._machines is None:
            names = set()
            for line in self.text("machine").splitlines():
                if line.strip() and not line.startswith(("Supported machines", " ")):
                    names.add(line.split()[0])
            self._machines = frozenset(names)
        return self._machines

    def devices(self) -> dict[str, str]:
        """Device models (and their aliases) from ``-device help``, each to its real name.

        Empty when not recorded: then any model is accepted. Read once: kvmlab
        passes several ``-device`` options and the recording has ~500 lines.
        """
        if self._devices is None:
            names: dict[str, str] = {}
            for line in self.text("device").splitlines():
                if line.startswith('name "'):
                    name = line[6:].split('"', 1)[0]
                    names[name] = name
                    _, found, alias = line.partition(', alias "')
                    if found:
                        names[alias.split('"', 1)[0]] = name
            self._devices = names
        return self._devices

    # The facts below are read on first use only: a start asks for those its options need.

    def _fact_lines(self, kind: str) -> list[str]:
        """A fact file's lines (one of :data:`FACT_FILES`), without its provenance."""
        return [line for line in self.text(kind).splitlines() if line and not line.startswith("#")]

    def _fact_fields(self, kind: str) -> dict[str, frozenset[str]]:
        """``key: word word...`` lines of a fact file, as sets of words."""
        key = "fields:" + kind
        if key not in self._facts:
            fields = {}
            for line in self._fact_lines(kind):
                name, _, words = line.partition(":")
                fields[name.strip()] = frozenset(words.split())
            self._facts[key] = fields
        return self._facts[key]  # type: ignore[return-value]

    def cpu_models(self) -> frozenset[str]:
        """CPU model names from ``-cpu help``; empty when not recorded (accept any)."""
        if "cpu" not in self._facts:
            names = set()
            for line in self.text("cpu").splitlines():
                words = line.split()
                if line.startswith("x86 ") and len(words) > 1:
                    names.add(words[1])  # QEMU 7.2: "x86 Haswell  Intel Core..."
                elif line.startswith("  ") and words and not line.startswith("   "):
                    names.add(words[0])  # QEMU 10.0: "  Haswell  Intel Core..."
                elif not line.strip():
                    break  # the flags that follow are not models
            self._facts["cpu"] = frozenset(names)
        return self._facts["cpu"]  # type: ignore[return-value]

    def accelerators(self) -> frozenset[str]:
        """Accelerators from ``-accel help``; empty when not recorded (accept any)."""
        if "accel" not in self._facts:
            lines = self.text("accel").splitlines()[1:]
            self._facts["accel"] = frozenset(line.strip() for line in lines if line.strip())
        return self._facts["accel"]  # type: ignore[return-value]

    def machine_alias(self, kind: str) -> str:
        """The machine type ``kind`` stands for (``pc`` -> ``pc-i440fx-7.2``); ``""`` is
        the default machine."""
        key = "aliases"
        if key not in self._facts:
            aliases = {}
            for line in self.text("machine").splitlines():
                words = line.split()
                if words and "(alias of " in line:
                    aliases[words[0]] = line.split("(alias of ", 1)[1].split(")", 1)[0]
                if words and "(default)" in line:
                    aliases[""] = aliases.get(words[0], words[0])
            self._facts[key] = aliases
        known: dict[str, str] = self._facts[key]  # type: ignore[assignment]
        return known.get(kind, kind)

    def max_cpus(self, machine: str) -> int | None:
        """``cpu-max`` of a machine type (from QMP ``query-machines``), ``None`` if unknown."""
        if "cpus" not in self._facts:
            limits = {}
            for line in self._fact_lines("machine-cpus"):
                name, _, count = line.partition(" ")
                if count.strip().isdigit():
                    limits[name] = int(count)
            self._facts["cpus"] = limits
        recorded: dict[str, int] = self._facts["cpus"]  # type: ignore[assignment]
        return recorded.get(machine)

    def drive_values(self, key: str) -> frozenset[str]:
        """What ``-drive KEY=`` accepts (``formats``, ``if``, ``cache``); empty: any."""
        return self._fact_fields("drive").get(key, frozenset())

    def usb_facts(self, key: str) -> frozenset[str] | None:
        """``machines``, ``machines-with-usb-option``, ``controllers``; ``None``: unrecorded."""
        return self._fact_fields("usb").get(key)

    def device_buses(self) -> dict[str, str]:
        """``{device: the bus it needs}`` from ``-device help``."""
        if "buses" not in self._facts:
            buses = {}
            for line in self.text("device").splitlines():
                if line.startswith('name "') and ", bus " in line:
                    name = line[6:].split('"', 1)[0]
                    buses[name] = line.split(", bus ", 1)[1].split(",", 1)[0].strip()
            self._facts["buses"] = buses
        return self._facts["buses"]  # type: ignore[return-value]


def builtin_profile() -> Profile:
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
        detail.get(name, f"-{name}" if name in NO_ARG_OPTIONS else f"-{name} arg")
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
        return builtin_profile()
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
