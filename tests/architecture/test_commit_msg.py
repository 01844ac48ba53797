"""The commit-msg hook (tools/check_commit_msg.py): subjects of at most 72 characters."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers_tools import load_tool

PROJECT = Path(__file__).resolve().parents[2]
SCRIPT = PROJECT / "tools" / "check_commit_msg.py"


hook = load_tool("check_commit_msg")


@pytest.mark.parametrize(
    "message",
    [
        "x" * 72,
        "docs: a short subject\n\nThe body says why; its lines may be of any length " * 3,
        "é" * 72 + "\n",  # characters, not bytes
        "# a comment git drops\n\nsubject after a comment\n",
        "fixup! " + "x" * 72,
        "",  # git refuses an empty message itself
        "subject\n# Please enter the commit message\n" + hook.SCISSORS + "\ndiff --git a b\n",
    ],
)
def test_accepted(message: str) -> None:
    assert hook.problems(message) == []


@pytest.mark.parametrize(
    ("message", "why"),
    [
        ("x" * 73, "73 characters"),
        ("x" * 73 + "\n\nbody\n", "73 characters"),
        ("\n\n" + "y" * 80 + "\n", "80 characters"),
        ("squash! " + "x" * 73, "73 characters"),
        ("subject\nbody right below it\n", "blank line"),
    ],
)
def test_refused(message: str, why: str) -> None:
    found = hook.problems(message)
    assert len(found) == 1
    assert why in found[0]


def run_hook(tmp_path: Path, message: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "COMMIT_EDITMSG"
    path.write_text(message, encoding="utf-8")
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_the_hook_refuses_a_long_subject_with_exit_1(tmp_path: Path) -> None:
    result = run_hook(tmp_path, "z" * 73 + "\n\nwhy\n")
    assert result.returncode == 1
    assert result.stderr.startswith("commit message refused: the subject is 73 characters")


def test_the_hook_accepts_a_72_character_subject(tmp_path: Path) -> None:
    result = run_hook(tmp_path, "z" * 72 + "\n\nwhy\n")
    assert (result.returncode, result.stderr) == (0, "")


def test_an_unreadable_file_is_exit_2(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path / "missing")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "cannot read" in result.stderr


def test_pre_commit_runs_it_at_the_commit_msg_stage() -> None:
    config = (PROJECT / ".pre-commit-config.yaml").read_text(encoding="utf-8")
    assert "tools/check_commit_msg.py" in config
    assert "commit-msg" in config
