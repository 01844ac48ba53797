"""The stored notebooks are clean: nbformat v4, the python3 kernel, no outputs, no counts.

Outputs in a stored notebook are stale the moment kvmlab changes, hold host paths and pids,
and turn every review into noise; ``tools/run_notebooks.py`` (the ``notebooks`` nox session)
is what proves they still run. This checks the files themselves with plain JSON, so it runs
in the ``tests`` session too, where nbformat is not installed; with nbformat present the
full schema is validated as well.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
EXPECTED = (
    "01-explore-configurations.ipynb",
    "02-lifecycle-on-the-fake.ipynb",
    "03-real-guest.ipynb",
    "04-capability-matrix.ipynb",
    "05-migration.ipynb",
    "06-explorer.ipynb",
    "07-snapshots.ipynb",
)


def _load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((NOTEBOOKS / name).read_text(encoding="utf-8"))
    return data


def test_the_expected_notebooks_are_there() -> None:
    found = sorted(path.name for path in NOTEBOOKS.glob("*.ipynb"))
    assert found == sorted(EXPECTED)


@pytest.mark.parametrize("name", EXPECTED)
def test_notebook_is_v4_with_the_python3_kernel(name: str) -> None:
    nb = _load(name)
    assert nb["nbformat"] == 4
    assert nb["nbformat_minor"] >= 4
    kernelspec = nb["metadata"]["kernelspec"]
    assert kernelspec["name"] == "python3"
    assert kernelspec.get("language") == "python"
    assert nb["cells"], "a notebook without cells"
    for cell in nb["cells"]:
        assert cell["cell_type"] in {"code", "markdown"}
        assert "source" in cell and "metadata" in cell


@pytest.mark.parametrize("name", EXPECTED)
def test_notebook_has_no_outputs_and_no_execution_counts(name: str) -> None:
    for index, cell in enumerate(_load(name)["cells"]):
        if cell["cell_type"] != "code":
            continue
        assert cell["outputs"] == [], f"{name} cell {index} has outputs: clear them"
        assert cell["execution_count"] is None, f"{name} cell {index} has an execution count"
        assert "execution" not in cell["metadata"], f"{name} cell {index} has timing metadata"


@pytest.mark.parametrize("name", EXPECTED)
def test_notebook_never_exits_the_kernel(name: str) -> None:
    # A notebook that cannot run here says why and carries on (notebook 3 without QEMU).
    source = "\n".join(
        "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        for cell in _load(name)["cells"]
        if cell["cell_type"] == "code"
    )
    for forbidden in ("sys.exit", "SystemExit", "os._exit", "exit()"):
        assert forbidden not in source


@pytest.mark.parametrize("name", EXPECTED)
def test_notebook_is_valid_nbformat(name: str) -> None:
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)


def test_every_notebook_is_documented() -> None:
    guide = (ROOT / "docs" / "notebooks.md").read_text(encoding="utf-8")
    for name in EXPECTED:
        assert name in guide
