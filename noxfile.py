"""kvmlab's sessions: plain ``nox`` runs everything CI needs; ``nox --list`` describes them."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nox

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["tests", "qemu10", "notebooks", "lint", "typecheck"]

PYTHON = "3.11"
LINT_PATHS = ["kvmlab", "tests", "noxfile.py", "benchmarks", "tools"]
QEMU10 = "/opt/kvmlab/qemu-10.0/bin/qemu-system-x86_64"
#: Debian's headless browser and its WebDriver, for the notebooks' browser check.
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
#: pytest-xdist with one worker more than the machine has cores: a real-QEMU or command
#: line test waits on its guest or its subprocess for a good part of its time, and with a
#: worker per core a third of the CPU time went unused (2 cores: 344 s with 2 workers,
#: 286 s with 3, 307 s with 4 as the workers crowd each other). ``worksteal`` hands an idle
#: worker the pending tests of a busy one, so the run does not end on one worker's queue.
#: Later options win: ``nox -s tests -- -n 0`` runs the suite in one process.
XDIST = ["-n", str((os.cpu_count() or 1) + 1), "--dist", "worksteal"]
#: In CI, short tracebacks: a CI log is read by its beginning and its end, and a long
#: traceback pushed a failure's cause out of that view (the report sections kvmlab's
#: plugin adds, console and QEMU log, stay whole).
TRACEBACKS = ["--tb=short"] if IN_CI else []


def write_bytecode(session: nox.Session) -> None:
    """Let Python cache compiled modules in this session, whatever the caller's environment.

    Container images often set ``PYTHONDONTWRITEBYTECODE`` (this machine's shells do), and
    uv installs without compiling: then every process of the suite (the pytest workers,
    some 600 ``kvmlab`` commands, 3800 fake kvm processes) compiled its modules from source
    again. With the cache each module is compiled once a run: the ``tests`` session's pytest
    took 285 s instead of 300 s (2 cores, 3 workers)."""
    session.env["PYTHONDONTWRITEBYTECODE"] = ""  # empty: unset, for Python


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The whole suite: properties, fake kvm, and the real-QEMU lifecycle (required under CI)."""
    write_bytecode(session)
    session.install("-e", ".[test]")
    # The skip summary in every run, so a drop in coverage shows. "-ra" is "-rs" plus
    # failures, errors and xfails: a bare "-rs" would replace pyproject's "-ra" and drop
    # the FAILED lines from the summary (a later -r wins).
    session.run("pytest", "-ra", *XDIST, *TRACEBACKS, *session.posargs)


@nox.session(python=PYTHON)
def qemu10(session: nox.Session) -> None:
    """The real-QEMU tests again, on QEMU 10.0 from bookworm-backports."""
    binary = os.environ.get("KVMLAB_QEMU10", QEMU10)
    if not Path(binary).exists():
        message = f"QEMU 10.0 not installed at {binary}: run .ci/install-qemu-backports"
        if IN_CI:
            session.error(message)
        session.skip(message)
    write_bytecode(session)
    session.install("-e", ".[test]")
    session.run(
        "pytest", "-m", "qemu", *XDIST, *TRACEBACKS, *session.posargs, env={"KVMLAB_QEMU": binary}
    )


@nox.session(python=PYTHON)
def notebooks(session: nox.Session) -> None:
    """Execute every notebook on a fresh kernel, from a copy outside the repository; then
    look at them in headless Chromium at 1280 px (screenshots in build/notebook-screenshots),
    and drive the explorer's widgets in a running JupyterLab."""
    write_bytecode(session)
    session.install("-e", ".[test,notebooks]")
    # The display tests again, now with matplotlib, pandas and ipywidgets: the charts, the
    # DataFrames and the explorer's widget.
    session.run("pytest", "-q", "-n", "auto", "tests/notebooks")
    # Not session.create_tmp(): it also sets TMPDIR, and the notebooks' state directories
    # (with QEMU's unix sockets, 107 bytes at most) would then sit as deep as the checkout.
    executed = Path(session.virtualenv.location) / "executed-notebooks"
    shutil.rmtree(executed, ignore_errors=True)
    keep = ("--keep-outputs", str(executed))
    session.run("python", "tools/run_notebooks.py", *keep, *session.posargs)
    if Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists():
        session.run(
            "python",
            "tools/check_notebooks_browser.py",
            str(executed),
            "--screenshots",
            "build/notebook-screenshots",
        )
        # The explorer answers in a real JupyterLab: change memory, see -m change.
        session.run(
            "python",
            "tools/check_explorer_jupyterlab.py",
            "--screenshots",
            "build/notebook-screenshots",
        )
    else:
        message = f"{CHROMIUM} and {CHROMEDRIVER} needed: apt-get install chromium chromium-driver"
        if IN_CI:
            session.error(message)
        session.warn(f"browser check skipped: {message}")
    # Notebook 3 must also skip cleanly on a machine without QEMU; notebook 5 then migrates
    # on the fake kvm.
    session.run(
        "python",
        "tools/run_notebooks.py",
        "--without-qemu",
        "notebooks/03-real-guest.ipynb",
        "notebooks/05-migration.ipynb",
    )


@nox.session(python=PYTHON, default=False)
def regen(session: nox.Session) -> None:
    """Rewrite the golden command lines (fixtures/golden/) from the current generator."""
    session.install("-e", ".[test]")
    session.run("pytest", "tests/golden", "-k", "golden", env={"KVMLAB_REGENERATE": "1"})


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff check, ruff format --check, and the import layers (lint-imports, pyproject.toml)."""
    session.install("ruff>=0.5", "import-linter>=2.1")
    session.run("ruff", "check", *LINT_PATHS)
    session.run("ruff", "format", "--check", *LINT_PATHS)
    # import-linter reads the package from the working directory (no install needed).
    session.run("lint-imports", "--no-cache")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the package; mypy on tests/ (bodies checked, signatures free)."""
    session.install("-e", ".[dev,test]")  # the testing package imports pytest and hypothesis
    session.run("mypy", "--strict", "kvmlab")
    # tests/ has no __init__.py and several conftest.py: module names from the paths.
    # pyproject's overrides for tests.* say which strict flags are eased there, and why.
    session.run("mypy", "--explicit-package-bases", "tests")


@nox.session(python=PYTHON, default=False)
def bench(session: nox.Session) -> None:
    """Speed figures: runtime JSON, the fake lifecycle, the golden suite and how it scales,
    real QEMU boots, migration total time and downtime, snapshot and restore times."""
    session.install("-e", ".[test]")  # bench_golden* run pytest (with xdist)
    session.run("python", "benchmarks/bench_runtime.py")
    session.run("python", "benchmarks/bench_lifecycle.py")
    session.run("python", "benchmarks/bench_golden.py")
    session.run("python", "benchmarks/bench_golden_scale.py")
    if Path("benchmarks/bench_boot.py").exists():
        session.run("python", "benchmarks/bench_boot.py", *session.posargs)
    # Migration between two labs on real QEMU 7.2 and 10.0 (skips a pair not installed).
    session.run("python", "benchmarks/bench_migration.py")
    # Snapshot, save and restore on 7.2 and 10.0; restore-to-ready against start-to-ready.
    session.run("python", "benchmarks/bench_snapshot.py")
