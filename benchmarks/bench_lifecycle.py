"""The fake backend's lifecycle cost: kvmlab against a bare script, and CLI start-up.

1. start -> serial ``KVMLAB-BOOT-OK`` -> stop, on the fake kvm: kvmlab's Python API
   against a bare shell script that runs the very argv kvmlab executed, polls the
   same serial log and stops the process with SIGTERM. Both stop the same way
   (kvmlab with ``force=True``: SIGTERM, then wait), so the ratio is kvmlab's own
   overhead. Runs are interleaved; medians of ``--cycles``. Target: <= 1.3x.
2. ``kvmlab --help`` and ``kvmlab list`` wall time (target < 250 ms).
3. The fake kvm's peak resident memory (VmHWM of the daemon; target < 20 MiB).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kvmlab.lifecycle.hypervisor import Hypervisor
from kvmlab.spec.instance import HvParams, Instance, Nic

INSTANCE = Instance(
    name="bench",
    memory=256,
    vcpus=2,
    nics=(Nic(mac="52:54:00:00:00:01", mode="user"), Nic(mac="52:54:00:00:00:02", mode="user")),
    hvparams=HvParams(kernel_path="", vnc_bind_address=""),
)

BARE = """#!/bin/sh
{argv} >/dev/null 2>&1 || exit 1
while ! grep -q KVMLAB-BOOT-OK {log} 2>/dev/null; do sleep 0.002; done
pid=$(cat {pidfile})
kill -TERM "$pid"
# Gone, or a zombie: nobody reaps a daemon promptly on every host (kvmlab counts
# zombies as dead too).
while [ -e /proc/$pid ] && ! grep -q ') Z' /proc/$pid/stat 2>/dev/null; do sleep 0.002; done
"""


def kvmlab_cycle(lab: Hypervisor) -> float:
    started = time.perf_counter()
    lab.start(INSTANCE)
    lab.console(INSTANCE.name).expect("KVMLAB-BOOT-OK", timeout=10, interval=0.002)
    lab.stop(INSTANCE.name, force=True)
    return time.perf_counter() - started


def bare_cycle(script: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(["sh", str(script)], check=True, env=env)
    return time.perf_counter() - started


def wall(argv: list[str], env: dict[str, str], runs: int = 10) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(argv, check=True, env=env, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cycles", type=int, default=20)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="kb-"))
    env = {**os.environ, "KVMLAB_FAKE_PROFILE": "qemu-7.2"}
    try:
        lab = Hypervisor(root / "lab", backend="fake")
        info = lab.start(INSTANCE)
        argv = info.argv
        rss = peak_rss_kib(info.pid or 0)
        lab.stop(INSTANCE.name, force=True)
        script = root / "bare.sh"
        layout = lab.layout
        script.write_text(
            BARE.format(
                argv=shlex.join(argv),
                log=shlex.quote(str(layout.serial_log(INSTANCE.name))),
                pidfile=shlex.quote(str(layout.pidfile(INSTANCE.name))),
            )
        )
        ours, bare = [], []
        for _ in range(args.cycles):
            ours.append(kvmlab_cycle(lab))
            bare.append(bare_cycle(script, env))
        ours_ms, bare_ms = statistics.median(ours) * 1e3, statistics.median(bare) * 1e3
        print(f"fake lifecycle, median of {args.cycles} interleaved cycles (start, BOOT-OK, stop):")
        print(f"  kvmlab API      {ours_ms:7.1f} ms")
        print(f"  bare script     {bare_ms:7.1f} ms")
        print(f"  ratio           {ours_ms / bare_ms:7.2f}x (target <= 1.3x)")
        kvmlab = str(Path(sys.executable).with_name("kvmlab"))
        cli_env = {**env, "KVMLAB_STATE_DIR": str(root / "lab"), "KVMLAB_BACKEND": "fake"}
        print(f"kvmlab --help     {wall([kvmlab, '--help'], cli_env) * 1e3:7.1f} ms (target < 250)")
        print(f"kvmlab list       {wall([kvmlab, 'list'], cli_env) * 1e3:7.1f} ms (target < 250)")
        print(f"fake kvm peak RSS {rss / 1024:7.1f} MiB (target < 20)")
        print(f"load average      {os.getloadavg()[0]:7.2f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
