"""kvmlab's pytest plugin, registered through the ``pytest11`` entry point.

Importing it has no side effects: fixtures only act when a test asks for them.
"""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "qemu: needs a real qemu-system-x86_64 (skipped without one, fails under CI=true)",
    )
