"""A new user's fast guest from the command line, against the same kernel booted by a bare QEMU.

Two sides boot the test guest (kernel and initramfs) and the clock stops at the first
``KVMLAB-BOOT-OK`` on the serial line:

- **cli**: what README.md tells a new user to type, in a shell: the instance file is written
  once from ``kvmlab guest build --json`` (its ``hvparams``: Q35, ``-nodefaults``, qboot, a quiet
  kernel), then each run times ``kvmlab start vm1.json && kvmlab console vm1 --expect
  KVMLAB-BOOT-OK``, two Python processes included, on a fresh state directory;
- **verbose**: ``qemu-system-x86_64 -m 256 -nographic -kernel vmlinuz -initrd I -append
  console=ttyS0``: the kernel as Debian's package ships it (the bzImage ``vmlinuz``, which
  a user would pass), the kernel's default verbosity, QEMU's default machine and devices,
  read from its stdout (``-accel`` as kvmlab chose, so both sides run on one accelerator);
- **verbose, unpacked**: the same with the ``vmlinux`` that ``kvmlab guest build`` unpacks
  from that ``vmlinuz`` (the kernel the cli side boots), shown so that the share of the
  unpacking in the ratio is visible; the goal is measured against the first.

Goal: the cli median at most 0.85x the verbose one. Runs alternate (cli, verbose, cli, ...),
each after the machine is quiet (``bench_boot.wait_quiet``), so drift hits both sides alike;
one untimed warm-up of each comes first (page cache, kvmlab's probe caches). kvmlab's
modules are compiled to bytecode first, as installing a package does: an editable checkout
run with ``PYTHONDONTWRITEBYTECODE`` set would otherwise compile them again in every command
(about 25 ms each here), a cost no installed kvmlab pays. The launch
figure of the cli side (``kvmlab start`` returning) shows what the command line's own
start-up costs.

Usage: ``python benchmarks/bench_cli_boot.py [--runs 7] [--binary PATH]``. Never beside
another QEMU boot on a 2-core machine.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_boot import MARKER, accelerator_of, become_subreaper, reap, run_minimal, wait_quiet

import kvmlab as kvmlab_package
from kvmlab.guest.build import default_cache_dir
from kvmlab.guest.sources import find_kernel
from kvmlab.host.backends import find_qemu

NAME = "vm1"


def kvmlab_command() -> str:
    """The ``kvmlab`` console script of this environment (as a new user's shell finds it)."""
    found = shutil.which("kvmlab", path=os.path.dirname(sys.executable))
    return found or shutil.which("kvmlab") or "kvmlab"


def instance_file(directory: Path, kvmlab: str) -> Path:
    """``vm1.json`` from ``kvmlab guest build --json``, as README.md writes it."""
    out = subprocess.run(
        [kvmlab, "guest", "build", "--json"], check=True, capture_output=True, text=True
    ).stdout
    guest = json.loads(out)
    path = directory / "vm1.json"
    path.write_text(
        json.dumps(
            {
                "name": NAME,
                "memory": 256,
                "nics": [{"mac": "52:54:00:12:34:56", "mode": "user"}],
                "hvparams": guest["hvparams"],
            }
        )
    )
    return path


def run_cli(kvmlab: str, file: Path, env: dict[str, str], timeout: float) -> tuple[float, float]:
    """One ``kvmlab start`` + ``kvmlab console --expect``: seconds to the marker, to the start."""
    state = Path(tempfile.mkdtemp(prefix="kl-cli-"))
    run_env = {**env, "KVMLAB_STATE_DIR": str(state)}
    try:
        started = time.time()
        subprocess.run([kvmlab, "start", str(file)], check=True, env=run_env, capture_output=True)
        launched = time.time()
        subprocess.run(
            [kvmlab, "console", NAME, "--expect", MARKER, "--timeout", str(timeout)],
            check=True,
            env=run_env,
            capture_output=True,
        )
        elapsed = time.time() - started
        subprocess.run(
            [kvmlab, "stop", NAME, "--force"], check=False, env=run_env, capture_output=True
        )
        reap()
        return elapsed, launched - started
    finally:
        shutil.rmtree(state, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=7, help="timed runs per side (default 7)")
    parser.add_argument("--binary", help="the QEMU binary (default: the system's)")
    parser.add_argument("--timeout", type=float, default=90.0, help="seconds per boot")
    parser.add_argument("--quiet-wait", type=float, default=60.0, help="seconds to wait for quiet")
    args = parser.parse_args()
    binary = args.binary or find_qemu()
    if binary is None:
        print("no qemu-system-x86_64", file=sys.stderr)
        return 1
    become_subreaper()
    compileall.compile_dir(Path(kvmlab_package.__file__).parent, quiet=1)  # as an install does
    kvmlab = kvmlab_command()
    env = {**os.environ, "KVMLAB_QEMU": binary}
    with tempfile.TemporaryDirectory(prefix="kl-cli-bench-") as tmp:
        file = instance_file(Path(tmp), kvmlab)
        hv = json.loads(file.read_text())["hvparams"]
        # The accelerator kvmlab runs this guest on, for the verbose side too.
        probe = subprocess.run(
            [kvmlab, "generate", str(file), "--argv"], check=True, capture_output=True, text=True
        ).stdout.split()
        accel = accelerator_of(probe)
        vmlinuz = find_kernel(None, default_cache_dir(), lambda _: None).vmlinuz
        verbose = verbose_command(binary, accel, str(vmlinuz), hv["initrd_path"])
        unpacked = verbose_command(binary, accel, hv["kernel_path"], hv["initrd_path"])
        run_cli(kvmlab, file, env, args.timeout)  # warm-ups
        run_minimal(verbose, args.timeout)
        run_minimal(unpacked, args.timeout)
        cli: list[tuple[float, float]] = []
        bare: list[float] = []
        bare_unpacked: list[float] = []
        for n in range(args.runs):
            wait_quiet(args.quiet_wait)
            cli.append(run_cli(kvmlab, file, env, args.timeout))
            wait_quiet(args.quiet_wait)
            bare.append(run_minimal(verbose, args.timeout).total)
            wait_quiet(args.quiet_wait)
            bare_unpacked.append(run_minimal(unpacked, args.timeout).total)
            print(
                f"  run {n + 1}/{args.runs}: cli {cli[-1][0]:.3f} s"
                f" (start {cli[-1][1]:.3f} s), verbose {bare[-1]:.3f} s,"
                f" verbose unpacked {bare_unpacked[-1]:.3f} s",
                file=sys.stderr,
                flush=True,
            )
    cli_total = statistics.median(t for t, _ in cli)
    cli_start = statistics.median(s for _, s in cli)
    bare_total = statistics.median(bare)
    unpacked_total = statistics.median(bare_unpacked)
    print(f"binary {binary}, accel {accel}, {args.runs} runs each (medians)")
    print(f"  verbose bare QEMU:  {bare_total:.3f} s   (-m 256 -nographic -kernel {vmlinuz.name})")
    print(
        f"  same, unpacked:     {unpacked_total:.3f} s   (-kernel {Path(hv['kernel_path']).name})"
    )
    print(f"  kvmlab CLI:         {cli_total:.3f} s   (kvmlab start returned at {cli_start:.3f} s)")
    print(f"  ratio cli/verbose:  {cli_total / bare_total:.2f}x (goal <= 0.85x)")
    print(f"  ratio cli/unpacked: {cli_total / unpacked_total:.2f}x")
    return 0


def verbose_command(binary: str, accel: str, kernel: str, initrd: str) -> list[str]:
    """A bare QEMU booting ``kernel`` at the kernel's default verbosity."""
    command = [binary, "-m", "256", "-nographic"]
    if accel in ("tcg", "kvm"):
        command += ["-accel", accel]
    return [*command, "-kernel", kernel, "-initrd", initrd, "-append", "console=ttyS0"]


if __name__ == "__main__":
    sys.exit(main())
