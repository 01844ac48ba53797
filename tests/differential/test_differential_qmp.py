"""The fake kvm answers QMP as QEMU does: the same success or error class at each step.

Each sequence of QMP commands goes to a paused real QEMU (``$KVMLAB_QEMU``, else the
system's QEMU 7.2) and to the fake imitating its recorded profile, both started on the same
command line (``helpers_qmp.BASE``); at every step both succeed or both fail with the same
error class, the queries agree where kvmlab reads them, and ``DEVICE_DELETED`` names the
same devices. Hypothesis draws new sequences from ``helpers_qmp``'s grammar;
``fixtures/differential/qmp.json`` replays the cases found so far at every run.
``benchmarks/bench_fidelity.py --qmp`` measures agreement on many more.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers_differential import qemu_binary
from helpers_qmp import DELIBERATE, Runner, deliberate, generate
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.qemu

CORPUS = Path(__file__).resolve().parents[2] / "fixtures" / "differential" / "qmp.json"


def corpus() -> dict[str, list[dict[str, Any]]]:
    cases: dict[str, list[dict[str, Any]]] = json.loads(CORPUS.read_text(encoding="utf-8"))["cases"]
    return cases


@pytest.fixture(scope="module")
def runner() -> Iterator[Runner]:
    binary = qemu_binary()
    if not os.access(binary, os.X_OK):
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and no QEMU at {binary}")
        pytest.skip(f"no QEMU at {binary}")
    workdir = Path(tempfile.mkdtemp(prefix="kvmlab-qmpdiff-", dir="/tmp"))  # short socket paths
    try:
        yield Runner(binary, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.mark.parametrize("name", sorted(corpus()))
def test_corpus_agrees(runner: Runner, name: str) -> None:
    steps = corpus()[name]
    assert deliberate(steps) is None
    verdict = runner.compare(steps)
    assert verdict.agree, verdict.report()


@settings(
    max_examples=15,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(seed=st.integers(min_value=0, max_value=2**32 - 1))
def test_generated_sequences_agree(runner: Runner, seed: int) -> None:
    steps = generate(random.Random(seed))
    skipped = deliberate(steps)
    if skipped is not None:
        assert skipped in DELIBERATE
        return
    verdict = runner.compare(steps)
    assert verdict.agree, verdict.report()


def test_a_paused_guest_ejects_nothing(runner: Runner) -> None:
    """kvmlab waits for ``DEVICE_DELETED`` after ``device_del``: a paused guest never
    handles the ACPI eject, so neither QEMU nor the fake sends it, and the card stays."""
    steps = [{"execute": "device_del", "arguments": {"id": "nic0"}}, {"execute": "query-pci"}]
    verdict = runner.compare(steps)
    assert verdict.agree, verdict.report()
    assert verdict.fake.events == []
    assert verdict.fake.replies[-1].value == {"nic0": 3, "disk0": 4}


def test_the_corpus_covers_every_error_class() -> None:
    text = json.dumps(corpus())
    for needle in ('"device_del"', '"netdev_del"', '"closefd"', '"blockdev-del"', '"fd": true'):
        assert needle in text
    for needle in ('"query-nope"', '"migrate-set-capabilities"', '"migrate-set-parameters"'):
        assert needle in text
