"""The commit-msg hook: a subject of at most 72 characters, then a blank line before the body.

pre-commit runs it on the message git is about to record (``.pre-commit-config.yaml``,
installed by ``pre-commit install``, CONTRIBUTING.md); by hand::

    python tools/check_commit_msg.py .git/COMMIT_EDITMSG

Git's comment lines (``#``) and everything below the ``git commit -v`` scissors line are
not part of the message. A ``fixup!``/``squash!``/``amend!`` prefix does not count towards
the 72 characters (the subject it repeats already fits). Only the standard library: the
hook runs in an environment of its own. Exit codes: 0 accepted, 1 refused (why on stderr),
2 the file cannot be read.
"""

from __future__ import annotations

import sys
from pathlib import Path

MAX_SUBJECT = 72
#: ``git commit -v`` puts the diff below this line; git drops it and all that follows.
SCISSORS = "# ------------------------ >8 ------------------------"
AUTOSQUASH_PREFIXES = ("fixup! ", "squash! ", "amend! ")


def message_lines(text: str) -> list[str]:
    """The message as git records it: no comment lines, nothing below the scissors,
    no leading blank lines, trailing whitespace stripped."""
    lines: list[str] = []
    for line in text.splitlines():
        if line == SCISSORS:
            break
        if line.startswith("#"):
            continue
        if line.strip() or lines:
            lines.append(line.rstrip())
    return lines


def problems(text: str) -> list[str]:
    """What is wrong with a commit message (empty when nothing is).

    An empty message is left to git, which refuses it itself.
    """
    lines = message_lines(text)
    if not lines:
        return []
    found = []
    subject = lines[0]
    counted = subject
    while counted.startswith(AUTOSQUASH_PREFIXES):
        counted = counted.split(" ", 1)[1]
    if len(counted) > MAX_SUBJECT:
        found.append(
            f"the subject is {len(counted)} characters, at most {MAX_SUBJECT}: say what "
            f"changed in the subject and why in the body\n  {subject}"
        )
    if len(lines) > 1 and lines[1].strip():
        found.append("the subject is one line: leave a blank line between it and the body")
    return found


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: check_commit_msg.py MESSAGE_FILE", file=sys.stderr)
        return 2
    try:
        text = Path(args[0]).read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        print(f"check_commit_msg: cannot read {args[0]}: {err.strerror}", file=sys.stderr)
        return 2
    found = problems(text)
    for problem in found:
        print(f"commit message refused: {problem}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
