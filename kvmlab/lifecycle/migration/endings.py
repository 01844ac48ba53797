"""The two endings of a migration: the source keeps the VM (roll back) or the target does
(roll forward). The transfer ends with one of them, and so does the recovery of a kvmlab
killed at any step: every step of both is idempotent, so an ending interrupted by another
kill is finished by the next command.
"""

from __future__ import annotations

import logging
import shutil

from kvmlab.channels.qemu_state import RESUMABLE, QemuRunState
from kvmlab.host.executor import clear_stale_files
from kvmlab.host.process import remove_quietly
from kvmlab.host.store import save_runtime
from kvmlab.lifecycle.migration.endpoints import (
    TARGET_TIMEOUT,
    kill_target,
    quit_qemu,
    resume,
    wait_run_state,
)
from kvmlab.runtime.saved import KVMRuntime
from kvmlab.spec.layout import StateLayout

__all__ = ["roll_back", "roll_forward"]

log = logging.getLogger("kvmlab")


def roll_back(source: StateLayout, target: StateLayout, name: str, resume_source: bool) -> None:
    """The source keeps the VM: the target is killed, the source resumed if it ran before.

    The source's runtime is never written: it stays byte-identical.
    """
    kill_target(target, name)
    remove_quietly(target.migration_journal(name))
    if resume_source:
        resume(source, name)
    remove_quietly(source.migration_journal(name))
    log.info("migration of %s to %s rolled back: the source keeps it", name, target.root)


def roll_forward(
    source: StateLayout, target: StateLayout, name: str, planned: KVMRuntime, resume_source: bool
) -> str | None:
    """The target keeps the VM: its runtime saved, then the source quit and forgotten.

    A target that died after the transfer (or never left ``inmigrate``) cannot keep it:
    then it is a roll back (its runtime removed, the source resumed) and ``None``.

    :return: the target's run state once it took over (``None``: rolled back instead).
    """
    status = wait_run_state(
        target, name, lambda state: state != QemuRunState.INMIGRATE, TARGET_TIMEOUT
    )
    if status is None or status == QemuRunState.INMIGRATE:
        remove_quietly(target.runtime_file(name))
        roll_back(source, target, name, resume_source)
        return None
    if resume_source and status in RESUMABLE:
        resume(target, name)
    if not target.runtime_file(name).exists():
        save_runtime(target.runtime_file(name), planned)
    quit_qemu(source, name)
    clear_stale_files(source, name)
    shutil.rmtree(source.nic_dir(name), ignore_errors=True)
    remove_quietly(source.runtime_file(name))
    remove_quietly(source.migration_journal(name))
    remove_quietly(target.migration_journal(name))
    remove_quietly(target.migration_socket(name))
    return status
