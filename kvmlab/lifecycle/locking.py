"""The instance lock as every command of the :class:`~kvmlab.lifecycle.hypervisor.Hypervisor`
takes it: the lab's directories made, the lock held, what a killed kvmlab left swept away
and any operation it left pending resolved, host errors said in one line.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

from kvmlab.errors import OperationError
from kvmlab.host.executor import sweep_stale_temp_dirs
from kvmlab.host.process import reap_adopted, remove_quietly
from kvmlab.host.store import instance_lock, remove_stale_writes
from kvmlab.spec.layout import StateLayout

__all__ = ["HELD_LOCKS", "forget_on_failure", "host_errors", "locked", "prepare_dirs"]

#: Instance lock files this process holds now: a migration holds two, and the
#: recovery of an interrupted one must not try to take one of them again.
HELD_LOCKS: set[Path] = set()


@contextlib.contextmanager
def host_errors(name: str) -> Iterator[None]:
    """A full disk or a read-only state dir is an operation failure, said in one line."""
    try:
        yield
    except OSError as err:
        where = f" ({err.filename})" if err.filename else ""
        raise OperationError(f"{name}: {err.strerror or err}{where}") from err


@contextlib.contextmanager
def forget_on_failure(fresh: list[Path], name: str) -> Iterator[None]:
    """A migration that fails leaves nothing behind: the directories it created in a
    new target lab go again, with the files of ``name`` in them."""
    try:
        yield
    except BaseException:
        for directory in fresh:
            for path in directory.glob(f"{name}.*"):
                remove_quietly(path)
            with contextlib.suppress(OSError):  # not empty: another command uses it now
                directory.rmdir()
        raise


def prepare_dirs(layout: StateLayout) -> list[Path]:
    """Create the lab's directories; the ones this call created, deepest first.

    :raise OperationError: the state directory cannot be used.
    """
    try:
        fresh = [path for path in layout.directories() if not path.exists()]
        for directory in layout.directories():
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as err:
        raise OperationError(f"cannot use {layout.root}: {err.strerror}") from err
    return fresh[::-1]


@contextlib.contextmanager
def locked(
    layout: StateLayout,
    name: str,
    *,
    resolve: Callable[[], None] | None = None,
    undo: bool = False,
) -> Iterator[None]:
    """Hold ``name``'s lock in ``layout``.

    :param resolve: run once the lock is held, to finish or undo what a killed kvmlab left
        pending (a migration, a snapshot); ``None``: leave it.
    :param undo: a failure removes the directories this call created.
    :raise LockedError: another command holds it.
    """
    fresh = prepare_dirs(layout)
    lock = layout.lock_file(name)
    fresh = fresh if undo else []
    with forget_on_failure(fresh, name), host_errors(name), instance_lock(lock, name):
        HELD_LOCKS.add(lock)
        try:
            # Whatever a kvmlab killed mid-operation left behind, now that no other
            # command can be writing it.
            sweep_stale_temp_dirs()
            remove_stale_writes(layout.runtime_file(name))
            reap_adopted()  # daemons of ours that exited on their own since
            if resolve is not None:
                resolve()
            yield
        finally:
            HELD_LOCKS.discard(lock)
