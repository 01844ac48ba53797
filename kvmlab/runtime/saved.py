"""The saved runtime: :class:`KVMRuntime` and its JSON format, with Ganeti's legacy files.

A runtime is what ``generate`` produced and what a soft reboot replays: the saved
argv, plus the NICs, hypervisor parameters and disks *as data*. It is frozen, so
executing it cannot change it (Ganeti's ``_ExecuteKVMRuntime`` extended its list
in place and relied on call order to keep the saved copy clean).

The file format is versioned JSON::

    {"format": 3, "name": "vm1", "argv": [...], "nics": [...], "hvparams": {...}, "disks": [...],
     "nic_slots": [16, 17], "disk_slots": [8, 9]}

``nic_slots`` (format 2) is the PCI slot of each NIC, parallel to ``nics``: the
start-time ``-device`` of NIC ``i`` says ``addr=nic_slots[i]``, so a NIC hotplugged
into a free slot, or the NICs left after one is detached, come back at the same
addresses when the runtime is replayed (docs/hotplug.md). A format 1 document has
no slots and is upgraded with the slots format 1 implied (``0x10 + i``).

``disk_slots`` (format 3) is the same for virtio disks, from :data:`DISK_SLOTS`: the
saved argv has ``-drive ...,if=none,id=drive-sSS -device virtio-blk-pci,...,addr=SS``
for disk ``i`` with ``SS = disk_slots[i]``. It is empty when the disks have no PCI
slot of their own: IDE or SCSI disks, and every format 1 or 2 runtime, whose argv has
``-drive ...,if=virtio`` (QEMU picks the slot); those are upgraded with ``disk_slots``
empty, which is what their argv says, and cannot hotplug disks until a hard restart.

:meth:`KVMRuntime.from_json` also reads Ganeti's runtime files, a JSON list of 2,
3 or 4 elements ``[cmd, nics, hvparams, disks]``, and upgrades them: integers in
the argv become strings, and every deprecated option is rewritten (Ganeti's own
upgrade skipped some rewrites when no ``-vnc`` was present; kvmlab applies all).
Upgrading is idempotent: an upgraded runtime is a fixed point.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from typing import Annotated, Any, Final

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from kvmlab.errors import InvalidInputError, RuntimeFormatError
from kvmlab.spec.argv import option_value
from kvmlab.spec.instance import (
    Disk,
    HvParams,
    InstanceName,
    Nic,
    find_unencodable,
    format_validation_error,
)

__all__ = [
    "DISK_SLOTS",
    "FORMAT_VERSION",
    "NIC_SLOTS",
    "KVMRuntime",
    "default_disk_slots",
    "default_nic_slots",
    "free_disk_slot",
    "free_nic_slot",
    "upgrade_legacy_argv",
]

#: Version of the JSON document :meth:`KVMRuntime.to_json` writes. Format 0 is
#: Ganeti's positional list; format 1 had no ``nic_slots``, format 2 no ``disk_slots``.
FORMAT_VERSION: Final = 3

#: PCI slots reserved for NICs on the root bus: QEMU gives devices without an
#: ``addr`` the lowest free slot, and kvmlab's generated devices (VGA, balloon,
#: USB, sound, SCSI controller, disks) stay far below 0x10.
NIC_SLOTS: Final = range(0x10, 0x20)

#: PCI slots reserved for virtio disks, just below the NICs. QEMU's own
#: auto-assigned devices (host bridge, PIIX, VGA, balloon, sound, SCSI controller,
#: virtio CD-ROMs) take the lowest free slots, and the most kvmlab generates fills
#: 0x00-0x07 (docs/hotplug.md's query-pci); the root bus ends at 0x1f.
DISK_SLOTS: Final = range(0x08, 0x10)


def default_disk_slots(count: int) -> tuple[int, ...]:
    """The slots of ``count`` virtio disks in a fresh runtime: the first of :data:`DISK_SLOTS`.

    :raise InvalidInputError: more disks than reserved slots.
    """
    if count > len(DISK_SLOTS):
        raise InvalidInputError(
            f"{count} virtio disks, but only {len(DISK_SLOTS)} PCI slots are reserved for disks"
        )
    return tuple(DISK_SLOTS[:count])


def free_disk_slot(used: Iterable[int]) -> int | None:
    """The lowest reserved disk slot not in ``used``, or ``None`` when all are taken."""
    taken = set(used)
    return next((slot for slot in DISK_SLOTS if slot not in taken), None)


def default_nic_slots(count: int) -> tuple[int, ...]:
    """The slots of ``count`` NICs in a fresh runtime: the first ``count`` of :data:`NIC_SLOTS`.

    :raise InvalidInputError: more NICs than reserved slots.
    """
    if count > len(NIC_SLOTS):
        raise InvalidInputError(
            f"{count} NICs, but only {len(NIC_SLOTS)} PCI slots are reserved for NICs"
        )
    return tuple(NIC_SLOTS[:count])


def free_nic_slot(used: Iterable[int]) -> int | None:
    """The lowest reserved NIC slot not in ``used``, or ``None`` when all are taken."""
    taken = set(used)
    return next((slot for slot in NIC_SLOTS if slot not in taken), None)


#: Ganeti hvparams kvmlab does not model (SPICE, migration tuning...): dropped when
#: a legacy runtime is upgraded, as they do not change what kvmlab starts.
GANETI_UNMODELLED_HVPARAMS: Final = frozenset(
    {
        "spice_bind",
        "spice_image_compression",
        "spice_ip_version",
        "spice_jpeg_wan_compression",
        "spice_password_file",
        "spice_playback_compression",
        "spice_streaming_video",
        "spice_tls_ciphers",
        "spice_use_tls",
        "spice_use_vdagent",
        "spice_zlib_glz_wan_compression",
        "migration_caps",
        "kvm_pci_reservations",
        "user_shutdown",
        "vnet_hdr_for_taps",
        "scsi_controller_type",
        "virtio_net_queues",
        "startup_timeout",
    }
)


#: Fields a generated runtime sets (``format`` keeps its default), as ``model_construct``
#: records them.
_GENERATED_FIELDS: Final = frozenset(
    {"name", "argv", "nics", "hvparams", "disks", "nic_slots", "disk_slots"}
)
_STR_JSON: Final = TypeAdapter(str).serializer.to_json
_ARGV_JSON: Final = TypeAdapter(tuple[str, ...]).serializer.to_json
_NICS_JSON: Final = TypeAdapter(tuple[Nic, ...]).serializer.to_json
_DISKS_JSON: Final = TypeAdapter(tuple[Disk, ...]).serializer.to_json
_SLOTS_JSON: Final = TypeAdapter(tuple[int, ...]).serializer.to_json
_set = object.__setattr__
_OLD_FORMAT: Final = re.compile(rb'\s*\{\s*"format"\s*:\s*[12]\s*[,}]')


class KVMRuntime(BaseModel):
    """A generated runtime: saved argv plus the data expanded only at start time."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: StrictInt = FORMAT_VERSION
    name: InstanceName
    argv: Annotated[
        tuple[Annotated[str, StringConstraints(pattern=r"^[^\x00]*$")], ...], Field(min_length=1)
    ]
    nics: tuple[Nic, ...] = ()
    hvparams: HvParams = HvParams()
    disks: tuple[Disk, ...] = ()
    #: The PCI slot of each NIC (parallel to ``nics``); the default ``0x10 + i``
    #: when left out.
    nic_slots: tuple[StrictInt, ...] = ()
    #: The PCI slot of each virtio disk (parallel to ``disks``), or empty: disks
    #: without a slot of their own (IDE, SCSI, a format 1 or 2 runtime).
    disk_slots: tuple[StrictInt, ...] = ()

    @model_validator(mode="before")
    @classmethod
    def _default_slots(cls, data: Any) -> Any:
        if isinstance(data, dict) and "nic_slots" not in data:
            nics = data.get("nics")
            if isinstance(nics, list | tuple) and 0 < len(nics) <= len(NIC_SLOTS):
                data = {**data, "nic_slots": default_nic_slots(len(nics))}
        return data

    @model_validator(mode="after")
    def _check_slots(self) -> KVMRuntime:
        slots = self.nic_slots
        if len(slots) != len(self.nics):
            raise ValueError(f"{len(self.nics)} NICs but {len(slots)} nic_slots")
        if len(set(slots)) != len(slots):
            raise ValueError(f"nic_slots {list(slots)} has a slot twice")
        bad = [slot for slot in slots if slot not in NIC_SLOTS]
        if bad:
            raise ValueError(
                f"nic_slots {bad} outside the reserved range"
                f" {NIC_SLOTS.start:#x}-{NIC_SLOTS.stop - 1:#x}"
            )
        disk_slots = self.disk_slots
        if disk_slots and len(disk_slots) != len(self.disks):
            raise ValueError(f"{len(self.disks)} disks but {len(disk_slots)} disk_slots")
        if len(set(disk_slots)) != len(disk_slots):
            raise ValueError(f"disk_slots {list(disk_slots)} has a slot twice")
        bad = [slot for slot in disk_slots if slot not in DISK_SLOTS]
        if bad:
            raise ValueError(
                f"disk_slots {bad} outside the reserved range"
                f" {DISK_SLOTS.start:#x}-{DISK_SLOTS.stop - 1:#x}"
            )
        return self

    @classmethod
    def from_validated(
        cls,
        name: str,
        argv: tuple[str, ...],
        nics: tuple[Nic, ...],
        hvparams: HvParams,
        disks: tuple[Disk, ...],
        *,
        nic_slots: tuple[int, ...] | None = None,
        disk_slots: tuple[int, ...] = (),
    ) -> KVMRuntime:
        """A runtime from parts already validated, without validating again.

        The same object ``model_construct`` builds (``__dict__`` in field order,
        ``format`` defaulted and left out of the fields set), without its generic
        loop over aliases and defaults: generation calls this for every runtime.
        ``nic_slots`` defaults to :func:`default_nic_slots`; ``disk_slots`` to none.
        """
        slots = default_nic_slots(len(nics)) if nic_slots is None else nic_slots
        runtime = cls.__new__(cls)
        _set(
            runtime,
            "__dict__",
            {
                "format": FORMAT_VERSION,
                "name": name,
                "argv": argv,
                "nics": nics,
                "hvparams": hvparams,
                "disks": disks,
                "nic_slots": slots,
                "disk_slots": disk_slots,
            },
        )
        _set(runtime, "__pydantic_fields_set__", set(_GENERATED_FIELDS))
        _set(runtime, "__pydantic_extra__", None)
        _set(runtime, "__pydantic_private__", None)
        return runtime

    def to_json(self) -> str:
        """The document written to ``conf/<name>.runtime``: ``model_dump_json()``.

        Pydantic serialises each field with the field's own type, but the hvparams'
        JSON comes from :meth:`HvParams.json_bytes`, computed once per (frozen)
        object, and a generated runtime holds its instance's very hvparams.
        tests/properties/test_fast_json.py checks the result equals pydantic's (a
        field added to the model but not here would fail it).
        """
        return b"".join(
            (
                b'{"format":',
                str(self.format).encode(),
                b',"name":',
                _STR_JSON(self.name),
                b',"argv":',
                _ARGV_JSON(self.argv),
                b',"nics":',
                _NICS_JSON(self.nics),
                b',"hvparams":',
                self.hvparams.json_bytes(),
                b',"disks":',
                _DISKS_JSON(self.disks),
                b',"nic_slots":',
                _SLOTS_JSON(self.nic_slots),
                b',"disk_slots":',
                _SLOTS_JSON(self.disk_slots),
                b"}",
            )
        ).decode()

    @classmethod
    def from_json(cls, text: str | bytes) -> KVMRuntime:
        """Read a saved runtime: the current format, or Ganeti's legacy list (upgraded).

        :raise RuntimeFormatError: malformed JSON, wrong shapes or types, or a format
            newer than this kvmlab knows.
        """
        stripped = text.lstrip()
        first = stripped[:1]
        if first in ("{", b"{"):
            text = _upgrade_old_format(text)
            try:
                runtime: KVMRuntime = cls.__pydantic_validator__.validate_json(text)
            except ValidationError as err:
                raise _explain(text, err) from None
            if runtime.format != FORMAT_VERSION:
                raise _format_error(runtime.format)
            return runtime
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as err:
            raise RuntimeFormatError(f"runtime is not valid JSON: {err}") from None
        if isinstance(data, list):
            bad = find_unencodable(data)
            if bad is not None:
                raise RuntimeFormatError(f"legacy runtime element {bad} is not valid Unicode text")
            return _upgrade_legacy(data)
        raise RuntimeFormatError(
            f"runtime must be a JSON object or Ganeti's list, got {type(data).__name__}"
        )

    @property
    def binary(self) -> str:
        """The program the argv runs (``argv[0]``)."""
        return self.argv[0]


