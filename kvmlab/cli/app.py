"""The ``kvmlab`` command line.

Exit codes: 0 done; 1 the operation failed (already running, not running, the
binary failed); 2 bad input (invalid file, unknown instance, usage). Errors are
one line on stderr; ``--debug`` adds the traceback. Heavy modules are imported
inside the commands that need them, so ``kvmlab --help`` and ``kvmlab list``
stay quick.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kvmlab.host.inventory import InstanceInfo
    from kvmlab.lifecycle.hypervisor import Hypervisor

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _seconds(text: str) -> float:
    """An argparse type for every duration option: a number of seconds in range, checked
    by the same rule as the API's (:func:`kvmlab.spec.inputs.check_seconds`), so a bad
    one is a usage error naming the option and the value, before anything starts."""
    from kvmlab.spec.inputs import SECONDS_RULE, check_seconds  # noqa: PLC0415

    try:
        return check_seconds("value", float(text))
    except ValueError:  # float()'s and check_seconds' (an InvalidInputError)
        raise argparse.ArgumentTypeError(f"{text!r}: {SECONDS_RULE}") from None


def _kvmlab_records(record: logging.LogRecord) -> bool:
    """stderr carries kvmlab's lines only: a library's log records show with --debug."""
    return record.name == "kvmlab" or record.name.startswith("kvmlab.")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, exit 2, like every bad input
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _global_options(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    """The options every command takes, before or after the command's name.

    Subcommands get them with SUPPRESS defaults, so that one given after the
    command overrides the top level's and an absent one leaves it alone.
    """

    def default(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    parser.add_argument(
        "--state-dir",
        # An empty $KVMLAB_STATE_DIR is an unset one (an empty --state-dir is refused).
        default=default(os.environ.get("KVMLAB_STATE_DIR") or None),
        help="state directory (default: $KVMLAB_STATE_DIR or $XDG_STATE_HOME/kvmlab)",
    )
    parser.add_argument(
        "--backend",
        default=default(os.environ.get("KVMLAB_BACKEND", "auto")),
        choices=["auto", "qemu", "fake"],
        help="auto: real QEMU when installed, else the fake (default: $KVMLAB_BACKEND or auto)",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        default=default(False),
        help="log details and show tracebacks",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="kvmlab",
        description="A lab and testing harness for KVM/QEMU virtual machines.",
    )
    _global_options(parser, defaults=True)
    common = _Parser(add_help=False)
    _global_options(common, defaults=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Callable[[argparse.Namespace], int], text: str) -> Any:
        p = sub.add_parser(name, help=text, description=text, parents=[common])
        p.set_defaults(handler=handler)
        return p

    p = command("generate", cmd_generate, "print the runtime an instance file generates")
    p.add_argument("file", help="instance file (.json, .toml, .yaml)")
    p.add_argument(
        "--profile",
        help="a bundled QEMU profile (qemu-10.0, ganeti-1.1.2...) instead of the binary",
    )
    p.add_argument("--argv", action="store_true", help="print the saved argv, one per line")

    command("schema", cmd_schema, "print the JSON Schema of an instance file (docs/instances.md)")

    p = command("start", cmd_start, "generate, save and start an instance")
    p.add_argument("file", help="instance file (.json, .toml, .yaml)")

    p = command("stop", cmd_stop, "stop an instance (ACPI powerdown, then kill)")
    p.add_argument("name")
    p.add_argument("--force", action="store_true", help="kill without asking the guest")
    p.add_argument("--timeout", type=_seconds, help="seconds before the guest is killed")

    p = command("reboot", cmd_reboot, "soft reboot: replay the saved runtime")
    p.add_argument("name")

    p = command("list", cmd_list, "list instances")
    p.add_argument("--json", action="store_true", help="print a JSON list")

    p = command("info", cmd_info, "show an instance's state and live command line")
    p.add_argument("name")
    p.add_argument("--json", action="store_true", help="print a JSON object")

    p = command("console", cmd_console, "read (or wait for) the serial console")
    p.add_argument("name")
    p.add_argument("--expect", metavar="RE", help="wait until this regex appears, then exit 0")
    p.add_argument("--timeout", type=_seconds, default=30.0, help="seconds for --expect")

    p = command(
        "exec", cmd_exec, "run a command in the guest, print its output, exit with its status"
    )
    p.add_argument("name")
    p.add_argument("--timeout", type=_seconds, default=30.0, help="seconds the command may take")
    p.add_argument(
        "--ready-timeout",
        type=_seconds,
        default=60.0,
        help="seconds the guest may take to answer first (still booting)",
    )
    # main() hands over the words after "--" (see there).
    p.add_argument("words", nargs="*", metavar="-- CMD ARGS...")

    from kvmlab.cli import hotplug  # noqa: PLC0415 - stdlib only, like this

    hotplug.add_commands(command)

    p = command(
        "migrate", cmd_migrate, "move a running instance into another state directory (live)"
    )
    p.add_argument("name")
    p.add_argument("--to", required=True, metavar="STATE_DIR", help="the target lab's state dir")
    p.add_argument("--timeout", type=_seconds, help="seconds the transfer may take (default 300)")
    p.add_argument("--offline", action="store_true", help="pause the guest for the transfer")
    p.add_argument(
        "--target-qemu",
        metavar="PATH",
        help="the QEMU binary of the target lab (default: the one the source runs)",
    )
    p.add_argument("--json", action="store_true", help="print the result as a JSON object")

    p = command(
        "recover",
        cmd_recover,
        "finish or undo a migration or snapshot operation that a killed kvmlab left pending",
    )
    p.add_argument("name")

    from kvmlab.cli.snapshots import add_commands  # noqa: PLC0415 - stdlib only, like this

    add_commands(command, _seconds)

    p = command("cleanup", cmd_cleanup, "forget a stopped instance (runtime, logs)")
    p.add_argument("name")

    p = command(
        "diff", cmd_diff, "compare two runtimes, instance files or golden trees, option by option"
    )
    p.add_argument("a", help="runtime file, instance file, golden .args file or directory")
    p.add_argument("b", help="the same kind of thing to compare with")

    command("demo", cmd_demo, "run a whole lifecycle on the default backend, step by step")

    p = command("doctor", cmd_doctor, "check QEMU, KVM, the fake kvm, root and the test guest")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.add_argument(
        "--probe-all",
        action="store_true",
        help="probe KVM with every QEMU found, not only the one kvmlab runs (boots each once)",
    )

    guest = sub.add_parser("guest", help="the test guest", description="the test guest")
    guest_sub = guest.add_subparsers(dest="guest_command", required=True, metavar="SUBCOMMAND")
    text = "build the test guest (kernel + initramfs), or find it already built"
    p = guest_sub.add_parser("build", help=text, description=text)
    p.set_defaults(handler=cmd_guest_build)
    p.add_argument(
        "--json",
        action="store_true",
        help='print {"kernel": ..., "initrd": ..., "hvparams": {...}} (the hvparams boot it fast)',
    )
    p.add_argument(
        "--cache", metavar="DIR", help="cache directory (default: ~/.cache/kvmlab/guest)"
    )
    p.add_argument("--kernel", metavar="PATH", help="a vmlinuz or linux-image-*.deb to use")
    return parser


# -- helpers ---------------------------------------------------------------------------


def _lab(args: argparse.Namespace) -> Hypervisor:
    from kvmlab.lifecycle.hypervisor import Hypervisor  # noqa: PLC0415

    return Hypervisor(args.state_dir, backend=args.backend)


def _print_info(info: InstanceInfo) -> None:
    print(f"name:    {info.name}")
    print(f"state:   {info.state}")
    print(f"pid:     {info.pid if info.pid is not None else '-'}")
    print(f"memory:  {info.memory} MiB")
    print(f"vcpus:   {info.vcpus}")
    for seq, nic in enumerate(info.nics):
        link = f" {nic['link']}" if nic.get("link") else ""
        print(f"nic{seq}:    {nic['mac']} {nic['mode']}{link}")
    print(f"runtime: {info.runtime_file}")
    migrating = info.extra.get("migration_pending")
    if migrating is not None:
        print(
            f"migration: PENDING {json.dumps(migrating)}: a migration was interrupted; the next"
            " command on the instance (in either lab) finishes or undoes it"
        )
    pending = info.extra.get("hotplug_pending")
    if pending is not None:
        print(
            f"hotplug: PENDING {json.dumps(pending)}: a hotplug stopped between QEMU and the"
            " save; the VM and its saved runtime may differ (restart it to be sure)"
        )
    from kvmlab.cli.snapshots import print_states  # noqa: PLC0415

    print_states(info)
    import shlex  # noqa: PLC0415

    print(f"argv:    {shlex.join(info.argv or info.saved_argv)}")


# -- commands --------------------------------------------------------------------------


def cmd_generate(args: argparse.Namespace) -> int:
    from kvmlab.spec.files import load_instance  # noqa: PLC0415

    instance = load_instance(args.file)
    if args.profile:
        from kvmlab.runtime.generator import generate_runtime  # noqa: PLC0415
        from kvmlab.spec.capabilities import load_profile  # noqa: PLC0415

        runtime = generate_runtime(instance, load_profile(args.profile), layout=_lab(args).layout)
    else:
        runtime = _lab(args).generate(instance)
    if args.argv:
        print("\n".join(runtime.argv))
    else:
        print(json.dumps(json.loads(runtime.to_json()), indent=2))
    return EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    from kvmlab.spec.reference import schema_text  # noqa: PLC0415

    sys.stdout.write(schema_text())
    return EXIT_OK


def cmd_start(args: argparse.Namespace) -> int:
    from kvmlab.spec.files import load_instance  # noqa: PLC0415

    instance = load_instance(args.file)
    info = _lab(args).start(instance)
    print(f"started {info.name} (pid {info.pid})")
    return EXIT_OK


def cmd_stop(args: argparse.Namespace) -> int:
    _lab(args).stop(args.name, force=args.force, timeout=args.timeout)
    print(f"stopped {args.name}")
    return EXIT_OK


def cmd_reboot(args: argparse.Namespace) -> int:
    info = _lab(args).reboot(args.name)
    print(f"rebooted {info.name} from its saved runtime (pid {info.pid})")
    return EXIT_OK


def cmd_list(args: argparse.Namespace) -> int:
    # The inventory reads saved runtimes without pydantic: list stays fast.
    from kvmlab.host.inventory import list_instances  # noqa: PLC0415
    from kvmlab.spec.inputs import state_dir_path  # noqa: PLC0415
    from kvmlab.spec.layout import StateLayout, default_state_dir  # noqa: PLC0415

    root = state_dir_path(args.state_dir) if args.state_dir is not None else default_state_dir()
    infos = list_instances(StateLayout(root.absolute()))
    if args.json:
        print(json.dumps([info.to_dict() for info in infos], indent=2))
        return EXIT_OK
    if not infos:
        print("no instances")
    for info in infos:
        pid = str(info.pid) if info.pid is not None else "-"
        print(f"{info.name:<24} {info.state!s:<8} pid {pid:<8} {info.memory} MiB {info.vcpus} vCPU")
    return EXIT_OK


def cmd_info(args: argparse.Namespace) -> int:
    info = _lab(args).info(args.name)
    if args.json:
        print(json.dumps(info.to_dict(), indent=2))
    else:
        _print_info(info)
    return EXIT_OK


def cmd_console(args: argparse.Namespace) -> int:
    from kvmlab.errors import ExpectTimeoutError  # noqa: PLC0415

    console = _lab(args).console(args.name)
    if args.expect is None:
        sys.stdout.write(console.read())
        return EXIT_OK
    try:
        seen = console.expect(args.expect, timeout=args.timeout)
    except ExpectTimeoutError as err:
        sys.stdout.write(err.output)
        print(f"kvmlab: {err}", file=sys.stderr)
        return EXIT_FAILED
    sys.stdout.write(seen + "\n")
    return EXIT_OK


def cmd_exec(args: argparse.Namespace) -> int:
    from kvmlab.errors import InvalidInputError  # noqa: PLC0415

    words = list(args.words)
    if not words:
        raise InvalidInputError("no command given: kvmlab exec NAME -- CMD ARGS...")
    # The words are the command's argv, each quoted: use "sh -c '...'" for globs and pipes.
    result = (
        _lab(args)
        .guest(args.name)
        .run(words, timeout=args.timeout, ready_timeout=args.ready_timeout)
    )
    sys.stdout.write(result.stdout)
    sys.stdout.flush()
    return result.exit_code


def cmd_migrate(args: argparse.Namespace) -> int:
    import time  # noqa: PLC0415

    from kvmlab.host.backends import QemuBackend  # noqa: PLC0415
    from kvmlab.lifecycle.hypervisor import Hypervisor  # noqa: PLC0415
    from kvmlab.spec.inputs import state_dir_path  # noqa: PLC0415

    to = state_dir_path(args.to, "--to")  # resolved once: '' is no directory, not "here"
    source = _lab(args)
    backend: Any = args.backend
    if args.target_qemu:
        backend = QemuBackend(args.target_qemu)
    elif isinstance(source.backend, QemuBackend):
        # One host: the binary the source runs, not the system's (a move to an older
        # QEMU is refused, so the system's default would refuse a VM on a newer one).
        info = source.info(args.name)
        argv = info.saved_argv or info.argv  # the live argv[0] may be a wrapper's target
        if argv:
            backend = QemuBackend(argv[0])
    target = Hypervisor(to, backend=backend)
    last = [time.monotonic()]

    def progress(info: Any) -> None:
        # stderr, once a second: a long transfer shows it is alive; stdout keeps the result.
        if time.monotonic() - last[0] < 1.0:
            return
        last[0] = time.monotonic()
        ram = info.get("ram") or {}
        sent = ram.get("transferred", 0) // (1 << 20)
        total = ram.get("total", 0) // (1 << 20)
        print(
            f"kvmlab: migrating {args.name}: {info.get('status')}, {sent} of {total} MiB",
            file=sys.stderr,
            flush=True,
        )

    result = source.migrate(
        args.name, target, live=not args.offline, timeout=args.timeout, progress=progress
    )
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(
            f"migrated {result.name} to {result.target} (QEMU {result.source_version} ->"
            f" {result.target_version}): total {result.total_time_ms} ms, downtime"
            f" {result.downtime_ms} ms, {result.transferred_bytes} bytes"
        )
    return EXIT_OK


def cmd_recover(args: argparse.Namespace) -> int:
    lab = _lab(args)
    outcome = lab.recover_migration(args.name)
    journal = lab.layout.snapshot_journal(args.name)
    snapshot = lab.recover_snapshot(args.name) if journal.exists() else None
    found = [f"interrupted migration {outcome}"] if outcome else []
    found += [f"interrupted snapshot operation {snapshot}"] if snapshot else []
    print(f"{args.name}: " + ("; ".join(found) or "nothing pending"))
    return EXIT_OK


def cmd_cleanup(args: argparse.Namespace) -> int:
    _lab(args).cleanup(args.name)
    print(f"removed {args.name}")
    return EXIT_OK


def cmd_diff(args: argparse.Namespace) -> int:
    """Print the report; like diff(1), exit 0 when the inputs are equal and 1 when not."""
    from kvmlab.display import diff_text  # noqa: PLC0415
    from kvmlab.golden.diff import diff_paths  # noqa: PLC0415

    diff = diff_paths(args.a, args.b)
    sys.stdout.write(diff_text(diff))
    return EXIT_OK if diff.equal else EXIT_FAILED


def cmd_demo(args: argparse.Namespace) -> int:
    from kvmlab.cli.demo import run_demo  # noqa: PLC0415

    return run_demo(state_dir=args.state_dir, backend=args.backend)


def cmd_doctor(args: argparse.Namespace) -> int:
    from kvmlab.cli.doctor import diagnose, render_text  # noqa: PLC0415

    report = diagnose(args.backend, probe_all=args.probe_all)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        sys.stdout.write(render_text(report))
    return EXIT_OK if report.ok else EXIT_FAILED


def cmd_guest_build(args: argparse.Namespace) -> int:
    from pathlib import Path  # noqa: PLC0415

    from kvmlab.errors import GuestBuildError  # noqa: PLC0415
    from kvmlab.guest.build import build_guest  # noqa: PLC0415

    def progress(message: str) -> None:
        # stderr, so that --json leaves stdout to the one JSON object.
        print(f"kvmlab: {message}", file=sys.stderr, flush=True)

    try:
        image = build_guest(
            Path(args.cache) if args.cache else None,
            Path(args.kernel) if args.kernel else None,
            progress=progress,
        )
    except OSError as err:  # an unwritable cache directory, a full disk
        raise GuestBuildError(f"cannot build the test guest: {err}") from err
    if args.json:
        # The instance hvparams that boot it fast, for an instance file built from this.
        data = {**json.loads(image.to_json()), "hvparams": image.hvparams()}
        print(json.dumps(data))
    else:
        print(f"kernel: {image.kernel}")
        print(f"initrd: {image.initrd}")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit code."""
    parser = build_parser()
    words = list(sys.argv[1:] if argv is None else argv)
    # "exec NAME [OPTIONS] -- CMD ARGS...": argparse would bind the command's words before
    # it sees the options, so everything after the first "--" is the command's, as is.
    command: list[str] = []
    if "--" in words and "exec" in words[: words.index("--")]:
        split = words.index("--")
        words, command = words[:split], words[split + 1 :]
    args = parser.parse_args(words)
    if args.handler is cmd_exec:
        args.words = [*args.words, *command]
    handler = logging.StreamHandler()
    if not args.debug:
        handler.addFilter(_kvmlab_records)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="kvmlab: %(levelname)s: %(message)s",
        handlers=[handler],
    )
    from kvmlab.errors import KvmlabError  # noqa: PLC0415

    try:
        return int(args.handler(args))
    except KvmlabError as err:
        if args.debug:
            import traceback  # noqa: PLC0415

            traceback.print_exc()
        message = str(err).replace("\n", "\\n") or type(err).__name__
        print(f"kvmlab: error: {message}", file=sys.stderr)
        return err.exit_code
    except BrokenPipeError:
        # The reader went away (kvmlab list --json | head): not an error of ours.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt:
        print("kvmlab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
