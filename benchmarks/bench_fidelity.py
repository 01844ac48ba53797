"""Agreement between the fake kvm and real QEMU on generated command lines (docs/fake-kvm.md).

Draws ``--count`` command lines from the differential suite's grammar
(``tests/differential/helpers_differential.py``), starts each paused under the real binary
and under the fake imitating its version, and prints the share on which they agree (both
start, or both refuse with the same message) and every disagreement left. Not a timed
test: it measures fidelity, so a change to the fake can be compared before and after::

    python benchmarks/bench_fidelity.py                      # QEMU 7.2, 500 lines
    python benchmarks/bench_fidelity.py --qemu /opt/kvmlab/qemu-10.0/bin/qemu-system-x86_64
    python benchmarks/bench_fidelity.py --fake-path /tmp/old-checkout   # another fake
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "differential"))

from helpers_differential import Runner, deliberate, generate, qemu_binary  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--qemu", default=qemu_binary(), help="the real binary")
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument(
        "--fake-path", help="run the fake from this source tree (PYTHONPATH) instead"
    )
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="kvmlab-fid-", dir="/tmp"))
    try:
        runner = Runner(args.qemu, workdir)
        if args.fake_path:
            runner.env["PYTHONPATH"] = os.path.abspath(args.fake_path)
        rng = random.Random(args.seed)
        agreed = compared = 0
        skipped: dict[str, int] = {}
        for _ in range(args.count):
            argv = generate(rng)
            name = deliberate(argv)
            if name is not None:
                skipped[name] = skipped.get(name, 0) + 1
                continue
            verdict = runner.compare(argv)
            compared += 1
            if verdict.agree:
                agreed += 1
            else:
                print(verdict.report())
        share = 100 * agreed / compared if compared else 0.0
        print(
            f"{runner.profile}: {agreed}/{compared} agree ({share:.1f} %);"
            f" skipped as deliberate differences: {skipped or 'none'}"
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
