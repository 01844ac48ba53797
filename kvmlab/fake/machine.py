"""One fake VM process: its state, its start in QEMU's order, its run state, its end.

:class:`Machine` is what a QEMU process is to kvmlab: it takes a parsed
:class:`~kvmlab.fake.cmdline.config.Config`, creates the pidfile, sockets and files
(or fails with QEMU's message and removes what it created), tells a
``-daemonize`` parent it is ready, and then serves its event loop until
``quit``, a guest power-off or a signal. It holds the state every command acts
on (run status, the device list, the chardevs) and the run-state transitions
(``stop``, ``cont``, power button, reset, shutdown) with their QMP events;
the protocols (:mod:`~kvmlab.fake.monitor.qmp`, :mod:`~kvmlab.fake.monitor.hmp`), the guest
(:mod:`~kvmlab.fake.guest`) and the host work (:mod:`~kvmlab.fake.host`: files,
signals, taps) are delegated.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]
import os
import select
import sys
import time

from kvmlab.fake import host
from kvmlab.fake.chardevs import Chardev
from kvmlab.fake.cmdline.pci import root_address
from kvmlab.fake.errors import FakeError, Shutdown
from kvmlab.fake.guest.boot import Guest
from kvmlab.fake.host import Taps
from kvmlab.fake.loop import EventLoop
from kvmlab.fake.monitor.hmp import HumanMonitor
from kvmlab.fake.monitor.qmp import QmpMonitor

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn

    from kvmlab.fake.cmdline.config import BlockDevice, ChardevSpec, Config, Nic
    from kvmlab.fake.faults import EventLog, Faults
    from kvmlab.fake.machine_view import IncomingSide, OutgoingSide
    from kvmlab.fake.profiles import Profile

__all__ = ["Machine"]


class Machine:
    """One fake VM process: files and sockets from a :class:`Config`, then the loop.

    :param cfg: the parsed command line.
    :param profile: the QEMU imitated (version strings, recorded texts).
    :param faults: injected misbehaviour.
    :param log: the event log.
    :param prog: program name for messages.
    :ivar status: QEMU's run state: ``prelaunch``, ``running``, ``paused``, ``shutdown``,
        and for migration ``inmigrate``, ``finish-migrate``, ``postmigrate``.
    :ivar devices: the guest's devices in the order it enumerates them; the
        command line's NICs at start; QMP hotplug adds and removes here.
    """

    def __init__(
        self, cfg: Config, profile: Profile, faults: Faults, log: EventLog, prog: str
    ) -> None:
        self.cfg = cfg
        self.profile = profile
        self.faults = faults
        self.log = log
        self.prog = prog
        self.status = "inmigrate" if cfg.incoming is not None else "prelaunch"
        #: The migration sides (:mod:`kvmlab.fake.migration.outgoing`,
        #: :mod:`kvmlab.fake.migration.incoming`).
        self.outgoing: OutgoingSide | None = None
        self.incoming: IncomingSide | None = None
        self.migrate_caps: dict[str, bool] | None = None
        self.migrate_params: dict[str, object] | None = None
        self.devices: list[Nic] = list(cfg.nics)
        #: The guest's virtio disks; the guest probes the PCI bus in slot order, a
        #: disk behind a root port at its port's (the ``if=virtio`` drives, without an
        #: ``addr``, come first).
        self.disks: list[BlockDevice] = sorted(
            cfg.disks,
            key=lambda disk: (disk.slot is not None, root_address(disk, cfg.root_ports)),
        )
        for index, disk in enumerate(self.disks):
            disk.index = index
        #: ``blockdev-add`` nodes: node-name -> ``(path, writable)``.
        self.block_nodes: dict[str, tuple[str, bool]] = {}
        #: Netdev id -> kind once a hotplug command asked (:mod:`kvmlab.fake.hotplug.devices`).
        self.netdevs: dict[str, str] | None = None
        #: Device ids a ``device_del`` asked the guest to eject.
        self.pending_unplug: list[str] = []
        self.scm_fds: list[int] = []
        self.loop = EventLoop()
        self.guest = Guest(self)
        self.chardevs: list[Chardev] = []
        #: The first ``-serial``: the guest's console, ttyS0.
        self.serial: Chardev | None = None
        self.qmp_monitors: list[QmpMonitor] = []
        self.pid_fd: int | None = None
        self.taps = Taps(faults, log)
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        # Signals become bytes on a pipe the loop selects on; the previous
        # handlers come back at cleanup (main() may run inside a test process).
        self.old_wakeup_fd: int = _signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        self.old_handlers: dict[int, object] = {
            signum: _signal.signal(signum, host.ignore_signal)
            for signum in host.TERMINATING_SIGNALS
        }
        self.loop.watch(self.wake_r, self._on_signal)

    @property
    def nics(self) -> list[Nic]:
        """The guest's network cards, in enumeration order (``eth0``, ``eth1``...)."""
        return self.devices

    # -- life cycle

    def run(self, ready_fd: int | None = None) -> int:
        """Start, tell the waiting parent, serve until the VM ends.

        :param ready_fd: the ``-daemonize`` pipe: a zero byte on it means ready.
        :return: the process exit status.
        """
        try:
            self._setup(ready_fd)
            if ready_fd is not None:
                self._detach(ready_fd)
            if self.status == "prelaunch" and not self.cfg.start_paused:
                self.resume(quiet=True)
            self.log("ready", status=self.status)
            if self.faults.crash_after is not None:
                self.loop.after(self.faults.crash_after, self._crash)
            self.loop.run()
        except FakeError as err:
            print(err.render(self.prog), file=sys.stderr)
            self.log("fail", message=err.render(self.prog))
            self._cleanup(1, "start failed")
            return 1
        except Shutdown as stop:
            self._cleanup(stop.code, stop.reason)
            return stop.code

    def _setup(self, ready_fd: int | None) -> None:
        """Everything QEMU does before it is ready, in QEMU's order."""
        cfg = self.cfg
        if self.faults.slow_start:
            self.loop.sleep(self.faults.slow_start)
        if cfg.pidfile is not None:
            self.pid_fd = host.write_pidfile(cfg.pidfile)
        if self.faults.hang_start:
            self._hang(ready_fd)
        if cfg.runas is not None:
            host.check_user(*cfg.runas)
        for spec in cfg.chardevs:
            self._open_chardev(spec)
        for backend in cfg.net_backends:
            self.taps.start(backend)
        for where, path, writable in cfg.drives:
            host.check_file(path, where, writable)
        host.check_boot_files(cfg)
        if cfg.chroot is not None and not os.path.isdir(cfg.chroot):
            raise FakeError("chroot failed")
        if cfg.incoming is not None:
            # Listening before the -daemonize parent exits: the caller may connect at once.
            from kvmlab.fake.migration.incoming import Incoming  # noqa: PLC0415 - migration targets only

            self.incoming = Incoming(self, cfg.incoming)
        for dev in self.chardevs:
            if dev.listener is not None and dev.spec.wait:
                dev.wait_for_client()

    def _open_chardev(self, spec: ChardevSpec) -> None:
        dev = Chardev(spec, self.loop, self.prog)
        self.chardevs.append(dev)
        serials = self.cfg.serials
        if serials and spec is serials[0]:
            self.serial = dev
        elif len(serials) > 1 and spec is serials[1]:
            # ttyS1: the guest command channel (imported only where there is one).
            from kvmlab.fake.guest.cmdchannel import CommandChannel  # noqa: PLC0415

            dev.frontend = CommandChannel(self, dev, self.guest)
        if spec.frontend == "qmp":
            monitor = QmpMonitor(self, dev)
            self.qmp_monitors.append(monitor)
            dev.frontend = monitor
        elif spec.frontend == "hmp":
            dev.frontend = HumanMonitor(self, dev)
        dev.open()

    def _detach(self, ready_fd: int) -> None:
        """QEMU's ``os_setup_post``: leave the caller's terminal, then say ready."""
        os.chdir("/")
        null = os.open(os.devnull, os.O_RDWR)
        sys.stdout.flush()
        sys.stderr.flush()
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.close(null)
        try:
            os.write(ready_fd, b"\0")
        except OSError:
            os.close(ready_fd)
            raise Shutdown(1, "parent gone before ready") from None
        if self.faults.crash_after == 0:
            # "Dies at once": the pipe stays open until the crash closes it, and the
            # parent returns only at its end, so the caller always finds the daemon dead
            # (else whether it looked before or after the crash was up to the scheduler).
            return
        os.close(ready_fd)

    def _cleanup(self, code: int, reason: str) -> None:
        """Close and remove what this process created, like QEMU at exit."""
        self.log("exit", code=code, reason=reason)
        for side in (self.outgoing, self.incoming):
            if side is not None:
                side.close()
        for dev in self.chardevs:
            dev.close()
        for dev in self.chardevs:
            if dev.bound is not None:
                host.unlink(dev.bound)
        self.taps.close()
        if self.pid_fd is not None and self.cfg.pidfile is not None:
            host.unlink(self.cfg.pidfile)
            os.close(self.pid_fd)
        _signal.set_wakeup_fd(self.old_wakeup_fd)
        for signum, handler in self.old_handlers.items():
            _signal.signal(signum, handler)
        os.close(self.wake_r)
        os.close(self.wake_w)
        self.loop.close()

    # -- signals, hanging, crashing

    def _on_signal(self) -> None:
        try:
            received = os.read(self.wake_r, 64)
        except BlockingIOError:
            return
        for signum in received:
            if signum in host.TERMINATING_SIGNALS:
                message = f"{self.prog}: terminating on signal {signum}"
                print(message, file=sys.stderr)
                self.log("signal", signal=signum)
                self.event("SHUTDOWN", {"guest": False, "reason": "host-signal"})
                raise Shutdown(0, f"signal {signum}")

    def _hang(self, ready_fd: int | None) -> NoReturn:
        """``KVMLAB_FAKE_HANG_START``: never get ready; exit when the parent is gone."""
        self.log("hang")
        poller = select.poll()
        poller.register(self.wake_r, select.POLLIN)
        if ready_fd is not None:
            poller.register(ready_fd, 0)  # POLLERR comes when the reading parent is gone
        while True:
            for fd, _events in poller.poll():
                if fd == self.wake_r:
                    self._on_signal()
                else:
                    raise Shutdown(1, "parent gone while hanging")

    def _crash(self) -> NoReturn:
        """``KVMLAB_FAKE_CRASH_AFTER``: die like an aborting QEMU, leaving files behind."""
        import resource  # noqa: PLC0415 - needed only here; ~0.2 ms at every start otherwise

        self.log("crash", after=self.faults.crash_after)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        _signal.signal(host.SIGABRT, _signal.SIG_DFL)
        os.kill(os.getpid(), host.SIGABRT)
        os._exit(134)  # pragma: no cover - not reached

    # -- run state

    def event(self, name: str, data: dict[str, object] | None = None) -> None:
        """Send a QMP event to every negotiated QMP client."""
        now = time.time()
        seconds = int(now)
        event: dict[str, object] = {
            "timestamp": {"seconds": seconds, "microseconds": int((now - seconds) * 1e6)},
            "event": name,
        }
        if data is not None:
            event["data"] = data
        for monitor in self.qmp_monitors:
            monitor.send_event(event)

    def console(self, text: str) -> None:
        """Write to the guest's serial console (and its log file)."""
        if self.serial is not None:
            self.serial.send(text.encode())

    def resume(self, quiet: bool = False) -> None:
        """Run the vCPUs (``cont``, or start without ``-S``)."""
        if self.status == "running":
            return
        if self.incoming is not None and self.incoming.waiting():
            self.incoming.autostart = True  # QEMU: ``cont`` during inmigrate runs it once in
            return
        self.status = "running"
        if not quiet:
            self.event("RESUME")
        self.guest.vcpus_started()

    def stop(self) -> None:
        """Pause the vCPUs (``stop``)."""
        if self.incoming is not None and self.incoming.waiting():
            self.incoming.autostart = False
        if self.status == "running":
            self.status = "paused"
            self.event("STOP")

    def powerdown(self) -> None:
        """Press the ACPI power button (``system_powerdown``)."""
        self.event("POWERDOWN")
        self.guest.power_button()

    def reset(self) -> None:
        """``system_reset``: the guest reboots, or the VM ends with ``-no-reboot``."""
        self.event("RESET", {"guest": False, "reason": "host-qmp-system-reset"})
        if self.cfg.no_reboot:
            self.shutdown(guest=False, reason="host-qmp-system-reset")
        self.guest.reset()

    def shutdown(self, guest: bool, reason: str) -> None:
        """The VM shuts down: exit, or stay paused when the guest did it under ``-no-shutdown``."""
        self.event("SHUTDOWN", {"guest": guest, "reason": reason})
        if self.cfg.no_shutdown and guest:
            self.status = "shutdown"
            self.event("STOP")
            return
        raise Shutdown(0, reason)

    def quit(self) -> NoReturn:
        """End the process cleanly (after ``quit``'s reply)."""
        raise Shutdown(0, "quit")

    def host_quit(self) -> NoReturn:
        """The monitor's ``quit``: the ``SHUTDOWN`` event, then exit."""
        self.event("SHUTDOWN", {"guest": False, "reason": "host-qmp-quit"})
        self.quit()
