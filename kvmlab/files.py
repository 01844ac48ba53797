"""Atomic file writes: a file appears whole under its name, or not at all.

kvmlab keeps state that a crash or a concurrent reader must never see half written: the saved
runtime and operation records in the state directory, the test guest's kernel and initramfs
in its cache. Every such file is written here, one way: to a temporary name in the same
directory, then renamed over the target (a rename within a directory is atomic). Standard
library only, so that any stage with side effects may use it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

__all__ = ["atomic_write"]


def atomic_write(
    path: Path,
    data: str | bytes | Iterable[bytes],
    mode: int = 0o600,
    *,
    fsync: bool = True,
) -> None:
    """Replace ``path`` with ``data`` atomically: temp file, (fsync,) rename, (fsync dir).

    The temporary file is ``.NAME.XXXXXXXX.tmp`` next to ``path``, so a writer killed
    before the rename leaves only hidden ``.NAME.*.tmp`` files, which whoever serialises
    the writers of ``path`` may delete. Any failure, including one raised by the chunk
    iterator, removes the temporary file and leaves the old ``path`` as it was.

    :param path: the file to create or replace; its directory must exist.
    :param data: text (written as UTF-8), bytes, or an iterable of byte chunks (e.g. a
        large file read piece by piece), consumed once.
    :param mode: the permission bits of the new file, set before any byte is written
        (the umask does not apply).
    :param fsync: flush the file to disk before the rename and the directory after it,
        so that after a power loss the name holds the old or the new content; a cache
        that can be rebuilt may skip it.
    :raise OSError: the directory is missing, read-only or full; nothing changed.
    """
    if isinstance(data, str):
        chunks: Iterable[bytes] = (data.encode("utf-8"),)
    elif isinstance(data, bytes):
        chunks = (data,)
    else:
        chunks = data
    directory = path.parent
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            for chunk in chunks:
                handle.write(chunk)
            handle.flush()
            if fsync:
                os.fsync(handle.fileno())
        os.replace(temp, path)
        if fsync:
            dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
