"""The values a command is given besides the instance: durations and paths, checked once.

Every duration of every command and API call (``--timeout``, ``--ready-timeout``,
``Hypervisor.stop(timeout=...)``, a migration's timeout...) goes through
:func:`check_seconds`, and every state directory or file path through
:func:`state_dir_path` or :func:`input_path`, before anything starts: a value that
passes is one the later steps can hold (a finite deadline, one system call's wait,
one spelling of a directory), and one that does not is an
:class:`~kvmlab.errors.InvalidInputError` naming the option and the value (exit 2).

The bounds of a duration are ``0 < seconds <= MAX_SECONDS`` (seven days):

- more than zero, because every wait kvmlab does ends in giving up (a killed guest,
  a cancelled migration, a refused command) and zero or less would give up before
  asking; ``stop --force`` is the way not to wait;
- at most a week, which is longer than any boot, transfer or guest command a lab
  waits for, so that a typo (``3e6``) is caught rather than hung on, and far below
  what one ``poll``/``epoll_wait`` can wait (``INT_MAX`` ms, about 24.8 days), so a
  deadline never overflows a system call or a timer.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from kvmlab.errors import InvalidInputError, LayoutError, OptionValueError

__all__ = ["MAX_SECONDS", "SECONDS_RULE", "check_seconds", "input_path", "state_dir_path"]

#: The longest duration any option takes: seven days (see the module's docstring).
MAX_SECONDS = 7 * 24 * 3600.0
#: What a duration must be, for the messages that refuse one.
SECONDS_RULE = (
    f"a duration must be a number of seconds above 0 and at most {MAX_SECONDS:g} (7 days)"
)


def check_seconds(option: str, value: object) -> float:
    """``value`` as a float of seconds, or :class:`OptionValueError` naming ``option``.

    :param option: how the caller names it (``--timeout`` in the CLI, ``timeout`` in
        the API), for the message.
    :raise OptionValueError: not a real number (a bool, a string, ``nan``), not
        finite, not above zero, or above :data:`MAX_SECONDS`.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        seconds = math.nan
    else:
        try:
            seconds = float(value)
        except OverflowError:  # an int beyond a float's range
            seconds = math.inf
    if not 0 < seconds <= MAX_SECONDS:  # False for nan as well
        raise OptionValueError(f"{option} {value!r}: {SECONDS_RULE}", option=option, value=value)
    return seconds


def _check_text(option: str, value: str) -> None:
    if not value:
        # An empty path is no path: os.path.abspath("") is the working directory.
        raise InvalidInputError(f"{option} {value!r} is empty: give a path")
    if "\x00" in value:
        raise InvalidInputError(f"{option} {value!r} holds a NUL byte")


def input_path(option: str, value: str) -> str:
    """A file path as given on a command line, made absolute and normal (``..``, ``.``,
    a trailing slash) once, so that two spellings of one path compare equal.

    :raise InvalidInputError: empty, or a NUL byte in it.
    """
    _check_text(option, value)
    return os.path.abspath(value)


def state_dir_path(value: str | os.PathLike[str], option: str = "state directory") -> Path:
    """A state directory resolved once (relative, ``..``, symlinks, a trailing slash):
    the path every file of the lab is named under and compared by.

    :raise LayoutError: empty, a NUL byte, or the path (or the first of its ancestors
        that exists) is not a directory.
    """
    text = os.fspath(value)
    try:
        _check_text(option, text)
    except InvalidInputError as err:
        raise LayoutError(str(err)) from None
    root = Path(os.path.realpath(text))
    existing = root
    try:
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        is_dir = existing.is_dir()
    except OSError:  # unreadable on the way: the command that uses it says so
        is_dir = True
    if not is_dir:
        where = "" if existing == root else f" ({existing} is not a directory)"
        raise LayoutError(f"{option} {text!r} is not a directory{where}")
    return root