def _upgrade_old_format(text: str | bytes) -> str | bytes:
    """A format 1 or 2 document as format 3: the same fields, the slots they implied.

    Format 1 implied NIC slots ``0x10 + i`` (filled in by ``_default_slots``); formats
    1 and 2 gave disks no slot (``disk_slots`` empty, its default).
    """
    head = text[:64] if isinstance(text, bytes) else text[:64].encode()
    if not _OLD_FORMAT.match(head):
        return text
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return text  # validation explains it
    if not isinstance(data, dict) or data.get("format") not in (1, 2):
        return text
    if "disk_slots" in data or (data["format"] == 1 and "nic_slots" in data):
        return text
    data["format"] = FORMAT_VERSION
    return json.dumps(data)


def _format_error(version: object) -> RuntimeFormatError:
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        return RuntimeFormatError(
            f"runtime format {version} is newer than this kvmlab understands"
            f" (format {FORMAT_VERSION}): upgrade kvmlab"
        )
    return RuntimeFormatError(f"unknown runtime format {version!r}")


def _explain(text: str | bytes, err: ValidationError) -> RuntimeFormatError:
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as json_err:
        return RuntimeFormatError(f"runtime is not valid JSON: {json_err}")
    if isinstance(data, dict) and data.get("format", FORMAT_VERSION) != FORMAT_VERSION:
        return _format_error(data.get("format"))
    return RuntimeFormatError(f"invalid runtime: {format_validation_error(err)}")


