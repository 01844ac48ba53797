"""Golden command lines: each case on each profile equals ``fixtures/golden/<profile>/<case>``.

A failure prints a unified diff (golden file -> generated). When the change is
intended, review the diff and rewrite the files with::

    KVMLAB_REGENERATE=1 pytest tests/golden -k golden

The suite also fails on golden files no case produces any more, and on cases
without a golden file (see docs/golden.md). Every profile is bundled (Ganeti's QEMU
versions as facts profiles), so nothing here skips.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kvmlab.golden import cases as golden
from kvmlab.golden.cases import (
    ARGS_SUFFIX,
    ERROR_SUFFIX,
    START_MARKER,
    GoldenCase,
    GoldenError,
    GoldenProfile,
    compare_all,
    compare_case,
    default_golden_dir,
    discover_cases,
    ganeti_profiles,
    golden_profiles,
    parse_args_text,
    regenerate_case,
    regenerate_requested,
    render_args,
    render_case,
    stale_files,
)
from kvmlab.spec.instance import Instance

CASES = discover_cases()
GOLDEN_DIR = default_golden_dir()
MIN_CASES = 40
PROFILES = golden_profiles()
GANETI_VERSIONS = ["0.9.1", "0.12.5", "0.15.90", "1.0", "1.1.2", "5.2.0"]


@pytest.mark.parametrize(
    ("profile", "case"),
    [(profile, case) for profile in PROFILES for case in CASES],
    ids=[f"{profile.name}/{case.name}" for profile in PROFILES for case in CASES],
)
def test_golden(profile: GoldenProfile, case: GoldenCase) -> None:
    if regenerate_requested():
        regenerate_case(case, profile, GOLDEN_DIR)
        return
    mismatch = compare_case(case, profile, GOLDEN_DIR)
    if mismatch is not None:
        pytest.fail(mismatch.describe(), pytrace=False)


def test_golden_tree_has_no_stale_files() -> None:
    """Every golden file belongs to a (case, profile) that still exists."""
    stale = stale_files(GOLDEN_DIR, CASES, PROFILES)
    if regenerate_requested():
        for path in stale:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        return
    assert not stale, "golden files no case produces (KVMLAB_REGENERATE=1 removes them):\n" + (
        "\n".join(str(path.relative_to(GOLDEN_DIR)) for path in stale)
    )


def test_golden_profiles_are_every_bundled_qemu_version() -> None:
    """Ganeti's six versions come from the committed facts profiles, on every machine."""
    assert [p.name for p in ganeti_profiles()] == [f"ganeti-{v}" for v in GANETI_VERSIONS]
    assert {p.source for p in ganeti_profiles()} == {"ganeti"}
    assert [p.name for p in PROFILES if p.source == "recorded"] == ["qemu-7.2", "qemu-10.0"]
    assert sorted(p.name for p in PROFILES) == sorted(
        entry.name for entry in GOLDEN_DIR.iterdir() if entry.is_dir()
    ), "one golden folder per profile"
    for profile in ganeti_profiles():
        caps = profile.caps
        assert caps.profile == profile.name
        assert caps.version_string.startswith(profile.name.removeprefix("ganeti-"))
        assert (caps.default_machine, caps.machines, caps.devices) == (None, (), ())


def test_golden_case_set_covers_the_hvparams_space() -> None:
    assert len(CASES) >= MIN_CASES
    refused = [case for case in CASES if not isinstance(case.loaded, Instance)]
    assert all(case.name.startswith("refused-") for case in refused), (
        "instance files that fail validation are named refused-*"
    )
    assert all(isinstance(c.loaded, Instance) for c in CASES if not c.name.startswith("refused-"))
    for case in CASES:
        if isinstance(case.loaded, Instance):
            assert case.loaded.name == case.name, "a valid case's instance is named like its file"
    assert {case.path.suffix for case in CASES} >= {".json", ".toml", ".yaml"}


# --- the machinery, on a scratch tree -------------------------------------------------------


@pytest.fixture
def scratch(tmp_path: Path) -> tuple[Path, Path, GoldenProfile]:
    """A cases folder with one valid and one refused case, and an empty golden folder."""
    cases = tmp_path / "cases"
    cases.mkdir()
    (cases / "vm.json").write_text(
        '{"name": "vm", "nics": [{"mac": "52:54:00:00:00:01", "mode": "bridged", "link": "br0"}]}'
    )
    (cases / "refused-x.json").write_text('{"name": "refused-x", "memory": 1}')
    return cases, tmp_path / "golden", GoldenProfile("qemu-7.2", "recorded")


def test_golden_regenerate_then_compare(scratch: tuple[Path, Path, GoldenProfile]) -> None:
    cases_dir, golden_dir, profile = scratch
    cases = discover_cases(cases_dir)
    assert [compare_case(case, profile, golden_dir) is not None for case in cases] == [True, True]
    written = [regenerate_case(case, profile, golden_dir) for case in cases]
    assert [path.name for path in written if path] == ["refused-x.error", "vm.args"]
    assert all(compare_case(case, profile, golden_dir) is None for case in cases)
    assert [regenerate_case(case, profile, golden_dir) for case in cases] == [None, None]
    report = compare_all(cases_dir, golden_dir, [profile])
    assert report.ok and report.checked == 2 and report.refused == 1


