"""What tests set and what they read back: ``KVMLAB_FAKE_*`` faults and the event log.

Tests make a "VM" misbehave (fail to start, crash, hang, ignore the power
button, be slow) by setting :class:`Faults` variables; reading them in one
place, once, means a fault sticks to the process it was given to and a bad
value is one clear start error. They then assert on what happened inside a
daemonized fake (which QMP commands it got, whether a script ran, why it
exited) by reading the :class:`EventLog` (``KVMLAB_FAKE_LOG``), one JSON
object per line. ``docs/fake-kvm.md`` lists both.
"""

from __future__ import annotations

import os
import time

from kvmlab.fake.errors import FakeError
from kvmlab.fake.lazy import json_module

__all__ = ["EventLog", "Faults"]


def _env_float(name: str, default: float | None) -> float | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise FakeError(f"{name}={raw!r}: expected a number of seconds") from None
    if value < 0:
        raise FakeError(f"{name}={raw!r}: expected a number of seconds") from None
    return value


def _env_bytes(name: str) -> int | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    if not raw.isdigit():
        raise FakeError(f"{name}={raw!r}: expected a number of bytes")
    return int(raw)


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


class Faults:
    """The misbehaviour asked for through ``KVMLAB_FAKE_*`` variables, read once."""

    __slots__ = (
        "boot_delay",
        "crash_after",
        "fail_start",
        "finalize_delay",
        "hang_start",
        "ignore_powerdown",
        "migrate_die",
        "migrate_stall",
        "migrate_time",
        "panic_after",
        "powerdown_delay",
        "slow_start",
        "state_truncate",
        "tap_run",
    )

    def __init__(self) -> None:
        self.fail_start: str | None = None
        self.crash_after: float | None = None
        self.ignore_powerdown = False
        self.slow_start = 0.0
        self.hang_start = False
        self.tap_run = False
        self.boot_delay = 0.0
        self.powerdown_delay = 0.1
        #: Migration (:mod:`kvmlab.fake.migration.outgoing`): the source never converges;
        #: the target dies mid-transfer; the transfer phase takes this long.
        self.migrate_stall = False
        self.migrate_die = False
        self.migrate_time: float | None = None
        #: After ``completed``, the run state stays ``finish-migrate`` this long (QEMU 7.2's
        #: migration thread ends after it reports ``completed``).
        self.finalize_delay = 0.0
        #: A migration into a descriptor or file (a state) fails after this many bytes.
        self.state_truncate: int | None = None
        #: The guest's first boot panics this long after it began (0: before its facts).
        self.panic_after: float | None = None

    @classmethod
    def from_env(cls) -> Faults:
        """Read the environment.

        :raise FakeError: when a number of seconds or bytes is not one.
        """
        faults = cls()
        faults.fail_start = os.environ.get("KVMLAB_FAKE_FAIL_START") or None
        faults.crash_after = _env_float("KVMLAB_FAKE_CRASH_AFTER", None)
        faults.ignore_powerdown = _env_flag("KVMLAB_FAKE_IGNORE_POWERDOWN")
        faults.slow_start = _env_float("KVMLAB_FAKE_SLOW_START", 0.0) or 0.0
        faults.hang_start = _env_flag("KVMLAB_FAKE_HANG_START")
        faults.tap_run = os.environ.get("KVMLAB_FAKE_TAP", "") == "run" and os.geteuid() == 0
        faults.boot_delay = _env_float("KVMLAB_FAKE_BOOT_DELAY", 0.0) or 0.0
        faults.powerdown_delay = _env_float("KVMLAB_FAKE_POWERDOWN_DELAY", 0.1) or 0.0
        faults.migrate_stall = _env_flag("KVMLAB_FAKE_MIGRATE_STALL")
        faults.migrate_die = _env_flag("KVMLAB_FAKE_MIGRATE_DIE")
        faults.migrate_time = _env_float("KVMLAB_FAKE_MIGRATE_TIME", None)
        faults.finalize_delay = _env_float("KVMLAB_FAKE_FINALIZE_DELAY", 0.0) or 0.0
        faults.state_truncate = _env_bytes("KVMLAB_FAKE_STATE_TRUNCATE")
        faults.panic_after = _env_float("KVMLAB_FAKE_PANIC_AFTER", None)
        return faults

    def to_dict(self) -> dict[str, object]:
        """The active faults, for the log."""
        return {key: getattr(self, key) for key in self.__slots__}


class EventLog:
    """``KVMLAB_FAKE_LOG``: one JSON object per line, appended by every fake process.

    Each line is one ``write`` on an ``O_APPEND`` descriptor, so lines from
    several processes never interleave. Without a path, recording is free.
    """

    def __init__(self, path: str | None) -> None:
        self.path = os.path.abspath(path) if path else None

    def __call__(self, event: str, **fields: object) -> None:
        if self.path is None:
            return
        record = {"time": round(time.time(), 6), "pid": os.getpid(), "event": event, **fields}
        line = (json_module().dumps(record, default=str) + "\n").encode()
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError:
            return
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
