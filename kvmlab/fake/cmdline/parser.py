"""The QEMU command line: walk the options, one handler per option, into a Config.

:func:`parse_argv` is the fake's front door: it refuses what the imitated QEMU
refuses, with QEMU's words, before any file or socket exists. The walk and the
cross-option checks live here with the handlers for the machine, memory, CPUs,
disks, boot files and privileges; character devices and monitors are in
:mod:`kvmlab.fake.cmdline.chardev`, networking in :mod:`kvmlab.fake.cmdline.net`.
Each of those modules exports a table ``OPTIONS`` of ``handler(parser, value,
where)`` functions, merged into :data:`OPTIONS` here, so a new option is one
function and one table row.
"""

from __future__ import annotations

import os

from kvmlab.fake.cmdline import chardev, drive, net
from kvmlab.fake.cmdline.config import Config
from kvmlab.fake.cmdline.parse_state import ParseState
from kvmlab.fake.cmdline.qemuopts import parse_bool, parse_int, parse_opts, parse_size
from kvmlab.fake.errors import EarlyExit, FakeError
from kvmlab.fake.profiles import NO_ARG_OPTIONS, load_profile

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from kvmlab.fake.cmdline.parse_state import OptionHandler
    from kvmlab.fake.profiles import Profile

__all__ = ["FLAGS", "OPTIONS", "PHASES", "Parser", "parse_argv"]

#: When QEMU acts on an option, as a phase of ``qemu_init`` after the option walk (0,
#: the walk itself: syntax, ``-m``, ``-name``...). Measured against QEMU 7.2 and 10.0 by
#: combining two refused options: the error reported is the earlier phase's, and the
#: first on the command line within a phase. Phases without an option are checks:
#: 5 the accelerators, 8 the guest RAM, 9 drives no controller takes.
PHASES = {"rtc": 1, "machine": 2, "M": 2, "drive": 3, "smp": 4, "netdev": 6, "net": 6}
PHASES.update({"nic": 6, "cpu": 7, "device": 10})
_ACCEL_PHASE, _MEMORY_PHASE = 5, 8
#: ``-m slots=`` without ``maxmem=``: after the CPU topology, before the accelerators.
_SLOTS_PHASE = 4.5

_BOOT_DEVICES = frozenset("abcdn")


class Parser(ParseState):
    """Turns QEMU options into a :class:`Config`: the walk, then the cross-option checks."""

    def parse(self) -> Config:
        """Walk the options like QEMU's ``qemu_init``: one handler per option, then checks.

        :raise EarlyExit: for ``-help``, ``-version`` and the ``help`` values.
        :raise FakeError: for what QEMU refuses.
        """
        argv = self.cfg.argv
        index = 0
        while index < len(argv):
            arg = argv[index]
            index += 1
            if not arg.startswith("-") or arg == "-":
                _disk(self, arg, arg)  # QEMU takes a bare argument as the first disk image
                continue
            name = arg[2:] if arg.startswith("--") else arg[1:]
            if not self.profile.accepts(name):
                raise FakeError(f"{arg}: invalid option")
            if name in NO_ARG_OPTIONS:
                if name in ("h", "help"):
                    raise EarlyExit(0, self.profile.text("help"))
                if name == "version":
                    raise EarlyExit(0, self.profile.text("version"))
                flag = FLAGS.get(name)
                if flag is not None:
                    flag(self.cfg)
                continue
            if index >= len(argv):
                raise FakeError(f"{arg}: requires an argument")
            value = argv[index]
            index += 1
            handler = OPTIONS.get(name)
            phase = PHASES.get(name, 0)
            if handler is None:
                continue
            if phase and not _asks_help(value):
                self.defer(phase, _bind(handler, self, value, f"{arg} {value}"))
            else:
                handler(self, value, f"{arg} {value}")
        if self.help_request is not None:
            raise EarlyExit(0, self.help_request)
        self._finish()
        return self.cfg

    def _finish(self) -> None:
        """Cross-option checks, then the options QEMU acts on after the walk, in its order."""
        cfg = self.cfg
        if cfg.kernel is None:
            if cfg.initrd is not None:
                raise FakeError("-initrd only allowed with -kernel option")
            if cfg.append is not None:
                raise FakeError("-append only allowed with -kernel option")
        if cfg.daemonize:
            if cfg.nographic:
                raise FakeError("-nographic cannot be used with -daemonize")
            for spec in cfg.chardevs:
                if spec.backend == "stdio" and spec.frontend:
                    raise FakeError("cannot use stdio with -daemonize", spec.where)
        self.defer(_ACCEL_PHASE, self._check_accel)
        self.defer(_MEMORY_PHASE, self._check_memory)
        try:
            self.run_deferred()
        except FakeError as err:
            err.notices = cfg.notices
            raise
        # The guest sees NICs and disks in command-line order, whichever phase made them.
        argv = cfg.argv
        positions = {f"{argv[i]} {argv[i + 1]}": i for i in reversed(range(len(argv) - 1))}
        cfg.nics.sort(key=lambda nic: positions.get(nic.where, 0))
        cfg.disks.sort(key=lambda disk: positions.get(disk.where, 0))
        for backend in cfg.net_backends:
            if backend.id not in self.used_netdevs and backend.id in self.netdev_ids:
                cfg.warnings.append(f"netdev {backend.id} has no peer")

    def _check_accel(self) -> None:
        """``-machine accel=A:B``: QEMU reports each unknown name, fails when none is
        known, and says which one it fell back to when some were unknown."""
        known = self.profile.accelerators()
        names = self.accel_list or [self.cfg.accel]
        if not known:
            return
        unknown = [name for name in names if name not in known]
        valid = [name for name in names if name in known]
        if unknown and not valid:
            raise FakeError("\n".join(f"invalid accelerator {name}" for name in unknown))
        self.cfg.notices += [f"invalid accelerator {name}" for name in unknown]
        self.cfg.accel = valid[0]
        if unknown:
            self.cfg.notices.append(f"falling back to {valid[0]}")

    def _check_memory(self) -> None:
        """Guest RAM the host cannot give: the kernel's overcommit rule refuses one
        allocation larger than RAM plus swap (mode 0), or than the commit limit (mode 2)."""
        size = self.cfg.memory
        if size <= _ALWAYS_FITS:
            return
        limit = _host_memory_limit()
        if limit is not None and size > limit:
            machine = self.profile.machine_alias(self.cfg.machine or "")
            ram = "microvm.ram" if machine.startswith("microvm") else "pc.ram"
            raise FakeError(f"cannot set up guest memory '{ram}': Cannot allocate memory")