def test_golden_args_file_pins_placeholders(scratch: tuple[Path, Path, GoldenProfile]) -> None:
    cases_dir, _, profile = scratch
    case = {case.name: case for case in discover_cases(cases_dir)}["vm"]
    argv, start = parse_args_text(render_case(case, profile.caps).text)
    assert argv[:3] == ("/usr/bin/kvm", "-name", "vm")
    assert "-pidfile" in argv and "/var/lib/kvmlab/pid/vm" in argv
    assert start == (
        "-netdev",
        "tap,id=net-s10,script=@TMPDIR@/up-0,downscript=no",
        "-device",
        "virtio-net-pci,netdev=net-s10,mac=52:54:00:00:00:01,id=nic-s10,addr=0x10",
        "-qmp",
        "unix:/var/lib/kvmlab/ctrl/vm.qmp,server=on,wait=off",
    )


def test_golden_refusal_file_names_class_field_and_message(
    scratch: tuple[Path, Path, GoldenProfile],
) -> None:
    cases_dir, _, profile = scratch
    case = {case.name: case for case in discover_cases(cases_dir)}["refused-x"]
    result = render_case(case, profile.caps)
    assert result.refused
    assert result.text.splitlines() == [
        "class: InstanceError",
        "field: memory",
        "message: @CASES@/refused-x.json: memory: Input should be greater than or equal to 16",
    ]


def test_golden_mismatch_shows_a_unified_diff(scratch: tuple[Path, Path, GoldenProfile]) -> None:
    cases_dir, golden_dir, profile = scratch
    case = {case.name: case for case in discover_cases(cases_dir)}["vm"]
    regenerate_case(case, profile, golden_dir)
    path = golden_dir / profile.name / f"vm{ARGS_SUFFIX}"
    path.write_text(path.read_text().replace("\n128\n", "\n256\n"))
    mismatch = compare_case(case, profile, golden_dir)
    assert mismatch is not None
    text = mismatch.describe()
    assert "output differs" in text and "KVMLAB_REGENERATE=1" in text
    assert "\n-256\n+128\n" in text
    assert "--- golden/qemu-7.2/vm.args" in text and "+++ generated/qemu-7.2/vm.args" in text


def test_golden_kind_switch_is_reported(scratch: tuple[Path, Path, GoldenProfile]) -> None:
    cases_dir, golden_dir, profile = scratch
    case = {case.name: case for case in discover_cases(cases_dir)}["vm"]
    folder = golden_dir / profile.name
    folder.mkdir(parents=True)
    (folder / f"vm{ERROR_SUFFIX}").write_text("class: InstanceError\nmessage: old refusal\n")
    mismatch = compare_case(case, profile, golden_dir)
    assert mismatch is not None and "now generates" in mismatch.describe()
    regenerate_case(case, profile, golden_dir)
    assert not (folder / f"vm{ERROR_SUFFIX}").exists()


def test_golden_stale_files_are_found(scratch: tuple[Path, Path, GoldenProfile]) -> None:
    cases_dir, golden_dir, profile = scratch
    cases = discover_cases(cases_dir)
    for case in cases:
        regenerate_case(case, profile, golden_dir)
    (golden_dir / profile.name / "gone.args").write_text("x\n")
    (golden_dir / profile.name / "notes.txt").write_text("x\n")
    (golden_dir / "qemu-0.1").mkdir()
    (golden_dir / "ganeti-9.9").mkdir()  # no such profile: stale like any other
    stale = stale_files(golden_dir, cases, [profile])
    assert sorted(path.name for path in stale) == [
        "ganeti-9.9",
        "gone.args",
        "notes.txt",
        "qemu-0.1",
    ]
    assert not compare_all(cases_dir, golden_dir, [profile]).ok


def test_golden_duplicate_case_names_are_refused(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text("{}")
    (tmp_path / "a.toml").write_text("")
    with pytest.raises(GoldenError, match="share the name 'a'"):
        discover_cases(tmp_path)


def test_golden_args_format_round_trips_and_rejects_ambiguity() -> None:
    text = render_args(["/usr/bin/kvm", "", "-append", "a b"], ["-qmp", "x"])
    assert parse_args_text(text) == (("/usr/bin/kvm", "", "-append", "a b"), ("-qmp", "x"))
    with pytest.raises(GoldenError):
        render_args(["a\nb"], [])
    with pytest.raises(GoldenError):
        render_args([START_MARKER], [])
    with pytest.raises(GoldenError, match="marker"):
        parse_args_text("a\nb\n")
    with pytest.raises(GoldenError, match="newline"):
        parse_args_text(f"a\n{START_MARKER}")


def test_golden_whole_suite_is_fast() -> None:
    """All cases on all profiles, as ``benchmarks/bench_golden.py`` times it."""
    report = compare_all()
    if regenerate_requested():
        return
    assert report.ok, str(report)
    assert report.seconds < 5.0, f"golden comparison took {report.seconds:.2f} s"
    assert golden.GOLDEN_LAYOUT.root == Path("/var/lib/kvmlab")
