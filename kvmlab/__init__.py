"""kvmlab: generate a KVM runtime, save it, execute it, replay it.

The public names are importable from here; each is loaded on first use, so that
``kvmlab --help`` and the fake kvm program (``python -m kvmlab.fake``, which must
start faster than QEMU) pay for nothing they do not use. This module imports
nothing at import time, with one exception: inside a running IPython shell (a
Jupyter kernel) it registers :mod:`kvmlab.display`'s renderers, which imports only
the standard library, so that instances, runtimes and labs draw themselves as tables.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    __version__: str

    from kvmlab.channels.console import Console, GuestFacts
    from kvmlab.channels.guest_channel import GuestChannel, GuestResult
    from kvmlab.errors import (
        AlreadyRunningError,
        CapabilityError,
        DiffInputError,
        ExpectTimeoutError,
        FieldValueError,
        GoldenError,
        GuestBuildError,
        GuestChannelError,
        GuestTimeoutError,
        HotplugNotRunningError,
        HotplugRefusedError,
        InstanceError,
        InvalidInputError,
        KvmlabError,
        LaunchError,
        LayoutError,
        LockedError,
        MigrationError,
        MigrationRefusedError,
        NotRunningError,
        OperationError,
        OptionValueError,
        ProbeError,
        QmpError,
        RuntimeFormatError,
        SavedError,
        SnapshotError,
        SnapshotRefusedError,
        StateError,
        StopError,
        TapError,
        UnknownInstanceError,
    )
    from kvmlab.host.inventory import InstanceInfo
    from kvmlab.lifecycle.hypervisor import Hypervisor
    from kvmlab.lifecycle.snapshots.record import SnapshotInfo
    from kvmlab.runtime.generator import generate_runtime
    from kvmlab.runtime.invariants import InvariantReport, Violation, check_runtime
    from kvmlab.runtime.plan import ExecutionPlan, NicPlan, NicPlanKind, StartFacts, plan_execution
    from kvmlab.runtime.saved import KVMRuntime
    from kvmlab.spec.capabilities import QemuCapabilities, available_profiles, load_profile
    from kvmlab.spec.files import load_instance
    from kvmlab.spec.instance import Disk, HvParams, Instance, Nic
    from kvmlab.spec.layout import StateLayout
    from kvmlab.states import InstanceState

__all__ = [
    "__version__",
    # Describing instances
    "Instance",
    "Nic",
    "Disk",
    "HvParams",
    "load_instance",
    # QEMU capabilities
    "QemuCapabilities",
    "load_profile",
    "available_profiles",
    # Generating and saving runtimes
    "generate_runtime",
    "KVMRuntime",
    "StateLayout",
    # Executing (pure half)
    "plan_execution",
    "StartFacts",
    "NicPlan",
    "NicPlanKind",
    "ExecutionPlan",
    # Running instances
    "Hypervisor",
    "InstanceInfo",
    "InstanceState",
    "Console",
    "GuestFacts",
    "GuestChannel",
    "GuestResult",
    "SnapshotInfo",
    # Invariants
    "check_runtime",
    "InvariantReport",
    "Violation",
    # Exceptions, generic to specific (the tree is drawn in kvmlab.errors)
    "KvmlabError",
    "InvalidInputError",
    "InstanceError",
    "FieldValueError",
    "RuntimeFormatError",
    "CapabilityError",
    "UnknownInstanceError",
    "LayoutError",
    "OptionValueError",
    "GoldenError",
    "DiffInputError",
    "HotplugRefusedError",
    "HotplugNotRunningError",
    "MigrationRefusedError",
    "SnapshotRefusedError",
    "OperationError",
    "StateError",
    "AlreadyRunningError",
    "NotRunningError",
    "SavedError",
    "LockedError",
    "LaunchError",
    "StopError",
    "ProbeError",
    "QmpError",
    "ExpectTimeoutError",
    "GuestChannelError",
    "GuestTimeoutError",
    "GuestBuildError",
    "TapError",
    "MigrationError",
    "SnapshotError",
]

_HOMES = {
    "Instance": "spec.instance",
    "Nic": "spec.instance",
    "Disk": "spec.instance",
    "HvParams": "spec.instance",
    "load_instance": "spec.files",
    "QemuCapabilities": "spec.capabilities",
    "load_profile": "spec.capabilities",
    "available_profiles": "spec.capabilities",
    "generate_runtime": "runtime.generator",
    "KVMRuntime": "runtime.saved",
    "StateLayout": "spec.layout",
    "plan_execution": "runtime.plan",
    "StartFacts": "runtime.plan",
    "NicPlan": "runtime.plan",
    "NicPlanKind": "runtime.plan",
    "ExecutionPlan": "runtime.plan",
    "Hypervisor": "lifecycle.hypervisor",
    "InstanceInfo": "host.inventory",
    "InstanceState": "states",
    "Console": "channels.console",
    "GuestFacts": "channels.console",
    "GuestChannel": "channels.guest_channel",
    "GuestResult": "channels.guest_channel",
    "SnapshotInfo": "lifecycle.snapshots.record",
    "check_runtime": "runtime.invariants",
    "InvariantReport": "runtime.invariants",
    "Violation": "runtime.invariants",
}


def _register_notebook_display() -> None:
    """Teach a running IPython shell how kvmlab's objects look (see :mod:`kvmlab.display`)."""
    import sys  # noqa: PLC0415 - keep the module namespace to the public names

    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is not None:
        from kvmlab.display import register  # noqa: PLC0415

        register(shell)


_register_notebook_display()


def __getattr__(name: str) -> object:
    if name == "__version__":
        from importlib.metadata import version  # noqa: PLC0415 - keep `import kvmlab` free

        return version("kvmlab")
    home = _HOMES.get(name) or ("errors" if name.endswith("Error") and name in __all__ else None)
    if home is None:
        raise AttributeError(f"module 'kvmlab' has no attribute {name!r}")
    from importlib import import_module  # noqa: PLC0415 - keep `import kvmlab` free

    value = getattr(import_module(f"kvmlab.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