def _asks_help(value: str) -> bool:
    """``help`` or ``?`` as a value (``-machine help``, ``-device e1000,help``): answered
    during the walk, as QEMU does, never deferred."""
    return any(part in ("help", "?") or part.endswith("=help") for part in value.split(","))


def _refuse(message: str) -> Callable[[], None]:
    def refuse() -> None:
        raise FakeError(message)

    return refuse


def _bind(handler: OptionHandler, p: ParseState, value: str, where: str) -> Callable[[], None]:
    return lambda: handler(p, value, where)


#: Guest RAM below this is never checked against the host (no read of /proc at start).
_ALWAYS_FITS = 4 << 30


def _host_memory_limit() -> int | None:
    """The largest single allocation the kernel's overcommit policy grants, in bytes."""
    try:
        with open("/proc/sys/vm/overcommit_memory", encoding="ascii") as f:
            mode = f.read().strip()
        with open("/proc/meminfo", encoding="ascii") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f if line.strip()}
    except (OSError, ValueError, IndexError):
        return None
    if mode == "1":
        return None
    if mode == "2":
        return info.get("CommitLimit", 0) - info.get("Committed_AS", 0)
    return info.get("MemTotal", 0) + info.get("SwapTotal", 0)


def parse_argv(argv: Sequence[str], profile: Profile | None = None) -> Config:
    """Read a QEMU command line (without the program name) into a :class:`Config`.

    :param argv: the options, as kvmlab's executor passes them.
    :param profile: the QEMU to imitate; the default profile when ``None``.
    :raise FakeError: for anything that QEMU would refuse before opening a file.
    """
    profile = profile or load_profile()
    return Parser(profile, argv).parse()


# --------------------------------------------------------------------------- general


def _name(p: ParseState, value: str, where: str) -> None:
    allowed = frozenset({"guest", "process", "debug-threads"})
    p.cfg.name = parse_opts(value, where, "guest", allowed).get("guest")


def _memory(p: ParseState, value: str, where: str) -> None:
    opts = parse_opts(value, where, "size", frozenset({"size", "slots", "maxmem"}))
    if "slots" in opts and "maxmem" not in opts:
        p.defer(_SLOTS_PHASE, _refuse("slots specified but no max-size"))
    if "size" in opts:
        if opts["size"].startswith("-") and p.profile.version >= (9, 0, 0):
            raise FakeError(f"Value '{opts['size']}' is out of range for parameter 'size'", where)
        size = parse_size(opts["size"], where)
        if size:
            p.cfg.memory = size


