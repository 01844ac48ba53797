"""Keeping the template cache small: last-use marks, and pruning what no one uses.

Every change of the QEMU binary, the guest image or the runtime makes templates under a
new key (:mod:`kvmlab.testing.templates`), about 100 MB each for a small guest, and the
old ones would stay forever. So each use of a template touches its last-use mark
(``KEY/last-used``), and each build of a template prunes the others:

- those not used for more than ``$KVMLAB_TEMPLATE_MAX_AGE_DAYS`` days (default 7;
  ``0`` keeps them whatever their age);
- then, while they take more than ``$KVMLAB_TEMPLATE_BUDGET_MIB`` MiB (default 2048;
  ``0``: no budget), the least recently used ones.

:func:`prune` does it by hand: ``prune(max_age=0, budget=None)`` removes every template
no one is using.

**Never one in use.** This module owns the locks of the templates, beside each template
(``KEY.lock``): a process loading a template holds its lock shared, one building it
holds it exclusively. A pruner takes a candidate's lock exclusively *without waiting*
and skips the candidate when that fails (busy). Holding it, it renames the template to a
hidden name (``.KEY.removing-RANDOM``) in one step, removes the lock file, lets the lock
go and only then deletes the hidden directory: a process that looks for the template sees
all of it or none of it (and builds it again), never half of it. The lock file is removed
too (there would be one per key ever made), so every lock taken here is checked, once
held, to still be the file at its path; one removed meanwhile is taken again. A
hidden directory left by a pruner that was killed mid-way is deleted by the next prune.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from kvmlab.errors import KvmlabError, OptionValueError
from kvmlab.guest.build import default_cache_dir
from kvmlab.host.inventory import running_pid
from kvmlab.host.stopping import stop as stop_process
from kvmlab.spec.layout import StateLayout

__all__ = [
    "BUDGET_ENV",
    "DEFAULT_BUDGET_MIB",
    "DEFAULT_MAX_AGE_DAYS",
    "MAX_AGE_ENV",
    "PruneReport",
    "configured_limits",
    "fallback_root",
    "flock",
    "last_used",
    "lock_of",
    "mark_used",
    "prune",
    "templates_root",
]

#: Days a template may go unused before a build prunes it (``0``: no age limit).
MAX_AGE_ENV = "KVMLAB_TEMPLATE_MAX_AGE_DAYS"
#: MiB all templates may take before a build prunes the least recently used (``0``: none).
BUDGET_ENV = "KVMLAB_TEMPLATE_BUDGET_MIB"
DEFAULT_MAX_AGE_DAYS = 7.0
DEFAULT_BUDGET_MIB = 2048
#: The last-use mark in a template's directory: its mtime is the last use.
USED_MARK = "last-used"
#: The marker a complete template has (older templates have no last-use mark).
_MARKER = "template.json"
#: A template's directory name: the first 24 hex digits of its key.
_KEY_NAME = re.compile(r"[0-9a-f]{24}")
_REMOVING = ".removing-"
_DAY = 86400.0
#: The largest age limit taken (a typo is refused rather than read as "never").
_MAX_DAYS = 36500.0


def templates_root() -> Path:
    """Where templates are kept: beside the guest cache (``.../kvmlab/templates``)."""
    return default_cache_dir().parent / "templates"


def fallback_root() -> Path:
    """Where a template goes when its path under :func:`templates_root` is too long for
    the unix sockets of its lab: ``/tmp/kvmlab-templates-UID``."""
    return Path(tempfile.gettempdir()) / f"kvmlab-templates-{os.getuid()}"


def lock_of(directory: Path) -> Path:
    """The lock of the template in ``directory`` (beside it: it outlives a rebuild)."""
    return directory.parent / f"{directory.name}.lock"


def _is_current(fd: int, path: Path) -> bool:
    """The open lock ``fd`` is still the file at ``path`` (a pruner removes lock files)."""
    try:
        at_path = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (at_path.st_dev, at_path.st_ino) == (held.st_dev, held.st_ino)


@contextlib.contextmanager
def flock(path: Path, exclusive: bool) -> Iterator[None]:
    """Hold the ``flock`` at ``path`` (created when missing), waiting for it; a lock file
    a pruner removed while this waited is not the lock any more: it is taken again."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            current = _is_current(fd, path)
        except BaseException:
            os.close(fd)
            raise
        if current:
            break
        os.close(fd)
    try:
        yield
    finally:
        os.close(fd)


