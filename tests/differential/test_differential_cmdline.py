"""The fake kvm starts what QEMU starts and refuses what it refuses, in its words.

Each command line runs paused under the real binary (``$KVMLAB_QEMU``, else the system's
QEMU 7.2) and under the fake imitating that version's recorded profile; both must start,
or both refuse with the same message. Hypothesis draws new lines from the grammar of
``helpers_differential``; ``fixtures/differential/cmdlines.json`` replays the cases found
so far at every run. ``benchmarks/bench_fidelity.py`` measures agreement on many more.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers_differential import DELIBERATE, Runner, deliberate, generate, qemu_binary
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.qemu

CORPUS = Path(__file__).resolve().parents[2] / "fixtures" / "differential" / "cmdlines.json"


def corpus() -> list[list[str]]:
    cases: list[list[str]] = json.loads(CORPUS.read_text(encoding="utf-8"))["cases"]
    return cases


@pytest.fixture(scope="module")
def runner() -> Iterator[Runner]:
    binary = qemu_binary()
    if not os.access(binary, os.X_OK):
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and no QEMU at {binary}")
        pytest.skip(f"no QEMU at {binary}")
    workdir = Path(tempfile.mkdtemp(prefix="kvmlab-diff-", dir="/tmp"))  # short socket paths
    try:
        yield Runner(binary, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.mark.parametrize("argv", corpus(), ids=lambda argv: " ".join(argv)[:60])
def test_corpus_agrees(runner: Runner, argv: list[str]) -> None:
    verdict = runner.compare(argv)
    assert verdict.agree, verdict.report()


@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(seed=st.integers(min_value=0, max_value=2**32 - 1))
def test_generated_command_lines_agree(runner: Runner, seed: int) -> None:
    argv = generate(random.Random(seed))
    skipped = deliberate(argv)
    if skipped is not None:
        assert skipped in DELIBERATE
        return
    verdict = runner.compare(argv)
    assert verdict.agree, verdict.report()


def test_the_corpus_covers_every_new_refusal() -> None:
    text = " ".join(" ".join(argv) for argv in corpus())
    for needle in ("cache=writebak", "-cpu Haswel", "accel=foo", "if=foo", "format=qcow2"):
        assert needle in text
    for needle in ("base=foo", "-device usb-tablet", "-smp 300", "-m 100T", "-smp 0"):
        assert needle in text