def _smp(p: ParseState, value: str, where: str) -> None:
    keys = "cpus maxcpus sockets dies clusters cores threads books drawers modules"
    opts = parse_opts(value, where, "cpus", frozenset(keys.split()))
    numbers = {k: parse_int(v, f"Parameter 'smp.{k}' expects integer") for k, v in opts.items()}
    if any(number == 0 for number in numbers.values()):
        zero = "CPU topology parameters must be greater than zero"
        if p.profile.version >= (9, 0, 0):
            raise FakeError(f"Invalid CPU topology: {zero}")
        p.cfg.warnings.append(f"Deprecated CPU topology (considered invalid): {zero}")
        numbers = {k: v for k, v in numbers.items() if v}
    topology: tuple[str, ...] = ("sockets", "dies", "modules", "cores", "threads")
    if p.profile.version < (9, 1, 0):
        topology = ("sockets", "dies", "cores", "threads")
    if "cpus" in numbers:
        cpus = numbers["cpus"]
    else:
        cpus = 1
        for key in topology:
            cpus *= numbers.get(key, 1)
    maxcpus = numbers.get("maxcpus", cpus)
    levels = " * ".join(f"{key} ({numbers.get(key, 1)})" for key in topology)
    product = 1
    for key in topology:
        product *= numbers.get(key, 1)
    if all(key in numbers for key in ("sockets", "cores", "threads")) and product != maxcpus:
        raise FakeError(
            "Invalid CPU topology: product of the hierarchy must match maxcpus: "
            f"{levels} != maxcpus ({maxcpus})"
        )
    if cpus > maxcpus:
        raise FakeError(
            "Invalid CPU topology: maxcpus must be equal to or greater than smp: "
            f"{levels} == maxcpus ({maxcpus}) < smp_cpus ({cpus})"
        )
    machine = p.profile.machine_alias(p.cfg.machine or "")
    limit = p.profile.max_cpus(machine)
    if limit is not None and maxcpus > limit:
        raise FakeError(
            f"Invalid SMP CPUs {maxcpus}. The max CPUs supported by machine '{machine}' is {limit}"
        )
    p.cfg.cpus = max(cpus, 1)


def _machine(p: ParseState, value: str, where: str) -> None:
    opts = parse_opts(value, where, "type")
    kind = opts.get("type")
    if kind in ("help", "?"):
        p.ask_help("machine")
        return
    if kind is not None:
        machines = p.profile.machines()
        if machines and kind not in machines:
            quoted = f': "{kind}"' if p.profile.version >= (9, 0, 0) else ""
            raise FakeError(
                f"unsupported machine type{quoted}\nUse -machine help to list supported machines"
            )
        p.cfg.machine = kind
    if "accel" in opts:
        p.accel_list = opts["accel"].split(":")
        p.cfg.accel = p.accel_list[0]
    if "usb" in opts:
        p.cfg.usb = parse_bool(opts, "usb", False, where)
    if "acpi" in opts:
        if opts["acpi"] not in ("on", "off", "auto"):
            raise FakeError(f"Parameter 'acpi' does not accept value '{opts['acpi']}'")
        p.cfg.acpi = opts["acpi"] != "off" and p.cfg.acpi


def _accel(p: ParseState, value: str, where: str) -> None:
    accel = parse_opts(value, where, "accel").get("accel", "tcg")
    if accel in ("help", "?"):
        raise EarlyExit(
            0, p.profile.text("accel") or "Accelerators supported in QEMU binary:\ntcg\nkvm\n"
        )
    p.cfg.accel = accel


def _boot(p: ParseState, value: str, where: str) -> None:
    opts = parse_opts(value, where, "order")
    for key in ("order", "once"):
        for device in opts.get(key, ""):
            if device not in _BOOT_DEVICES:
                raise FakeError(f"Invalid boot device '{device}'")


def _cpu(p: ParseState, value: str, where: str) -> None:
    model = value.split(",", 1)[0]
    if model in ("help", "?"):
        p.ask_help_text(p.profile.text("cpu") or "Available CPUs:\nx86 host\nx86 max\n")
        return
    models = p.profile.cpu_models()
    if models and model not in models:
        raise FakeError(f"unable to find CPU model '{model}'")
    if model == "host" and p.cfg.accel != "kvm":
        raise FakeError("CPU model 'host' requires KVM or HVF")


def _rtc(p: ParseState, value: str, where: str) -> None:
    base = parse_opts(value, where, None).get("base")
    if base is None or base in ("utc", "localtime"):
        return
    # QEMU reads the date with sscanf: six numbers, else three; the rest is ignored.
    if _scan_numbers(base, "--T::") < 6 and _scan_numbers(base, "--") < 3:
        raise FakeError(
            "invalid datetime format\nvalid formats: '2006-06-17T16:01:21' or '2006-06-17'"
        )