def upgrade_legacy_argv(argv: Iterable[object]) -> tuple[str, ...]:
    """Rewrite options QEMU dropped, wherever they stand; idempotent.

    ``-balloon virtio`` becomes ``-device virtio-balloon``, ``-localtime`` becomes
    ``-rtc base=localtime``, ``-chroot DIR`` becomes ``-run-with chroot=DIR``.

    :raise RuntimeFormatError: an element is neither a string nor an integer.
    """
    words: list[str] = []
    for index, item in enumerate(argv):
        if isinstance(item, bool) or not isinstance(item, str | int):
            raise RuntimeFormatError(
                f"legacy runtime argv[{index}] is {type(item).__name__} {item!r},"
                " not a string or integer"
            )
        words.append(str(item))
    out: list[str] = []
    index = 0
    while index < len(words):
        word = words[index]
        following = words[index + 1] if index + 1 < len(words) else None
        if word == "-balloon" and following is not None:
            out += ["-device", "virtio-balloon"] if following.startswith("virtio") else []
            index += 2
        elif word == "-localtime":
            out += ["-rtc", "base=localtime"]
            index += 1
        elif word == "-chroot" and following is not None:
            out += ["-run-with", "chroot=" + following.replace(",", ",,")]
            index += 2
        else:
            out.append(word)
            index += 1
    return tuple(out)