def _try_exclusive(path: Path) -> int | None:
    """The lock at ``path`` held exclusively, without waiting; ``None`` when another
    process holds it (or it was removed meanwhile)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    if not _is_current(fd, path):
        os.close(fd)
        return None
    return fd


def mark_used(directory: Path) -> None:
    """Record a use of the template in ``directory`` now (its last-use mark's mtime)."""
    (directory / USED_MARK).touch()


def last_used(directory: Path) -> float:
    """When the template in ``directory`` was last used (seconds since the epoch): its
    last-use mark, else (a template older than the marks) its marker's or its directory's
    mtime.

    :raise OSError: there is no such directory.
    """
    for path in (directory / USED_MARK, directory / _MARKER):
        with contextlib.suppress(OSError):
            return path.stat().st_mtime
    return directory.stat().st_mtime


def _size(directory: Path) -> int:
    """Bytes of the files under ``directory`` (symbolic links not followed)."""
    total = 0
    for parent, _dirs, files in os.walk(directory):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(parent, name)).st_size
    return total


# --- limits ---------------------------------------------------------------------------------


def _number(text: str) -> float:
    """``text`` as a float; ``nan`` (refused by every range check) when it is not one."""
    try:
        return float(text)
    except ValueError:
        return math.nan


def configured_limits(environ: Mapping[str, str] | None = None) -> tuple[float | None, int | None]:
    """``(max_age, budget)`` for :func:`prune`, as a build prunes: seconds from
    ``$KVMLAB_TEMPLATE_MAX_AGE_DAYS`` and bytes from ``$KVMLAB_TEMPLATE_BUDGET_MIB``
    (unset or empty: 7 days and 2048 MiB; ``0``: no such limit, ``None``).

    :raise OptionValueError: a value that is not a number of days from 0 to 36500, or a
        whole number of MiB from 0; the message names the variable and the value.
    """
    env = os.environ if environ is None else environ
    days_text = env.get(MAX_AGE_ENV, "").strip()
    days = DEFAULT_MAX_AGE_DAYS if not days_text else _number(days_text)
    if not 0 <= days <= _MAX_DAYS:  # False for nan as well
        raise OptionValueError(
            f"{MAX_AGE_ENV}={days_text!r}: the days a template may go unused must be a"
            f" number from 0 (keep them all) to {_MAX_DAYS:g}",
            option=MAX_AGE_ENV,
            value=days_text,
        )
    mib_text = env.get(BUDGET_ENV, "").strip()
    if not mib_text:
        mib = DEFAULT_BUDGET_MIB
    elif mib_text.isdigit():
        mib = int(mib_text)
    else:
        raise OptionValueError(
            f"{BUDGET_ENV}={mib_text!r}: the MiB all templates may take must be a whole"
            " number from 0 (no budget)",
            option=BUDGET_ENV,
            value=mib_text,
        )
    return (days * _DAY if days else None), (mib * 1024 * 1024 if mib else None)


def _check_limits(max_age: object, budget: object) -> None:
    age_ok = max_age is None or (
        isinstance(max_age, int | float)
        and not isinstance(max_age, bool)
        and 0 <= max_age < math.inf
    )
    if not age_ok:
        raise OptionValueError(
            f"max_age {max_age!r}: a number of seconds from 0, or None (no age limit)",
            option="max_age",
            value=max_age,
        )
    budget_ok = budget is None or (
        isinstance(budget, int) and not isinstance(budget, bool) and budget >= 0
    )
    if not budget_ok:
        raise OptionValueError(
            f"budget {budget!r}: a whole number of bytes from 0, or None (no budget)",
            option="budget",
            value=budget,
        )


# --- pruning --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PruneReport:
    """What a :func:`prune` did.

    :ivar removed: the template directories removed, least recently used first.
    :ivar freed: the bytes they held.
    :ivar busy: the directories it would have removed but another process held (loading
        or building them): kept.
    :ivar kept: how many templates are left.
    """

    removed: tuple[Path, ...]
    freed: int
    busy: tuple[Path, ...]
    kept: int


@dataclass(frozen=True, slots=True)
class _Candidate:
    directory: Path
    used: float
    size: int


def _roots(root: Path | None) -> list[Path]:
    """The directories to prune: ``root``, or the default one and the ``/tmp`` one; only
    real directories of this user (``/tmp`` is shared)."""
    candidates = [root] if root is not None else [templates_root(), fallback_root()]
    roots = []
    for path in candidates:
        with contextlib.suppress(OSError):
            if path.is_dir() and path.stat().st_uid == os.getuid():
                if root is None and path == fallback_root() and path.is_symlink():
                    continue
                roots.append(path)
    return roots


