"""Where an instance's files live under a state directory.

Ganeti keeps ``pid/``, ``conf/``, ``ctrl/`` and ``nic/`` under one run directory;
kvmlab does the same, with ``log/`` and ``lock/`` added, and ``snap/`` and ``save/`` for
machine states (snapshots, saved instances). The paths end up in the
saved command line, so they must be stable for an instance (never temporary) and
usable inside QEMU option values and unix socket addresses. Computing them is
pure; creating the directories is the lifecycle's job.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

from kvmlab.errors import LayoutError

__all__ = [
    "DEFAULT_STATE_DIR",
    "SUN_PATH_MAX",
    "InstancePaths",
    "StateLayout",
    "default_state_dir",
    "kvmlab_cache_dir",
]

#: ``sun_path`` holds 108 bytes including the terminating NUL.
SUN_PATH_MAX = 107
#: The root :func:`~kvmlab.generate_runtime` uses when it is given no layout.
DEFAULT_STATE_DIR = Path("/var/lib/kvmlab")
SUBDIRS = ("pid", "conf", "ctrl", "nic", "log", "lock", "snap", "save")


def default_state_dir() -> Path:
    """``$KVMLAB_STATE_DIR``, else ``$XDG_STATE_HOME/kvmlab``, else ``~/.local/state/kvmlab``."""
    explicit = os.environ.get("KVMLAB_STATE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "state"
    return base / "kvmlab"


def kvmlab_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/kvmlab``, or ``~/.cache/kvmlab`` when the variable is unset or empty
    (the XDG base directory rule): the root of what kvmlab keeps only to be faster (the
    test guest, templates, accelerator verdicts, QEMU's help texts), all of it rebuildable."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kvmlab"


class InstancePaths(NamedTuple):
    """The paths of one instance that go into its command line, as strings."""

    pidfile: str
    monitor: str
    serial: str
    serial_log: str
    qmp: str
    chroot: str
    #: The guest command channel (ttyS1), see :mod:`kvmlab.channels.guest_channel`.
    cmd: str


@dataclass(frozen=True, slots=True)
class StateLayout:
    """The file layout of one state directory.

    :raise LayoutError: when ``root`` is relative or holds a character that QEMU's
        option syntax or a shell script would misread.
    """

    root: Path

    def __post_init__(self) -> None:
        text = str(self.root)
        if not self.root.is_absolute():
            raise LayoutError(f"state directory {text!r} is not an absolute path")
        bad = sorted({char for char in text if char in ",\n\r\x00'\"\\$`"})
        if bad:
            raise LayoutError(f"state directory {text!r} contains {''.join(bad)!r}")

    def pidfile(self, name: str) -> Path:
        return self.root / "pid" / name

    def runtime_file(self, name: str) -> Path:
        return self.root / "conf" / f"{name}.runtime"

    def hotplug_intent(self, name: str) -> Path:
        """Where a hotplug in progress is recorded, next to the saved runtime (docs/hotplug.md)."""
        return self.root / "conf" / f"{name}.hotplug"

    def migration_journal(self, name: str) -> Path:
        """Where a migration in progress is recorded, in both labs (docs/migration.md)."""
        return self.root / "conf" / f"{name}.migration"

    def snapshot_journal(self, name: str) -> Path:
        """Where a snapshot, save, revert or restore in progress is recorded (one for all four)."""
        return self.root / "conf" / f"{name}.snapshot"

    def snapshot_dir(self, name: str) -> Path:
        """The snapshots of ``name``: ``TAG.state`` (QEMU's stream), ``TAG.json`` (its record)."""
        return self.root / "snap" / name

    def snapshot_state(self, name: str, tag: str) -> Path:
        return self.snapshot_dir(name) / f"{tag}.state"

    def snapshot_record(self, name: str, tag: str) -> Path:
        return self.snapshot_dir(name) / f"{tag}.json"

    def saved_state(self, name: str) -> Path:
        """The machine state ``kvmlab save`` wrote; ``restore`` continues it."""
        return self.root / "save" / f"{name}.state"

    def saved_record(self, name: str) -> Path:
        return self.root / "save" / f"{name}.json"

    def migration_socket(self, name: str) -> Path:
        """The unix socket an incoming migration listens on (``-incoming unix:...``)."""
        return self._socket(name, "migrate")

    def monitor_socket(self, name: str) -> Path:
        return self._socket(name, "monitor")

    def serial_socket(self, name: str) -> Path:
        return self._socket(name, "serial")

    def qmp_socket(self, name: str) -> Path:
        return self._socket(name, "qmp")

    def cmd_socket(self, name: str) -> Path:
        """The guest command channel: the second serial port (ttyS1)."""
        return self._socket(name, "cmd")

    def nic_dir(self, name: str) -> Path:
        """Holds one file per NIC sequence number with the tap's name."""
        return self.root / "nic" / name

    def log_file(self, name: str) -> Path:
        return self.root / "log" / f"{name}.log"

    def serial_log(self, name: str) -> Path:
        return self.root / "log" / f"{name}.serial.log"

    def qmp_log(self, name: str) -> Path:
        """The QMP traffic kvmlab's own sessions saw (:mod:`kvmlab.channels.qmp_log`)."""
        return self.root / "log" / f"{name}.qmp.log"

    def instance_files(self, name: str) -> tuple[Path, ...]:
        """Every file of ``name`` that outlives its process, for ``cleanup`` to forget (the
        saved state's record before its state: a state without a record is no state)."""
        qmp_log = self.qmp_log(name)
        return (
            self.runtime_file(name),
            self.log_file(name),
            self.serial_log(name),
            qmp_log,
            qmp_log.with_name(qmp_log.name + ".1"),
            self.hotplug_intent(name),
            self.migration_journal(name),
            self.snapshot_journal(name),
            self.saved_record(name),
            self.saved_state(name),
        )

    def lock_file(self, name: str) -> Path:
        return self.root / "lock" / f"{name}.lock"

    def chroot_dir(self, name: str) -> Path:
        return self.root / "chroot" / name

    def vnc_socket(self, bind_dir: str, name: str) -> Path:
        return Path(bind_dir) / f"{name}.vnc"

    def instance_paths(self, name: str) -> InstancePaths:
        """All command-line paths of ``name`` at once; cached, as generation is hot.

        :raise LayoutError: a socket path would exceed the unix socket limit.
        """
        return _instance_paths(self, name)

    def directories(self) -> list[Path]:
        """Every directory the lifecycle creates (mode 0700)."""
        return [self.root, *(self.root / sub for sub in SUBDIRS)]

    def _socket(self, name: str, kind: str) -> Path:
        path = self.root / "ctrl" / f"{name}.{kind}"
        if len(os.fsencode(path)) > SUN_PATH_MAX:
            raise LayoutError(
                f"socket path {str(path)!r} is {len(os.fsencode(path))} bytes, over the"
                f" {SUN_PATH_MAX}-byte limit of unix sockets: use a shorter state directory"
            )
        return path


@lru_cache(maxsize=4096)
def _instance_paths(layout: StateLayout, name: str) -> InstancePaths:
    return InstancePaths(
        pidfile=str(layout.pidfile(name)),
        monitor=str(layout.monitor_socket(name)),
        serial=str(layout.serial_socket(name)),
        serial_log=str(layout.serial_log(name)),
        qmp=str(layout.qmp_socket(name)),
        chroot=str(layout.chroot_dir(name)),
        cmd=str(layout.cmd_socket(name)),
    )
