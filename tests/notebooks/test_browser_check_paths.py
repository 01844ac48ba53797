"""The browser check's rule on temporary paths: state directories fail, the checkout does not.

A notebook that shows ``/tmp/kvmlab-notebook-x1y2z3w4/...`` shows the reader a path that
belonged to one run. The project's own checkout may sit in the temporary folder too (a CI
clone under ``/tmp``), and then the fake kvm's path in its virtualenv is no such state.
The pattern is a JavaScript regular expression; these cases mean the same in Python's ``re``.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import pytest
from helpers_tools import load_tool

pytest.importorskip("nbformat", reason="the browser check needs nbformat (notebooks extra)")
TOOL = load_tool("check_notebooks_browser")

TEMP = tempfile.gettempdir().rstrip("/")
INSIDE = Path(TEMP) / "kvmlab-ci-check" / "work" / "main"
OUTSIDE = Path("/check/work/main")


@pytest.mark.parametrize("project", [INSIDE, OUTSIDE], ids=["checkout-in-temp", "elsewhere"])
@pytest.mark.parametrize(
    ("shown", "flagged"),
    [
        (f"{TEMP}/kvmlab-notebook-x1y2z3w4/ctrl/guest1.monitor", True),
        (f"{TEMP}/kvmlab-notebook-x1y2z3w4", True),
        (f"{TEMP}/nb-abcd_123/kvmlab-start-q9w8e7r6", True),
        (f"{TEMP}/up", False),
        (f"{TEMP}/up-1 is the script", False),
    ],
)
def test_state_directories_are_flagged_wherever_the_checkout_is(
    project: Path, shown: str, flagged: bool
) -> None:
    pattern = TOOL.temp_dir_pattern(project)
    assert bool(re.search(pattern, f"state in {shown}")) is flagged


def test_the_checkout_in_the_temporary_folder_is_not_a_state_directory() -> None:
    fake_kvm = f"{INSIDE}/.nox/notebooks/bin/kvmlab-fake-kvm"
    assert not re.search(TOOL.temp_dir_pattern(INSIDE), fake_kvm)
    # The same path is a temporary one to a project that lives elsewhere.
    assert re.search(TOOL.temp_dir_pattern(OUTSIDE), fake_kvm)
