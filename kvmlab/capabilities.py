"""What a QEMU binary can do, read from its ``-help`` output.

The generator never runs a binary: it asks a :class:`QemuCapabilities` value
which spelling of an option to use (``-no-acpi`` or ``-machine acpi=off``,
``-netdev``/``-device`` or ``-net nic``...). That value comes from one of three
places::

    caps = QemuCapabilities.probe("/usr/bin/qemu-system-x86_64")   # runs it, cached
    caps = QemuCapabilities.from_help(help_text, machine_text)      # recorded text
    caps = load_profile("qemu-10.0")                                # bundled recording

``QemuCapabilities()`` with no arguments describes Debian 12's QEMU 7.2, the
default profile; a test keeps it equal to the recorded 7.2 output.

Standard library only: the fake kvm program imports this module to reject what
the profile it imitates would reject, and it must start fast.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvmlab.errors import CapabilityError, ProbeError

__all__ = [
    "OPTION_FLAGS",
    "QemuCapabilities",
    "available_profiles",
    "load_profile",
    "profile_dirs",
]

_VERSION_RE = re.compile(
    r"version\s+(?P<major>\d{1,6})\.(?P<minor>\d{1,6})(?:\.(?P<micro>\d{1,6}))?(?!\d)"
    r"\s*(?:\((?P<extra>[^)]*)\))?"
)
_DEVICE_RE = re.compile(r'^name "([^"]+)"(?:.*?, alias "([^"]+)")?', re.MULTILINE)
_PROBE_TIMEOUT = 10.0


#: ``has_*`` field -> the option whose presence (a help line starting with it) it reports.
OPTION_FLAGS: dict[str, str] = {
    "has_netdev": "netdev",
    "has_device": "device",
    "has_qmp": "qmp",
    "has_display": "display",
    "has_machine": "machine",
    "has_accel": "accel",
    "has_uuid": "uuid",
    "has_no_acpi": "no-acpi",
    "has_run_with": "run-with",
    "has_runas": "runas",
    "has_chroot": "chroot",
    "has_balloon_option": "balloon",
    "has_localtime_option": "localtime",
    "has_rtc": "rtc",
    "has_enable_kvm": "enable-kvm",
    "has_no_kvm": "no-kvm",
    "has_usbdevice": "usbdevice",
    "has_nodefaults": "nodefaults",
    "has_chardev": "chardev",
    "has_mem_prealloc": "mem-prealloc",
    "has_soundhw": "soundhw",
}


def _option_blocks(help_text: str) -> dict[str, str]:
    """Split a help text into ``{option: its lines}``.

    An option's block starts at a line beginning with ``-name`` and runs until the
    next such line, so multi-line descriptions (``-drive``) stay together.
    """
    blocks: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in help_text.splitlines():
        if line.startswith("-") and len(line) > 1 and line[1] != " ":
            name = re.split(r"[\s\[]", line[1:], maxsplit=1)[0]
            current = blocks.setdefault(name, [])
        if current is not None:
            current.append(line)
    return {name: "\n".join(lines) for name, lines in blocks.items()}


@dataclass(frozen=True, slots=True)
class QemuCapabilities:
    """The features of one QEMU binary that change the kvm command line.

    Defaults describe QEMU 7.2 as packaged by Debian 12.
    """

    version: tuple[int, int, int] = (7, 2, 22)
    #: What followed the version in parentheses (``kvm-72``, ``Debian 1:7.2+dfsg-7``).
    version_extra: str = ""
    has_netdev: bool = True
    has_device: bool = True
    has_qmp: bool = True
    has_display: bool = True
    has_machine: bool = True
    has_accel: bool = True
    has_uuid: bool = True
    has_no_acpi: bool = True
    has_run_with: bool = False
    has_runas: bool = True
    has_chroot: bool = True
    has_balloon_option: bool = False
    has_localtime_option: bool = False
    has_rtc: bool = True
    has_enable_kvm: bool = True
    has_no_kvm: bool = False
    has_usbdevice: bool = True
    has_nodefaults: bool = True
    has_chardev: bool = True
    has_chardev_logfile: bool = True
    has_vhost: bool = True
    has_drive_boot: bool = False
    has_drive_readonly: bool = True
    has_drive_aio: bool = True
    has_mem_prealloc: bool = True
    has_soundhw: bool = False
    #: ``-object`` (QEMU >= 2.x): TLS credentials for VNC are objects there.
    has_object: bool = True
    #: ``pc-i440fx-7.2``: the concrete type behind ``pc``, so a QEMU upgrade does
    #: not change the machine under a replayed runtime.
    default_machine: str | None = "pc-i440fx-7.2"
    machines: tuple[str, ...] = field(default=(), repr=False)
    devices: tuple[str, ...] = field(default=(), repr=False)
    #: Name of the recorded profile this came from, or ``""``.
    profile: str = ""

    @classmethod
    def from_help(
        cls,
        help_text: str,
        machine_help: str | None = None,
        device_help: str | None = None,
        *,
        profile: str = "",
    ) -> QemuCapabilities:
        """Parse the output of ``qemu -help`` (and optionally ``-machine help``, ``-device help``).

        :param help_text: full ``-help`` output; its first line carries the version.
        :param machine_help: ``-machine help`` output, for the default machine type.
        :param device_help: ``-device help`` output, for the device list.
        :param profile: a name to remember where this came from.
        :raise CapabilityError: when no version can be found in the first lines.
        """
        head = "\n".join(help_text.splitlines()[:3])
        match = _VERSION_RE.search(head)
        if match is None:
            first = help_text.splitlines()[0] if help_text.strip() else "(empty)"
            raise CapabilityError(f"no QEMU version in the help text's first line: {first!r}")
        version = (int(match["major"]), int(match["minor"]), int(match["micro"] or 0))
        blocks = _option_blocks(help_text)

        def has(option: str) -> bool:
            return option in blocks

        drive = blocks.get("drive", "")
        chardev = blocks.get("chardev", "")
        net = blocks.get("netdev", "") + blocks.get("net", "")
        machines, default_machine = _parse_machines(machine_help)
        devices = tuple(
            name for pair in _DEVICE_RE.findall(device_help or "") for name in pair if name
        )
        return cls(
            version=version,
            version_extra=(match["extra"] or "").strip(),
            **{field: has(option) for field, option in OPTION_FLAGS.items()},
            has_chardev_logfile="logfile=" in chardev,
            has_vhost="vhost=on" in net,
            has_drive_boot="boot=on" in drive,
            has_drive_readonly="readonly" in drive,
            has_drive_aio="aio=" in drive,
            has_object=has("object") and version >= (2, 5, 0),
            default_machine=default_machine,
            machines=machines,
            devices=devices,
            profile=profile,
        )

    @classmethod
    def probe(cls, binary: str | os.PathLike[str]) -> QemuCapabilities:
        """Run ``binary`` for its help texts; cached per (real path, mtime, size).

        :raise ProbeError: when the binary is missing or fails.
        :raise CapabilityError: when its output carries no version.
        """
        path = Path(binary)
        try:
            real = path.resolve(strict=True)
            st = real.stat()
        except OSError as err:
            raise ProbeError(f"cannot probe {str(binary)!r}: {err.strerror}") from err
        key = (str(real), st.st_mtime_ns, st.st_size)
        cached = _PROBE_CACHE.get(key)
        if cached is None:
            help_text = _run_help(path, ["-help"])
            machine_text = _run_help(path, ["-machine", "help"])
            device_text = _run_help(path, ["-device", "help"])
            cached = cls.from_help(help_text, machine_text, device_text, profile=str(path))
            _PROBE_CACHE[key] = cached
        return cached

    @classmethod
    def default(cls) -> QemuCapabilities:
        """The profile used when none is given: QEMU 7.2 (Debian 12)."""
        return _DEFAULT

    def supports_device(self, name: str) -> bool:
        """Whether ``-device name`` exists; ``True`` when the device list is unknown."""
        return not self.devices or name in self.devices

    @property
    def version_string(self) -> str:
        """``7.2.0``."""
        return ".".join(map(str, self.version))

    @property
    def uses_long_booleans(self) -> bool:
        """QEMU 6.0 deprecated ``server,nowait``; ``server=on,wait=off`` works everywhere since."""
        return self.version >= (6, 0, 0)

    def to_dict(self) -> dict[str, Any]:
        """Plain data, for JSON and notebooks."""
        data = dataclasses.asdict(self)
        data["version"] = list(self.version)
        return data


_DEFAULT = QemuCapabilities()
_PROBE_CACHE: dict[tuple[str, int, int], QemuCapabilities] = {}


def _parse_machines(machine_help: str | None) -> tuple[tuple[str, ...], str | None]:
    if not machine_help:
        return (), None
    machines: list[str] = []
    default: str | None = None
    for line in machine_help.splitlines():
        if not line.strip() or line.startswith(("Supported machines", " ")):
            continue
        name = line.split()[0]
        machines.append(name)
        if "(default)" in line:
            default = name
    return tuple(machines), default


def _run_help(binary: Path, args: list[str]) -> str:
    env = dict(os.environ, LC_ALL="C")
    try:
        result = subprocess.run(
            [str(binary), *args],
            capture_output=True,
            text=True,
            timeout=_PROBE_TIMEOUT,
            env=env,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise ProbeError(f"cannot run {str(binary)!r} {' '.join(args)}: {err}") from err
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or [""]
        raise ProbeError(
            f"{str(binary)!r} {' '.join(args)} exited with {result.returncode}: {tail[0]}"
        )
    return result.stdout


def profile_dirs() -> list[Path]:
    """Where recorded profiles are looked for: the installed package, then a source tree."""
    here = Path(__file__).resolve().parent
    candidates = [here / "_profiles", here.parent / "fixtures" / "profiles"]
    return [path for path in candidates if path.is_dir()]


def available_profiles() -> list[str]:
    """Names of the recorded profiles (``qemu-7.2``, ``qemu-10.0``)."""
    names = {
        entry.name
        for directory in profile_dirs()
        for entry in directory.iterdir()
        if (entry / "help.txt").is_file()
    }
    return sorted(names, key=_natural_key)


def _natural_key(name: str) -> list[object]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def load_profile(name: str) -> QemuCapabilities:
    """Load a recorded profile by name.

    :raise CapabilityError: when no profile of that name is recorded.
    """
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise CapabilityError(f"invalid profile name {name!r}")
    for directory in profile_dirs():
        folder = directory / name
        if (folder / "help.txt").is_file():
            return _load_profile_dir(folder)
    known = ", ".join(available_profiles()) or "none"
    raise CapabilityError(f"unknown QEMU profile {name!r} (recorded: {known})")


_PROFILE_CACHE: dict[Path, QemuCapabilities] = {}


def _load_profile_dir(folder: Path) -> QemuCapabilities:
    cached = _PROFILE_CACHE.get(folder)
    if cached is None:

        def read(file: str) -> str | None:
            path = folder / file
            return path.read_text(encoding="utf-8") if path.is_file() else None

        meta = read("profile.json")
        name = json.loads(meta).get("name", folder.name) if meta else folder.name
        cached = QemuCapabilities.from_help(
            read("help.txt") or "", read("machine.txt"), read("device.txt"), profile=str(name)
        )
        _PROFILE_CACHE[folder] = cached
    return cached
