"""Shared test configuration: hypothesis profiles, fixture folders, QEMU requirements."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

PROJECT = Path(__file__).resolve().parents[1]
GANETI_FIXTURES = PROJECT.parent / "shared" / "fixtures" / "ganeti"
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}

# CI draws more examples; deadlines are off because a 2-core CI machine running
# QEMU beside the suite has noisy timings (speed is measured by `nox -s bench`).
settings.register_profile(
    "ci", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=100, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if IN_CI else "dev"))


@pytest.fixture(scope="session")
def ganeti_fixtures() -> Path:
    """Ganeti's recorded QEMU help texts, read in place (they are Ganeti's, never copied).

    Only for the tests that parse those raw texts (and check the facts profiles derived
    from them): everything else uses the committed ``fixtures/profiles/ganeti-*`` and
    ``fixtures/legacy-runtimes/``, and a fixture file missing there is an error.
    """
    if not GANETI_FIXTURES.is_dir():
        pytest.skip(
            f"raw-text test: Ganeti's recorded QEMU help texts are not at {GANETI_FIXTURES}"
            " (optional; the facts profiles derived from them are committed)"
        )
    return GANETI_FIXTURES


def require_binary(path: str) -> str:
    """Skip when ``path`` is missing on a laptop; fail under CI=true."""
    found = shutil.which(path)
    if found is None:
        message = f"{path} not found (install qemu-system-x86)"
        if IN_CI:
            pytest.fail(f"CI=true and {message}")
        pytest.skip(message)
    return found


@pytest.fixture(scope="session")
def qemu_binary() -> str:
    """The system's qemu-system-x86_64 (QEMU 7.2 on Debian 12)."""
    return require_binary("qemu-system-x86_64")
