"""What a fake VM process does to its host besides sockets: files, signals, scripts, taps.

QEMU checks its pidfile, disks, kernel, initrd and ``-runas`` user before it
is ready, and reports each with its own wording; these checks, the signal
numbers the process handles and the helpers for running scripts are plain
functions here so the machine's start-up reads as a list of steps in QEMU's
order. ``_signal`` is used instead of ``signal``, whose enums cost ~5 ms.

Tap NICs belong here too (:class:`Taps`): kvmlab deletes its per-start scripts
right after the start returns, so QEMU (and the fake) must have run or checked
them by the time it is ready. By default nothing runs: the script must be an
executable file and ``would run`` is logged. As root with ``KVMLAB_FAKE_TAP=run``
a real tap device is created through ``/dev/net/tun`` and the scripts run, so
kvmlab's tap tests see real interfaces. A tap kvmlab hotplugs arrives as a
descriptor (``getfd``, :mod:`kvmlab.fake.hotplug.fds`): ``named`` holds the names not yet
used, ``passed`` the descriptors ``netdev_add`` took (closed by ``netdev_del``).
"""

from __future__ import annotations

# ``signal`` builds its enums at import (~5 ms); the C module has the same functions.
import _signal  # type: ignore[import-not-found]
import os
import pwd

from kvmlab.fake.errors import FakeError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from kvmlab.fake.cmdline.config import Config, NetBackend
    from kvmlab.fake.faults import EventLog, Faults

__all__ = [
    "JOB_SIGNALS",
    "SIGABRT",
    "TERMINATING_SIGNALS",
    "Taps",
    "check_boot_files",
    "check_file",
    "check_user",
    "ignore_signal",
    "open_tap",
    "spawn_wait",
    "unlink",
    "write_pidfile",
]

_SIGHUP: int = _signal.SIGHUP
_SIGINT: int = _signal.SIGINT
_SIGTERM: int = _signal.SIGTERM
SIGABRT: int = _signal.SIGABRT
#: QEMU exits cleanly on these (``terminating on signal N``).
TERMINATING_SIGNALS = (_SIGTERM, _SIGINT, _SIGHUP)
#: Ignored by Python or by a daemon; reset to default for the scripts it runs.
JOB_SIGNALS = (_signal.SIGTSTP, _signal.SIGTTOU, _signal.SIGTTIN)
_RESET_FOR_CHILDREN: tuple[int, ...] = (_signal.SIGPIPE, _signal.SIGXFSZ, *JOB_SIGNALS)

_TUNSETIFF = 0x400454CA
_IFF_TAP = 0x0002
_IFF_NO_PI = 0x1000
_IFF_VNET_HDR = 0x4000


def ignore_signal(signum: int, frame: object) -> None:
    """Python-level handler: the byte on the wakeup fd does the work."""


def unlink(path: str) -> None:
    """Remove ``path`` if it is there; a file that cannot go is left alone."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError:
        pass


def spawn_wait(argv: list[str]) -> int:
    """Run a script like QEMU's ``launch_script``: fork, exec, wait; the raw wait status."""
    try:
        pid = os.posix_spawn(argv[0], argv, os.environ, setsigdef=_RESET_FOR_CHILDREN)
    except OSError:
        return 256  # QEMU's child does _exit(1) when execv fails
    _, status = os.waitpid(pid, 0)
    return status


def write_pidfile(path: str) -> int:
    """Create, lock (``lockf``, as QEMU) and fill the pidfile; the descriptor holding the lock."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as err:
        raise FakeError(
            f"cannot create PID file: Could not create '{path}': {err.strerror}"
        ) from None
    try:
        os.lockf(fd, os.F_TLOCK, 0)  # what QEMU calls; no ``fcntl`` import (~0.2 ms)
    except OSError as err:
        os.close(fd)
        raise FakeError(f"cannot create PID file: Cannot lock pid file: {err.strerror}") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def check_file(path: str, where: str, writable: bool) -> None:
    """A disk image must open (read-write unless read-only), as QEMU's block layer asks."""
    try:
        fd = os.open(path, os.O_RDWR if writable else os.O_RDONLY)
    except OSError as err:
        raise FakeError(f"Could not open '{path}': {err.strerror}", where) from None
    os.close(fd)


def check_boot_files(cfg: Config) -> None:
    """``-kernel`` and ``-initrd`` must be readable, with QEMU's loader messages."""
    if cfg.kernel is not None:
        try:
            os.close(os.open(cfg.kernel, os.O_RDONLY))
        except OSError as err:
            message = f"qemu: could not open kernel file '{cfg.kernel}': {err.strerror}"
            raise FakeError(message, raw=True) from None
    if cfg.initrd is not None:
        try:
            os.close(os.open(cfg.initrd, os.O_RDONLY))
        except OSError as err:
            message = (
                f"qemu: error reading initrd {cfg.initrd}: Failed to open file "
                f"\u201c{cfg.initrd}\u201d: open() failed: {err.strerror}"
            )
            raise FakeError(message, raw=True) from None


def check_user(user: str, where: str) -> None:
    """``-runas``/``-run-with user=``: a known user or ``uid:gid`` (not applied)."""
    try:
        pwd.getpwnam(user)
        return
    except KeyError:
        pass
    uid, sep, gid = user.partition(":")
    if not (sep and uid.isdigit() and gid.isdigit()):
        raise FakeError(f'User "{user}" doesn\'t exist (and is not <uid>:<gid>)', where)


# --------------------------------------------------------------------------- taps


def open_tap(backend: NetBackend, fallback: str) -> tuple[int | None, str]:
    """Create a real tap device, so an up-script can configure it.

    Where ``/dev/net/tun`` cannot be used (a container without ``CAP_NET_ADMIN``)
    the script still runs, with a ``tapN`` name and no device behind it.
    """
    # Only as root with KVMLAB_FAKE_TAP=run: not worth ~0.5 ms at every start.
    import fcntl  # noqa: PLC0415
    import struct  # noqa: PLC0415

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
        #: ``getfd`` names -> descriptors, and netdev ids -> the descriptors they took.
        self.named: dict[str, int] = {}
        self.passed: dict[str, int] = {}
        #: Netdev id -> index in ``started``.
        self.by_netdev: dict[str, int] = {}

    def release(self, netdev: str) -> None:
        """``netdev_del`` of a tap: close its descriptor (the tap goes with it)."""
        fd = self.passed.pop(netdev, None)
        if fd is not None:
            os.close(fd)
        index = self.by_netdev.pop(netdev, None)
        if index is not None:  # a tap made at start: QEMU closes it the same way
            start_fd, tap, downscript = self.started[index]
            if start_fd is not None:
                os.close(start_fd)
            self.started[index] = (None, tap, downscript)

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
        self.by_netdev[backend.id] = len(self.started)
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
        for fd in (*self.named.values(), *self.passed.values()):
            os.close(fd)
        self.named.clear()
        self.passed.clear()
