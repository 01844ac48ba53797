"""What does kvmlab cost on top of QEMU? Start-to-first-serial-line, kvmlab against a bare script.

The figure that matters to a test suite is how long it waits for a guest. kvmlab adds Python
work around QEMU (generate, save, plan, write the up-scripts, run, check the pidfile, read
back ``info``), and the target is that it costs at most 5 % of a boot. libvirt, for
comparison, took 1.66x a bare QEMU command on these machines (docs/real-qemu.md).

Four sides boot the same test guest (kernel and initramfs), 192 MiB, 1 vCPU, and the clock
stops at the first ``KVMLAB-BOOT-OK`` on the serial line:

- **kvmlab**: ``Hypervisor(tmpdir, backend=QemuBackend(binary)).start(instance)`` of the
  test guest as the tests boot it (:func:`kvmlab.guest.build.boot_hvparams`: Q35, ``-nodefaults``,
  a quiet kernel; one user NIC), then the serial log is polled every 10 ms.
- **bare**: a ``#!/bin/sh`` script runs the argv kvmlab executed (read back from ``/proc``
  with ``lab.info(name).argv`` during a warm-up run; through the wrapper when the binary is
  one, see :func:`bare_argv`), then polls the same log with ``grep`` every 10 ms. kvmlab
  against this is what kvmlab costs (target: at most 1.05x).
- **minimal**: what a new user would type to boot that kernel and initramfs, at its simplest:
  ``qemu-system-x86_64 -nodefaults -display none -serial stdio -accel tcg -m 192 -kernel K
  -initrd I -append console=ttyS0`` (the kernel's default verbosity, QEMU's default machine,
  no NIC), read from its stdout. The test guest as kvmlab boots it should beat it.
- **plain**: kvmlab again, with the guest on the hvparams the tests used before the fast test guest
  (Ganeti's defaults: QEMU's default machine with its default devices, ``panic=-1`` and
  every kernel message on the serial line): the before of the before/after.

Runs rotate through the sides (kvmlab, bare, minimal, plain, kvmlab, ...) so that drift in
the machine's load hits every side alike. On 2 cores one busy neighbour takes a good part of
the core TCG needs, so each run waits for a quiet machine (under 25 % busy: these VMs idle at
10 to 20 %, steal time included), and a round during which other processes used more than
25 % of the machine (``/proc/stat`` minus our own CPU time; another TCG guest alone is about
50 %) is redone. Each run starts from a clean state (no QEMU of ours alive, pidfile, sockets
and serial log removed) and ends with the VM killed and reaped. One untimed warm-up of each
side comes first: it fills the page cache with the kernel and initramfs and kvmlab's probe
caches (QEMU's help texts, the accelerator probe), which a test session pays once.

The benchmark makes itself a child subreaper, so the daemonized QEMUs (whose parents exit at
``-daemonize``) become its children and are reaped with ``waitpid`` rather than left as
zombies of whatever PID 1 is.

Usage: ``python benchmarks/bench_boot.py [--runs 5] [--binary PATH ...] [--quiet-wait S]``; without
``--binary``, the system's ``qemu-system-x86_64`` and the QEMU 10.0 wrapper when installed.
Never run it beside another QEMU boot on a 2-core machine: the figures would be the load's.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import itertools
import math
import os
import select
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from kvmlab.guest.build import GuestImage, boot_hvparams, build_guest
from kvmlab.host.backends import QemuBackend, find_qemu
from kvmlab.host.process import is_alive, read_pidfile, remove_quietly, wait_for_exit
from kvmlab.lifecycle.hypervisor import Hypervisor
from kvmlab.spec.capabilities import QemuCapabilities
from kvmlab.spec.instance import HvParams, Instance, Nic

QEMU10 = "/opt/kvmlab/qemu-10.0/bin/qemu-system-x86_64"
MARKER = "KVMLAB-BOOT-OK"
NAME = "bench"
POLL = 0.01
#: Below this busy fraction the machine counts as quiet before a run (idle here: 10-20 %).
QUIET_BUSY = 0.25
#: A run during which other processes used more than this share of the machine is redone.
NOISY_OTHERS = 0.25
CLK_TCK = os.sysconf("SC_CLK_TCK")
_PR_SET_CHILD_SUBREAPER = 36


class Timing(NamedTuple):
    """One run: seconds to the boot line, and to the end of the launch.

    The launch is ``Hypervisor.start`` returning (kvmlab) or the QEMU command returning
    after ``-daemonize`` (bare). It is the only phase in which the two sides run different
    code, so its difference measures kvmlab's cost without the guest's boot-time jitter
    (half a second from run to run under TCG), which the totals carry.
    """

    total: float
    launch: float


@dataclass
class Result:
    binary: str
    version: str
    accel: str
    accel_reason: str
    kvmlab: list[Timing] = field(default_factory=list)
    bare: list[Timing] = field(default_factory=list)
    minimal: list[Timing] = field(default_factory=list)
    plain: list[Timing] = field(default_factory=list)
    #: Share of the machine other processes used during each run, per side in SIDES order;
    #: ``inf`` when the machine never became idle before it or another QEMU ran beside it.
    others: list[tuple[float, ...]] = field(default_factory=list)
    #: Rounds kept although the machine was busy (retries exhausted): their figures are suspect.
    noisy: int = 0
    #: The load average (1 min) before each round.
    loads: list[float] = field(default_factory=list)

    def median(self, side: str, what: str) -> float:
        return float(statistics.median(getattr(t, what) for t in getattr(self, side)))

    @property
    def ratio(self) -> float:
        """Median kvmlab total over median bare total."""
        return self.median("kvmlab", "total") / self.median("bare", "total")

    def versus(self, side: str) -> float:
        """Median kvmlab total over the median total of ``side``."""
        return self.median("kvmlab", "total") / self.median(side, "total")

    @property
    def overhead(self) -> float:
        """kvmlab's launch minus the bare launch (medians), in seconds."""
        return self.median("kvmlab", "launch") - self.median("bare", "launch")


