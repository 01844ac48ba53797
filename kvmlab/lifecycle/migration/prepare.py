"""The refusals of a migration: everything that cannot work is refused before anything
changes (``MigrationRefusedError``, exit 2), so a refused migration leaves both labs as
they were."""

from __future__ import annotations

from kvmlab.errors import MigrationRefusedError
from kvmlab.golden.diff import rebase_changes
from kvmlab.host.backends import Backend
from kvmlab.host.inventory import running_pid
from kvmlab.runtime.rebase import target_runtime
from kvmlab.runtime.saved import KVMRuntime
from kvmlab.spec.capabilities import QemuCapabilities
from kvmlab.spec.layout import StateLayout

__all__ = ["plan_migration", "prepare", "refuse_states"]


def prepare(
    runtime: KVMRuntime,
    *,
    source: StateLayout,
    target: StateLayout,
    source_caps: QemuCapabilities,
    target_caps: QemuCapabilities,
    binary: str,
) -> KVMRuntime:
    """The target's runtime, refused unless the guest would see exactly the source's VM.

    The guest-visible part of the two argvs is compared with kvmlab's semantic diff
    (:mod:`kvmlab.golden.diff`), against the source with its machine alias pinned when
    :mod:`kvmlab.runtime.rebase` had to pin it (``q35`` *is* ``pc-q35-7.2`` on QEMU 7.2).

    :raise MigrationRefusedError: same state directory, older target QEMU, missing
        machine type, or a guest-visible difference.
    """
    if source.root == target.root:
        raise MigrationRefusedError(
            f"cannot migrate {runtime.name} to {target.root}: that is its own state directory"
        )
    planned = target_runtime(
        runtime,
        source=source,
        target=target,
        source_caps=source_caps,
        target_caps=target_caps,
        binary=binary,
    )
    changes = rebase_changes(runtime, planned)
    if changes is not None:
        raise MigrationRefusedError(
            f"cannot migrate {runtime.name}: the target's command line would change what the"
            f" guest sees ({changes})"
        )
    return planned


def plan_migration(
    runtime: KVMRuntime,
    source: StateLayout,
    source_backend: Backend,
    target: StateLayout,
    target_backend: Backend,
) -> tuple[KVMRuntime, QemuCapabilities, QemuCapabilities]:
    """:func:`prepare` with each lab's binary probed: the target's runtime, the source's
    and the target's capabilities.

    :raise MigrationRefusedError: as :func:`prepare`.
    """
    source_caps = source_backend.capabilities(runtime.binary)
    binary = target_backend.binary(runtime.hvparams)
    target_caps = target_backend.capabilities(binary)
    planned = prepare(
        runtime,
        source=source,
        target=target,
        source_caps=source_caps,
        target_caps=target_caps,
        binary=binary,
    )
    return planned, source_caps, target_caps


def refuse_states(source: StateLayout, target: StateLayout, name: str) -> None:
    """Refuse what the two state directories say cannot migrate now (checked under the locks).

    :raise MigrationRefusedError: the source is not running, the target has the instance,
        or a hotplug of the source was interrupted.
    """
    if running_pid(source, name) is None:
        raise MigrationRefusedError(f"cannot migrate {name}: it is not running in {source.root}")
    if target.runtime_file(name).exists() or running_pid(target, name) is not None:
        raise MigrationRefusedError(
            f"cannot migrate {name}: {target.root} already has an instance of that name"
        )
    if source.hotplug_intent(name).exists():
        raise MigrationRefusedError(
            f"cannot migrate {name}: a hotplug was interrupted and its VM may differ from its"
            " saved runtime (kvmlab info shows it; restart it first)"
        )
