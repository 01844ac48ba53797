"""The listing reads as the pipeline: stages are packages, modules stay small.

A flat folder of thirty modules hides the pipeline, and a module of a thousand lines
usually does several jobs; both crept in before these checks existed. The limits are
the project's own: at most 600 lines a module, at most 6 plain modules at the top of
``kvmlab/`` and 12 at the top of ``kvmlab/fake/`` (packages hold the rest).
"""

from __future__ import annotations

from pathlib import Path

import pytest

import kvmlab

PACKAGE = Path(kvmlab.__file__).resolve().parent
MAX_LINES = 600
MAX_TOP_MODULES = {PACKAGE: 6, PACKAGE / "fake": 12}


def modules() -> list[Path]:
    return sorted(path for path in PACKAGE.rglob("*.py") if "__pycache__" not in path.parts)


@pytest.mark.parametrize("path", modules(), ids=lambda path: str(path.relative_to(PACKAGE)))
def test_no_module_is_over_600_lines(path: Path) -> None:
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(PACKAGE)} has {lines} lines: split it"


@pytest.mark.parametrize("folder", list(MAX_TOP_MODULES), ids=lambda path: path.name)
def test_few_plain_modules_at_the_top(folder: Path) -> None:
    plain = sorted(path.name for path in folder.glob("*.py"))
    assert len(plain) <= MAX_TOP_MODULES[folder], plain


def test_every_stage_is_a_package() -> None:
    stages = {"spec", "runtime", "host", "channels", "guest", "golden", "lifecycle", "cli"}
    packages = {path.parent.name for path in PACKAGE.glob("*/__init__.py")}
    assert stages <= packages
