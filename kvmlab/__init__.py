"""kvmlab: generate a KVM runtime, save it, execute it, replay it.

The public names are importable from here; each is loaded on first use, so that
``kvmlab --help`` and the fake kvm program (``python -m kvmlab.fake``) start
without paying for pydantic.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kvmlab.capabilities import QemuCapabilities, available_profiles, load_profile
    from kvmlab.errors import (
        AlreadyRunningError,
        CapabilityError,
        InstanceError,
        InvalidInputError,
        KvmlabError,
        LaunchError,
        LayoutError,
        LockedError,
        NotRunningError,
        OperationError,
        ProbeError,
        RuntimeFormatError,
        StateError,
        StopError,
        UnknownInstanceError,
    )
    from kvmlab.generator import generate_runtime
    from kvmlab.invariants import InvariantReport, Violation, check_runtime
    from kvmlab.layout import StateLayout
    from kvmlab.models import Disk, HvParams, Instance, Nic, load_instance
    from kvmlab.plan import ExecutionPlan, NicPlan, NicPlanKind, StartFacts, plan_execution
    from kvmlab.runtime import KVMRuntime

__all__ = [
    "AlreadyRunningError",
    "CapabilityError",
    "Disk",
    "ExecutionPlan",
    "HvParams",
    # Describing instances
    "Instance",
    "InstanceError",
    "InvalidInputError",
    "InvariantReport",
    "KVMRuntime",
    # Exceptions, generic to specific
    "KvmlabError",
    "LaunchError",
    "LayoutError",
    "LockedError",
    "Nic",
    "NicPlan",
    "NicPlanKind",
    "NotRunningError",
    "OperationError",
    "ProbeError",
    # QEMU capabilities
    "QemuCapabilities",
    "RuntimeFormatError",
    "StartFacts",
    "StateError",
    "StateLayout",
    "StopError",
    "UnknownInstanceError",
    "Violation",
    "available_profiles",
    # Invariants
    "check_runtime",
    # Generating and saving runtimes
    "generate_runtime",
    "load_instance",
    "load_profile",
    # Executing (pure half)
    "plan_execution",
]

_HOMES: dict[str, str] = {
    "Instance": "models",
    "Nic": "models",
    "Disk": "models",
    "HvParams": "models",
    "load_instance": "models",
    "QemuCapabilities": "capabilities",
    "load_profile": "capabilities",
    "available_profiles": "capabilities",
    "generate_runtime": "generator",
    "KVMRuntime": "runtime",
    "StateLayout": "layout",
    "plan_execution": "plan",
    "StartFacts": "plan",
    "NicPlan": "plan",
    "NicPlanKind": "plan",
    "ExecutionPlan": "plan",
    "check_runtime": "invariants",
    "InvariantReport": "invariants",
    "Violation": "invariants",
    **{name: "errors" for name in __all__ if name.endswith("Error")},
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'kvmlab' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"kvmlab.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
