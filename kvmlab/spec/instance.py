"""The instance description: :class:`Instance`, :class:`Nic`, :class:`Disk`, :class:`HvParams`.

These are the only way a VM enters kvmlab, so every rule that protects the host
lives here: names become file names, MACs and links reach shell scripts, paths
and kernel arguments reach the QEMU command line. Each rule raises an error that
names the field and the value::

    >>> Instance(name="web/1", memory=512)
    Traceback (most recent call last):
    ...
    pydantic_core._pydantic_core.ValidationError: 1 validation error for Instance
    name
      Value error, instance name 'web/1' is not a DNS label ...

:func:`instance_from_data` wraps such failures into one :class:`InstanceError`
line fit for a CLI; :func:`kvmlab.spec.files.load_instance` reads the data from a
file first. Hypervisor parameters keep Ganeti's KVM names and defaults,
and Ganeti's cross-parameter rules are checked in :class:`HvParams`.
"""

from __future__ import annotations

import re
import shlex
import uuid as uuidlib
from enum import StrEnum
from functools import lru_cache
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from kvmlab.errors import FieldValueError, InstanceError
from kvmlab.spec.fielddocs import field_doc as _doc
from kvmlab.spec.names import INSTANCE_NAME_PATTERN, INSTANCE_NAME_RULE, is_instance_name

__all__ = [
    "Accel",
    "BootOrder",
    "Disk",
    "DiskMode",
    "HvParams",
    "Instance",
    "KvmFlag",
    "Nic",
    "NicMode",
    "format_validation_error",
    "instance_from_data",
]

#: Options the start-time half of execution owns; ``kvm_extra`` may not carry them,
#: or the saved argv would hold NICs, sockets or daemon flags it must not hold.
RESERVED_OPTIONS = frozenset(
    {
        "-net",
        "-netdev",
        "-nic",
        "-qmp",
        "-qmp-pretty",
        "-monitor",
        "-serial",
        "-chardev",
        "-pidfile",
        "-daemonize",
        "-name",
        "-m",
        "-smp",
        "-device",
        "-incoming",
        "-S",
    }
)
MAX_MEMORY_MIB = 4 * 1024 * 1024
MAX_VCPUS = 255

_MAC = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}")
#: A lowercase unicast MAC in one match: the first octet's low bit (multicast) is clear.
_is_unicast_mac = re.compile(
    r"[0-9a-f][02468ace]:[0-9a-f]{2}:[0-9a-f]{2}:[0-9a-f]{2}:[0-9a-f]{2}:[0-9a-f]{2}"
).fullmatch
#: The MAC QEMU reads as unset (``qemu_macaddr_default_if_unset``) and replaces.
_UNSET_MAC = "00:00:00:00:00:00"
_FORBIDDEN_IN_TEXT = ("\n", "\r", "\x00")


class NicMode(StrEnum):
    """How a NIC reaches the host; the mode decides what the executor sets up."""

    BRIDGED = "bridged"
    ROUTED = "routed"
    USER = "user"

    @property
    def needs_tap(self) -> bool:
        """Bridged and routed NICs need a tap device (root); user networking does not."""
        return self is not _USER


class DiskMode(StrEnum):
    RW = "rw"
    RO = "ro"


class BootOrder(StrEnum):
    FLOPPY = "floppy"
    CDROM = "cdrom"
    DISK = "disk"
    NETWORK = "network"


class KvmFlag(StrEnum):
    """``enabled`` forces KVM, ``disabled`` forces TCG, ``""`` lets kvmlab probe."""

    DEFAULT = ""
    ENABLED = "enabled"
    DISABLED = "disabled"


#: The accelerator a runtime is generated for: what ``kvm_flag`` resolves to once the
#: backend has probed the host (``kvmlab.host.accel``). Generator, probe and backends all
#: speak it, and this is the lowest module they share.
Accel = Literal["kvm", "tcg"]