def _scan(root: Path) -> list[_Candidate]:
    """The templates in ``root``; leftovers of a killed pruner, and lock files of no
    template that no one holds, are removed on the way."""
    found = []
    for child in sorted(root.iterdir()):
        name = child.name
        if name.startswith(".") and _REMOVING in name:
            shutil.rmtree(child, ignore_errors=True)
        elif _KEY_NAME.fullmatch(name) and child.is_dir() and not child.is_symlink():
            with contextlib.suppress(OSError):  # removed meanwhile by another pruner
                found.append(_Candidate(child, last_used(child), _size(child)))
        elif _is_orphan_lock(root, name):
            _remove_orphan_lock(child)
    return found


def _is_orphan_lock(root: Path, name: str) -> bool:
    key = name.removesuffix(".lock")
    return key != name and bool(_KEY_NAME.fullmatch(key)) and not (root / key).exists()


def _remove_orphan_lock(lock: Path) -> None:
    fd = _try_exclusive(lock)
    if fd is None:  # a builder about to make its template
        return
    try:
        if not lock.with_name(lock.name.removesuffix(".lock")).exists():
            lock.unlink()
    finally:
        os.close(fd)


def _stop_leftovers(lab: Path) -> None:
    """Stop a VM left running in a template's lab by a builder killed mid-way (its
    pidfile goes with the template: nothing else would find it)."""
    if not (lab / "pid").is_dir():
        return
    layout = StateLayout(lab)
    for pidfile in (lab / "pid").iterdir():
        if running_pid(layout, pidfile.name) is not None:
            stop_process(layout, pidfile.name, press=None, timeout=20.0)


def _remove(candidate: _Candidate) -> bool | None:
    """Remove one template unless busy: ``True`` removed, ``None`` busy, ``False`` gone
    or used meanwhile (kept)."""
    directory = candidate.directory
    lock = lock_of(directory)
    fd = _try_exclusive(lock)
    if fd is None:
        return None
    try:
        try:
            if last_used(directory) != candidate.used:
                return False  # used since it was looked at: no longer the one to remove
            _stop_leftovers(directory / "lab")
        except (OSError, KvmlabError):
            return False
        hidden = directory.with_name(f".{directory.name}{_REMOVING}{secrets.token_hex(4)}")
        try:
            os.rename(directory, hidden)
        except OSError:
            return False
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()
    finally:
        os.close(fd)
    shutil.rmtree(hidden, ignore_errors=True)
    return True


def prune(
    max_age: float | None,
    budget: int | None,
    *,
    root: Path | None = None,
    keep: Iterable[Path] = (),
    now: float | None = None,
) -> PruneReport:
    """Remove the templates not used for more than ``max_age`` seconds, then the least
    recently used ones while all of them take more than ``budget`` bytes; never one that
    another process is loading or building (skipped, in :attr:`PruneReport.busy`).

    ``prune(max_age=0, budget=None)`` removes every template no one is using;
    ``prune(*configured_limits())`` is what the build of a template does.

    :param max_age: seconds since its last use; ``None``: no age limit.
    :param budget: bytes; ``None``: no budget.
    :param root: the templates directory; when omitted, :func:`templates_root` and
        :func:`fallback_root`, with one budget for both.
    :param keep: template directories never removed (the one just built), though counted.
    :param now: the time ages are counted from (seconds since the epoch; now when omitted).
    :raise OptionValueError: ``max_age`` or ``budget`` is not a number from 0 (or None).
    """
    _check_limits(max_age, budget)
    now = time.time() if now is None else now
    kept_dirs = {path.resolve() for path in keep}
    found = [candidate for path in _roots(root) for candidate in _scan(path)]
    found.sort(key=lambda candidate: candidate.used)
    total = sum(candidate.size for candidate in found)
    removed: list[Path] = []
    busy: list[Path] = []
    freed = 0
    for candidate in found:
        old = max_age is not None and now - candidate.used >= max_age
        over = budget is not None and total > budget
        if not (old or over) or candidate.directory.resolve() in kept_dirs:
            continue
        outcome = _remove(candidate)
        if outcome:
            removed.append(candidate.directory)
            freed += candidate.size
            total -= candidate.size
        elif outcome is None:
            busy.append(candidate.directory)
    return PruneReport(tuple(removed), freed, tuple(busy), len(found) - len(removed))
