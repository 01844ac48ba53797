"""The hotplug intent: the record a hotplug keeps while QEMU and the saved runtime differ.

A hotplug writes ``conf/NAME.hotplug`` before it changes the running VM and removes
it once the runtime is saved (docs/hotplug.md). A kvmlab killed in between leaves the
file, and ``info`` reports it as ``hotplug_pending``. :class:`HotplugIntent` is that
record, typed: which change (:class:`HotplugOp`), of which NIC (``mac``) or disk
(``path``), at which PCI slot, and the tap a tap NIC was given.

The file is the JSON object kvmlab has always written (``{"op": "attach-nic", "mac":
..., "slot": 17}``), so intents left by an earlier kvmlab load. A file that is not
such an object (half written, edited) still says that an operation died: it loads
as :attr:`HotplugOp.UNKNOWN` with the start of its text in ``raw``.
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, model_validator

from kvmlab.host.store import RAW_LIMIT, atomic_write, load_record
from kvmlab.spec.layout import StateLayout

__all__ = ["HotplugIntent", "HotplugOp", "pending_hotplug"]


class HotplugOp(StrEnum):
    """The change a hotplug was making; the values are the ``op`` written to the file."""

    ATTACH_NIC = "attach-nic"
    DETACH_NIC = "detach-nic"
    ATTACH_DISK = "attach-disk"
    DETACH_DISK = "detach-disk"
    #: The file could not be read as an intent: some operation died, which one is lost.
    UNKNOWN = "unknown"

    @property
    def is_nic(self) -> bool:
        return self in (HotplugOp.ATTACH_NIC, HotplugOp.DETACH_NIC)

    @property
    def is_disk(self) -> bool:
        return self in (HotplugOp.ATTACH_DISK, HotplugOp.DETACH_DISK)


class HotplugIntent(BaseModel):
    """One hotplug in progress, as ``conf/NAME.hotplug`` records it.

    The fields are declared in the order the file has always listed them, and unset
    ones are left out, so :meth:`report` is the object ``info --json`` has always shown.

    :ivar op: the change.
    :ivar mac: the NIC's MAC (NIC changes only).
    :ivar path: the disk's image (disk changes only).
    :ivar slot: the PCI slot of the NIC or disk (every change but ``UNKNOWN``).
    :ivar tap: the tap an attached tap NIC was given, once it exists.
    :ivar raw: the start of a damaged file's text (``UNKNOWN`` only).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    op: HotplugOp
    mac: str | None = None
    path: str | None = None
    slot: int | None = None
    tap: str | None = None
    raw: str | None = None

    @model_validator(mode="after")
    def _fields_of_the_op(self) -> Self:
        """Each op has exactly its own fields: a record that mixes them is not one kvmlab wrote."""
        op = self.op
        expected = {
            "mac": op.is_nic,
            "path": op.is_disk,
            "slot": op is not HotplugOp.UNKNOWN,
            "raw": op is HotplugOp.UNKNOWN,
        }
        for field, needed in expected.items():
            if (getattr(self, field) is not None) != needed:
                state = "needs" if needed else "has no"
                raise ValueError(f"a {op} intent {state} {field!r}")
        if self.tap is not None and op is not HotplugOp.ATTACH_NIC:
            raise ValueError(f"a {op} intent has no 'tap'")
        return self

    @classmethod
    def damaged(cls, text: str) -> HotplugIntent:
        """The intent of a file that is not one: an operation died, which one is lost."""
        return cls(op=HotplugOp.UNKNOWN, raw=text[:RAW_LIMIT])

    def report(self) -> dict[str, Any]:
        """The JSON object of the file, and of ``info``'s ``hotplug_pending``."""
        return self.model_dump(mode="json", exclude_none=True)

    def save(self, path: Path) -> None:
        """Write the intent atomically (a crash leaves the old file or the new one).

        Byte for byte what kvmlab wrote before the model existed (``json.dumps`` of
        :meth:`report`), so either kvmlab reads the other's file.
        """
        atomic_write(path, json.dumps(self.report()))

    @classmethod
    def load(cls, path: Path) -> HotplugIntent | None:
        """The intent in ``path``; ``None`` when there is none.

        A file that cannot be read as an intent (half written, edited, not JSON) is
        still an operation that died: it loads as :meth:`damaged`.
        """
        return load_record(path, cls.model_validate_json, cls.damaged)


def pending_hotplug(layout: StateLayout, name: str) -> dict[str, Any] | None:
    """The intent a hotplug left behind (it died between the QMP change and the save)."""
    intent = HotplugIntent.load(layout.hotplug_intent(name))
    return intent.report() if intent is not None else None
