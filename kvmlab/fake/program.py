"""The ``kvmlab-fake-kvm`` program: argv[0], ``--fake-profile``, daemonizing, exit status.

:func:`main` strings the pieces together the way QEMU's ``main`` does: read the
profile and the command line (errors before anything is created), read the
faults, print start-up warnings, then run a :class:`~kvmlab.fake.machine.Machine`
in the foreground or, with ``-daemonize``, in a grandchild whose readiness the
first process waits for, so the caller's exit status means "ready" or "failed".
The VM side is imported only once there is a VM to run.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]
import os
import sys

from kvmlab.fake.cmdline.parser import parse_argv
from kvmlab.fake.errors import EarlyExit, FakeError
from kvmlab.fake.faults import EventLog, Faults
from kvmlab.fake.host import JOB_SIGNALS
from kvmlab.fake.profiles import load_profile

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from kvmlab.fake.machine import Machine

__all__ = ["PROG", "main"]

PROG = "kvmlab-fake-kvm"


def _prog_name() -> str:
    """QEMU prefixes messages with its argv[0]'s base name."""
    base = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if not base or base.endswith(".py") or base in ("-c", "-m", "__main__.py"):
        return PROG
    return base


def _split_profile(args: list[str]) -> tuple[str | None, list[str]]:
    """Take ``--fake-profile NAME`` (first argument only) off the command line."""
    if args and args[0] == "--fake-profile":
        if len(args) < 2:
            raise FakeError("--fake-profile: requires an argument")
        return args[1], args[2:]
    if args and args[0].startswith("--fake-profile="):
        return args[0].split("=", 1)[1], args[1:]
    return os.environ.get("KVMLAB_FAKE_PROFILE") or None, args


def _daemonize(make_machine: Callable[[], Machine]) -> int:
    """QEMU's ``os_daemonize``: fork, setsid, fork; the first parent waits on a pipe.

    The caller sees exit status 0 only once the VM process is ready (pidfile
    written, sockets listening, scripts run), and 1 if it died before that.
    """
    read_fd, write_fd = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid > 0:
        os.close(write_fd)
        os.waitpid(pid, 0)  # the middle process exits at once
        status = b""
        while True:
            try:
                status = os.read(read_fd, 1)
                break
            except InterruptedError:  # pragma: no cover - PEP 475 retries
                continue
        # The daemon closes its end right after the byte; a KVMLAB_FAKE_CRASH_AFTER=0
        # daemon only when it dies (machine._detach), so a "dies at once" start is over,
        # deterministically, by the time the caller looks for the process.
        while status == b"\0":
            try:
                if not os.read(read_fd, 1):
                    break
            except InterruptedError:  # pragma: no cover - PEP 475 retries
                continue
        os.close(read_fd)
        return 0 if status == b"\0" else 1
    code = 1
    try:
        os.close(read_fd)
        os.setsid()
        if os.fork() > 0:
            os._exit(0)
        os.umask(0o027)
        for signum in JOB_SIGNALS:
            _signal.signal(signum, _signal.SIG_IGN)
        code = make_machine().run(write_fd)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def main(argv: list[str] | None = None) -> int:
    """Run the fake QEMU.

    :param argv: options without the program name; ``sys.argv[1:]`` when ``None``
        (then ``sys.argv[0]``'s base name prefixes messages, as in QEMU).
    :return: the exit status: 0, or 1 when QEMU would have failed.
    """
    prog = _prog_name() if argv is None else PROG
    args = list(sys.argv[1:] if argv is None else argv)
    log = EventLog(os.environ.get("KVMLAB_FAKE_LOG"))
    try:
        profile_spec, args = _split_profile(args)
        profile = load_profile(profile_spec)
        cfg = parse_argv(args, profile)
        faults = Faults.from_env()
    except EarlyExit as done:
        sys.stdout.write(done.output)
        sys.stdout.flush()
        return done.code
    except FakeError as err:
        print(err.render(prog), file=sys.stderr)
        log("fail", message=err.render(prog), argv=args)
        return 1
    log("start", argv=args, profile=profile.name, faults=faults.to_dict())
    if faults.fail_start is not None:
        print(f"{prog}: {faults.fail_start}", file=sys.stderr)
        log("fail", message=faults.fail_start, fault="KVMLAB_FAKE_FAIL_START")
        return 1
    for notice in cfg.notices:
        print(f"{prog}: {notice}", file=sys.stderr)
    for warning in cfg.warnings:
        print(f"{prog}: warning: {warning}", file=sys.stderr)
    # The VM side (sockets, QMP, the guest) is loaded only now: ``-version``,
    # ``-help`` and command-line errors, which probes and tests run often, skip it.
    from kvmlab.fake.machine import Machine  # noqa: PLC0415

    if cfg.daemonize:
        return _daemonize(lambda: Machine(cfg, profile, faults, log, prog))
    return Machine(cfg, profile, faults, log, prog).run()
