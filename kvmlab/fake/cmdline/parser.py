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

from kvmlab.fake.cmdline import chardev, net
from kvmlab.fake.cmdline.config import BlockDevice, Config
from kvmlab.fake.cmdline.parse_state import ParseState
from kvmlab.fake.cmdline.qemuopts import parse_bool, parse_int, parse_opts, parse_size
from kvmlab.fake.errors import EarlyExit, FakeError
from kvmlab.fake.profiles import NO_ARG_OPTIONS, load_profile

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from kvmlab.fake.cmdline.parse_state import OptionHandler
    from kvmlab.fake.profiles import Profile

__all__ = ["FLAGS", "OPTIONS", "Parser", "parse_argv"]

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
            if handler is not None:
                handler(self, value, f"{arg} {value}")
        if self.help_request is not None:
            raise EarlyExit(0, self.help_request)
        self._finish()
        return self.cfg

    def _finish(self) -> None:
        """Cross-option checks QEMU makes before it touches any file."""
        cfg = self.cfg
        if cfg.kernel is None:
            if cfg.initrd is not None:
                raise FakeError("-initrd only allowed with -kernel option")
            if cfg.append is not None:
                raise FakeError("-append only allowed with -kernel option")
        for nic in cfg.nics:
            if nic.netdev is None:
                continue
            owner = "virtio-net-device" if nic.model.startswith("virtio-net") else nic.model
            if nic.netdev not in self.netdev_ids:
                raise FakeError(
                    f"Property '{owner}.netdev' can't find value '{nic.netdev}'", nic.where
                )
        if cfg.daemonize:
            if cfg.nographic:
                raise FakeError("-nographic cannot be used with -daemonize")
            for spec in cfg.chardevs:
                if spec.backend == "stdio" and spec.frontend:
                    raise FakeError("cannot use stdio with -daemonize", spec.where)
        for backend in cfg.net_backends:
            if backend.id not in self.used_netdevs and backend.id in self.netdev_ids:
                cfg.warnings.append(f"netdev {backend.id} has no peer")


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
    if "size" in opts:
        size = parse_size(opts["size"], where)
        if size:
            p.cfg.memory = size


def _smp(p: ParseState, value: str, where: str) -> None:
    keys = "cpus maxcpus sockets dies clusters cores threads books drawers modules"
    opts = parse_opts(value, where, "cpus", frozenset(keys.split()))
    numbers = {k: parse_int(v, f"Parameter 'smp.{k}' expects integer") for k, v in opts.items()}
    topology = ("sockets", "dies", "cores", "threads")
    if "cpus" in numbers:
        cpus = numbers["cpus"]
    else:
        cpus = 1
        for key in topology:
            cpus *= numbers.get(key, 1)
    maxcpus = numbers.get("maxcpus", cpus)
    if all(key in numbers for key in ("sockets", "cores", "threads")):
        s, d, c, t = (numbers.get(key, 1) for key in topology)
        if s * d * c * t != maxcpus:
            raise FakeError(
                "Invalid CPU topology: product of the hierarchy must match maxcpus: "
                f"sockets ({s}) * dies ({d}) * cores ({c}) * threads ({t}) "
                f"!= maxcpus ({maxcpus})"
            )
    if cpus > maxcpus:
        raise FakeError(f"maxcpus must be equal to or greater than smp ({cpus} > {maxcpus})")
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
            raise FakeError(
                "unsupported machine type\nUse -machine help to list supported machines"
            )
        p.cfg.machine = kind
    if "accel" in opts:
        p.cfg.accel = opts["accel"].split(":")[0]
    if "acpi" in opts:
        if opts["acpi"] not in ("on", "off", "auto"):
            raise FakeError(f"Parameter 'acpi' does not accept value '{opts['acpi']}'")
        p.cfg.acpi = opts["acpi"] != "off" and p.cfg.acpi


def _accel(p: ParseState, value: str, where: str) -> None:
    accel = parse_opts(value, where, "accel").get("accel", "tcg")
    if accel in ("help", "?"):
        raise EarlyExit(0, "Accelerators supported in QEMU binary:\ntcg\nkvm\n")
    p.cfg.accel = accel


def _boot(p: ParseState, value: str, where: str) -> None:
    opts = parse_opts(value, where, "order")
    for key in ("order", "once"):
        for device in opts.get(key, ""):
            if device not in _BOOT_DEVICES:
                raise FakeError(f"Invalid boot device '{device}'")


def _cpu(p: ParseState, value: str, where: str) -> None:
    if value.split(",", 1)[0] in ("help", "?"):
        p.ask_help_text("Available CPUs:\nx86 host\nx86 max\nx86 qemu64\nx86 kvm64\n")


def _uuid(p: ParseState, value: str, where: str) -> None:
    groups = value.split("-")
    if [len(g) for g in groups] != [8, 4, 4, 4, 12] or not all(
        all(c in "0123456789abcdefABCDEF" for c in g) for g in groups
    ):
        raise FakeError("failed to parse UUID string: wrong format", where)


# --------------------------------------------------------------------------- disks, boot files


def _drive(p: ParseState, value: str, where: str) -> None:
    opts = parse_opts(value, where)
    ident = opts.get("id")
    if ident is not None and ident in p.cfg.named_drives:
        raise FakeError(f"Duplicate ID '{ident}' for drive", where)
    if opts.get("file"):
        readonly = parse_bool(opts, "readonly", False, where)
        p.cfg.drives.append((where, opts["file"], not readonly))
        if opts.get("if") == "virtio" and opts.get("media", "disk") == "disk":
            p.cfg.disks.append(BlockDevice(opts["file"], not readonly, None, where))
        elif opts.get("if") == "none" and ident is not None:
            # A drive for a -device (virtio-blk-pci, scsi-hd) to name.
            p.cfg.named_drives[ident] = (opts["file"], not readonly)


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
    "drive": _drive,
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
}
