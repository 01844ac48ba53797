"""The life-cycle states of an instance: one vocabulary for ``info`` and for the errors.

:class:`InstanceState` sits here, below :mod:`kvmlab.errors`, so that a
:class:`~kvmlab.errors.StateError` can carry the state the instance was in, and the
inventory (which reports states) and the errors (which refuse on them) share one enum.
Standard library only, like the errors: the fake kvm and ``kvmlab list`` must start fast.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["PENDING_STATES", "InstanceState"]


class InstanceState(StrEnum):
    """Where an instance stands in its life cycle.

    Three kinds of members, kept apart on purpose:

    - the **process state** (``RUNNING``, ``STOPPED``, ``INVALID``): exactly one holds
      for every instance, and it is what ``info --json`` and ``list`` print as
      ``state``. Scripts compare that word with ``"running"`` and ``"stopped"``, so it
      never takes another value: an instance with an interrupted operation is still
      running or stopped.
    - the **saved state** (``SAVED``): a stopped instance whose machine state waits in
      ``save/NAME.state`` (``kvmlab save``). Its process state is still ``stopped`` (the
      word scripts read); ``info`` reports the state under ``saved``, and
      :class:`~kvmlab.errors.SavedError` carries this member when ``start``, ``reboot`` or
      ``revert`` refuse to throw it away (``restore`` continues it, ``cleanup`` discards it).
    - the **pending states** (``HOTPLUG_PENDING``, ``MIGRATION_PENDING``,
      ``SNAPSHOT_PENDING``, see
      :data:`PENDING_STATES`): an operation died half done and left its record
      (``conf/NAME.hotplug``, the migration or snapshot journal). They hold *on top of*
      the process state, both at once if need be, so they are reported separately:
      :attr:`InstanceInfo.pending <kvmlab.host.inventory.InstanceInfo.pending>` lists them,
      and their values are the ``info --json`` keys that carry each record.
    """

    RUNNING = "running"
    STOPPED = "stopped"
    #: The saved runtime cannot be read (``info`` says why).
    INVALID = "invalid"
    #: A hotplug stopped between QEMU and the save: the VM and its saved runtime may differ.
    HOTPLUG_PENDING = "hotplug_pending"
    #: A migration was interrupted: the next command on the instance finishes or undoes it.
    MIGRATION_PENDING = "migration_pending"
    #: A snapshot, save, revert or restore was interrupted: the next command resolves it.
    SNAPSHOT_PENDING = "snapshot_pending"
    #: A stopped instance whose machine state was saved: ``restore`` continues it.
    SAVED = "saved"


#: The states that report an interrupted operation rather than the process.
PENDING_STATES = frozenset(
    {
        InstanceState.HOTPLUG_PENDING,
        InstanceState.MIGRATION_PENDING,
        InstanceState.SNAPSHOT_PENDING,
    }
)