def _scan_numbers(text: str, separators: str) -> int:
    """How many ``%d`` conversions ``sscanf`` makes with ``%d`` between ``separators``."""
    count, index = 0, 0
    for position in range(len(separators) + 1):
        while index < len(text) and text[index].isspace():
            index += 1
        start = index
        if index < len(text) and text[index] in "+-":
            index += 1
        digits = index
        while index < len(text) and text[index].isdigit():
            index += 1
        if index == digits:
            return count
        count += 1
        if position == len(separators):
            return count
        if index >= len(text) or text[index] != separators[position]:
            return count
        index += 1
        del start
    return count


def _uuid(p: ParseState, value: str, where: str) -> None:
    groups = value.split("-")
    if [len(g) for g in groups] != [8, 4, 4, 4, 12] or not all(
        all(c in "0123456789abcdefABCDEF" for c in g) for g in groups
    ):
        raise FakeError("failed to parse UUID string: wrong format", where)


# --------------------------------------------------------------------------- disks, boot files


def _disk(p: ParseState, value: str, where: str) -> None:
    p.cfg.drives.append((where, value, True))


def _cdrom(p: ParseState, value: str, where: str) -> None:
    p.cfg.drives.append((where, value, False))


def _kernel(p: ParseState, value: str, where: str) -> None:
    p.cfg.kernel = value


def _initrd(p: ParseState, value: str, where: str) -> None:
    p.cfg.initrd = value


def _append(p: ParseState, value: str, where: str) -> None:
    p.cfg.append = value


def _incoming(p: ParseState, value: str, where: str) -> None:
    if value != "defer" and not value.startswith(("unix:", "tcp:")):
        raise FakeError(f"unknown migration protocol: {value}", where)
    p.cfg.incoming = value


def _pidfile(p: ParseState, value: str, where: str) -> None:
    p.cfg.pidfile = os.path.abspath(value)


# --------------------------------------------------------------------------- privileges


def _runas(p: ParseState, value: str, where: str) -> None:
    p.cfg.runas = (value, where)


def _chroot(p: ParseState, value: str, where: str) -> None:
    p.cfg.chroot = value


def _run_with(p: ParseState, value: str, where: str) -> None:
    opts = parse_opts(value, where, None, frozenset({"chroot", "user", "async-teardown"}))
    if "chroot" in opts:
        p.cfg.chroot = opts["chroot"]
    if "user" in opts:
        p.cfg.runas = (opts["user"], where)


# --------------------------------------------------------------------------- flags


def _daemonize(cfg: Config) -> None:
    cfg.daemonize = True


def _paused(cfg: Config) -> None:
    cfg.start_paused = True


def _no_acpi(cfg: Config) -> None:
    cfg.acpi = False


def _no_reboot(cfg: Config) -> None:
    cfg.no_reboot = True


def _no_shutdown(cfg: Config) -> None:
    cfg.no_shutdown = True


def _enable_kvm(cfg: Config) -> None:
    cfg.accel = "kvm"


def _usb(cfg: Config) -> None:
    cfg.usb = True


def _nographic(cfg: Config) -> None:
    cfg.nographic = True


#: Options with an argument that the fake acts on; the profile decides which
#: options exist at all, and those not listed here are accepted and ignored.
OPTIONS: dict[str, OptionHandler] = {
    "name": _name,
    "m": _memory,
    "smp": _smp,
    "machine": _machine,
    "M": _machine,
    "accel": _accel,
    "boot": _boot,
    "drive": drive.drive_option,
    "rtc": _rtc,
    "hda": _disk,
    "hdb": _disk,
    "hdc": _disk,
    "hdd": _disk,
    "cdrom": _cdrom,
    "kernel": _kernel,
    "initrd": _initrd,
    "append": _append,
    "pidfile": _pidfile,
    "incoming": _incoming,
    **chardev.OPTIONS,
    **net.OPTIONS,
    "cpu": _cpu,
    "uuid": _uuid,
    "runas": _runas,
    "chroot": _chroot,
    "run-with": _run_with,
}

#: Options without an argument that change the configuration.
FLAGS: dict[str, Callable[[Config], None]] = {
    "daemonize": _daemonize,
    "S": _paused,
    "no-acpi": _no_acpi,
    "no-reboot": _no_reboot,
    "no-shutdown": _no_shutdown,
    "enable-kvm": _enable_kvm,
    "nographic": _nographic,
    "usb": _usb,
}
