"""How long the whole golden comparison takes: every case on every profile, no real QEMU.

The budget is 5 s on the 2-core reference machine, so that the golden suite can run
on every change. Three figures:

- ``cold``: :func:`kvmlab.golden.cases.compare_all` once in this fresh process, including
  loading every profile (parsing the recorded help texts) and reading every case file;
- ``warm``: the median of further runs (profiles and cases cached, golden files re-read);
- ``pytest``: ``pytest tests/golden/test_golden_argv.py`` as a subprocess, start to
  end, which is what a developer waits for (``--no-pytest`` skips it).

Exit status 1 when a figure is over the budget.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from kvmlab.golden.cases import compare_all, golden_profiles

BUDGET_SECONDS = 5.0
ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-pytest", action="store_true", help="skip the pytest subprocess")
    args = parser.parse_args()

    profiles = golden_profiles()
    started = time.perf_counter()
    report = compare_all(profiles=profiles)
    cold = time.perf_counter() - started
    if not report.ok:
        print(report, file=sys.stderr)
        return 1
    warm = statistics.median(
        compare_all(profiles=profiles).seconds for _ in range(max(1, args.rounds))
    )
    figures = {"cold (in process)": cold, "warm (median)": warm}
    if not args.no_pytest:
        started = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                "tests/golden/test_golden_argv.py",
            ],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        figures["pytest (subprocess)"] = time.perf_counter() - started
    print(
        f"golden comparison: {report.checked} (case, profile) pairs,"
        f" {report.refused} refusals, profiles {', '.join(report.profiles)}"
    )
    for name, seconds in figures.items():
        verdict = "ok" if seconds < BUDGET_SECONDS else "OVER BUDGET"
        print(f"{name:<22} {seconds:7.3f} s  ({verdict}, budget {BUDGET_SECONDS:g} s)")
    return 0 if all(seconds < BUDGET_SECONDS for seconds in figures.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
