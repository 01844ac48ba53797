"""Facts profiles (``fixtures/profiles/ganeti-*/capabilities.json``) and the tool that derives them.

Ganeti's QEMU versions are bundled as facts: the fields ``from_help`` reads from
Ganeti's recorded help texts, which stay outside the project. The committed files are
checked on every machine; when the recordings are present (``ganeti_fixtures``), the
tool's output and a round trip through them are checked too.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from helpers_tools import load_tool
from hypothesis import given
from hypothesis import strategies as st

from kvmlab.errors import CapabilityError
from kvmlab.spec import capabilities
from kvmlab.spec.capabilities import (
    FACTS_FILE,
    FACTS_FORMAT,
    QemuCapabilities,
    available_profiles,
    facts_json,
    load_profile,
    parse_facts,
    profile_kind,
)
from kvmlab.testing import strategies

PROJECT = Path(__file__).resolve().parents[2]
PROFILES = PROJECT / "fixtures" / "profiles"
TOOL = PROJECT / "tools" / "derive_profiles.py"
GANETI_VERSIONS = ["0.9.1", "0.12.5", "0.15.90", "1.0", "1.1.2", "5.2.0"]
GANETI_PROFILES = [f"ganeti-{version}" for version in GANETI_VERSIONS]
PROVENANCE = {"derived_from": "test", "tool": "tests"}


def committed_text(name: str) -> str:
    return (PROFILES / name / FACTS_FILE).read_text(encoding="utf-8")


def load_derive_tool() -> ModuleType:
    return load_tool("derive_profiles")


# --- the committed files, on every machine ------------------------------------------------


def test_ganetis_versions_are_bundled_as_facts() -> None:
    on_disk = sorted(path.parent.name for path in PROFILES.glob(f"*/{FACTS_FILE}"))
    assert sorted(on_disk) == sorted(GANETI_PROFILES)
    names = available_profiles()
    assert names[: len(GANETI_PROFILES)] == GANETI_PROFILES, "natural order, oldest first"
    assert names[len(GANETI_PROFILES) :] == ["qemu-7.2", "qemu-10.0"]
    assert {profile_kind(name) for name in GANETI_PROFILES} == {"facts"}
    assert {profile_kind(name) for name in ("qemu-7.2", "qemu-10.0")} == {"recorded"}


@pytest.mark.parametrize("name", GANETI_PROFILES)
def test_committed_facts_profile_validates(name: str) -> None:
    text = committed_text(name)
    caps = load_profile(name)
    assert caps == parse_facts(text)
    assert caps.profile == name
    assert caps.version_string.startswith(name.removeprefix("ganeti-"))
    document = json.loads(text)
    assert document["kvmlab_capabilities"] == FACTS_FORMAT
    provenance = document["provenance"]
    assert provenance["derived_from"] == f"kvm_{name.removeprefix('ganeti-')}_help.txt"
    assert re.fullmatch(r"[0-9a-f]{64}", provenance["recording_sha256"])
    assert provenance["tool"].startswith("tools/derive_profiles.py")
    assert facts_json(caps, provenance) == text, "the file is in the tool's canonical form"
    # Facts only: the parsed fields, no text of the recording (help texts have
    # option lines starting with '-'; none is in the file).
    assert not re.search(r'"-\w', text)
    assert len(text.splitlines()) < 60


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        # Facts from QEMU's history that Ganeti's KVM driver relied on.
        ("ganeti-0.9.1", {"has_netdev": False, "has_device": False, "has_localtime_option": True}),
        ("ganeti-0.9.1", {"has_qmp": False, "has_drive_boot": True, "has_drive_readonly": False}),
        ("ganeti-0.12.5", {"has_netdev": True, "has_machine": False, "has_balloon_option": True}),
        ("ganeti-0.15.90", {"has_machine": True, "has_vhost": True}),
        ("ganeti-1.1.2", {"has_chardev_logfile": False, "has_object": False}),
        ("ganeti-5.2.0", {"has_balloon_option": False, "has_accel": True, "has_run_with": False}),
    ],
)
def test_known_milestones(name: str, expected: dict[str, bool]) -> None:
    caps = load_profile(name)
    assert {key: getattr(caps, key) for key in expected} == expected


def test_ganeti_profiles_have_no_machine_or_device_list() -> None:
    """Ganeti recorded help texts only: no default machine, every device assumed present."""
    for name in GANETI_PROFILES:
        caps = load_profile(name)
        assert (caps.default_machine, caps.machines, caps.devices) == (None, (), ())
        assert caps.supports_device("virtio-net-pci")


# --- the format ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["qemu-7.2", "qemu-10.0"])
def test_recorded_profiles_round_trip_through_facts(name: str) -> None:
    """Machine and device lists too: the recorded profiles have them."""
    caps = load_profile(name)
    assert caps.machines and caps.devices
    assert parse_facts(facts_json(caps, PROVENANCE)) == caps
    assert QemuCapabilities.from_dict(caps.to_dict()) == caps


@given(strategies.capabilities(), st.text("abc-.0123456789", min_size=1, max_size=12))
def test_any_capabilities_round_trip_through_facts(caps: QemuCapabilities, name: str) -> None:
    named = dataclasses.replace(caps, profile="p" + name)
    assert parse_facts(facts_json(named, PROVENANCE)) == named


def document(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(facts_json(load_profile("ganeti-1.0"), PROVENANCE))
    for key, value in changes.items():
        if key in data["capabilities"]:
            data["capabilities"][key] = value
        else:
            data[key] = value
    return data


def refusal(data: object) -> str:
    with pytest.raises(CapabilityError) as info:
        parse_facts(json.dumps(data), "x.json")
    message = str(info.value)
    assert "\n" not in message and message.startswith("x.json: ")
    return message


def test_every_field_is_required() -> None:
    """A missing field would take QEMU 7.2's default: an old QEMU would claim new features."""
    data = document()
    del data["capabilities"]["has_netdev"]
    assert "missing has_netdev" in refusal(data)


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"has_netdev": 1}, "has_netdev"),
        ({"has_netdev": "true"}, "has_netdev"),
        ({"version": [1, 0]}, "version"),
        ({"version": [1, 0, True]}, "version"),
        ({"version": "1.0.0"}, "version"),
        ({"version": [1, 0, -1]}, "version"),
        ({"default_machine": 5}, "default_machine"),
        ({"machines": "pc"}, "machines"),
        ({"devices": [1]}, "devices"),
        ({"profile": None}, "profile"),
        ({"version_extra": "a\x00b"}, "version_extra"),
        ({"kvmlab_capabilities": 2}, "format 2"),
        ({"kvmlab_capabilities": "1"}, "format"),
        ({"provenance": {"tool": 1}}, "provenance"),
        ({"provenance": []}, "provenance"),
        ({"notes": ""}, "notes"),
    ],
)
def test_wrong_values_are_refused(changes: dict[str, Any], words: str) -> None:
    assert words in refusal(document(**changes))


