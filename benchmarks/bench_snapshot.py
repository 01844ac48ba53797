"""Snapshot, save and restore of the test guest, and restore-to-ready against start-to-ready.

The test guest as the suite boots it (:func:`kvmlab.guest.build.boot_hvparams`: q35,
``-nodefaults``, a quiet kernel; 256 MiB, 1 vCPU, one user NIC) under TCG, on each QEMU
(7.2 and 10.0). Each run, in one lab (docs/snapshots.md):

- **start-to-ready**: ``Hypervisor.start`` until the guest's command channel answers
  ``true`` (a boot of the kernel and initramfs to the command loop);
- **snapshot**: ``Hypervisor.snapshot`` of the running guest (it pauses for the write and
  runs on), its wall time and the state's size;
- **save**: ``Hypervisor.save`` (the state written, the process gone), time and size;
- **restore-to-ready**: ``Hypervisor.restore`` until the command channel answers ``true``;
- **baseline** (``bare -incoming``): what a user would otherwise run: the command line
  kvmlab ran for the guest (read back from ``/proc`` at the warm-up start, as
  ``bench_boot.py`` does), started by hand with ``-incoming`` of the same state file
  (``fd:N``, an inherited descriptor, on 7.2; ``file:PATH`` on 10.0; a hard link of the
  saved state, made before the restore removes it), then ``cont`` over QMP once the
  incoming migration is done (the state was taken from a paused VM, so QEMU ends
  ``paused``), until the command channel answers ``true``. kvmlab's restore against it
  is what kvmlab costs on top of QEMU's own loading.

Restore and baseline swap order from run to run, so drift in the machine's load hits both.
Medians with the range over ``--runs``; the goal printed at the end is restore-to-ready at
most 0.2x start-to-ready on 7.2. Each run waits for a quiet machine first (as
``bench_boot.py`` does: on 2 cores one busy neighbour takes a good part of the core TCG
needs)::

    python benchmarks/bench_snapshot.py                    # QEMU 7.2 and 10.0
    python benchmarks/bench_snapshot.py --versions 7.2 --runs 3
    python benchmarks/bench_snapshot.py --backend fake     # the fake kvm's profiles, no baseline
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench_boot import bare_argv, become_subreaper, clean_state, kill_vm, wait_quiet

from kvmlab.channels.guest_channel import GuestChannel
from kvmlab.channels.qmp import QmpSession
from kvmlab.guest.build import boot_hvparams, build_guest
from kvmlab.host.backends import Backend, FakeBackend, QemuBackend
from kvmlab.lifecycle.hypervisor import Hypervisor
from kvmlab.spec.instance import HvParams, Instance, Nic

BINARIES = {
    "7.2": "/usr/bin/qemu-system-x86_64",
    "10.0": "/opt/kvmlab/qemu-10.0/bin/qemu-system-x86_64",
}
#: bench_boot's instance name: its helpers (clean_state, bare_argv) use it.
NAME = "bench"
MEMORY = 256
GOAL = 0.2
READY_TIMEOUT = 180.0


@dataclass
class Figures:
    """One QEMU's figures, one entry per run (seconds and bytes)."""

    start_ready: list[float] = field(default_factory=list)
    snapshot: list[float] = field(default_factory=list)
    snapshot_size: list[float] = field(default_factory=list)
    save: list[float] = field(default_factory=list)
    save_size: list[float] = field(default_factory=list)
    restore_ready: list[float] = field(default_factory=list)
    bare_ready: list[float] = field(default_factory=list)
    #: Runs that started although the machine never became quiet: their figures are suspect.
    noisy: int = 0

    def ratio(self) -> float:
        """Median restore-to-ready over median start-to-ready."""
        return statistics.median(self.restore_ready) / statistics.median(self.start_ready)


def seconds(values: list[float]) -> str:
    if not values:
        return "-"
    med, low, high = statistics.median(values), min(values), max(values)
    return f"{med:.3f} s ({low:.3f}-{high:.3f})"


