"""Every example in README.md and docs/ runs (tests/docs/doc_examples.py says how they are read).

One test per page runs its examples in order, on the fake kvm, or on real QEMU with the
test guest when one of them is marked ``qemu``; an example marked ``not-run`` is listed
by ``test_examples_not_run_say_why`` with its reason. A doc that lies fails here.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from doc_examples import (
    INITRD_PLACEHOLDER,
    KERNEL_PLACEHOLDER,
    PROJECT,
    Example,
    all_examples,
    extract,
    pages,
)

from kvmlab.guest.build import GuestImage
from kvmlab.lifecycle.hypervisor import Hypervisor
from kvmlab.spec.files import load_instance
from kvmlab.testing.plugin import require_qemu, stop_all

PAGES = [path for path in pages() if any(not ex.not_run for ex in extract(path))]
SH_TIMEOUT = 180.0


def _on_qemu(examples: list[Example]) -> bool:
    return any(example.marker == "qemu" for example in examples)


def _page_param(path: Path) -> object:
    marks = [pytest.mark.qemu] if _on_qemu(extract(path)) else []
    return pytest.param(path, id=str(path.relative_to(PROJECT)), marks=marks)


def _needs_guest(examples: list[Example]) -> bool:
    return _on_qemu(examples) or any(
        KERNEL_PLACEHOLDER in ex.text or "build_guest" in ex.text for ex in examples
    )


def _fill(text: str, tmp: Path, guest: GuestImage | None) -> str:
    text = text.replace("/tmp/", f"{tmp}/")
    if guest is not None:
        text = text.replace(KERNEL_PLACEHOLDER, str(guest.kernel))
        text = text.replace(INITRD_PLACEHOLDER, str(guest.initrd))
    return text


@contextlib.contextmanager
def _stop_everything(tmp: Path, backend: str) -> Iterator[None]:
    """Whatever a page started under ``tmp`` is stopped afterwards, passed or failed."""
    try:
        yield
    finally:
        for pid_dir in tmp.rglob("pid"):
            if pid_dir.is_dir():
                stop_all(Hypervisor(pid_dir.parent, backend=backend))


def _run_sh(example: Example, text: str, cwd: Path, env: dict[str, str]) -> None:
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", text],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=SH_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, (
        f"{example.where}: the sh example exited {result.returncode}\n"
        f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    )


@pytest.mark.parametrize("page", [_page_param(path) for path in PAGES])
def test_the_examples_of_a_page_run(
    page: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    examples = extract(page)
    backend = "qemu" if _on_qemu(examples) else "fake"
    if backend == "qemu":
        require_qemu()
    guest = request.getfixturevalue("test_guest") if _needs_guest(examples) else None
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("KVMLAB_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("KVMLAB_BACKEND", backend)
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    namespace: dict[str, object] = {"__name__": "__doc_example__"}
    ran = 0
    with _stop_everything(tmp_path, backend):
        for example in examples:
            if example.not_run:
                continue
            text = _fill(example.text, tmp_path, guest)
            if example.file_name is not None:
                (work / example.file_name).write_text(text, encoding="utf-8")
                load_instance(work / example.file_name)  # InstanceError names the field
            elif example.lang == "python":
                exec(compile(text, example.where, "exec"), namespace)
            elif example.lang == "sh":
                _run_sh(example, text, work, env)
            else:
                pytest.fail(f"{example.where}: a {example.lang} example needs a marker")
            ran += 1
    assert ran, f"{page.name}: no example ran"


def test_examples_not_run_say_why() -> None:
    """Each example left out is marked with a reason; the list is printed with -s."""
    skipped = [example for example in all_examples() if example.not_run]
    for example in skipped:
        assert len(example.marker) > 8, f"{example.where}: not-run needs a reason"
    by_reason: dict[str, list[str]] = {}
    for example in skipped:
        by_reason.setdefault(example.marker, []).append(example.where)
    for reason, places in sorted(by_reason.items()):
        print(f"not run ({reason}): {', '.join(places)}")


def test_the_extractor_reads_markers(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "text\n\n<!-- not-run: needs root -->\n```sh\nip link\n```\n\n"
        "<!-- example: file vm1.yaml -->\n```yaml\nname: vm1\n```\n\n```\nplain output\n```\n"
        "```python\nx = 1\n```\n"
    )
    import doc_examples  # noqa: PLC0415

    monkey_project = doc_examples.PROJECT
    try:
        doc_examples.PROJECT = tmp_path
        found = extract(page)
    finally:
        doc_examples.PROJECT = monkey_project
    assert [(ex.lang, ex.not_run, ex.marker) for ex in found] == [
        ("sh", True, "needs root"),
        ("yaml", False, "file vm1.yaml"),
        ("python", False, ""),
    ]
    assert found[1].file_name == "vm1.yaml" and found[1].text == "name: vm1\n"
