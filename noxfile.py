"""kvmlab's sessions: ``nox`` runs what CI needs; ``nox --list`` describes them."""

from __future__ import annotations

import os

import nox

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["tests", "lint", "typecheck"]

PYTHON = "3.11"
LINT_PATHS = ["kvmlab", "tests", "noxfile.py", "benchmarks"]


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Run the test suite (real QEMU tests included when QEMU is installed; required under CI)."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs, env={"CI": os.environ.get("CI", "")})


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install("ruff>=0.5")
    session.run("ruff", "check", *LINT_PATHS)
    session.run("ruff", "format", "--check", *LINT_PATHS)


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the package."""
    session.install("-e", ".[dev]")
    session.run("mypy", "--strict", "kvmlab")


@nox.session(python=PYTHON, default=False)
def bench(session: nox.Session) -> None:
    """Speed figures: generate + to_json, from_json (medians per call)."""
    session.install("-e", ".")
    session.run("python", "benchmarks/bench_runtime.py", *session.posargs)
