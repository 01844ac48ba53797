"""Derive kvmlab's facts profiles from Ganeti's recorded QEMU ``--help`` outputs.

Ganeti's recordings (``kvm_<version>_help.txt``) are Ganeti's files and stay outside
the project; what the golden suite needs from them are facts: the fields of
``QemuCapabilities`` that ``QemuCapabilities.from_help`` reads from each text. This
script writes them as ``fixtures/profiles/ganeti-<version>/capabilities.json`` (no text
of the recording, only the parsed fields and where they came from), so every clone runs
the golden suite on Ganeti's QEMU versions without the recordings::

    python tools/derive_profiles.py [RECORDINGS]          # write the profiles
    python tools/derive_profiles.py --check [RECORDINGS]  # exit 1 when they differ

``RECORDINGS`` defaults to ``../shared/fixtures/ganeti`` beside the project. ``--check``
also fails on a committed ``ganeti-*`` facts profile that no recording derives any more.
Exit codes: 0 up to date (or written), 1 differences found, 2 no recordings folder. The
recordings are optional: ``--check`` without ``RECORDINGS`` in a clone that has none
beside it says so and exits 0 (nothing to compare; the committed profiles are used as
they are); a ``RECORDINGS`` given but missing is still exit 2.
Re-run it (and commit the result) whenever ``from_help`` or the fields change.
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kvmlab.spec.capabilities import FACTS_FILE, QemuCapabilities, facts_json  # noqa: E402

DEFAULT_RECORDINGS = ROOT.parent / "shared" / "fixtures" / "ganeti"
DEFAULT_PROFILES = ROOT / "fixtures" / "profiles"
PREFIX = "ganeti-"
#: ``kvm_1.1.2_help.txt``; not ``kvm_0.9.1_help_boot_test.txt`` (a parser test of
#: Ganeti's, not a QEMU version) nor ``kvm_6.0.0_machine.txt`` (no help text beside it).
RECORDING_RE = re.compile(r"kvm_(?P<version>\d+(?:\.\d+){1,2})_help\.txt")
TOOL = "tools/derive_profiles.py"


def derive(recordings: Path) -> dict[str, str]:
    """``{profile name: facts file text}`` for every help text in ``recordings``."""
    derived: dict[str, str] = {}
    for path in sorted(recordings.iterdir()):
        match = RECORDING_RE.fullmatch(path.name)
        if match is None or not path.is_file():
            continue
        name = PREFIX + match["version"]
        data = path.read_bytes()
        caps = QemuCapabilities.from_help(data.decode("utf-8"), profile=name)
        provenance = {
            "derived_from": path.name,
            "recording_sha256": hashlib.sha256(data).hexdigest(),
            "collection": "Ganeti's recorded QEMU --help outputs (its KVM driver's test"
            " data); the recordings stay outside kvmlab, these are facts parsed from them",
            "tool": f"{TOOL} (QemuCapabilities.from_help on the help text alone: no"
            " -machine or -device help was recorded, so no machine or device list)",
        }
        derived[name] = facts_json(caps, provenance)
    return derived


def committed(profiles: Path) -> dict[str, str]:
    """The ``ganeti-*`` facts profiles under ``profiles``."""
    return {
        path.parent.name: path.read_text(encoding="utf-8")
        for path in sorted(profiles.glob(f"{PREFIX}*/{FACTS_FILE}"))
    }


def check(derived: dict[str, str], profiles: Path) -> list[str]:
    """What differs between the derived and the committed profiles (empty: none)."""
    present = committed(profiles)
    problems: list[str] = []
    for name in sorted(derived.keys() | present.keys()):
        target = f"{profiles.name}/{name}/{FACTS_FILE}"
        if name not in present:
            problems.append(f"{target}: missing (derived from the recordings)")
        elif name not in derived:
            problems.append(f"{target}: no recording derives it any more")
        elif present[name] != derived[name]:
            diff = difflib.unified_diff(
                present[name].splitlines(keepends=True),
                derived[name].splitlines(keepends=True),
                fromfile=f"committed/{name}",
                tofile=f"derived/{name}",
            )
            problems.append(f"{target}: differs\n" + "".join(diff).rstrip("\n"))
    return problems


def write(derived: dict[str, str], profiles: Path) -> list[Path]:
    """Write the profiles that changed; return their paths."""
    written = []
    for name, text in derived.items():
        path = profiles / name / FACTS_FILE
        if path.is_file() and path.read_text(encoding="utf-8") == text:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "recordings",
        nargs="?",
        type=Path,
        help=f"folder of Ganeti's kvm_<version>_help.txt (default {DEFAULT_RECORDINGS})",
    )
    parser.add_argument(
        "--profiles",
        type=Path,
        default=DEFAULT_PROFILES,
        help=f"where the profiles live (default {DEFAULT_PROFILES})",
    )
    parser.add_argument(
        "--check", action="store_true", help="compare instead of writing; exit 1 on a difference"
    )
    args = parser.parse_args(argv)
    if args.recordings is None:
        args.recordings = DEFAULT_RECORDINGS
        if args.check and not args.recordings.is_dir():
            print(
                f"skipped: no recordings folder at {args.recordings} (optional: the committed"
                " facts profiles are used as they are; pass RECORDINGS to check them)"
            )
            return 0
    if not args.recordings.is_dir():
        print(f"no recordings folder at {args.recordings}", file=sys.stderr)
        return 2
    derived = derive(args.recordings)
    if not derived:
        print(f"no kvm_<version>_help.txt in {args.recordings}", file=sys.stderr)
        return 2
    if args.check:
        problems = check(derived, args.profiles)
        for problem in problems:
            print(problem)
        if problems:
            print(f"run: python {TOOL} {args.recordings}", file=sys.stderr)
            return 1
        print(f"{len(derived)} facts profiles up to date")
        return 0
    for path in write(derived, args.profiles):
        print(f"wrote {path}")
    stale = sorted(committed(args.profiles).keys() - derived.keys())
    for name in stale:
        print(f"not derived from any recording (remove it?): {name}", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