# Enum members bound to module names: validators run for every NIC and every
# runtime loaded, and ``NicMode.USER`` is a (slow) metaclass attribute lookup.
_BRIDGED = NicMode.BRIDGED
_USER = NicMode.USER
_BOOT_CDROM = BootOrder.CDROM
_BOOT_FLOPPY = BootOrder.FLOPPY


def _no_control_chars(value: str, what: str) -> str:
    if any(char in value for char in _FORBIDDEN_IN_TEXT):
        raise ValueError(f"{what} {value!r} contains a newline or NUL")
    return value


# Constraints below are checked by pydantic-core's regex engine, not by Python
# functions: loading a saved runtime validates ~50 hvparams and must stay in the
# tens of microseconds.
#: Empty means "not set" (Ganeti's convention); anything else must be absolute.
OptionalPath = Annotated[str, StringConstraints(pattern=r"^(?:/[^\n\r\x00]*)?$")]
RequiredPath = Annotated[str, StringConstraints(pattern=r"^/[^\n\r\x00]*$")]
#: One line of text: no newline, carriage return or NUL.
OneLine = Annotated[str, StringConstraints(pattern=r"^[^\n\r\x00]*$")]
#: A value that lands inside one QEMU option: a safe alphabet only.
Token = Annotated[str, StringConstraints(pattern=r"^(?:[A-Za-z0-9][A-Za-z0-9_.+=:-]*)?$")]
#: An instance name: a DNS label (it becomes file names and reaches scripts).
InstanceName = Annotated[str, StringConstraints(pattern=f"^{INSTANCE_NAME_PATTERN}$")]
#: A network interface name as Linux accepts it, or empty.
InterfaceName = Annotated[
    str, StringConstraints(pattern=r"^(?:[A-Za-z0-9_-][A-Za-z0-9_.-]{0,14})?$")
]
#: An IPv4 address or an absolute directory (VNC over a unix socket), or empty.
VncBind = Annotated[
    str,
    StringConstraints(pattern=r"^(?:[0-9]{1,3}(?:\.[0-9]{1,3}){3}|/[^\n\r\x00,]*)?$"),
]
NicType = Literal[
    "paravirtual",
    "rtl8139",
    "ne2k_isa",
    "ne2k_pci",
    "i82551",
    "i82557b",
    "i82559er",
    "pcnet",
    "e1000",
]
DiskType = Literal["paravirtual", "ioemu", "ide", "scsi", "sd", "mtd", "pflash"]
SerialSpeed = Literal[
    75,
    110,
    300,
    600,
    1200,
    1800,
    2400,
    4800,
    9600,
    14400,
    19200,
    28800,
    38400,
    57600,
    115200,
    230400,
    345600,
    460800,
]

_FROZEN = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=False)


class Nic(BaseModel):
    """One network interface, kept as data until the instance is started."""

    model_config = _FROZEN

    mac: str = Field(**_doc("Nic.mac"))
    mode: NicMode = Field(NicMode.BRIDGED, **_doc("Nic.mode"))
    link: InterfaceName = Field("", **_doc("Nic.link"))

    # An "after" validator: it sees what pydantic made a str, bytes included (a
    # "before" one let b"zz" through unchecked).
    @field_validator("mac")
    @classmethod
    def _check_mac(cls, value: str) -> str:
        mac = value.lower()
        if _is_unicast_mac(mac) is None:
            if not _MAC.fullmatch(mac):
                raise ValueError(f"MAC {value!r} is not of the form xx:xx:xx:xx:xx:xx")
            raise ValueError(f"MAC {value!r} is a multicast address (first octet is odd)")
        if mac == _UNSET_MAC:
            # QEMU takes it for "no MAC given" and picks 52:54:00:12:34:56 (and up) instead:
            # the saved runtime would no longer say what the guest has.
            raise ValueError(f"MAC {value!r} is all zero, which QEMU replaces with its own")
        return mac

    @model_validator(mode="after")
    def _check_mode_link(self) -> Self:
        mode = self.mode
        if mode is _BRIDGED:
            if not self.link:
                raise FieldValueError(
                    "link",
                    "a bridged NIC needs a link (the bridge name); mode defaults to bridged:"
                    " use mode 'user' for QEMU's user networking (no bridge, no root)",
                )
        elif mode is _USER and self.link:
            raise FieldValueError("link", f"a user-mode NIC takes no link, got {self.link!r}")
        return self


