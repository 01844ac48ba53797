"""Agreement between the fake kvm and real QEMU on generated command lines and QMP sequences.

Draws ``--count`` command lines from the differential suite's grammar
(``tests/differential/helpers_differential.py``), starts each paused under the real binary
and under the fake imitating its version, and prints the share on which they agree (both
start, or both refuse with the same message) and every disagreement left. With ``--qmp`` it
draws QMP sequences instead (``tests/differential/helpers_qmp.py``, 200 by default) and sends
each to a paused QEMU and to the fake: they agree when every step has the same outcome
(success or the same error class) and the queries the same value where kvmlab reads it.
Not a timed test: it measures fidelity, so a change to the fake can be compared before and
after (docs/fake-kvm.md)::

    python benchmarks/bench_fidelity.py                      # QEMU 7.2, 500 lines
    python benchmarks/bench_fidelity.py --qemu /opt/kvmlab/qemu-10.0/bin/qemu-system-x86_64
    python benchmarks/bench_fidelity.py --qmp                # QEMU 7.2, 200 QMP sequences
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

import helpers_qmp  # noqa: E402
from helpers_differential import Runner, deliberate, generate, qemu_binary  # noqa: E402


def qmp_agreement(runner: helpers_qmp.Runner, count: int, seed: int) -> str:
    """Compare ``count`` generated QMP sequences; print each disagreement, return the summary."""
    rng = random.Random(seed)
    agreed = compared = steps = steps_agreed = refusals = same_words = 0
    skipped: dict[str, int] = {}
    for _ in range(count):
        sequence = helpers_qmp.generate(rng)
        name = helpers_qmp.deliberate(sequence)
        if name is not None:
            skipped[name] = skipped.get(name, 0) + 1
            continue
        verdict = runner.compare(sequence)
        compared += 1
        for mine, theirs in zip(verdict.qemu.replies, verdict.fake.replies, strict=False):
            steps += 1
            steps_agreed += (mine.outcome, mine.value) == (theirs.outcome, theirs.value)
            if mine.outcome != "ok" and mine.outcome == theirs.outcome:
                refusals += 1
                same_words += mine.desc == theirs.desc
        if verdict.agree:
            agreed += 1
        else:
            print(verdict.report())
    share = 100 * agreed / compared if compared else 0.0
    step_share = 100 * steps_agreed / steps if steps else 0.0
    return (
        f"{runner.profile} QMP: {agreed}/{compared} sequences agree ({share:.1f} %),"
        f" {steps_agreed}/{steps} steps ({step_share:.1f} %),"
        f" {same_words}/{refusals} shared refusals in the same words;"
        f" skipped as deliberate differences: {skipped or 'none'}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--qemu", default=qemu_binary(), help="the real binary")
    parser.add_argument("--count", type=int, help="how many (500 lines, 200 sequences)")
    parser.add_argument("--qmp", action="store_true", help="compare QMP sequences instead")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument(
        "--fake-path", help="run the fake from this source tree (PYTHONPATH) instead"
    )
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="kvmlab-fid-", dir="/tmp"))
    try:
        if args.qmp:
            qmp_runner = helpers_qmp.Runner(args.qemu, workdir)
            if args.fake_path:
                qmp_runner.env["PYTHONPATH"] = os.path.abspath(args.fake_path)
            print(qmp_agreement(qmp_runner, args.count or 200, args.seed))
            return 0
        runner = Runner(args.qemu, workdir)
        if args.fake_path:
            runner.env["PYTHONPATH"] = os.path.abspath(args.fake_path)
        rng = random.Random(args.seed)
        agreed = compared = 0
        skipped: dict[str, int] = {}
        for _ in range(args.count or 500):
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
