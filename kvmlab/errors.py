"""The exceptions kvmlab raises, rooted at :class:`KvmlabError`.

Everything kvmlab raises on purpose derives from one root, so a caller (the CLI,
a notebook, a user's test suite) can catch one class and still tell the cases
apart by type::

    KvmlabError
     +-- InvalidInputError            bad user input: exit code 2 in the CLI (also ValueError)
     |    +-- InstanceError           an instance file or model is invalid
     |    +-- FieldValueError         one cross-field rule of a model failed (``.field``)
     |    +-- RuntimeFormatError      a saved runtime cannot be read or upgraded
     |    +-- CapabilityError         a QEMU --help text cannot be understood
     |    +-- UnknownInstanceError    no such instance in the state directory
     |    +-- LayoutError             a state-directory path is unusable
     |    +-- OptionValueError        a duration or size option out of range (``.option``)
     |    +-- GoldenError             golden cases or files cannot be used
     |    +-- DiffInputError          an input of the semantic diff cannot be read
     |    +-- HotplugRefusedError     a hotplug refused before anything changed
     |    |    +-- HotplugNotRunningError  (also a NotRunningError) the VM is stopped
     |    +-- MigrationRefusedError   a migration refused before anything changed
     |    +-- SnapshotRefusedError    a snapshot, save, revert or restore refused up front
     +-- OperationError               the operation failed: exit code 1
          +-- StateError              wrong life-cycle state for the request (``.state``)
          |    +-- AlreadyRunningError
          |    +-- NotRunningError
          |    +-- SavedError         the instance waits in a saved state (``restore`` it)
          +-- LockedError             another kvmlab process holds the instance
          +-- LaunchError             the hypervisor binary failed to start
          +-- StopError               the process would not go away
          +-- ProbeError              running a binary for its capabilities failed
          +-- QmpError                a QMP connection or command failed
          +-- ExpectTimeoutError      a console pattern did not appear in time
          +-- GuestChannelError       the guest command channel failed
          |    +-- GuestTimeoutError  the guest did not answer in time
          +-- GuestBuildError         the test guest could not be built
          +-- TapError                a tap device could not be opened or configured
          +-- MigrationError          a migration failed (the source still runs)
          +-- SnapshotError           writing or loading a machine state failed

Every class is importable from :mod:`kvmlab` too; ``tests/architecture`` checks that this
tree, the module's ``__all__`` and the package's exports agree.

This module imports nothing but the standard library (and :mod:`kvmlab.states`, the
enum a :class:`StateError` carries, which is stdlib-only too): every stage uses it and
``kvmlab --help`` must start fast.
"""

from __future__ import annotations

from collections.abc import Sequence

from kvmlab.states import InstanceState

__all__ = [
    "AlreadyRunningError",
    "CapabilityError",
    "DiffInputError",
    "ExpectTimeoutError",
    "FieldValueError",
    "GoldenError",
    "GuestBuildError",
    "GuestChannelError",
    "GuestTimeoutError",
    "HotplugNotRunningError",
    "HotplugRefusedError",
    "InstanceError",
    "InvalidInputError",
    "KvmlabError",
    "LaunchError",
    "LayoutError",
    "LockedError",
    "MigrationError",
    "MigrationRefusedError",
    "NotRunningError",
    "OperationError",
    "OptionValueError",
    "ProbeError",
    "QmpError",
    "RuntimeFormatError",
    "SavedError",
    "SnapshotError",
    "SnapshotRefusedError",
    "StateError",
    "StopError",
    "TapError",
    "UnknownInstanceError",
]


class KvmlabError(Exception):
    """Root of every error kvmlab raises on purpose."""

    #: Exit code the CLI uses for this family of errors.
    exit_code: int = 1


class InvalidInputError(KvmlabError, ValueError):
    """The input was wrong; nothing was written or changed."""

    exit_code = 2


class InstanceError(InvalidInputError):
    """An instance description is invalid.

    :ivar field: dotted path of the offending field (``nics.1.mac``), or ``""``.
    :ivar value: the offending value, as given.
    """

    def __init__(self, message: str, *, field: str = "", value: object = None) -> None:
        super().__init__(message)
        self.field = field
        self.value = value


class FieldValueError(InvalidInputError):
    """A cross-field rule failed; ``field`` names the field to blame (``nics.1.mac``).

    Raised inside pydantic validators, which turn a ``ValueError`` into one line of a
    ``ValidationError``: :class:`InvalidInputError` is one, so the rule reports like any other.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class RuntimeFormatError(InvalidInputError):
    """A saved runtime is malformed, of an unknown shape or from a newer kvmlab."""


class CapabilityError(InvalidInputError):
    """A QEMU help text could not be understood (no version line, say)."""


class UnknownInstanceError(InvalidInputError):
    """The state directory knows no instance of that name."""


class LayoutError(InvalidInputError):
    """A state-directory path cannot be used (relative, too long for a socket...)."""


class OptionValueError(InvalidInputError):
    """A duration or size given to a command or an API call is not a finite number in
    its range (``nan``, ``inf``, ``-1``, a million days); refused before anything starts.

    :ivar option: the option or parameter (``--timeout``, ``timeout``).
    :ivar value: the value, as given.
    """

    def __init__(self, message: str, *, option: str, value: object) -> None:
        super().__init__(message)
        self.option = option
        self.value = value


class GoldenError(InvalidInputError):
    """The cases or golden files cannot be used (duplicate case names, bad ``.args`` file)."""


class DiffInputError(InvalidInputError):
    """An input of the diff cannot be read (missing, wrong kind, a file against a folder)."""


class OperationError(KvmlabError):
    """The request was valid but the operation failed."""

    exit_code = 1


class StateError(OperationError):
    """The instance is not in a state that allows the operation.

    The state is required: a refusal that cannot say what it found would leave a caller
    guessing. It is a :class:`~kvmlab.states.InstanceState`, a ``str`` too, so
    ``err.state == "running"`` keeps working.

    :ivar name: the instance name.
    :ivar state: the state it is in (:attr:`InstanceState.RUNNING
        <kvmlab.states.InstanceState.RUNNING>`, ``STOPPED``...).
    """

    def __init__(self, message: str, *, name: str = "", state: InstanceState) -> None:
        super().__init__(message)
        self.name = name
        self.state = state


class AlreadyRunningError(StateError):
    """Start refused: the instance's process is alive."""


