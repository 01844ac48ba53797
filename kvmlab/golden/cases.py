"""Golden command lines: every case file, on every QEMU profile, pinned in a text file.

A hypervisor driver's regressions are changes to a command line nobody looked at.
Following libvirt's ``qemuxmlconftest``, each instance file under ``fixtures/cases/``
is generated for each capability profile and the result is compared with
``fixtures/golden/<profile>/<case>.args``: the saved argv, one argument per line,
then a marker line, then the start-time arguments for a fixed set of placeholder
NIC plans, so both halves of execution are pinned. A case the profile must refuse
has ``<case>.error`` instead (error class, field, message).

Everything here is pure and host-independent: a fixed layout root
(``/var/lib/kvmlab``), no accelerator beyond what ``kvm_flag`` forces, and
placeholders for what only exists at start time (see :func:`placeholder_nic_plans`).
``KVMLAB_REGENERATE=1`` makes the test suite rewrite the files instead of comparing.

This module imports no test framework: :mod:`kvmlab.golden.diff` reads golden trees with
:func:`parse_args_text`, and ``benchmarks/bench_golden.py`` times :func:`compare_all`.
"""

from __future__ import annotations

import difflib
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Final, Literal

from kvmlab.errors import InstanceError, InvalidInputError
from kvmlab.golden.fileformat import (
    ARGS_SUFFIX,
    ERROR_SUFFIX,
    GOLDEN_LAYOUT,
    START_MARKER,
    GoldenError,
    parse_args_text,
    render_args,
)
from kvmlab.runtime.generator import generate_runtime
from kvmlab.runtime.plan import NicPlan, NicPlanKind, StartFacts, plan_execution
from kvmlab.runtime.saved import KVMRuntime
from kvmlab.spec.capabilities import QemuCapabilities, available_profiles, load_profile
from kvmlab.spec.files import load_instance
from kvmlab.spec.instance import Instance, NicMode
from kvmlab.spec.layout import StateLayout

__all__ = [
    "ARGS_SUFFIX",
    "CASE_SUFFIXES",
    "ERROR_SUFFIX",
    "GANETI_PREFIX",
    "GOLDEN_LAYOUT",
    "PLACEHOLDER_FD_BASE",
    "PLACEHOLDER_TMPDIR",
    "REGENERATE_ENV",
    "START_MARKER",
    "GoldenCase",
    "GoldenError",
    "GoldenMismatch",
    "GoldenProfile",
    "GoldenReport",
    "GoldenResult",
    "compare_all",
    "compare_case",
    "default_cases_dir",
    "default_golden_dir",
    "discover_cases",
    "ganeti_profiles",
    "golden_profiles",
    "parse_args_text",
    "placeholder_facts",
    "placeholder_nic_plans",
    "recorded_profiles",
    "regenerate_case",
    "regenerate_requested",
    "render_args",
    "render_case",
    "render_error",
    "stale_files",
]

#: Stands for the executor's private temp directory (``kvmlab-start-XXXX``) in
#: tap up-script paths.
PLACEHOLDER_TMPDIR: Final = "@TMPDIR@"
#: A routed NIC ``seq`` is planned as an open tap descriptor ``PLACEHOLDER_FD_BASE + seq``.
PLACEHOLDER_FD_BASE: Final = 100
#: Stands for the cases directory in validation messages (they name the file).
PLACEHOLDER_CASES: Final = "@CASES@"
CASE_SUFFIXES: Final = (".json", ".toml", ".yaml", ".yml")
#: Environment variable that turns comparison into regeneration.
REGENERATE_ENV: Final = "KVMLAB_REGENERATE"

_PROJECT_ROOT = Path(__file__).resolve().parents[2]  # kvmlab/golden/cases.py


def default_cases_dir() -> Path:
    """``fixtures/cases`` of the source tree this module lives in."""
    return _PROJECT_ROOT / "fixtures" / "cases"


def default_golden_dir() -> Path:
    """``fixtures/golden`` of the source tree this module lives in."""
    return _PROJECT_ROOT / "fixtures" / "golden"


def regenerate_requested() -> bool:
    """Whether ``KVMLAB_REGENERATE`` asks for the golden files to be rewritten."""
    return os.environ.get(REGENERATE_ENV, "").lower() in {"1", "true", "yes"}