def test_unknown_field_is_refused() -> None:
    data = document()
    data["capabilities"]["has_warp_drive"] = True
    assert "unknown has_warp_drive" in refusal(data)


@pytest.mark.parametrize("text", ["", "{", "[]", "null", '"caps"', "{} {}"])
def test_not_a_facts_document(text: str) -> None:
    with pytest.raises(CapabilityError):
        parse_facts(text)


def test_facts_need_a_profile_name() -> None:
    with pytest.raises(CapabilityError, match="profile name"):
        facts_json(QemuCapabilities(), PROVENANCE)
    with pytest.raises(CapabilityError, match="profile name"):
        facts_json(QemuCapabilities(profile="../x"), PROVENANCE)


def test_folder_name_and_profile_must_agree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(capabilities, "profile_dirs", lambda: [tmp_path])
    (tmp_path / "renamed").mkdir()
    (tmp_path / "renamed" / FACTS_FILE).write_text(committed_text("ganeti-1.0"))
    with pytest.raises(CapabilityError, match="not its folder's name"):
        load_profile("renamed")
    both = tmp_path / "both"
    both.mkdir()
    (both / "help.txt").write_text("QEMU emulator version 9.0.0\n")
    (both / FACTS_FILE).write_text("{}")
    assert profile_kind("both") == "recorded"
    with pytest.raises(CapabilityError, match="both"):
        load_profile("both")


# --- against Ganeti's recordings, when present ---------------------------------------------