def become_subreaper() -> bool:
    """Adopt orphaned descendants (daemonized QEMU) so that we can reap them."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def reap(pid: int | None = None) -> None:
    """Collect exited children: ``pid`` (blocking, if it is ours), then any others."""
    if pid is not None:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    while True:
        try:
            done, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if done == 0:
            return


def kill_vm(pidfile: Path) -> None:
    """Terminate the VM named by ``pidfile`` (SIGTERM, then SIGKILL) and reap it."""
    pid = read_pidfile(pidfile)
    if pid is None or not is_alive(pid):
        reap()
        return
    os.kill(pid, signal.SIGTERM)
    if not wait_for_exit(pid, 5.0):
        os.kill(pid, signal.SIGKILL)
        wait_for_exit(pid, 5.0)
    reap(pid)


def clean_state(lab: Hypervisor) -> None:
    """No VM of ours alive, and none of its files: the next run starts from scratch."""
    layout = lab.layout
    kill_vm(layout.pidfile(NAME))
    for path in (
        layout.pidfile(NAME),
        layout.qmp_socket(NAME),
        layout.monitor_socket(NAME),
        layout.serial_socket(NAME),
        layout.serial_log(NAME),
    ):
        remove_quietly(path)


def foreign_qemus() -> list[int]:
    """Pids of QEMU processes that are not ours (a test suite running beside the benchmark)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            head = (entry / "cmdline").read_bytes().split(b"\0", 1)[0]
        except OSError:
            continue
        if Path(os.fsdecode(head)).name.startswith("qemu-system") and is_alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def cpu_times() -> tuple[int, int]:
    """The machine's idle and total jiffies so far (``/proc/stat``, all CPUs)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return values[3] + values[4], sum(values)  # idle + iowait, total


def busy_since(start: tuple[int, int]) -> float:
    """Fraction of the machine's CPU time spent busy since ``start`` (0.0 to 1.0)."""
    idle, total = cpu_times()
    spent = total - start[1]
    return 1.0 - (idle - start[0]) / spent if spent > 0 else 0.0


def our_cpu_seconds() -> float:
    """CPU time of this process and every descendant reaped so far.

    As a child subreaper the benchmark reaps the daemonized QEMUs itself, and the bare
    script's ``grep``/``sleep`` are reaped by its shell, so both sides' whole cost is here.
    """
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class OthersMeter:
    """Share of the machine other processes used during a run (0.0: we had it alone).

    Total busy time from ``/proc/stat`` minus our own (:func:`our_cpu_seconds`, read after
    the run's VM is reaped), over the wall time of all CPUs.
    """

    def __init__(self) -> None:
        self.wall = time.monotonic()
        self.machine = self._machine_busy_seconds()
        self.ours = our_cpu_seconds()

    @staticmethod
    def _machine_busy_seconds() -> float:
        idle, total = cpu_times()
        return (total - idle) / CLK_TCK

    def share(self) -> float:
        wall = (time.monotonic() - self.wall) * (os.cpu_count() or 1)
        machine = self._machine_busy_seconds() - self.machine
        ours = our_cpu_seconds() - self.ours
        return max(0.0, machine - ours) / wall if wall > 0 else 0.0