# --- profiles ------------------------------------------------------------------------------


#: Profiles named so hold facts derived from Ganeti's recorded help texts.
GANETI_PREFIX: Final = "ganeti-"


@dataclass(frozen=True)
class GoldenProfile:
    """A bundled capability profile the cases are generated for.

    :ivar name: the profile and its golden sub-directory (``qemu-7.2``, ``ganeti-1.1.2``).
    :ivar source: ``"recorded"`` (kvmlab's recordings of its own QEMUs) or ``"ganeti"``
        (facts derived from Ganeti's recordings by ``tools/derive_profiles.py``).
    """

    name: str
    source: Literal["recorded", "ganeti"]

    @cached_property
    def caps(self) -> QemuCapabilities:
        """The capabilities, loaded on first use and kept."""
        return load_profile(self.name)


def recorded_profiles() -> tuple[GoldenProfile, ...]:
    """kvmlab's own recordings (QEMU 7.2 and 10.0)."""
    return tuple(
        GoldenProfile(name, "recorded")
        for name in available_profiles()
        if not name.startswith(GANETI_PREFIX)
    )


def ganeti_profiles() -> tuple[GoldenProfile, ...]:
    """Ganeti's QEMU versions (0.9.1 … 5.2.0), from the committed facts profiles.

    Ganeti recorded no ``-machine help`` for these versions, so their profiles have no
    default machine type, as Ganeti's tests assumed.
    """
    return tuple(
        GoldenProfile(name, "ganeti")
        for name in available_profiles()
        if name.startswith(GANETI_PREFIX)
    )


def golden_profiles() -> tuple[GoldenProfile, ...]:
    """Every profile the suite covers: the recorded ones, then Ganeti's."""
    return recorded_profiles() + ganeti_profiles()


# --- cases ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class GoldenCase:
    """One instance file; its stem names the golden files and the test ids."""

    name: str
    path: Path

    @cached_property
    def loaded(self) -> Instance | InstanceError:
        """The validated instance, or the validation error (kept: files are read once)."""
        try:
            return load_instance(self.path)
        except InstanceError as err:
            return err


def discover_cases(cases_dir: Path | None = None) -> tuple[GoldenCase, ...]:
    """Every instance file in ``cases_dir``, sorted by name.

    :raise GoldenError: the folder is missing, or two files share a stem
        (``a.json`` and ``a.toml`` would write the same golden file).
    """
    folder = default_cases_dir() if cases_dir is None else cases_dir
    if not folder.is_dir():
        raise GoldenError(f"no cases directory at {folder}")
    cases: dict[str, GoldenCase] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in CASE_SUFFIXES or not path.is_file():
            continue
        if path.stem in cases:
            raise GoldenError(
                f"cases {cases[path.stem].path.name} and {path.name} share the name {path.stem!r}"
            )
        cases[path.stem] = GoldenCase(path.stem, path)
    return tuple(cases.values())


# --- rendering -----------------------------------------------------------------------------


def placeholder_nic_plans(runtime: KVMRuntime) -> tuple[NicPlan, ...]:
    """The fixed start-time plan of each NIC, so the NIC arguments can be pinned too.

    user -> :attr:`NicPlanKind.USER`; bridged ``seq`` -> :attr:`NicPlanKind.SCRIPT` with
    the up-script at ``@TMPDIR@/up-<seq>`` (the executor's naming); routed ``seq`` ->
    :attr:`NicPlanKind.FD` with descriptor ``100 + seq``, so the third kind of plan
    (and ``vnet_hdr``) is covered although the executor only uses scripts today.
    """
    plans = []
    for seq, nic in enumerate(runtime.nics):
        if nic.mode is NicMode.USER:
            plans.append(NicPlan(NicPlanKind.USER))
        elif nic.mode is NicMode.BRIDGED:
            plans.append(NicPlan(NicPlanKind.SCRIPT, script_path=f"{PLACEHOLDER_TMPDIR}/up-{seq}"))
        else:
            plans.append(NicPlan(NicPlanKind.FD, fd=PLACEHOLDER_FD_BASE + seq))
    return tuple(plans)


