"""What a QEMU binary can do, read from its ``-help`` output.

The generator never runs a binary: it asks a :class:`QemuCapabilities` value
which spelling of an option to use (``-no-acpi`` or ``-machine acpi=off``,
``-netdev``/``-device`` or ``-net nic``...). That value comes from one of three
places::

    caps = QemuCapabilities.probe("/usr/bin/qemu-system-x86_64")   # runs it, cached
    caps = QemuCapabilities.from_help(help_text, machine_text)      # recorded text
    caps = load_profile("qemu-10.0")                                # bundled profile

A bundled profile is a folder under ``fixtures/profiles/`` (``kvmlab/_profiles`` when
installed) holding either recorded texts (``help.txt``, ``machine.txt``, ``device.txt``
from kvmlab's own QEMUs) or only the facts, ``capabilities.json`` (the fields of this
class and where they were derived from: Ganeti's QEMU versions, whose recorded texts stay
outside the project; ``tools/derive_profiles.py`` writes them, see docs/golden.md).

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
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from kvmlab.errors import CapabilityError, ProbeError

__all__ = [
    "FACTS_FILE",
    "FACTS_FORMAT",
    "OPTION_FLAGS",
    "QemuCapabilities",
    "available_profiles",
    "facts_json",
    "help_texts",
    "load_profile",
    "parse_facts",
    "profile_dirs",
    "profile_kind",
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
            cached = cls.from_help(*help_texts(path), profile=str(path))
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

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QemuCapabilities:
        """The inverse of :meth:`to_dict`: every field, each of its type, nothing else.

        No field may be missing: the defaults describe QEMU 7.2, and a profile of an
        older QEMU that silently took them would claim features it does not have.

        :raise CapabilityError: a field missing, unknown or of the wrong type.
        """
        if not isinstance(data, Mapping):
            raise CapabilityError(f"capabilities must be an object, got {type(data).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [name for name in names if name not in data]
        unknown = sorted(str(key) for key in data if key not in names)
        if missing or unknown:
            parts = [f"missing {', '.join(missing)}"] if missing else []
            parts += [f"unknown {', '.join(unknown)}"] if unknown else []
            raise CapabilityError(f"capabilities fields: {'; '.join(parts)}")
        values: dict[str, Any] = {}
        for name in names:
            values[name] = _checked_field(name, _FIELD_KINDS[name], data[name])
        return cls(**values)


_DEFAULT = QemuCapabilities()
_PROBE_CACHE: dict[tuple[str, int, int], QemuCapabilities] = {}


def _field_kind(name: str, default: object) -> str:
    if name == "version":
        return "version"
    if name == "default_machine":
        return "optional-str"
    if isinstance(default, bool):
        return "bool"
    if isinstance(default, str):
        return "str"
    if isinstance(default, tuple):
        return "strings"
    raise TypeError(f"no JSON kind for QemuCapabilities.{name}")  # a new field: add its kind


#: How each field is written in JSON: checked by :meth:`QemuCapabilities.from_dict`.
_FIELD_KINDS: dict[str, str] = {
    f.name: _field_kind(f.name, getattr(_DEFAULT, f.name)) for f in dataclasses.fields(_DEFAULT)
}


def _checked_field(name: str, kind: str, value: object) -> object:
    def ok_str(item: object) -> bool:
        return isinstance(item, str) and "\x00" not in item

    if kind == "bool" and isinstance(value, bool):
        return value
    if kind == "str" and ok_str(value):
        return value
    if kind == "optional-str" and (value is None or ok_str(value)):
        return value
    if kind == "strings" and isinstance(value, list | tuple) and all(map(ok_str, value)):
        return tuple(value)
    if (
        kind == "version"
        and isinstance(value, list | tuple)
        and len(value) == 3
        and all(type(part) is int and 0 <= part < 1_000_000 for part in value)
    ):
        return tuple(value)
    wanted = {
        "bool": "true or false",
        "str": "a string",
        "optional-str": "a string or null",
        "strings": "a list of strings",
        "version": "a list of three non-negative integers",
    }[kind]
    raise CapabilityError(f"capabilities field {name}: {value!r:.60} is not {wanted}")


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


def help_texts(binary: str | os.PathLike[str]) -> tuple[str, str, str]:
    """Run ``binary`` three times: ``-help``, ``-machine help``, ``-device help``.

    :raise ProbeError: when the binary is missing, hangs or fails.
    """
    path = Path(binary)
    return (
        _run_help(path, ["-help"]),
        _run_help(path, ["-machine", "help"]),
        _run_help(path, ["-device", "help"]),
    )


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


#: The file of a facts profile: a folder under ``fixtures/profiles/`` holding only it.
FACTS_FILE = "capabilities.json"
#: Version of the facts document :func:`facts_json` writes.
FACTS_FORMAT = 1
_FACTS_KEYS = ("kvmlab_capabilities", "capabilities", "provenance")
_RECORDED_HELP = "help.txt"


def facts_json(caps: QemuCapabilities, provenance: Mapping[str, str]) -> str:
    """The text of a facts profile: the fields of ``caps`` and where they came from.

    ``caps.profile`` must be set: it is the profile's (and its folder's) name.

    :param provenance: short strings saying what the facts were derived from and by
        which tool (never text of the recording itself).
    :raise CapabilityError: ``caps`` has no profile name, or a provenance value is not a
        string.
    """
    if not caps.profile or not _PROFILE_NAME_RE.fullmatch(caps.profile):
        raise CapabilityError(f"a facts profile needs a valid profile name, not {caps.profile!r}")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in provenance.items()):
        raise CapabilityError("provenance keys and values must be strings")

    def members(data: Mapping[str, object]) -> str:
        # One member a line, each value on its line: a review diff names the field.
        return ",\n".join(
            f"    {json.dumps(key)}: {json.dumps(value, ensure_ascii=False)}"
            for key, value in data.items()
        )

    return (
        f'{{\n  "kvmlab_capabilities": {FACTS_FORMAT},\n'
        f'  "capabilities": {{\n{members(caps.to_dict())}\n  }},\n'
        f'  "provenance": {{\n{members(provenance)}\n  }}\n}}\n'
    )


def parse_facts(text: str | bytes, source: str = "") -> QemuCapabilities:
    """Read a facts profile written by :func:`facts_json` (strictly: see ``from_dict``).

    :raise CapabilityError: not JSON, an unknown format version, missing or extra keys,
        or a field of the wrong type.
    """
    where = f"{source}: " if source else ""
    try:
        document = json.loads(text)
    except (ValueError, RecursionError) as err:
        raise CapabilityError(f"{where}facts profile is not valid JSON: {err}") from None
    if not isinstance(document, dict):
        raise CapabilityError(f"{where}facts profile must be a JSON object")
    if sorted(document) != sorted(_FACTS_KEYS):
        keys = ", ".join(map(repr, sorted(document)))
        raise CapabilityError(
            f"{where}facts profile needs exactly the keys {', '.join(_FACTS_KEYS)}, got {keys}"
        )
    version = document["kvmlab_capabilities"]
    if type(version) is not int or version != FACTS_FORMAT:
        raise CapabilityError(
            f"{where}facts profile format {version!r:.20} is not {FACTS_FORMAT}"
            " (written by another kvmlab?)"
        )
    provenance = document["provenance"]
    if not isinstance(provenance, dict) or not all(
        isinstance(value, str) for value in provenance.values()
    ):
        raise CapabilityError(f"{where}facts profile provenance must map names to strings")
    try:
        return QemuCapabilities.from_dict(document["capabilities"])
    except CapabilityError as err:
        raise CapabilityError(f"{where}{err}") from None


def profile_dirs() -> list[Path]:
    """Where bundled profiles are looked for: the installed package, then a source tree."""
    package = Path(__file__).resolve().parents[1]  # kvmlab/, installed or in a source tree
    candidates = [package / "_profiles", package.parent / "fixtures" / "profiles"]
    return [path for path in candidates if path.is_dir()]


def _kind_of(folder: Path) -> Literal["recorded", "facts"] | None:
    if (folder / _RECORDED_HELP).is_file():
        return "recorded"
    if (folder / FACTS_FILE).is_file():
        return "facts"
    return None


def available_profiles() -> list[str]:
    """Names of the bundled profiles, in natural order.

    ``ganeti-0.9.1`` … ``ganeti-5.2.0`` (facts), then ``qemu-7.2``, ``qemu-10.0`` (recorded).
    """
    names = {
        entry.name
        for directory in profile_dirs()
        for entry in directory.iterdir()
        if _kind_of(entry) is not None
    }
    return sorted(names, key=_natural_key)


def _natural_key(name: str) -> list[object]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


_PROFILE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _profile_folder(name: str) -> tuple[Path, Literal["recorded", "facts"]]:
    if not _PROFILE_NAME_RE.fullmatch(name):
        raise CapabilityError(f"invalid profile name {name!r}")
    for directory in profile_dirs():
        folder = directory / name
        kind = _kind_of(folder)
        if kind is not None:
            return folder, kind
    known = ", ".join(available_profiles()) or "none"
    raise CapabilityError(f"unknown QEMU profile {name!r} (bundled: {known})")


def profile_kind(name: str) -> Literal["recorded", "facts"]:
    """``"recorded"`` for a profile with kvmlab's recorded help texts (the fake kvm can
    imitate it), ``"facts"`` for one holding only :data:`FACTS_FILE`.

    :raise CapabilityError: when no profile of that name is bundled.
    """
    return _profile_folder(name)[1]


def load_profile(name: str) -> QemuCapabilities:
    """Load a bundled profile by name: recorded texts, or a facts file.

    :raise CapabilityError: when no profile of that name is bundled, or its facts file
        is invalid.
    """
    folder, kind = _profile_folder(name)
    return _load_profile_dir(folder, kind)


_PROFILE_CACHE: dict[Path, QemuCapabilities] = {}


def _load_profile_dir(folder: Path, kind: Literal["recorded", "facts"]) -> QemuCapabilities:
    cached = _PROFILE_CACHE.get(folder)
    if cached is None:

        def read(file: str) -> str | None:
            path = folder / file
            return path.read_text(encoding="utf-8") if path.is_file() else None

        if kind == "facts":
            cached = parse_facts((folder / FACTS_FILE).read_bytes(), str(folder / FACTS_FILE))
            if cached.profile != folder.name:
                raise CapabilityError(
                    f"{folder / FACTS_FILE}: profile {cached.profile!r} is not its folder's name"
                )
        else:
            if (folder / FACTS_FILE).exists():
                raise CapabilityError(f"{folder}: holds both recorded texts and {FACTS_FILE}")
            meta = read("profile.json")
            name = json.loads(meta).get("name", folder.name) if meta else folder.name
            cached = QemuCapabilities.from_help(
                read(_RECORDED_HELP) or "",
                read("machine.txt"),
                read("device.txt"),
                profile=str(name),
            )
        _PROFILE_CACHE[folder] = cached
    return cached
