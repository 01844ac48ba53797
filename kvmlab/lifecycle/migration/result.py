"""What a migration did: :class:`MigrationResult`, with QEMU's own figures."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["MigrationResult", "migration_figures"]


@dataclass(frozen=True, slots=True)
class MigrationResult:
    """What one migration did, as QEMU's ``query-migrate`` reported it at the end.

    :ivar total_time_ms: from ``migrate`` to completion (QEMU's ``total-time``).
    :ivar downtime_ms: how long the guest was paused (``downtime``); for an offline
        migration QEMU counts only the final switch-over, the guest was paused
        throughout the transfer.
    :ivar transferred_bytes: RAM bytes sent (``ram.transferred``).
    :ivar elapsed_ms: the whole operation as kvmlab saw it (target start to source quit).
    """

    name: str
    source: str
    target: str
    status: str
    live: bool
    total_time_ms: int | None
    downtime_ms: int | None
    setup_time_ms: int | None
    transferred_bytes: int | None
    elapsed_ms: int
    source_version: str
    target_version: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def migration_figures(info: Mapping[str, Any]) -> dict[str, int | None]:
    """The :class:`MigrationResult` fields a ``query-migrate`` reply gives (``None``: absent:
    a migration whose figures were not read, or a QEMU that does not report one)."""

    def number(value: object) -> int | None:
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    ram = info.get("ram")
    return {
        "total_time_ms": number(info.get("total-time")),
        "downtime_ms": number(info.get("downtime")),
        "setup_time_ms": number(info.get("setup-time")),
        "transferred_bytes": number(ram.get("transferred")) if isinstance(ram, dict) else None,
    }
