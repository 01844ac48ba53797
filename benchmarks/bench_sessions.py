"""Wall time of each nox session, serial and with pytest-xdist: what CI and a developer wait for.

The ``tests`` and ``qemu10`` sessions run pytest-xdist by default (a worker more than the
machine has cores); each of them is run twice here, side by side: ``nox -s NAME -- -n 0``
(one process) and ``nox -s NAME`` (xdist).
The other sessions have no pytest to spread and run once. Virtualenvs are reused (nox's
default here), so the figures are the sessions' own work plus a no-op install.

This takes a while (the whole suite twice): it is not part of ``nox -s bench``. Run it on a
machine doing nothing else, or read the load averages it prints beside each figure.

Usage: ``python benchmarks/bench_sessions.py [--session NAME ...] [--order serial-first]``
(``CI=true`` is passed on, as ``.ci/run`` runs it).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
XDIST_SESSIONS = ("tests", "qemu10")
DEFAULT = ("tests", "qemu10", "notebooks", "lint", "typecheck")


def run(session: str, extra: list[str]) -> tuple[float, int, float]:
    """Seconds, exit status and the 1-minute load average at the start."""
    nox = shutil.which("nox") or "nox"
    load = os.getloadavg()[0]
    started = time.perf_counter()
    done = subprocess.run(
        [nox, "-s", session, *(["--", *extra] if extra else [])],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
    )
    return time.perf_counter() - started, done.returncode, load


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--session", action="append", help="a session (repeatable)")
    parser.add_argument(
        "--order",
        choices=("serial-first", "xdist-first"),
        default="serial-first",
        help="which mode of an xdist session runs first",
    )
    args = parser.parse_args()
    sessions = args.session or list(DEFAULT)
    rows = []
    failed = False
    for session in sessions:
        modes = (
            [("serial", ["-n", "0"]), ("xdist", [])] if session in XDIST_SESSIONS else [("-", [])]
        )
        if args.order == "xdist-first":
            modes.reverse()
        for mode, extra in modes:
            seconds, status, load = run(session, extra)
            failed |= status != 0
            rows.append((session, mode, seconds, status, load))
            print(
                f"  {session} {mode}: {seconds:.1f} s (exit {status}, load {load:.2f})",
                file=sys.stderr,
                flush=True,
            )
    print(f"nox sessions, one run each, {os.cpu_count()} CPUs, CI={os.environ.get('CI', '')}")
    print(f"{'session':<10} {'mode':<7} {'wall':>9} {'exit':>5} {'load at start':>14}")
    for session, mode, seconds, status, load in rows:
        print(f"{session:<10} {mode:<7} {seconds:8.1f}s {status:>5} {load:14.2f}")
    for session in sessions:
        times = {mode: s for name, mode, s, _, _ in rows if name == session}
        if "serial" in times and "xdist" in times:
            print(f"{session}: xdist {times['serial'] / times['xdist']:.2f}x faster than serial")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