def placeholder_facts(
    runtime: KVMRuntime, caps: QemuCapabilities, layout: StateLayout = GOLDEN_LAYOUT
) -> StartFacts:
    """Start facts with the placeholder NIC plans and the layout's QMP socket and NIC dir."""
    return StartFacts(
        nic_plans=placeholder_nic_plans(runtime),
        qmp_socket=str(layout.qmp_socket(runtime.name)),
        nic_dir=str(layout.nic_dir(runtime.name)),
        caps=caps,
    )


def render_error(err: InvalidInputError, cases_dir: Path | None = None) -> str:
    """The ``.error`` text: the error class, the field it blames (if any), the message.

    The cases directory in a message is replaced by ``@CASES@`` so the file does not
    depend on where the checkout lives.
    """
    message = str(err)
    if cases_dir is not None:
        message = message.replace(str(cases_dir), PLACEHOLDER_CASES)
    lines = [f"class: {type(err).__name__}"]
    field_name = getattr(err, "field", "")
    if field_name:
        lines.append(f"field: {field_name}")
    lines.append(f"message: {message}")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True, slots=True)
class GoldenResult:
    """What one case generates on one profile: its golden file suffix and text."""

    suffix: str
    text: str

    @property
    def refused(self) -> bool:
        return self.suffix == ERROR_SUFFIX


def render_case(case: GoldenCase, caps: QemuCapabilities) -> GoldenResult:
    """Generate ``case`` for ``caps`` with the fixed layout and placeholder plans.

    Only refusals (:class:`InvalidInputError`) become ``.error`` results; any other
    exception is a crash of kvmlab and propagates.
    """
    instance = case.loaded
    if isinstance(instance, InstanceError):
        return GoldenResult(ERROR_SUFFIX, render_error(instance, case.path.parent))
    try:
        runtime = generate_runtime(instance, caps, layout=GOLDEN_LAYOUT, accel=None)
        plan = plan_execution(runtime, placeholder_facts(runtime, caps))
    except InvalidInputError as err:
        return GoldenResult(ERROR_SUFFIX, render_error(err, case.path.parent))
    return GoldenResult(ARGS_SUFFIX, render_args(runtime.argv, plan.start_args))


# --- comparing and regenerating ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GoldenMismatch:
    """A case whose output differs from its golden file (or has none).

    :ivar path: the golden file the output belongs in.
    :ivar expected: that file's text, or ``None`` when it is missing.
    :ivar other: the golden file of the other kind (``.error`` for ``.args``) when it
        exists instead: the case changed between generated and refused.
    """

    case: str
    profile: str
    path: Path
    expected: str | None
    actual: str
    other: Path | None = None

    def describe(self) -> str:
        """A headline plus a unified diff (golden file -> generated), for test output."""
        label = f"{self.profile}/{self.case}"
        if self.expected is None and self.other is None:
            head = (
                f"{label}: no golden file {self.path}; review the output below and run"
                f" with {REGENERATE_ENV}=1 to write it"
            )
        elif self.other is not None:
            verb = "is now refused" if self.path.suffix == ERROR_SUFFIX else "now generates"
            head = f"{label} {verb}: golden file is {self.other.name}, output is {self.path.name}"
        else:
            head = f"{label}: output differs from {self.path} ({REGENERATE_ENV}=1 rewrites it)"
        before = self.expected
        if before is None and self.other is not None:
            before = self.other.read_text(encoding="utf-8")
        diff = difflib.unified_diff(
            (before or "").splitlines(keepends=True),
            self.actual.splitlines(keepends=True),
            fromfile=f"golden/{label}{(self.other or self.path).suffix}",
            tofile=f"generated/{label}{self.path.suffix}",
        )
        return head + "\n" + "".join(diff)


def _paths(golden_dir: Path, profile: str, case: str) -> dict[str, Path]:
    folder = golden_dir / profile
    return {suffix: folder / f"{case}{suffix}" for suffix in (ARGS_SUFFIX, ERROR_SUFFIX)}


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


def compare_case(
    case: GoldenCase, profile: GoldenProfile, golden_dir: Path | None = None
) -> GoldenMismatch | None:
    """Compare one (case, profile) with its golden file; ``None`` when they match."""
    return _compare(case, profile, default_golden_dir() if golden_dir is None else golden_dir)[1]


