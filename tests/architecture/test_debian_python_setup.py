"""The quick start works with Debian's own python3, which refuses ``pip install`` outside
a virtual environment (PEP 668, "externally-managed-environment").

The README's two commands (``./dev kvmlab demo``, ``./dev nox``) and ``.ci/run`` go through
``./dev``, which makes a venv and installs there. One test runs ``./dev`` with
``/usr/bin/python3`` into a scratch venv; the others read the README, ``.ci/run``,
``./dev`` and CONTRIBUTING.md for a ``pip install`` that is not a venv's.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[2]
DEV = PROJECT / "dev"
CI_RUN = PROJECT / ".ci" / "run"
DEBIAN_PYTHON = Path("/usr/bin/python3")
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
QUICK_START = ["./dev kvmlab demo", "./dev nox"]


def run_dev(venv: Path, *command: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
    env = {
        key: value
        for key, value in os.environ.items()
        # Whatever environment runs this test is not the one ./dev makes.
        if key not in {"VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"}
    }
    env.update(KVMLAB_VENV=str(venv), KVMLAB_PYTHON=str(DEBIAN_PYTHON), **extra_env)
    return subprocess.run(
        [str(DEV), *command],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.mark.slow
def test_dev_makes_a_venv_with_debians_python3_and_runs_kvmlab(tmp_path: Path) -> None:
    if not DEBIAN_PYTHON.exists():
        message = f"no {DEBIAN_PYTHON}: not a Debian machine"
        if IN_CI:  # CI runs on Debian 12
            pytest.fail(message)
        pytest.skip(message)
    venv = tmp_path / "venv"

    first = run_dev(venv, "kvmlab", "--help")
    assert first.returncode == 0, first.stderr
    assert "usage: kvmlab" in first.stdout
    assert "installing kvmlab" in first.stderr
    assert "pip installs instead" not in first.stderr  # uv installed it
    assert (venv / "bin" / "uv").exists()
    config = (venv / "pyvenv.cfg").read_text(encoding="utf-8")
    assert re.search(r"^home = /usr/bin$", config, re.MULTILINE), config

    # Reused, not reinstalled; its tools are first on PATH (nox finds its python3.11 there).
    script = "command -v nox && command -v python3.11 && python -c 'import kvmlab'"
    again = run_dev(venv, "sh", "-c", script)
    assert again.returncode == 0, again.stderr
    assert "installing" not in again.stderr
    assert again.stdout.split() == [str(venv / "bin" / "nox"), str(venv / "bin" / "python3.11")]

    # When uv cannot install (offline here, with an empty cache; elsewhere an index only
    # pip is configured for), pip installs instead. The packages are already there, so
    # pip only installs kvmlab again.
    (venv / ".kvmlab-pyproject").unlink()
    empty_cache = tmp_path / "empty-uv-cache"
    fallback = run_dev(venv, "kvmlab", "--help", UV_OFFLINE="1", UV_CACHE_DIR=str(empty_cache))
    assert fallback.returncode == 0, fallback.stderr
    assert "dev: uv did not install; pip installs instead" in fallback.stderr
    assert "usage: kvmlab" in fallback.stdout


def shell_commands(text: str) -> list[list[str]]:
    """Each command line of a shell text as words (comments dropped, ``\\`` lines joined)."""
    commands = []
    for line in text.replace("\\\n", " ").splitlines():
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            words = line.split()
        if words:
            commands.append(words)
    return commands


def code_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```(?:sh|bash|console|shell)\n(.*?)^```", markdown, re.M | re.S)


def pip_installers(words: list[str]) -> list[str]:
    """The program of each ``pip install`` in a command: ``pip``, ``.venv/bin/pip``,
    ``/usr/bin/python3`` (for ``-m pip install``), ``.venv/bin/uv`` (for ``uv pip install``)..."""
    found = []
    for i, word in enumerate(words[:-1]):
        before = words[i - 1] if i > 0 else ""
        python_m_pip = word == "-m" and words[i + 1 : i + 3] == ["pip", "install"]
        uv_pip = word == "pip" and words[i + 1] == "install" and Path(before).name == "uv"
        if before and (python_m_pip or uv_pip):
            found.append(before)
        elif Path(word).name in {"pip", "pip3"} and words[i + 1] == "install" and before != "-m":
            found.append(word)
    return found


@pytest.mark.parametrize(
    "words",
    [
        ["pip", "install", "-e", "."],
        ["python3", "-m", "pip", "install", "nox"],
        ["sudo", "/usr/bin/python3", "-m", "pip", "install", "nox"],
        ["uv", "pip", "install", "--system", "nox"],
    ],
)
def test_a_bare_pip_install_is_seen(words: list[str]) -> None:
    installers = pip_installers(words)
    assert installers
    assert not any("venv" in program.lower() for program in installers)


def test_no_pip_install_outside_a_venv_in_the_setup_files() -> None:
    texts = {
        ".ci/run": CI_RUN.read_text(encoding="utf-8"),
        "dev": DEV.read_text(encoding="utf-8"),
    }
    for name in ("README.md", "CONTRIBUTING.md"):
        markdown = (PROJECT / name).read_text(encoding="utf-8")
        texts[name] = "\n".join(code_blocks(markdown))
    seen = 0
    for name, text in texts.items():
        for words in shell_commands(text):
            for program in pip_installers(words):
                seen += 1
                assert "venv" in program.lower(), f"{name}: {shlex.join(words)}"
    assert seen >= 1  # ./dev's own install: the check sees something


def test_the_quick_start_is_two_dev_commands_and_ci_runs_the_second() -> None:
    readme = (PROJECT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    quick_start = [shlex.join(words) for words in shell_commands(code_blocks(section)[0])]
    assert quick_start == QUICK_START
    ci_commands = [shlex.join(words) for words in shell_commands(CI_RUN.read_text("utf-8"))]
    assert ci_commands[-1] == QUICK_START[1]
    assert os.access(DEV, os.X_OK)
    assert ".venv/" in (PROJECT / ".gitignore").read_text(encoding="utf-8").split()