def wait_quiet(max_wait: float) -> bool:
    """Wait until no other QEMU runs and the machine is nearly idle; ``False`` if never.

    On 2 cores one more busy process takes a good part of the core TCG needs, so a run
    that starts beside a test suite measures the suite, not kvmlab.
    """
    deadline = time.monotonic() + max_wait
    while True:
        start = cpu_times()
        time.sleep(0.5)
        if busy_since(start) < QUIET_BUSY and not foreign_qemus():
            return True
        if time.monotonic() > deadline:
            return False


def wait_for_marker(log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(FileNotFoundError):
            if MARKER.encode() in log.read_bytes():
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{MARKER} not in {log} within {timeout:g} s")
        time.sleep(POLL)


def run_kvmlab(lab: Hypervisor, instance: Instance, timeout: float) -> Timing:
    clean_state(lab)
    started = time.time()
    lab.start(instance)
    launched = time.time()
    wait_for_marker(lab.layout.serial_log(NAME), timeout)
    elapsed = time.time() - started
    lab.stop(NAME, force=True)
    clean_state(lab)
    return Timing(elapsed, launched - started)


def bare_argv(lab: Hypervisor) -> tuple[str, ...]:
    """The argv kvmlab executed, for the bare script to run.

    Normally ``lab.info(name).argv``, read back from ``/proc`` while the instance runs. A
    wrapper script that ``exec``s QEMU (the QEMU 10.0 one) shows up there as the real binary
    plus the wrapper's own ``-L`` options, and running that would skip the wrapper (and its
    ``QEMU_MODULE_DIR``); then the command line the executor logged for this start is used,
    which begins with the wrapper like the saved argv.
    """
    live = lab.info(NAME, query_guest=False).argv
    saved = lab.load_runtime(NAME).argv
    if live[: len(saved)] == saved:
        return live
    header = " kvmlab start: "
    logged = [
        line.split(header, 1)[1]
        for line in lab.layout.log_file(NAME).read_text().splitlines()
        if line.startswith("--- ") and header in line
    ]
    if logged:
        argv = tuple(shlex.split(logged[-1]))
        if argv[: len(saved)] == saved:
            return argv
    raise RuntimeError(f"cannot tell the argv kvmlab ran; /proc shows {shlex.join(live)}")


def write_script(path: Path, argv: Sequence[str], log: Path, stamp: Path) -> None:
    """The bare side: QEMU launched by ``sh`` (no ``exec``: the script goes on to wait)."""
    path.write_text(
        "#!/bin/sh\n"
        "# The command kvmlab ran, without kvmlab; then wait for the same line.\n"
        f"{shlex.join(argv)} || exit 1\n"
        f"date +%s.%N > {shlex.quote(str(stamp))}\n"
        f"while ! grep -q {MARKER} {shlex.quote(str(log))} 2>/dev/null; do sleep {POLL}; done\n"
    )
    path.chmod(0o755)


def run_bare(lab: Hypervisor, script: Path, stamp: Path, timeout: float) -> Timing:
    clean_state(lab)
    remove_quietly(stamp)
    started = time.time()
    try:
        subprocess.run([str(script)], check=True, timeout=timeout, stdin=subprocess.DEVNULL)
    finally:
        elapsed = time.time() - started
        clean_state(lab)
    return Timing(elapsed, float(stamp.read_text()) - started)


def minimal_argv(binary: str, guest: GuestImage, memory: int, accel: str) -> list[str]:
    """The simplest command that boots the test guest to its marker on stdout."""
    argv = [binary, "-nodefaults", "-display", "none", "-serial", "stdio"]
    if accel in ("tcg", "kvm"):
        argv += ["-accel", accel]
    return [
        *argv, "-m", str(memory), "-kernel", str(guest.kernel), "-initrd", str(guest.initrd),
        "-append", "console=ttyS0",
    ]  # fmt: skip


def run_minimal(argv: Sequence[str], timeout: float) -> Timing:
    """Start the minimal command, read its stdout up to the marker, kill and reap it."""
    started = time.time()
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    assert process.stdout is not None
    seen = b""
    try:
        while MARKER.encode() not in seen:
            ready, _, _ = select.select([process.stdout], [], [], timeout)
            chunk = os.read(process.stdout.fileno(), 65536) if ready else b""
            if not chunk:
                raise TimeoutError(f"{MARKER} not printed by {shlex.join(argv)}")
            seen = seen[-len(MARKER) :] + chunk
        elapsed = time.time() - started
    finally:
        process.kill()
        process.wait()
        process.stdout.close()
    return Timing(elapsed, math.nan)


def share(fraction: float) -> str:
    return f"{fraction:.0%}" if math.isfinite(fraction) else "busy"


def accelerator_of(argv: Sequence[str]) -> str:
    """``tcg`` or ``kvm``, as the command line asks for it."""
    for option, value in itertools.pairwise(argv):
        if option == "-accel":
            return value.split(",")[0]
        if option == "-machine" and "accel=" in value:
            return value.split("accel=")[1].split(",")[0].split(":")[0]
        if option == "-enable-kvm":
            return "kvm"
    return "tcg" if "-no-kvm" in argv else "default"


@contextlib.contextmanager
def lab_for(binary: str) -> Iterator[Hypervisor]:
    root = Path(tempfile.mkdtemp(prefix="kl-bench-"))
    lab = Hypervisor(root, backend=QemuBackend(binary=binary), stop_timeout=10.0)
    try:
        yield lab
    finally:
        clean_state(lab)
        shutil.rmtree(root, ignore_errors=True)


def bench(
    binary: str, guest: GuestImage, *, runs: int, timeout: float, quiet_wait: float, retries: int
) -> Result:
    instance = Instance(
        name=NAME,
        memory=192,
        vcpus=1,
        nics=(Nic(mac="52:54:00:be:0c:01", mode="user"),),
        hvparams=HvParams.model_validate(boot_hvparams(guest)),
    )
    # The test guest as the suite booted it before the fast test guest: Ganeti's defaults.
    plain = instance.model_copy(
        update={
            "hvparams": HvParams(
                kernel_path=str(guest.kernel),
                initrd_path=str(guest.initrd),
                kernel_args="panic=-1",
                serial_speed=115200,
                vnc_bind_address="",
            )
        }
    )
    caps = QemuCapabilities.probe(binary)
    with lab_for(binary) as lab, tempfile.TemporaryDirectory(prefix="kl-bare-") as tmp:
        # Warm-up: kvmlab once (caches), and read back the argv it ran.
        clean_state(lab)
        wait_quiet(quiet_wait)
        lab.start(instance)
        argv = bare_argv(lab)
        wait_for_marker(lab.layout.serial_log(NAME), timeout)
        lab.stop(NAME, force=True)
        clean_state(lab)
        _, reason = lab.backend.accelerator(binary, instance.hvparams)
        result = Result(binary, caps.version_string, accelerator_of(argv), reason)

        script, stamp = Path(tmp) / "bare.sh", Path(tmp) / "launched"
        write_script(script, argv, lab.layout.serial_log(NAME), stamp)
        run_bare(lab, script, stamp, timeout)  # warm-up of the bare side
        minimal = minimal_argv(binary, guest, instance.memory, result.accel)
        run_minimal(minimal, timeout)  # and of the minimal one

        sides: dict[str, Callable[[], Timing]] = {
            "kvmlab": lambda: run_kvmlab(lab, instance, timeout),
            "bare": lambda: run_bare(lab, script, stamp, timeout),
            "minimal": lambda: run_minimal(minimal, timeout),
            "plain": lambda: run_kvmlab(lab, plain, timeout),
        }
        for n in range(runs):
            for attempt in range(retries + 1):
                # One round, every side once; redone when one of them shared the machine.
                load = os.getloadavg()[0]
                done: list[tuple[Timing, float]] = []
                for run in sides.values():
                    clean_state(lab)  # first: our own VM must not count as someone else's
                    quiet = wait_quiet(quiet_wait)
                    meter = OthersMeter()
                    timing = run()  # ends with the VM killed and reaped
                    others = meter.share()
                    done.append((timing, others if quiet and not foreign_qemus() else math.inf))
                clean = all(others <= NOISY_OTHERS for _, others in done)
                if clean or attempt == retries:
                    break
                print(f"  run {n + 1}: shared the machine, again", file=sys.stderr, flush=True)
            for side, (timing, _) in zip(sides, done, strict=True):
                getattr(result, side).append(timing)
            result.others.append(tuple(others for _, others in done))
            result.loads.append(load)
            result.noisy += not clean
            print(
                f"  run {n + 1}/{runs} (load {load:.2f}): "
                + ", ".join(
                    f"{side} {timing.total:.3f} s (others {share(others)})"
                    for side, (timing, others) in zip(sides, done, strict=True)
                ),
                file=sys.stderr,
                flush=True,
            )
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs per side (default 5)")
    parser.add_argument(
        "--binary",
        action="append",
        metavar="PATH",
        help="a QEMU binary (repeatable); default: the system's and the QEMU 10.0 wrapper",
    )
    parser.add_argument("--timeout", type=float, default=90.0, help="seconds per boot")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=600.0,
        metavar="S",
        help="before each run, wait up to S seconds for an idle machine (default 600)",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=3,
        help="redo a round of runs that shared the machine, up to this many times (default 3)",
    )
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")

    binaries: list[str] = args.binary or []
    if not binaries:
        system = find_qemu()
        if system is None:
            print("bench_boot: no qemu-system-x86_64 (apt-get install qemu-system-x86)")
            return 1
        binaries.append(shutil.which("qemu-system-x86_64") or system)
        if os.access(QEMU10, os.X_OK):
            binaries.append(QEMU10)
    subreaper = become_subreaper()
    # SIGTERM (timeout, CI cancel) unwinds like ^C, so the running VM is killed and reaped.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    guest = build_guest()

    results = []
    for binary in binaries:
        print(f"{binary}: {args.runs} runs each, interleaved", file=sys.stderr, flush=True)
        results.append(
            bench(
                binary,
                guest,
                runs=args.runs,
                timeout=args.timeout,
                quiet_wait=args.quiet_wait,
                retries=args.retries,
            )
        )

    print(
        f"start -> first serial {MARKER}, median of {args.runs} runs each"
        f" (child subreaper: {'yes' if subreaper else 'no'})"
    )
    header = (
        f"{'binary':<46} {'QEMU':<7} {'accel':<5} {'kvmlab':>7} {'bare':>7} {'k/bare':>6}"
        f" {'minimal':>7} {'k/min':>6} {'plain':>7} {'launch k/b':>11} {'overhead':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        launches = f"{r.median('kvmlab', 'launch'):.3f}/{r.median('bare', 'launch'):.3f}"
        print(
            f"{r.binary:<46} {r.version:<7} {r.accel:<5}"
            f" {r.median('kvmlab', 'total'):6.3f}s {r.median('bare', 'total'):6.3f}s"
            f" {r.ratio:6.3f} {r.median('minimal', 'total'):6.3f}s {r.versus('minimal'):6.3f}"
            f" {r.median('plain', 'total'):6.3f}s {launches:>11} {r.overhead * 1000:+6.0f}ms"
        )
    for r in results:
        print(f"accelerator for {r.binary}: {r.accel} ({r.accel_reason})")
        for side in ("kvmlab", "bare", "minimal", "plain"):
            runs = " ".join(f"{t.total:.3f}" for t in getattr(r, side))
            print(f"  {side + ' runs:':<14} {runs}")
        others = " ".join("/".join(share(o) for o in each) for each in r.others)
        print(f"  other processes' share of the machine (kvmlab/bare/minimal/plain): {others}")
        loads = " ".join(f"{load:.2f}" for load in r.loads)
        print(f"  load average (1 min) before each round: {loads}")
        if r.noisy:
            print(f"  warning: {r.noisy} rounds shared the machine (figures suspect)")
    worst = max(r.ratio for r in results)
    print(
        f"target kvmlab/bare <= 1.05: {'met' if worst <= 1.05 else 'NOT met'} (worst {worst:.3f});"
        " overhead = kvmlab's launch minus the bare launch, free of boot jitter"
    )
    slowest = max(r.versus("minimal") for r in results)
    print(
        f"target kvmlab < minimal: {'met' if slowest < 1.0 else 'NOT met'} (worst {slowest:.3f});"
        " plain = the guest on Ganeti's defaults (the old test boot)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