class Disk(BaseModel):
    """A block device or image file given to the guest, in order."""

    model_config = _FROZEN

    path: RequiredPath = Field(**_doc("Disk.path"))
    mode: DiskMode = Field(DiskMode.RW, **_doc("Disk.mode"))


class HvParams(BaseModel):
    """Ganeti's KVM hypervisor parameters, with Ganeti's defaults.

    Empty strings mean "not set", as in Ganeti, so a Ganeti hvparams dict loads
    unchanged.
    """

    model_config = _FROZEN
    # Not a field: this object's JSON once computed, see json_bytes().
    __slots__ = ("__weakref__", "_json")

    kernel_path: OptionalPath = Field("/boot/vmlinuz-3-kvmU", **_doc("HvParams.kernel_path"))
    initrd_path: OptionalPath = Field("", **_doc("HvParams.initrd_path"))
    kernel_args: OneLine = Field("ro", **_doc("HvParams.kernel_args"))
    root_path: OneLine = Field("/dev/vda1", **_doc("HvParams.root_path"))
    serial_console: bool = Field(True, **_doc("HvParams.serial_console"))
    serial_speed: SerialSpeed = Field(38400, **_doc("HvParams.serial_speed"))
    acpi: bool = Field(True, **_doc("HvParams.acpi"))
    boot_order: BootOrder = Field(BootOrder.DISK, **_doc("HvParams.boot_order"))
    cdrom_image_path: OptionalPath = Field("", **_doc("HvParams.cdrom_image_path"))
    cdrom2_image_path: OptionalPath = Field("", **_doc("HvParams.cdrom2_image_path"))
    cdrom_disk_type: DiskType | Literal[""] = Field("", **_doc("HvParams.cdrom_disk_type"))
    floppy_image_path: OptionalPath = Field("", **_doc("HvParams.floppy_image_path"))
    kvm_path: RequiredPath = Field("/usr/bin/kvm", **_doc("HvParams.kvm_path"))
    kvm_flag: KvmFlag = Field(KvmFlag.DEFAULT, **_doc("HvParams.kvm_flag"))
    machine_version: Token = Field("", **_doc("HvParams.machine_version"))
    cpu_type: Token = Field("", **_doc("HvParams.cpu_type"))
    cpu_cores: StrictInt = Field(default=0, ge=0, le=MAX_VCPUS, **_doc("HvParams.cpu_cores"))
    cpu_threads: StrictInt = Field(default=0, ge=0, le=MAX_VCPUS, **_doc("HvParams.cpu_threads"))
    cpu_sockets: StrictInt = Field(default=0, ge=0, le=MAX_VCPUS, **_doc("HvParams.cpu_sockets"))
    cpu_mask: OneLine = Field("all", **_doc("HvParams.cpu_mask"))
    nic_type: NicType = Field("paravirtual", **_doc("HvParams.nic_type"))
    disk_type: DiskType = Field("paravirtual", **_doc("HvParams.disk_type"))
    disk_cache: Literal["default", "none", "writethrough", "writeback"] = Field(
        "default", **_doc("HvParams.disk_cache")
    )
    disk_aio: Literal["threads", "native", "io_uring"] = Field(
        "threads", **_doc("HvParams.disk_aio")
    )
    mem_path: OptionalPath = Field("", **_doc("HvParams.mem_path"))
    vnc_bind_address: VncBind = Field("0.0.0.0", **_doc("HvParams.vnc_bind_address"))
    vnc_tls: bool = Field(False, **_doc("HvParams.vnc_tls"))
    vnc_x509_path: OptionalPath = Field("", **_doc("HvParams.vnc_x509_path"))
    vnc_x509_verify: bool = Field(False, **_doc("HvParams.vnc_x509_verify"))
    vnc_password_file: OptionalPath = Field("", **_doc("HvParams.vnc_password_file"))
    keymap: Token = Field("", **_doc("HvParams.keymap"))
    use_localtime: bool = Field(False, **_doc("HvParams.use_localtime"))
    usb_mouse: Literal["", "mouse", "tablet"] = Field("", **_doc("HvParams.usb_mouse"))
    usb_devices: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:,-]*$")] = Field(
        "", **_doc("HvParams.usb_devices")
    )
    vga: Token = Field("", **_doc("HvParams.vga"))
    soundhw: Token = Field("", **_doc("HvParams.soundhw"))
    reboot_behavior: Literal["reboot", "exit"] = Field("reboot", **_doc("HvParams.reboot_behavior"))
    security_model: Literal["none", "user", "pool"] = Field(
        "none", **_doc("HvParams.security_model")
    )
    security_domain: Token = Field("", **_doc("HvParams.security_domain"))
    use_chroot: bool = Field(False, **_doc("HvParams.use_chroot"))
    vhost_net: bool = Field(False, **_doc("HvParams.vhost_net"))
    vnet_hdr: bool = Field(True, **_doc("HvParams.vnet_hdr"))
    kvm_extra: str = Field("", **_doc("HvParams.kvm_extra"))
    migration_port: StrictInt = Field(
        default=8102, ge=1, le=65535, **_doc("HvParams.migration_port")
    )
    migration_bandwidth: StrictInt = Field(default=32, ge=1, **_doc("HvParams.migration_bandwidth"))
    migration_downtime: StrictInt = Field(default=30, ge=1, **_doc("HvParams.migration_downtime"))
    migration_mode: Literal["live", "non-live"] = Field("live", **_doc("HvParams.migration_mode"))

    @field_validator("kvm_extra")
    @classmethod
    def _check_kvm_extra(cls, value: str) -> str:
        if not value:
            return value
        _no_control_chars(value, "kvm_extra")
        try:
            words = shlex.split(value)
        except ValueError as err:
            raise ValueError(f"kvm_extra {value!r} cannot be split: {err}") from None
        # QEMU reads "--opt" as "-opt": compare with one dash.
        single = {"-" + word.lstrip("-") if word.startswith("--") else word for word in words}
        reserved = sorted(RESERVED_OPTIONS.intersection(single))
        if reserved:
            raise ValueError(
                f"kvm_extra {value!r} sets {', '.join(reserved)}, which kvmlab manages itself"
            )
        return value

    @model_validator(mode="after")
    def _check_cross_parameters(self) -> Self:
        # Ganeti's validation.py rules, one error each, checked in this order. Runs
        # for every runtime loaded: each field is read once into a local.
        boot_order = self.boot_order
        if boot_order is _BOOT_CDROM and not self.cdrom_image_path:
            raise FieldValueError("cdrom_image_path", "boot_order 'cdrom' needs a cdrom_image_path")
        if boot_order is _BOOT_FLOPPY and not self.floppy_image_path:
            raise FieldValueError(
                "floppy_image_path", "boot_order 'floppy' needs a floppy_image_path"
            )
        if self.kernel_path and not self.root_path:
            raise FieldValueError(
                "root_path", f"kernel_path {self.kernel_path!r} needs a root_path"
            )
        security_model, security_domain = self.security_model, self.security_domain
        if security_model == "user":
            if not security_domain:
                raise FieldValueError(
                    "security_domain", "security_model 'user' needs a security_domain"
                )
        elif security_domain:
            raise FieldValueError(
                "security_domain",
                f"security_model {security_model!r} takes no security_domain,"
                f" got {security_domain!r}",
            )
        if self.disk_aio == "native" and self.disk_cache != "none":
            raise FieldValueError(
                "disk_aio", f"disk_aio 'native' needs disk_cache 'none', got {self.disk_cache!r}"
            )
        tls, x509_path, x509_verify = self.vnc_tls, self.vnc_x509_path, self.vnc_x509_verify
        if x509_verify and not x509_path:
            raise FieldValueError("vnc_x509_path", "vnc_x509_verify needs a vnc_x509_path")
        if (tls or x509_path or x509_verify) and not self.vnc_bind_address:
            raise FieldValueError(
                "vnc_bind_address",
                "vnc_tls, vnc_x509_path and vnc_x509_verify need a vnc_bind_address",
            )
        if x509_path and not tls:
            raise FieldValueError("vnc_tls", "vnc_x509_path needs vnc_tls")
        return self

    def json_bytes(self) -> bytes:
        """``model_dump_json()`` as UTF-8 bytes, computed once per object.

        An instance's hvparams object is the very one every runtime generated from
        it holds, so writing a runtime reuses this instead of serialising ~50 fields
        again. Frozen means the text cannot go stale; the slot is not a field, so
        equality, hashing, copies (``model_copy(update=...)`` builds a new object
        without it), pickles and dumps never see it. The cache is per object, not
        keyed on content: hvparams fresh from a file pay the full cost once.
        """
        try:
            return _cached_json(self)  # type: ignore[no-any-return]
        except AttributeError:
            data = self.__pydantic_serializer__.to_json(self)
            object.__setattr__(self, "_json", data)
            return data

    @property
    def kvm_extra_args(self) -> tuple[str, ...]:
        """``kvm_extra`` split like a shell would (quotes allowed), never run by one."""
        return _split_words(self.kvm_extra) if self.kvm_extra else ()