def _name_from_argv(argv: Sequence[str]) -> str:
    name = option_value(argv, "-name")
    if name is None:
        raise RuntimeFormatError("legacy runtime argv has no -name option")
    return name.split(",", 1)[0]


def _legacy_nic(index: int, data: object) -> Nic:
    if not isinstance(data, dict):
        raise RuntimeFormatError(f"legacy runtime NIC {index} is not an object: {data!r}")
    params = data.get("nicparams") or {}
    if not isinstance(params, dict):
        raise RuntimeFormatError(f"legacy runtime NIC {index} nicparams is not an object")
    mode = params.get("mode", data.get("mode", "bridged"))
    link = params.get("link", data.get("link", data.get("bridge", "")))
    try:
        return Nic(mac=data.get("mac"), mode=mode, link=link or "")
    except ValidationError as err:
        raise RuntimeFormatError(
            f"legacy runtime NIC {index}: {format_validation_error(err)}"
        ) from None


def _legacy_disk(index: int, entry: object) -> Disk:
    if not isinstance(entry, list | tuple) or len(entry) < 2 or not isinstance(entry[0], dict):
        raise RuntimeFormatError(
            f"legacy runtime disk {index} is not [disk, path, ...]: {entry!r:.80}"
        )
    try:
        return Disk(path=entry[1], mode=entry[0].get("mode", "rw"))
    except ValidationError as err:
        raise RuntimeFormatError(
            f"legacy runtime disk {index}: {format_validation_error(err)}"
        ) from None