class NotRunningError(StateError):
    """Stop, reboot or console refused: the instance has no live process."""


class HotplugRefusedError(InvalidInputError):
    """Hotplug refused before anything changed: duplicate MAC, nothing attached at
    that MAC or path, a missing image, q35, a QEMU without the commands."""


class HotplugNotRunningError(HotplugRefusedError, NotRunningError):
    """Hotplug of a stopped VM: exit 2 like every refusal, and still a
    :class:`NotRunningError` for callers that catch that."""

    exit_code = 2

    def __init__(
        self, message: str, *, name: str = "", state: InstanceState = InstanceState.STOPPED
    ) -> None:
        NotRunningError.__init__(self, message, name=name, state=state)


class LockedError(OperationError):
    """Another kvmlab process is operating on the same instance right now."""


class LaunchError(OperationError):
    """The hypervisor binary failed to start the instance.

    :ivar argv: the command that was run.
    :ivar exitcode: its exit status, or ``None`` when it did not exit (timeout).
    :ivar output: what it printed (stdout and stderr together).
    """

    def __init__(
        self,
        message: str,
        *,
        argv: Sequence[str] = (),
        exitcode: int | None = None,
        output: str = "",
    ) -> None:
        super().__init__(message)
        self.argv = tuple(argv)
        self.exitcode = exitcode
        self.output = output


class StopError(OperationError):
    """The instance's process could not be stopped."""


class ProbeError(OperationError):
    """A QEMU binary could not be run to read its capabilities."""


class QmpError(OperationError):
    """A QMP connection or command failed (or timed out)."""


class ExpectTimeoutError(OperationError):
    """The pattern did not appear in time; ``.output`` is what the console showed."""

    def __init__(self, message: str, *, pattern: str, output: str) -> None:
        super().__init__(message)
        self.pattern = pattern
        self.output = output


class GuestChannelError(OperationError):
    """A command could not be run in the guest: no channel, or it closed mid-reply."""


class GuestTimeoutError(GuestChannelError):
    """The guest's command channel did not answer, or the command did not finish, in time.

    :ivar output: what the command printed before the deadline (``""`` if it never ran).
    """

    def __init__(self, message: str, *, output: str = "") -> None:
        super().__init__(message)
        self.output = output


class GuestBuildError(OperationError):
    """The test guest could not be built; the message says what is missing."""


class TapError(OperationError):
    """A tap device could not be opened, configured or deleted."""


class MigrationRefusedError(InvalidInputError):
    """A migration refused up front, nothing changed: the source is not running, the
    target already has the instance, the target QEMU is older than the source's or
    lacks its machine type, source and target are one state directory."""


class MigrationError(OperationError):
    """A migration started and failed (or timed out): the target was killed and the
    source left running with its runtime untouched (docs/migration.md).

    :ivar status: the last migration status QEMU reported (``failed``, ``cancelled``,
        ``timeout`` when kvmlab gave up, ``""`` before the transfer began).
    """

    def __init__(self, message: str, *, status: str = "") -> None:
        super().__init__(message)
        self.status = status


class SnapshotRefusedError(InvalidInputError):
    """A snapshot, save, revert or restore refused up front, nothing changed: an invalid,
    unknown or duplicate tag, a VM that is not running, nothing saved, a state file that
    does not match its record, a QEMU that cannot load it (older, or without its machine
    type), a guest-visible difference, a pending hotplug or migration."""


class SnapshotError(OperationError):
    """Writing or loading a machine state failed or timed out: the VM runs as before
    (snapshot, save) or stays saved (restore); a failed revert is finished by the next
    command on the instance (docs/snapshots.md).

    :ivar status: the last migration status QEMU reported (``failed``, ``timeout`` when
        kvmlab gave up, ``""`` when it was not that far).
    """

    def __init__(self, message: str, *, status: str = "") -> None:
        super().__init__(message)
        self.status = status


class SavedError(StateError):
    """The instance has a saved state (:attr:`InstanceState.SAVED
    <kvmlab.states.InstanceState.SAVED>`): ``start``, ``reboot`` or ``revert`` would throw
    its machine state away, so they refuse; ``restore`` continues it, ``cleanup``
    discards it."""

    def __init__(
        self, message: str, *, name: str = "", state: InstanceState = InstanceState.SAVED
    ) -> None:
        super().__init__(message, name=name, state=state)
