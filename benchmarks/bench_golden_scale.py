"""Does the golden suite scale? Time per case with the 69 cases, and with 10x as many.

Cases grow: every hypervisor change adds some, and the suite must stay worth running on
every change. This benchmark copies the source tree into a scratch directory, adds
``(factor - 1)`` generated variants of every case (the same instance under another name,
so another command line; a refused case is copied as it is, under another name), writes
their golden files with :func:`kvmlab.golden.cases.regenerate_case`, and times in that copy:

- ``pytest``: ``pytest -p no:cacheprovider tests/golden/test_golden_argv.py`` (serial; and
  with ``-n auto`` unless ``--no-xdist``), start to end, as a developer runs it;
- ``compare_all``: :func:`kvmlab.golden.cases.compare_all` in this process (no pytest).

Each figure is the median of ``--rounds`` runs, for the original cases and the scaled
set, alternating, then divided by the number of cases. The target: time per case flat,
within 1.5x, from 69 to 690 cases. Ganeti's profiles are used when the shared fixtures
are there (the copy links them), as in the suite.

Usage: ``python benchmarks/bench_golden_scale.py [--factor 10] [--rounds 3] [--no-xdist]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kvmlab.golden.cases import (
    compare_all,
    default_cases_dir,
    default_ganeti_dir,
    discover_cases,
    golden_profiles,
    regenerate_case,
)
from kvmlab.spec.instance import Instance

ROOT = Path(__file__).resolve().parents[1]
TARGET = 1.5


def make_tree(scratch: Path, factor: int) -> Path:
    """A copy of the source tree with ``factor`` times the cases and their golden files."""
    tree = scratch / "kvmlab"
    ignore = shutil.ignore_patterns(".venv", ".nox", ".git", "__pycache__", "*.egg-info")
    for part in ("kvmlab", "tests", "fixtures", "pyproject.toml"):
        source = ROOT / part
        if source.is_dir():
            shutil.copytree(source, tree / part, ignore=ignore)
        else:
            shutil.copy2(source, tree / part)
    ganeti = default_ganeti_dir()
    if ganeti.is_dir():  # the suite reads PROJECT/../shared/fixtures/ganeti
        (scratch / "shared" / "fixtures").mkdir(parents=True)
        (scratch / "shared" / "fixtures" / "ganeti").symlink_to(ganeti)
    cases_dir = tree / "fixtures" / "cases"
    for case in discover_cases(default_cases_dir()):
        loaded = case.loaded
        for n in range(1, factor):
            name = f"{case.name}-x{n}"
            if isinstance(loaded, Instance):
                data = loaded.model_copy(update={"name": name}).model_dump(mode="json")
                (cases_dir / f"{name}.json").write_text(json.dumps(data, indent=1))
            else:  # a refused case stays refused for the same reason
                shutil.copy2(case.path, cases_dir / f"{name}{case.path.suffix}")
    golden_dir = tree / "fixtures" / "golden"
    profiles = golden_profiles(ganeti if ganeti.is_dir() else None)
    for case in discover_cases(cases_dir):
        for profile in profiles:
            regenerate_case(case, profile, golden_dir)
    return tree


def time_pytest(tree: Path, extra: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *extra]
    started = time.perf_counter()
    subprocess.run(
        [*argv, "tests/golden/test_golden_argv.py"],
        cwd=tree,
        env=env,
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - started


def time_compare_all(tree: Path) -> float:
    """compare_all on the tree's cases and golden files, in a fresh interpreter."""
    code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from kvmlab.golden.cases import compare_all, golden_profiles, default_ganeti_dir\n"
        "t = time.perf_counter()\n"
        "r = compare_all(profiles=golden_profiles(default_ganeti_dir()))\n"
        "assert r.ok, r\n"
        "print(time.perf_counter() - t)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tree, env=env, check=True, capture_output=True, text=True
    )
    return float(out.stdout.strip())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--factor", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-xdist", action="store_true", help="skip the -n auto figures")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="kvmlab-golden-scale-") as tmp:
        scratch = Path(tmp)
        (scratch / "one").mkdir()
        (scratch / "many").mkdir()
        started = time.perf_counter()
        trees = {
            1: make_tree(scratch / "one", 1),
            args.factor: make_tree(scratch / "many", args.factor),
        }
        print(f"trees made in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        counts = {f: len(discover_cases(t / "fixtures" / "cases")) for f, t in trees.items()}
        pairs = {f: compare_all(t / "fixtures" / "cases", t / "fixtures" / "golden",
                                golden_profiles(default_ganeti_dir())).checked
                 for f, t in trees.items()}  # fmt: skip
        measures: dict[str, dict[int, list[float]]] = {"compare_all": {}, "pytest": {}}
        if not args.no_xdist:
            measures["pytest -n auto"] = {}
        for _ in range(args.rounds):
            for factor, tree in trees.items():  # alternate: load drift hits both alike
                measures["compare_all"].setdefault(factor, []).append(time_compare_all(tree))
                measures["pytest"].setdefault(factor, []).append(time_pytest(tree, []))
                if not args.no_xdist:
                    measures["pytest -n auto"].setdefault(factor, []).append(
                        time_pytest(tree, ["-n", "auto"])
                    )
                print(f"  round done for {counts[factor]} cases", file=sys.stderr, flush=True)

    small, large = 1, args.factor
    print(
        f"golden suite: {counts[small]} and {counts[large]} cases"
        f" ({pairs[small]} and {pairs[large]} (case, profile) pairs),"
        f" median of {args.rounds} rounds, load {os.getloadavg()[0]:.2f}"
    )
    header = (
        f"{'what':<16} {'total ' + str(counts[small]):>10} {'total ' + str(counts[large]):>10}"
        f" {'ms/case ' + str(counts[small]):>12} {'ms/case ' + str(counts[large]):>12}"
        f" {'growth':>7} {'ms/added case':>14}"
    )
    print(header)
    print("-" * len(header))
    worst = 0.0
    for what, by_factor in measures.items():
        totals = {f: statistics.median(v) for f, v in by_factor.items()}
        per_case = {f: totals[f] / counts[f] * 1000 for f in totals}
        growth = per_case[large] / per_case[small]
        # What one more case costs, free of the fixed start-up (interpreter, collection).
        marginal = (totals[large] - totals[small]) / (counts[large] - counts[small]) * 1000
        worst = max(worst, growth)
        print(
            f"{what:<16} {totals[small]:9.2f}s {totals[large]:9.2f}s"
            f" {per_case[small]:11.2f} {per_case[large]:11.2f} {growth:6.2f}x {marginal:13.2f}"
        )
    print(
        f"target: time per case within {TARGET}x from {counts[small]} to {counts[large]} cases:"
        f" {'met' if worst <= TARGET else 'NOT met'} (worst {worst:.2f}x; below 1: the fixed"
        " start-up is spread over more cases)"
    )
    return 0 if worst <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