def _legacy_hvparams(data: object) -> HvParams:
    if not isinstance(data, dict):
        raise RuntimeFormatError(f"legacy runtime hvparams is not an object: {data!r:.80}")
    known = HvParams.model_fields
    unknown = sorted(k for k in data if k not in known and k not in GANETI_UNMODELLED_HVPARAMS)
    if unknown:
        names = ", ".join(repr(name) for name in unknown)
        raise RuntimeFormatError(f"legacy runtime has unknown hvparams: {names}")
    kept: dict[str, Any] = {k: v for k, v in data.items() if k in known and v is not None}
    try:
        return HvParams.model_validate(kept)
    except ValidationError as err:
        raise RuntimeFormatError(
            f"legacy runtime hvparams: {format_validation_error(err)}"
        ) from None


def _upgrade_legacy(data: list[Any]) -> KVMRuntime:
    if not 2 <= len(data) <= 4:
        raise RuntimeFormatError(
            f"legacy runtime list must have 2 to 4 elements (cmd, nics, hvparams, disks),"
            f" got {len(data)}"
        )
    cmd, nics, *rest = data
    hvparams = rest[0] if rest else {}
    disks = rest[1] if len(rest) > 1 else []
    for what, value in (("cmd", cmd), ("nics", nics), ("disks", disks)):
        if not isinstance(value, list):
            raise RuntimeFormatError(f"legacy runtime {what} is {type(value).__name__}, not a list")
    argv = upgrade_legacy_argv(cmd)
    if not argv:
        raise RuntimeFormatError("legacy runtime argv is empty")
    try:
        return KVMRuntime(
            name=_name_from_argv(argv),
            argv=argv,
            nics=tuple(_legacy_nic(i, nic) for i, nic in enumerate(nics)),
            hvparams=_legacy_hvparams(hvparams),
            disks=tuple(_legacy_disk(i, disk) for i, disk in enumerate(disks)),
        )
    except ValidationError as err:
        raise RuntimeFormatError(f"legacy runtime: {format_validation_error(err)}") from None
