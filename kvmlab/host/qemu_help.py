"""A QEMU binary's help texts, kept on disk so that each kvmlab process need not ask again.

The generator needs what the binary can do, and the only way to know is to run it three
times (``-help``, ``-machine help``, ``-device help``): about 0.09 s on this kind of
machine, paid by every ``kvmlab start``, ``reboot`` or ``generate`` before QEMU even
starts, since each is a new process. The texts are kept in
``$XDG_CACHE_HOME/kvmlab/qemu-help/`` (one file per binary, by its real path) with what
identifies the binary: its mtime, size and inode, and the mtime of QEMU's module
directories beside it (a module package adds devices to ``-device help`` without touching
the binary). Any difference, or an unreadable file, means the binary is asked again; the
texts, not the parsed result, are kept, so a newer kvmlab parses them afresh.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path

from kvmlab.errors import OperationError, ProbeError
from kvmlab.files import atomic_write
from kvmlab.spec.capabilities import QemuCapabilities, help_texts
from kvmlab.spec.layout import kvmlab_cache_dir

__all__ = ["cached_capabilities", "help_cache_dir"]

#: Where QEMU looks for its loadable modules, relative to its prefix (Debian, then a
#: source build's default).
_MODULE_DIRS = ("lib/x86_64-linux-gnu/qemu", "lib/qemu", "lib64/qemu")
_MEMORY: dict[str, QemuCapabilities] = {}


def help_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/kvmlab/qemu-help`` (``~/.cache`` when the variable is unset)."""
    return kvmlab_cache_dir() / "qemu-help"


def _identity(real: Path) -> dict[str, object]:
    """What must be unchanged for the kept texts to hold."""
    st = real.stat()
    prefix = real.parent.parent
    modules = {}
    for name in _MODULE_DIRS:
        with contextlib.suppress(OSError):
            modules[name] = (prefix / name).stat().st_mtime_ns
    return {
        "binary": str(real),
        "mtime_ns": st.st_mtime_ns,
        "size": st.st_size,
        "inode": st.st_ino,
        "modules": modules,
    }


def _entry_path(real: Path) -> Path:
    return help_cache_dir() / f"{hashlib.sha256(str(real).encode()).hexdigest()[:16]}.json"


def _load(path: Path) -> tuple[dict[str, object], tuple[str, str, str]] | None:
    """An entry's identity and texts, or ``None`` for a missing or damaged file."""
    with contextlib.suppress(OSError, ValueError):
        entry = json.loads(path.read_text())
        if isinstance(entry, dict):
            identity, texts = entry.get("identity"), entry.get("texts")
            if (
                isinstance(identity, dict)
                and isinstance(texts, list)
                and len(texts) == 3
                and all(isinstance(t, str) for t in texts)
            ):
                return identity, (texts[0], texts[1], texts[2])
    return None


def _prune(directory: Path) -> None:
    """Remove damaged entries and those of binaries that are gone (a test's throwaway
    script, an old QEMU build): the directory holds a small file per QEMU that exists."""
    for path in directory.glob("*.json"):
        loaded = _load(path)
        if loaded is None or not Path(str(loaded[0].get("binary"))).exists():
            with contextlib.suppress(OSError):
                path.unlink()


def cached_capabilities(binary: str) -> QemuCapabilities:
    """What ``binary`` can do: from this process's memory, the disk, or by running it.

    A cache directory that cannot be written only costs the next process the probe.

    :raise ProbeError: the binary is missing or its help fails.
    """
    try:
        real = Path(binary).resolve(strict=True)
        identity = _identity(real)
    except OSError as err:
        raise ProbeError(f"cannot probe {binary!r}: {err.strerror}") from err
    memo_key = json.dumps(identity, sort_keys=True)
    caps = _MEMORY.get(memo_key)
    if caps is not None:
        return caps
    path = _entry_path(real)
    loaded = _load(path)
    texts = loaded[1] if loaded is not None and loaded[0] == identity else None
    if texts is None:
        texts = help_texts(binary)
        with contextlib.suppress(OSError, OperationError):
            path.parent.mkdir(parents=True, exist_ok=True)
            _prune(path.parent)
            entry = {"identity": identity, "texts": list(texts)}
            atomic_write(path, json.dumps(entry) + "\n", 0o644, fsync=False)
    caps = QemuCapabilities.from_help(*texts, profile=binary)
    _MEMORY[memo_key] = caps
    return caps
