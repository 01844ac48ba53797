"""The fenced examples of README.md and docs/*.md, as the doc tests read them.

A fence with a language (``python``, ``sh``, ``yaml``, ``toml``, ``json``) is an
example; a bare fence is output or a drawing and is not run. The HTML comment on the
line before a fence says how to run it:

- ``<!-- not-run: REASON -->``: not run; the tests list it with its reason;
- ``<!-- example: file NAME -->``: an instance file, written as ``NAME`` in the page's
  working directory (and checked with ``load_instance``) for the examples after it;
- ``<!-- example: qemu -->``: run, and the whole page runs on real QEMU with the test
  guest (otherwise on the fake kvm);
- nothing: run (``python`` in one namespace per page, ``sh`` with bash, in order).

Before running, ``/tmp/`` becomes the test's own temporary directory, and the test
guest's placeholder paths (``vmlinux-<hash>``, ``initrd-<hash>.cpio.gz`` under
``/root/.cache/kvmlab/guest/``) become the built guest's files.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]
LANGUAGES = frozenset({"python", "sh", "yaml", "toml", "json"})
_MARKER = re.compile(r"<!--\s*(?P<kind>example|not-run):\s*(?P<text>.*?)\s*-->")
_FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>[\w-]*)\s*$")
GUEST_PLACEHOLDER_DIR = "/root/.cache/kvmlab/guest/"
KERNEL_PLACEHOLDER = GUEST_PLACEHOLDER_DIR + "vmlinux-<hash>"
INITRD_PLACEHOLDER = GUEST_PLACEHOLDER_DIR + "initrd-<hash>.cpio.gz"


@dataclass(frozen=True)
class Example:
    """One fenced example: where it is, its language, its marker and its text."""

    page: str
    line: int
    lang: str
    text: str
    #: ``""`` (run), ``"qemu"``, ``"file NAME"``, or the ``not-run`` reason.
    marker: str = ""
    not_run: bool = False

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def file_name(self) -> str | None:
        return self.marker.split(None, 1)[1] if self.marker.startswith("file ") else None


def pages() -> list[Path]:
    """README.md and every page of docs/ (the fake kvm's own page included)."""
    return [PROJECT / "README.md", *sorted((PROJECT / "docs").glob("*.md"))]


def extract(path: Path) -> list[Example]:
    """The examples of one page, in order."""
    lines = path.read_text(encoding="utf-8").splitlines()
    page = str(path.relative_to(PROJECT))
    found: list[Example] = []
    index = 0
    while index < len(lines):
        match = _FENCE.match(lines[index])
        if match is None:
            index += 1
            continue
        start, end = index, index + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        lang = match["lang"]
        index = end + 1
        if lang not in LANGUAGES:
            continue
        body = "\n".join(line.removeprefix(match["indent"]) for line in lines[start + 1 : end])
        previous = next((line for line in reversed(lines[:start]) if line.strip()), "")
        marker = _MARKER.search(previous)
        found.append(
            Example(
                page=page,
                line=start + 1,
                lang=lang,
                text=body + "\n",
                marker=marker["text"] if marker else "",
                not_run=bool(marker and marker["kind"] == "not-run"),
            )
        )
    return found


def all_examples() -> list[Example]:
    return [example for path in pages() for example in extract(path)]
