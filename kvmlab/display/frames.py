"""Results a user may sort or export, as pandas DataFrames: migrations and the lab.

pandas is optional (the ``notebooks`` extra installs it): it is imported when a frame is
asked for, never by ``import kvmlab.display``. The capability matrix has its own
:meth:`~kvmlab.display.CapabilityMatrix.to_dataframe`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from kvmlab.display._markup import _require

if TYPE_CHECKING:
    from kvmlab.lifecycle.hypervisor import Hypervisor
    from kvmlab.lifecycle.migration.result import MigrationResult

__all__ = ["lab_dataframe", "migrations_dataframe"]


def pandas() -> Any:
    return _require("pandas", "DataFrames")


def migrations_dataframe(results: Sequence[MigrationResult]) -> Any:
    """One row per migration, with every field of :class:`MigrationResult`."""
    return pandas().DataFrame([result.to_dict() for result in results])


def lab_dataframe(hypervisor: Hypervisor) -> Any:
    """One row per instance of the lab (``list_instances()``): name, state, pid, size, MACs."""
    rows = [
        {
            "name": info.name,
            "state": str(info.state),
            "pid": info.pid,
            "memory_mib": info.memory,
            "vcpus": info.vcpus,
            "macs": ", ".join(nic.get("mac", "") for nic in info.nics),
        }
        for info in hypervisor.list_instances()
    ]
    columns = ["name", "state", "pid", "memory_mib", "vcpus", "macs"]
    return pandas().DataFrame(rows, columns=columns).set_index("name")
