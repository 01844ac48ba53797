"""The scripts in ``tools/`` as modules, for the tests of their rules.

The tools are scripts run by path (``python tools/NAME.py``), not a package, so a test
loads one from its file; each load is a fresh module, which a test may monkeypatch freely.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

TOOLS = Path(__file__).resolve().parents[1] / "tools"


def load_tool(name: str) -> ModuleType:
    """``tools/<name>.py`` as a new module named ``name``."""
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
