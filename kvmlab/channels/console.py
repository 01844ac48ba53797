"""An instance's serial console: what the guest printed since this boot began.

QEMU writes every byte of the serial port to ``log/<name>.serial.log``
(``-chardev ...,logfile=...,logappend=off``, truncated at each start), so a
reader sees the boot from its first line, however late it connects.
:meth:`Console.expect` polls that file for a pattern; :meth:`Console.send` writes
to the guest through the serial socket::

    console = lab.console("vm1")
    console.expect(r"KVMLAB-BOOT-OK", timeout=30)
    facts = console.expect(r"KVMLAB-FACTS-END", timeout=5)

A wait on a guest that cannot print any more ends at once: a kernel panic on the
console, or the VM's process gone, raise :class:`~kvmlab.errors.GuestDownError` (an
:class:`ExpectTimeoutError` too) with the console's last lines
(:mod:`~kvmlab.channels.guest_watch`). The pattern is looked for first, so a test that
waits for the panic itself gets it.
"""

from __future__ import annotations

import re
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from kvmlab.channels.guest_watch import GuestWatch
from kvmlab.errors import (
    ExpectTimeoutError,
    GuestDownError,
    InvalidInputError,
    OperationError,
)
from kvmlab.spec.inputs import check_seconds

__all__ = [
    "LONG_LOG",
    "LONG_LOG_INTERVAL",
    "MAX_INTERVAL",
    "Console",
    "ExpectTimeoutError",
    "GuestFacts",
    "parse_guest_facts",
]

#: The longest pause between two reads of the log in :meth:`Console.expect`: the line is
#: seen at most this late, on average half of it (10 ms; 25 ms at the former 50 ms). A read
#: of a quiet boot's log (4 KiB) and its searches cost 45 microseconds, so 50 reads a
#: second take 0.2 % of a core.
MAX_INTERVAL = 0.02
#: A log longer than this (a chatty guest, a long run) is read at most every
#: :data:`LONG_LOG_INTERVAL` instead: each read decodes and searches all of it.
LONG_LOG = 256 * 1024
LONG_LOG_INTERVAL = 0.1


class Console:
    """The serial console of one instance.

    :param log_path: the serial log (``log/<name>.serial.log``).
    :param socket_path: the serial socket, for :meth:`send`.
    """

    def __init__(self, name: str, log_path: Path, socket_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self.socket_path = socket_path

    def read(self) -> str:
        """Everything the guest printed since this boot began."""
        try:
            return self.log_path.read_bytes().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def expect(self, pattern: str, timeout: float = 30.0, interval: float = 0.01) -> str:
        """Wait until ``pattern`` (a regex, multiline) appears; return the output up to its end.

        :raise ExpectTimeoutError: not seen within ``timeout`` seconds.
        :raise GuestDownError: not seen, and the guest panicked or its VM process is gone
            (only for a console in a state directory, where the pidfile is known).
        :raise InvalidInputError: a bad pattern, or a duration out of range
            (:func:`~kvmlab.spec.inputs.check_seconds`).
        """
        timeout = check_seconds("timeout", timeout)
        interval = check_seconds("interval", interval)
        try:
            regex = re.compile(pattern, re.MULTILINE)
        except re.error as err:
            raise InvalidInputError(f"invalid pattern {pattern!r}: {err}") from None
        deadline = time.monotonic() + timeout
        watch = GuestWatch.for_path(self.name, self.log_path, "serial_log")
        try:
            while True:
                text = self.read()
                match = regex.search(text)
                if match:
                    return text[: match.end()]
                if watch is not None:
                    self._check(watch, regex, pattern, text)
                if time.monotonic() >= deadline:
                    raise ExpectTimeoutError(
                        f"{pattern!r} not seen on the console of {self.name} within {timeout:g} s",
                        pattern=pattern,
                        output=text,
                    )
                time.sleep(interval)
                longest = MAX_INTERVAL if len(text) < LONG_LOG else LONG_LOG_INTERVAL
                interval = min(interval * 1.5, longest)
        finally:
            if watch is not None:
                watch.close()

    def _check(self, watch: GuestWatch, regex: re.Pattern[str], pattern: str, text: str) -> None:
        """Raise when the guest is down, unless its last words were what is awaited."""
        try:
            watch.check(text, pattern=pattern)
        except GuestDownError:
            if regex.search(self.read()) is None:
                raise

    def send(self, text: str, timeout: float = 5.0) -> None:
        """Type ``text`` on the serial console.

        :raise OperationError: the serial socket is not there (instance stopped).
        """
        timeout = check_seconds("timeout", timeout)
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(timeout)
                sock.connect(str(self.socket_path))
                sock.sendall(text.encode())
        except OSError as err:
            raise OperationError(
                f"cannot write to the serial console of {self.name}: {err.strerror or err}"
            ) from err

    def facts(self, timeout: float = 30.0) -> GuestFacts:
        """Wait for the guest facts protocol and parse it."""
        return parse_guest_facts(self.expect(r"^KVMLAB-FACTS-END\r?$", timeout))


@dataclass(frozen=True)
class GuestFacts:
    """What the guest reported: ``KVMLAB-BOOT-OK``, ``MEM``, ``CPUS``, ``NIC`` lines."""

    mem_kb: int
    cpus: int
    #: ``{"eth0": "52:54:00:..."}`` in PCI order.
    nics: dict[str, str] = field(default_factory=dict)

    @property
    def macs(self) -> list[str]:
        return list(self.nics.values())


def parse_guest_facts(text: str) -> GuestFacts:
    """Parse the last boot's facts block.

    :raise OperationError: no ``KVMLAB-BOOT-OK`` or a missing ``MEM``/``CPUS`` line.
    """
    start = text.rfind("KVMLAB-BOOT-OK")
    if start < 0:
        raise OperationError("no KVMLAB-BOOT-OK line in the console output")
    mem = cpus = None
    nics: dict[str, str] = {}
    for raw in text[start:].splitlines():
        words = raw.strip().split()
        if len(words) == 2 and words[0] == "MEM" and words[1].isdigit():
            mem = int(words[1])
        elif len(words) == 2 and words[0] == "CPUS" and words[1].isdigit():
            cpus = int(words[1])
        elif len(words) == 3 and words[0] == "NIC":
            nics[words[1]] = words[2].lower()
        elif words == ["KVMLAB-FACTS-END"]:
            break
    if mem is None or cpus is None:
        raise OperationError("the console output has no MEM or CPUS line after KVMLAB-BOOT-OK")
    return GuestFacts(mem, cpus, nics)
