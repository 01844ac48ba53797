"""QEMU's state words as kvmlab compares them: ``query-status`` run states, ``query-migrate``
statuses.

Both are QAPI enums (``RunState`` and ``MigrationStatus`` in QEMU's schema, as of QEMU 10.0).
They are ``str`` enums so that a member equals the word QMP sends (``QemuRunState.RUNNING ==
"running"``) and hashes like it: a reply's ``"status"`` is kept as the string QEMU sent (a
newer QEMU may send a word this list lacks) and compared against these members, never parsed
into them. Stdlib only, so the migration code imports it without QMP's client library.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "ACTIVE_MIGRATION",
    "RESUMABLE",
    "MigrationStatus",
    "QemuRunState",
]


class QemuRunState(StrEnum):
    """The ``status`` of ``query-status``: what the VM is doing."""

    DEBUG = "debug"
    INMIGRATE = "inmigrate"  #: started with ``-incoming``, waiting for (or receiving) a VM
    INTERNAL_ERROR = "internal-error"
    IO_ERROR = "io-error"
    PAUSED = "paused"  #: ``stop`` (or ``-S``)
    POSTMIGRATE = "postmigrate"  #: an outgoing migration completed: the target has the guest
    PRELAUNCH = "prelaunch"
    FINISH_MIGRATE = "finish-migrate"  #: the last pages of an outgoing migration go out
    RESTORE_VM = "restore-vm"
    RUNNING = "running"
    SAVE_VM = "save-vm"
    SHUTDOWN = "shutdown"
    SUSPENDED = "suspended"
    WATCHDOG = "watchdog"
    GUEST_PANICKED = "guest-panicked"
    COLO = "colo"


class MigrationStatus(StrEnum):
    """The ``status`` of ``query-migrate``: where the last migration of this VM is."""

    NONE = "none"  #: no migration yet (also kvmlab's word for a reply without a status)
    SETUP = "setup"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"
    ACTIVE = "active"
    POSTCOPY_ACTIVE = "postcopy-active"
    POSTCOPY_PAUSED = "postcopy-paused"
    POSTCOPY_RECOVER_SETUP = "postcopy-recover-setup"
    POSTCOPY_RECOVER = "postcopy-recover"
    COMPLETED = "completed"
    FAILED = "failed"
    COLO = "colo"
    PRE_SWITCHOVER = "pre-switchover"
    DEVICE = "device"
    WAIT_UNPLUG = "wait-unplug"


#: Statuses of a transfer still going: it may yet complete, or be cancelled.
ACTIVE_MIGRATION: frozenset[str] = frozenset(
    {
        MigrationStatus.SETUP,
        MigrationStatus.ACTIVE,
        MigrationStatus.PRE_SWITCHOVER,
        MigrationStatus.DEVICE,
        MigrationStatus.WAIT_UNPLUG,
        MigrationStatus.CANCELLING,
        MigrationStatus.POSTCOPY_ACTIVE,
        MigrationStatus.POSTCOPY_PAUSED,
        MigrationStatus.POSTCOPY_RECOVER,
        MigrationStatus.POSTCOPY_RECOVER_SETUP,
    }
)

#: Run states in which the guest does not execute and ``cont`` may resume it.
RESUMABLE: frozenset[str] = frozenset(
    {
        QemuRunState.PAUSED,
        QemuRunState.POSTMIGRATE,
        QemuRunState.FINISH_MIGRATE,
        QemuRunState.PRELAUNCH,
    }
)
