"""Tap NICs on the host: check or run their up-scripts before ready, down-scripts at exit.

kvmlab deletes its per-start scripts right after the start returns, so QEMU
(and the fake) must have run or checked them by the time it is ready. By
default nothing runs: the script must be an executable file and ``would run``
is logged. As root with ``KVMLAB_FAKE_TAP=run`` a real tap device is created
through ``/dev/net/tun`` and the scripts run, so kvmlab's tap tests see real
interfaces. This is also where ``netdev_add`` of a tap will start its backend.
"""

from __future__ import annotations

import fcntl
import os
import struct

from kvmlab.fake.errors import FakeError
from kvmlab.fake.host import spawn_wait

TYPE_CHECKING = False
if TYPE_CHECKING:
    from kvmlab.fake.config import NetBackend
    from kvmlab.fake.eventlog import EventLog
    from kvmlab.fake.faults import Faults

__all__ = ["Taps", "open_tap"]

_TUNSETIFF = 0x400454CA
_IFF_TAP = 0x0002
_IFF_NO_PI = 0x1000
_IFF_VNET_HDR = 0x4000


def open_tap(backend: NetBackend, fallback: str) -> tuple[int | None, str]:
    """Create a real tap device, so an up-script can configure it.

    Where ``/dev/net/tun`` cannot be used (a container without ``CAP_NET_ADMIN``)
    the script still runs, with a ``tapN`` name and no device behind it.
    """
    flags = _IFF_TAP | _IFF_NO_PI | (_IFF_VNET_HDR if backend.vnet_hdr else 0)
    name = (backend.ifname or "tap%d").encode()
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR)
    except OSError:
        return None, fallback
    try:
        result = fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH22x", name, flags))
    except OSError:
        os.close(fd)
        return None, fallback
    return fd, result[:16].rstrip(b"\0").decode()


class Taps:
    """The tap backends a VM process started: ``(fd, name, downscript)`` each.

    :param faults: ``tap_run`` decides whether scripts really run.
    :param log: the event log (``script`` and ``tap`` events).
    """

    def __init__(self, faults: Faults, log: EventLog) -> None:
        self.faults = faults
        self.log = log
        self.started: list[tuple[int | None, str, str | None]] = []

    def start(self, backend: NetBackend) -> None:
        """Check or run a tap NIC's host side before ready, as QEMU does."""
        if backend.kind != "tap":
            return
        if backend.fd is not None:
            try:
                os.fstat(backend.fd)
            except OSError as err:
                raise FakeError(
                    f"{backend.id}: Can't use file descriptor {backend.fd}: {err.strerror}",
                    backend.where,
                ) from None
            self.log("tap", netdev=backend.id, fd=backend.fd)
            return
        index = len(self.started)
        fd, tap = None, backend.ifname or f"tap{index}"
        if self.faults.tap_run:
            fd, tap = open_tap(backend, tap)
        self.started.append((fd, tap, backend.downscript))
        script = backend.script
        if script is None:
            return
        if self.faults.tap_run:
            status = spawn_wait([script, tap])
            self.log("script", action="run", script=script, tap=tap, status=status)
        else:
            runnable = os.path.isfile(script) and os.access(script, os.X_OK)
            status = 0 if runnable else 256  # QEMU's child exits 1 when exec fails
            self.log(
                "script",
                action="would run",
                script=script,
                tap=tap,
                message=f"would run {script} {tap}",
                runnable=runnable,
            )
        if status != 0:
            raise FakeError(f"network script {script} failed with status {status}", backend.where)

    def close(self) -> None:
        """At exit: run the down-scripts (``KVMLAB_FAKE_TAP=run`` only), close the devices."""
        for fd, tap, downscript in self.started:
            if downscript is not None and self.faults.tap_run:
                spawn_wait([downscript, tap])
            if fd is not None:
                os.close(fd)
