"""The layer rules hold by construction: import-linter's contract, and no import cycle.

The contract (``[tool.importlinter]`` in pyproject.toml) is also run by the ``lint``
session; here it is run against the tree and against a copy with one wrong-way import,
so a contract that stopped checking anything would fail the suite.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

PROJECT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """Run ``lint-imports`` on the package under ``root`` (its own copy, not the installed one)."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--config", str(root / "pyproject.toml")],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def copy_of_the_package(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    root.mkdir()
    shutil.copytree(
        PROJECT / "kvmlab", root / "kvmlab", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(PROJECT / "pyproject.toml", root / "pyproject.toml")
    return root


def test_the_import_contract_is_kept() -> None:
    result = lint_imports(PROJECT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " 0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "wrong_import", "broken"),
    [
        # A lazy import inside a function counts like any other.
        (
            "spec/instance",
            "from kvmlab.lifecycle.hypervisor import Hypervisor",
            "kvmlab.spec.instance is not allowed",
        ),
        ("runtime/saved", "from kvmlab.display import runtime_html", "kvmlab.runtime.saved is"),
        ("runtime/generator", "from kvmlab.host.process import read_pidfile", "pure stages"),
        # Inside a stage: the saved format may not use the plan built on it.
        ("runtime/saved", "from kvmlab.runtime.plan import StartFacts", "Inside runtime"),
        (
            "lifecycle/hotplug/nic",
            "from kvmlab.lifecycle.hotplug import disk",
            "Inside lifecycle.hotplug",
        ),
        # A module written today is covered without touching the contract.
        ("runtime/brand_new", "from kvmlab.host.store import atomic_write", "pure stages"),
        ("fake", "from kvmlab.errors import KvmlabError", "kvmlab.fake is not allowed"),
        ("fake", "import pydantic", "kvmlab.fake is not allowed to import pydantic"),
    ],
)
def test_a_wrong_way_import_breaks_the_contract(
    tmp_path: Path, module: str, wrong_import: str, broken: str
) -> None:
    root = copy_of_the_package(tmp_path)
    package_dir = root / "kvmlab" / module
    target = package_dir / "__init__.py" if package_dir.is_dir() else package_dir.with_suffix(".py")
    with target.open("a", encoding="utf-8") as file:
        file.write(f"\n\ndef _wrong_way() -> object:\n    {wrong_import}\n    return None\n")
    result = lint_imports(root)
    assert result.returncode != 0, result.stdout
    assert broken in result.stdout


def strongly_connected(graph: grimp.ImportGraph, modules: set[str]) -> list[set[str]]:
    """Tarjan's algorithm over the direct imports: every group of modules that import in a ring."""
    index: dict[str, int] = {}
    lowlink: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(module: str) -> None:
        index[module] = lowlink[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in graph.find_modules_directly_imported_by(module) & modules:
            if imported not in index:
                visit(imported)
                lowlink[module] = min(lowlink[module], lowlink[imported])
            elif imported in on_stack:
                lowlink[module] = min(lowlink[module], index[imported])
        if lowlink[module] == index[module]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == module:
                    break
            if len(group) > 1:
                groups.append(group)

    for module in sorted(modules):
        if module not in index:
            visit(module)
    return groups


def test_no_module_import_cycle() -> None:
    # Lazy imports and TYPE_CHECKING imports included: a ring through either is still a
    # ring in the design, even when Python happens to resolve it at run time.
    graph = grimp.build_graph("kvmlab", cache_dir=None)
    modules = {module for module in graph.modules if module.startswith("kvmlab.")}
    assert len(modules) > 20  # the graph really holds the package
    assert strongly_connected(graph, modules) == []


def test_the_cycle_finder_finds_a_ring() -> None:
    graph = grimp.ImportGraph()
    for name in ("p.a", "p.b", "p.c", "p.d"):
        graph.add_module(name)
    graph.add_import(importer="p.a", imported="p.b")
    graph.add_import(importer="p.b", imported="p.c")
    graph.add_import(importer="p.c", imported="p.a")
    graph.add_import(importer="p.c", imported="p.d")
    assert strongly_connected(graph, {"p.a", "p.b", "p.c", "p.d"}) == [{"p.a", "p.b", "p.c"}]