#: The slot's own getter: a miss raises AttributeError straight away, without going
#: through BaseModel.__getattr__ (which costs more than the JSON it would save).
_cached_json = HvParams.__dict__["_json"].__get__


@lru_cache(maxsize=1024)
def _split_words(text: str) -> tuple[str, ...]:
    return tuple(shlex.split(text))


#: Namespace for instance UUIDs derived from names, so generation stays deterministic.
INSTANCE_UUID_NAMESPACE = uuidlib.UUID("6b1f7f0e-9a53-4c1e-8f3a-6b766d6c6162")


class Instance(BaseModel):
    """A virtual machine as the user describes it."""

    model_config = _FROZEN

    name: str = Field(**_doc("Instance.name"))
    memory: StrictInt = Field(default=128, ge=16, le=MAX_MEMORY_MIB, **_doc("Instance.memory"))
    vcpus: StrictInt = Field(default=1, ge=1, le=MAX_VCPUS, **_doc("Instance.vcpus"))
    nics: tuple[Nic, ...] = Field((), **_doc("Instance.nics"))
    disks: tuple[Disk, ...] = Field((), **_doc("Instance.disks"))
    hvparams: HvParams = Field(HvParams(), **_doc("Instance.hvparams"))
    uuid: uuidlib.UUID | None = Field(None, **_doc("Instance.uuid"))
    network_port: StrictInt | None = Field(
        default=None, ge=5901, le=65535, **_doc("Instance.network_port")
    )

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not is_instance_name(value):
            raise ValueError(f"instance name {value!r} is not a DNS label ({INSTANCE_NAME_RULE})")
        return value

    @model_validator(mode="after")
    def _check_instance(self) -> Self:
        seen: dict[str, int] = {}
        for index, nic in enumerate(self.nics):
            if nic.mac in seen:
                raise FieldValueError(
                    f"nics.{index}.mac",
                    f"MAC {nic.mac!r} of nics.{index} is already used by nics.{seen[nic.mac]}",
                )
            seen[nic.mac] = index
        hv = self.hvparams
        topology = [value for value in (hv.cpu_cores, hv.cpu_threads, hv.cpu_sockets) if value]
        product = 1
        for value in topology:
            product *= value
        if len(topology) == 3 and product != self.vcpus:
            raise FieldValueError(
                "vcpus",
                f"cpu_sockets*cpu_cores*cpu_threads = {product} must equal vcpus = {self.vcpus}",
            )
        if topology and product > self.vcpus:
            raise FieldValueError(
                "vcpus",
                f"cpu topology {hv.cpu_sockets}x{hv.cpu_cores}x{hv.cpu_threads}"
                f" holds more than vcpus = {self.vcpus}",
            )
        if topology and self.vcpus % product:
            # QEMU derives the missing level by division and refuses a remainder.
            raise FieldValueError(
                "vcpus",
                f"vcpus = {self.vcpus} is not a multiple of the given cpu topology"
                f" ({hv.cpu_sockets or '-'} sockets x {hv.cpu_cores or '-'} cores"
                f" x {hv.cpu_threads or '-'} threads = {product})",
            )
        return self

    @property
    def system_uuid(self) -> uuidlib.UUID:
        """The given UUID, or one derived from the name (stable across generations)."""
        return self.uuid or uuidlib.uuid5(INSTANCE_UUID_NAMESPACE, self.name)


