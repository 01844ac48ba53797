"""Fault injection: the ``KVMLAB_FAKE_*`` variables, read once at start.

Tests make a "VM" misbehave (fail to start, crash, hang, ignore the power
button, be slow) by setting these variables; reading them in one place, once,
means a fault sticks to the process it was given to and a bad value is one
clear start error. ``docs/fake-kvm.md`` lists them.
"""

from __future__ import annotations

import os

from kvmlab.fake.errors import FakeError

__all__ = ["Faults"]


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


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


class Faults:
    """The misbehaviour asked for through ``KVMLAB_FAKE_*`` variables, read once."""

    __slots__ = (
        "boot_delay",
        "crash_after",
        "fail_start",
        "hang_start",
        "ignore_powerdown",
        "powerdown_delay",
        "slow_start",
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

    @classmethod
    def from_env(cls) -> Faults:
        """Read the environment.

        :raise FakeError: when a number of seconds is not a number.
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
        return faults

    def to_dict(self) -> dict[str, object]:
        """The active faults, for the log."""
        return {key: getattr(self, key) for key in self.__slots__}