def megabytes(values: list[float]) -> str:
    if not values:
        return "-"
    med, low, high = (v / 1e6 for v in (statistics.median(values), min(values), max(values)))
    return f"{med:.1f} MB ({low:.1f}-{high:.1f})"


def backend_for(kind: str, version: str) -> Backend:
    if kind == "fake":
        return FakeBackend(profile=f"qemu-{version}")
    return QemuBackend(BINARIES[version])


def ready(lab: Hypervisor) -> None:
    """Until the guest's command channel answers ``true``."""
    lab.guest(NAME).run("true", ready_timeout=READY_TIMEOUT)


def timed_start(lab: Hypervisor, instance: Instance) -> float:
    clean_state(lab)
    started = time.monotonic()
    lab.start(instance)
    ready(lab)
    return time.monotonic() - started


def timed_restore(lab: Hypervisor) -> float:
    started = time.monotonic()
    lab.restore(NAME)
    ready(lab)
    elapsed = time.monotonic() - started
    lab.stop(NAME, force=True)
    clean_state(lab)
    return elapsed


def timed_bare(lab: Hypervisor, argv: tuple[str, ...], state: Path, version: str) -> float:
    """The command line kvmlab ran, started by hand with ``-incoming`` of ``state``.

    QEMU 7.2 reads a file through an inherited descriptor (``fd:N``); 10.0 has ``file:``
    and warns that ``fd:`` on a regular file is deprecated, so a user there types ``file:``.
    """
    clean_state(lab)
    started = time.monotonic()
    fd = os.open(state, os.O_RDONLY)
    uri = f"fd:{fd}" if version == "7.2" else f"file:{state}"
    try:  # QEMU reads the state from the inherited descriptor (its daemon child keeps it)
        subprocess.run([*argv, "-incoming", uri], check=True, pass_fds=(fd,))
    finally:
        os.close(fd)
    with QmpSession(lab.layout.qmp_socket(NAME)) as qmp:
        status = qmp.execute("query-status")["status"]
        while status == "inmigrate":
            time.sleep(0.01)
            status = qmp.execute("query-status")["status"]
        if status != "running":
            qmp.execute("cont")
    GuestChannel(NAME, lab.layout.cmd_socket(NAME)).run("true", ready_timeout=READY_TIMEOUT)
    elapsed = time.monotonic() - started
    kill_vm(lab.layout.pidfile(NAME))
    clean_state(lab)
    return elapsed


@contextlib.contextmanager
def lab_for(kind: str, version: str) -> Iterator[Hypervisor]:
    root = Path(tempfile.mkdtemp(prefix="kl-bsnap-"))
    lab = Hypervisor(root, backend=backend_for(kind, version), stop_timeout=10.0)
    try:
        yield lab
    finally:
        clean_state(lab)
        shutil.rmtree(root, ignore_errors=True)