def _error_field(error: Any) -> str:
    """The dotted field path; a cross-field rule adds the field it blames."""
    parts = [str(part) for part in error["loc"]]
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, FieldValueError):
        parts.append(cause.field)
    return ".".join(parts)


def _one_line(text: str) -> str:
    return text.replace("\r", "\\r").replace("\n", "\\n")


def format_validation_error(err: ValidationError, source: str = "") -> str:
    """One line naming the first bad field and its value, for CLI users."""
    first = err.errors()[0]
    where = _one_line(_error_field(first)) or "instance"
    message = first["msg"].removeprefix("Value error, ")
    value = first.get("input")
    detail = f"{where}: {message}"
    if first["type"] in {"missing", "extra_forbidden"}:
        detail = f"{where}: {'unknown field' if first['type'] == 'extra_forbidden' else message}"
    elif repr(value) not in message and not isinstance(value, dict):
        detail += f" (got {value!r})"
    more = err.error_count() - 1
    if more:
        detail += f" (and {more} more error{'s' if more > 1 else ''})"
    return _one_line(f"{source}: {detail}" if source else detail)


def find_unencodable(data: object, path: str = "") -> str | None:
    """The path of the first string (or key) that is not valid Unicode text, if any.

    ``json.loads`` turns an escaped lone surrogate (``"\\ud800"``) into a string
    that can be neither written to a file nor passed to ``exec``: refuse it at the door.
    """
    if isinstance(data, str):
        try:
            data.encode("utf-8")
        except UnicodeEncodeError:
            return path or "(top level)"
        return None
    if isinstance(data, dict):
        for key, value in data.items():
            where = f"{path}.{key}" if path else str(key)
            found = find_unencodable(key, where) or find_unencodable(value, where)
            if found:
                return found
    elif isinstance(data, list | tuple):
        for index, item in enumerate(data):
            found = find_unencodable(item, f"{path}.{index}" if path else str(index))
            if found:
                return found
    return None


def instance_error(err: ValidationError, source: str = "") -> InstanceError:
    """Turn pydantic's error into kvmlab's, keeping the field path and value."""
    first = err.errors()[0]
    return InstanceError(
        format_validation_error(err, source),
        field=_error_field(first),
        value=first.get("input"),
    )


def instance_from_data(data: object, source: str = "") -> Instance:
    """Validate plain data (a dict) as an :class:`Instance`.

    :raise InstanceError: naming the first bad field and value.
    """
    if not isinstance(data, dict):
        where = f"{source}: " if source else ""
        raise InstanceError(f"{where}expected a mapping of fields, got {type(data).__name__}")
    try:
        return Instance.model_validate(data)
    except ValidationError as err:
        raise instance_error(err, source) from None