def _compare(
    case: GoldenCase, profile: GoldenProfile, golden_dir: Path
) -> tuple[GoldenResult, GoldenMismatch | None]:
    result = render_case(case, profile.caps)
    paths = _paths(golden_dir, profile.name, case.name)
    path = paths[result.suffix]
    other = paths[ARGS_SUFFIX if result.refused else ERROR_SUFFIX]
    expected = _read(path)
    other_exists = other.exists()
    if expected == result.text and not other_exists:
        return result, None
    mismatch = GoldenMismatch(
        case.name, profile.name, path, expected, result.text, other if other_exists else None
    )
    return result, mismatch


def regenerate_case(
    case: GoldenCase, profile: GoldenProfile, golden_dir: Path | None = None
) -> Path | None:
    """Write the golden file of one (case, profile) and drop the other kind's file.

    :return: the path written, or ``None`` when the file already held that text
        (unchanged files keep their modification time).
    """
    golden = default_golden_dir() if golden_dir is None else golden_dir
    result = render_case(case, profile.caps)
    paths = _paths(golden, profile.name, case.name)
    other = paths[ARGS_SUFFIX if result.refused else ERROR_SUFFIX]
    other.unlink(missing_ok=True)
    path = paths[result.suffix]
    if _read(path) == result.text:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(result.text, encoding="utf-8")
    return path


def stale_files(
    golden_dir: Path, cases: Iterable[GoldenCase], profiles: Iterable[GoldenProfile]
) -> list[Path]:
    """Golden files no (case, profile) produces any more, and unknown entries.

    Every profile is bundled, so any directory that is not one of ``profiles`` and any
    file that is not a case's is stale. A case's file of the wrong kind (``.args`` for
    a refused case) is left to :func:`compare_case`, which reports it with a diff.
    """
    if not golden_dir.is_dir():
        return []
    names = {case.name for case in cases}
    known = {profile.name for profile in profiles}
    stale: list[Path] = []
    for entry in sorted(golden_dir.iterdir()):
        if not entry.is_dir():
            stale.append(entry)
            continue
        if entry.name not in known:
            stale.append(entry)
            continue
        for file in sorted(entry.iterdir()):
            if file.suffix not in (ARGS_SUFFIX, ERROR_SUFFIX) or file.stem not in names:
                stale.append(file)
    return stale


@dataclass(frozen=True)
class GoldenReport:
    """The outcome of comparing every case on every profile."""

    checked: int
    mismatches: tuple[GoldenMismatch, ...] = ()
    stale: tuple[Path, ...] = ()
    profiles: tuple[str, ...] = ()
    seconds: float = 0.0
    refused: int = 0

    @property
    def ok(self) -> bool:
        return not self.mismatches and not self.stale

    def __str__(self) -> str:
        lines = [
            f"{self.checked} golden comparisons ({self.refused} refusals) on"
            f" {len(self.profiles)} profiles in {self.seconds:.3f} s:"
            f" {len(self.mismatches)} mismatches, {len(self.stale)} stale files"
        ]
        lines += [mismatch.describe() for mismatch in self.mismatches]
        lines += [f"stale: {path}" for path in self.stale]
        return "\n".join(lines)


def compare_all(
    cases_dir: Path | None = None,
    golden_dir: Path | None = None,
    profiles: Sequence[GoldenProfile] | None = None,
) -> GoldenReport:
    """Compare every case on every profile, and look for stale golden files.

    This is the whole golden suite without pytest; the benchmark times it.
    """
    started = time.perf_counter()
    golden = default_golden_dir() if golden_dir is None else golden_dir
    cases = discover_cases(cases_dir)
    chosen = golden_profiles() if profiles is None else tuple(profiles)
    mismatches = []
    refused = 0
    for profile in chosen:
        for case in cases:
            result, mismatch = _compare(case, profile, golden)
            refused += result.refused
            if mismatch is not None:
                mismatches.append(mismatch)
    stale = stale_files(golden, cases, chosen)
    return GoldenReport(
        checked=len(cases) * len(chosen),
        mismatches=tuple(mismatches),
        stale=tuple(stale),
        profiles=tuple(profile.name for profile in chosen),
        seconds=time.perf_counter() - started,
        refused=refused,
    )