def bench(kind: str, version: str, runs: int, *, baseline: bool, quiet_wait: float) -> Figures:
    guest = build_guest() if kind == "qemu" else None
    instance = Instance(
        name=NAME,
        memory=MEMORY,
        vcpus=1,
        nics=(Nic(mac="52:54:00:6b:0d:01", mode="user"),),
        hvparams=HvParams.model_validate(boot_hvparams(guest)),
    )
    figures = Figures()
    with lab_for(kind, version) as lab:
        # Warm-up (untimed): the page cache, kvmlab's probe caches, and the argv it ran.
        lab.start(instance)
        argv = bare_argv(lab) if kind == "qemu" else ()
        ready(lab)
        lab.save(NAME)
        lab.restore(NAME)
        ready(lab)
        lab.stop(NAME, force=True)
        lab.cleanup(NAME)
        keep = lab.layout.root.parent / f"{lab.layout.root.name}-bare.state"
        for run in range(runs):
            clean_state(lab)
            figures.noisy += not wait_quiet(quiet_wait)
            figures.start_ready.append(timed_start(lab, instance))
            started = time.monotonic()
            snap = lab.snapshot(NAME, f"s{run}")
            figures.snapshot.append(time.monotonic() - started)
            figures.snapshot_size.append(float(snap.size))
            started = time.monotonic()
            saved = lab.save(NAME)
            figures.save.append(time.monotonic() - started)
            figures.save_size.append(float(saved.size))
            # The baseline reads the same bytes: a hard link outlives the restore's removal.
            keep.unlink(missing_ok=True)
            os.link(saved.state_file, keep)
            sides = ["restore", "bare"] if run % 2 == 0 else ["bare", "restore"]
            for side in sides:
                if side == "restore":
                    figures.restore_ready.append(timed_restore(lab))
                elif baseline and argv:
                    figures.bare_ready.append(timed_bare(lab, argv, keep, version))
            keep.unlink(missing_ok=True)
            lab.delete_snapshot(NAME, f"s{run}")
            print(
                f"  {version} run {run + 1}/{runs}: start-to-ready {figures.start_ready[-1]:.3f} s,"
                f" snapshot {figures.snapshot[-1]:.3f} s, save {figures.save[-1]:.3f} s,"
                f" restore-to-ready {figures.restore_ready[-1]:.3f} s"
                + (
                    f", bare -incoming {figures.bare_ready[-1]:.3f} s" if figures.bare_ready else ""
                ),
                file=sys.stderr,
                flush=True,
            )
        lab.cleanup(NAME)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--backend", default="qemu", choices=["fake", "qemu"])
    parser.add_argument("--versions", default="7.2,10.0", help="QEMU versions, comma-separated")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per QEMU (default 5)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the bare -incoming side")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=120.0,
        metavar="S",
        help="before each run, wait up to S seconds for an idle machine (default 120)",
    )
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    become_subreaper()  # the daemonized QEMUs become our children, reaped by kill_vm
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    results: dict[str, Figures] = {}
    for version in args.versions.split(","):
        if version not in BINARIES:
            parser.error(f"--versions: unknown QEMU version {version!r} (7.2 or 10.0)")
        if args.backend == "qemu" and not os.access(BINARIES[version], os.X_OK):
            print(f"{version}: skipped, QEMU not installed at {BINARIES[version]}")
            continue
        print(f"QEMU {version} ({args.backend}): {args.runs} runs", file=sys.stderr, flush=True)
        results[version] = bench(
            args.backend,
            version,
            args.runs,
            baseline=args.backend == "qemu" and not args.no_baseline,
            quiet_wait=args.quiet_wait,
        )

    print(
        f"{'the test guest' if args.backend == 'qemu' else 'the fake kvm'}, q35, {MEMORY} MiB,"
        f" TCG: medians of {args.runs} runs"
        " (min-max); ready = the command channel answers `true`"
    )
    header = f"{'QEMU':<6} {'what':<28} figure"
    print(header)
    print("-" * 70)
    for version, f in results.items():
        rows = [
            ("snapshot (wall)", seconds(f.snapshot)),
            ("snapshot state size", megabytes(f.snapshot_size)),
            ("save (wall)", seconds(f.save)),
            ("saved state size", megabytes(f.save_size)),
            ("start-to-ready", seconds(f.start_ready)),
            ("restore-to-ready (kvmlab)", seconds(f.restore_ready)),
            ("baseline: bare -incoming", seconds(f.bare_ready)),
            ("restore / start", f"{f.ratio():.3f}"),
        ]
        for what, figure in rows:
            print(f"{version:<6} {what:<28} {figure}")
        if f.noisy:
            print(f"{version:<6} warning: {f.noisy} runs started on a busy machine (suspect)")
    if args.backend == "qemu" and "7.2" in results:
        ratio = results["7.2"].ratio()
        print(
            f"goal restore-to-ready <= {GOAL}x start-to-ready on 7.2:"
            f" {'met' if ratio <= GOAL else 'NOT met'} ({ratio:.3f});"
            " baseline = the same command line started by hand with -incoming (fd: or file:)"
            " of the same state file"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
