"""Tests of :func:`kvmlab.files.atomic_write`, the one way kvmlab replaces a file.

The state directory and the guest cache rely on it: a file is there whole or not at all,
a failed write leaves the old content and no temporary file, and the mode is the one asked
for whatever the umask.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmlab.errors import OperationError
from kvmlab.files import atomic_write
from kvmlab.host import store


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize(
    "data",
    ["text é\n", "text é\n".encode(), iter([b"text ", "é\n".encode()])],
    ids=["str", "bytes", "chunks"],
)
def test_str_bytes_and_chunks_give_the_same_file(
    tmp_path: Path, data: str | bytes | Iterator[bytes]
) -> None:
    target = tmp_path / "file"
    atomic_write(target, data)
    assert target.read_bytes() == "text é\n".encode()
    assert mode_of(target) == 0o600
    assert os.listdir(tmp_path) == ["file"]


def test_mode_is_applied_whatever_the_umask(tmp_path: Path) -> None:
    target = tmp_path / "image"
    old_umask = os.umask(0o077)
    try:
        atomic_write(target, b"x", 0o644, fsync=False)
    finally:
        os.umask(old_umask)
    assert mode_of(target) == 0o644
    atomic_write(target, b"y", 0o640)
    assert (target.read_bytes(), mode_of(target)) == (b"y", 0o640)


def test_a_failing_chunk_iterator_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_bytes(b"old")

    def chunks() -> Iterator[bytes]:
        yield b"new, half "
        raise RuntimeError("the source broke")

    with pytest.raises(RuntimeError, match="the source broke"):
        atomic_write(target, chunks())
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["file"]


def test_a_new_file_appears_only_when_whole(tmp_path: Path) -> None:
    target = tmp_path / "file"
    seen: list[bool] = []

    def chunks() -> Iterator[bytes]:
        for _ in range(3):
            seen.append(target.exists())
            yield b"part "

    atomic_write(target, chunks())
    assert seen == [False, False, False]
    assert target.read_bytes() == b"part part part "


def test_the_temp_name_is_the_one_stale_writes_are_cleaned_by(tmp_path: Path) -> None:
    """An interrupted write leaves ``.NAME.*.tmp``: what the store's cleanup removes."""
    target = tmp_path / "runtime.json"
    names: list[str] = []

    def chunks() -> Iterator[bytes]:
        names.extend(os.listdir(tmp_path))
        yield b"{}"

    atomic_write(target, chunks())
    assert len(names) == 1
    assert names[0].startswith(".runtime.json.")
    assert names[0].endswith(".tmp")
    stale = tmp_path / names[0]
    stale.write_bytes(b"half")
    store.remove_stale_writes(target)
    assert os.listdir(tmp_path) == ["runtime.json"]


def test_a_missing_directory_raises_oserror_and_the_store_says_operation_error(
    tmp_path: Path,
) -> None:
    target = tmp_path / "missing" / "file"
    with pytest.raises(FileNotFoundError):
        atomic_write(target, "x")
    with pytest.raises(OperationError, match=r"cannot write .*/missing/file: "):
        store.atomic_write(target, "x")