@pytest.mark.parametrize("version", GANETI_VERSIONS)
def test_facts_equal_the_recording_parsed(ganeti_fixtures: Path, version: str) -> None:
    """from_help on the recording -> facts JSON -> load: the same capabilities, and the
    committed profile's."""
    name = f"ganeti-{version}"
    parsed = QemuCapabilities.from_help(
        (ganeti_fixtures / f"kvm_{version}_help.txt").read_text(encoding="utf-8"), profile=name
    )
    assert parse_facts(facts_json(parsed, PROVENANCE)) == parsed
    assert load_profile(name) == parsed


def test_derive_tool_check_passes_on_the_recordings(
    ganeti_fixtures: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The committed profiles are exactly what tools/derive_profiles.py writes."""
    code = load_derive_tool().main(["--check", str(ganeti_fixtures)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"{len(GANETI_VERSIONS)} facts profiles up to date" in out


# --- the tool, on recordings of our own -----------------------------------------------------

HELP = """QEMU emulator version 9.9.1 (kvmlab-test)
usage: qemu [options] [disk_image]

-netdev user,id=str
-device driver[,prop=value]
-drive [file=file][,readonly=on|off][,aio=threads|native]
"""


def test_derive_tool_writes_then_checks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tool = load_derive_tool()
    recordings, profiles = tmp_path / "recordings", tmp_path / "profiles"
    recordings.mkdir()
    (recordings / "kvm_9.9.1_help.txt").write_text(HELP)
    (recordings / "kvm_9.9.1_help_boot_test.txt").write_text(HELP)  # not a version
    (recordings / "kvm_9.9.1_machine.txt").write_text("pc  Standard PC (default)\n")
    arguments = [str(recordings), "--profiles", str(profiles)]

    assert tool.main(["--check", *arguments]) == 1
    assert "ganeti-9.9.1/capabilities.json: missing" in capsys.readouterr().out
    assert tool.main(arguments) == 0
    assert [p.name for p in profiles.iterdir()] == ["ganeti-9.9.1"]
    written = profiles / "ganeti-9.9.1" / FACTS_FILE
    caps = parse_facts(written.read_text())
    assert caps == QemuCapabilities.from_help(HELP, profile="ganeti-9.9.1")
    assert caps.has_netdev and caps.has_drive_readonly and not caps.has_machine
    assert HELP.splitlines()[3] not in written.read_text(), "no line of the recording"
    assert tool.main(["--check", *arguments]) == 0

    written.write_text(written.read_text().replace('"has_netdev": true', '"has_netdev": false'))
    assert tool.main(["--check", *arguments]) == 1
    out = capsys.readouterr().out
    assert "differs" in out and '+    "has_netdev": true,' in out

    (profiles / "ganeti-1.0").mkdir()
    (profiles / "ganeti-1.0" / FACTS_FILE).write_text(committed_text("ganeti-1.0"))
    assert tool.main(arguments) == 1, "a profile no recording derives is reported"
    assert tool.main(["--check", *arguments]) == 1
    assert "ganeti-1.0/capabilities.json: no recording derives it" in capsys.readouterr().out


def test_derive_tool_without_recordings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tool = load_derive_tool()
    assert tool.main(["--check", str(tmp_path / "absent")]) == 2
    assert "no recordings folder" in capsys.readouterr().err
    assert tool.main(["--check", str(tmp_path)]) == 2
    assert "no kvm_<version>_help.txt" in capsys.readouterr().err


def test_derive_tool_runs_as_a_script() -> None:
    result = subprocess.run(
        [sys.executable, str(TOOL), "--help"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0 and "--check" in result.stdout


def test_the_fake_backend_refuses_a_facts_profile() -> None:
    """The fake kvm answers -help with a recorded text: it imitates recorded profiles only."""
    from kvmlab.errors import InvalidInputError  # noqa: PLC0415
    from kvmlab.host.backends import FakeBackend  # noqa: PLC0415

    with pytest.raises(InvalidInputError, match="facts only"):
        FakeBackend("ganeti-1.1.2")
    with pytest.raises(CapabilityError, match="unknown"):
        FakeBackend("qemu-0.1")
    assert FakeBackend("qemu-10.0").capabilities("kvm") == load_profile("qemu-10.0")
