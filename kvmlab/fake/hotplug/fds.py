"""Descriptors passed over QMP: ``getfd``, ``closefd``, and ``netdev_add type=tap,fd=NAME``.

A client sends a descriptor with ``SCM_RIGHTS`` on the QMP socket (the chardev's
``recvmsg`` keeps the last ones received, as QEMU's socket chardev does), then
``getfd {"fdname": N}`` names it; ``netdev_add`` of a tap with ``fd=N`` takes it out
of the table (QEMU's ``monitor_fd_param``), so a later ``closefd`` of ``N`` fails, and
refuses a descriptor that is no tap device (``TUNGETIFF``), as QEMU does.
The names live in :class:`~kvmlab.fake.host.Taps`, which closes what is left at exit.
A migration into or out of ``fd:NAME`` takes its descriptor the same way
(:func:`open_uri`, which also opens QEMU 10.0's ``file:PATH``). Errors use QEMU's
wording. Imported by the first of these commands only.
"""

from __future__ import annotations

import fcntl
import os

from kvmlab.fake.errors import QmpCommandError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from kvmlab.fake.machine_view import MachineView

__all__ = ["check_tap", "closefd", "getfd", "open_uri", "take_fd"]

#: ``TUNGETIFF``: what QEMU asks a tap descriptor before it uses it.
_TUNGETIFF = 0x800454D2


def getfd(m: MachineView, arguments: dict[str, object]) -> object:
    name = str(arguments["fdname"])
    if name[:1].isdigit():
        raise QmpCommandError("Parameter 'fdname' expects a name not starting with a digit")
    if not m.scm_fds:
        raise QmpCommandError("No file descriptor supplied via SCM_RIGHTS")
    fd = m.scm_fds.pop()
    named = m.taps.named
    if name in named:  # QEMU replaces a name's descriptor, closing the old one
        os.close(named[name])
    named[name] = fd
    m.log("fd", action="getfd", fdname=name)
    return {}


def closefd(m: MachineView, arguments: dict[str, object]) -> object:
    name = str(arguments["fdname"])
    fd = m.taps.named.pop(name, None)
    if fd is None:
        raise QmpCommandError(f"File descriptor named '{name}' not found")
    os.close(fd)
    m.log("fd", action="closefd", fdname=name)
    return {}


def take_fd(m: MachineView, name: str) -> int:
    """The descriptor ``name`` (a getfd name, or a number this process has open), taken."""
    if name[:1].isdigit():
        if not name.isdigit():
            raise QmpCommandError(f"Invalid file descriptor number '{name}'")
        fd = int(name)
        try:
            os.fstat(fd)
        except OSError as err:
            raise QmpCommandError(f"Can't use file descriptor {fd}: {err.strerror}") from None
        return fd
    fd_or_none = m.taps.named.pop(name, None)
    if fd_or_none is None:
        raise QmpCommandError(f"File descriptor named '{name}' has not been found")
    return fd_or_none


def open_uri(m: MachineView, uri: str, write: bool) -> int:
    """The descriptor of ``fd:NAME`` (taken from the ``getfd`` table) or ``file:PATH``.

    :raise QmpCommandError: an unknown descriptor name, or a file that cannot be opened.
    """
    if uri.startswith("fd:"):
        return take_fd(m, uri[3:])
    path = uri[5:].split(",", 1)[0]
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC if write else os.O_RDONLY
    try:
        return os.open(path, flags | os.O_CLOEXEC, 0o660)
    except OSError as err:
        raise QmpCommandError(f"Could not open '{path}': {err.strerror}") from None


def check_tap(fd: int) -> None:
    """Refuse (and close) a descriptor that is no tap device, as QEMU's tap backend does."""
    try:
        fcntl.ioctl(fd, _TUNGETIFF, bytes(40))
    except OSError as err:
        os.close(fd)
        raise QmpCommandError(f"Unable to query TUNGETIFF on FD {fd}: {err.strerror}") from None
