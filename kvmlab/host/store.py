"""Files in the state directory: atomic writes, the saved runtime, the instance lock.

A saved runtime is replaced, never edited: the new text goes to a temp file in
the same directory, is fsynced, then renamed over the old one, so a crash leaves
either the old or the new runtime, never a mix.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from kvmlab import files
from kvmlab.errors import LockedError, OperationError, RuntimeFormatError
from kvmlab.runtime.saved import KVMRuntime

R = TypeVar("R")

__all__ = [
    "RAW_LIMIT",
    "atomic_write",
    "atomic_write_json",
    "instance_lock",
    "load_record",
    "load_runtime",
    "remove_stale_writes",
    "save_runtime",
]


def atomic_write(path: Path, data: str, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` atomically (temp file, fsync, rename, fsync dir).

    :func:`kvmlab.files.atomic_write`, with its failure told as kvmlab's own error. Its
    temp files are the ``.NAME.*.tmp`` that :func:`remove_stale_writes` removes.

    :raise OperationError: the directory is read-only, full, or missing; the old
        file is left as it was.
    """
    try:
        files.atomic_write(path, data, mode)
    except OSError as err:
        raise OperationError(f"cannot write {path}: {err.strerror}") from err


def atomic_write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write one JSON object with sorted keys and a final newline, atomically: the form
    of every record kvmlab keeps beside a runtime (journals, state records), so two
    writes of the same record are the same bytes.

    :raise OperationError: the directory is read-only, full, or missing.
    """
    atomic_write(path, json.dumps(data, sort_keys=True) + "\n")


def remove_stale_writes(path: Path) -> None:
    """Remove temp files an interrupted :func:`atomic_write` of ``path`` left behind.

    Call it only while holding the lock that serialises writers of ``path``.
    """
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()


def save_runtime(path: Path, runtime: KVMRuntime) -> None:
    """Write the runtime document atomically."""
    atomic_write(path, runtime.to_json() + "\n")


def load_runtime(path: Path) -> KVMRuntime:
    """Read a saved runtime; the file is never modified.

    :raise RuntimeFormatError: unreadable or invalid, naming the file.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise RuntimeFormatError(f"{path}: not UTF-8 text") from err
    except OSError as err:
        raise RuntimeFormatError(f"{path}: cannot read: {err.strerror}") from err
    try:
        return KVMRuntime.from_json(text)
    except RuntimeFormatError as err:
        raise RuntimeFormatError(f"{path}: {err}") from None


#: How much of a damaged record ``info`` shows: enough to recognise it, one table line.
RAW_LIMIT = 200


def load_record(path: Path, parse: Callable[[bytes], R], damaged: Callable[[str], R]) -> R | None:
    """The record a crashed operation left (a hotplug intent, a migration journal).

    ``None`` when there is none. A file ``parse`` refuses (half written, edited, not
    UTF-8) is still an operation that died, which ``info`` must tell: it comes back as
    ``damaged(the start of its text)``.

    :param parse: the record from the file's bytes; raises ``ValueError`` (pydantic's
        ``ValidationError`` is one) for a file that is not a record.
    :raise OSError: the file exists but cannot be read.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        return parse(data)
    except ValueError:
        return damaged(data.decode("utf-8", errors="replace")[:RAW_LIMIT])


@contextlib.contextmanager
def instance_lock(path: Path, name: str, wait: float = 0.0) -> Iterator[None]:
    """Hold the instance's lock; another holder makes this raise at once (or after ``wait``).

    :raise LockedError: another process holds it.
    """
    import time  # noqa: PLC0415

    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as err:
        raise OperationError(f"cannot open the lock {path}: {err.strerror}") from err
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as err:
                if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
                if time.monotonic() >= deadline:
                    raise LockedError(
                        f"instance {name} is busy: another kvmlab command is operating on it"
                    ) from None
                time.sleep(0.02)
        yield
    finally:
        os.close(fd)
