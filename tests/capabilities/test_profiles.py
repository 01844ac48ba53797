"""Recorded QEMU profiles (``fixtures/profiles``) and the default capabilities."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from kvmlab.errors import CapabilityError
from kvmlab.spec.capabilities import QemuCapabilities, available_profiles, load_profile

PROFILES = Path(__file__).resolve().parents[2] / "fixtures" / "profiles"
HAS_FIELDS = [f.name for f in dataclasses.fields(QemuCapabilities) if f.name.startswith("has_")]


def recorded(name: str, file: str) -> str:
    return (PROFILES / name / file).read_text()


def help_has(name: str, option: str) -> bool:
    return (
        re.search(rf"^-{re.escape(option)}(?:[ \t\[]|$)", recorded(name, "help.txt"), re.M)
        is not None
    )


def test_both_recordings_are_available() -> None:
    names = available_profiles()
    assert "qemu-7.2" in names
    assert "qemu-10.0" in names
    assert names.index("qemu-7.2") < names.index("qemu-10.0"), "natural order"


def test_qemu_10_dropped_no_acpi_chroot_and_runas_for_run_with() -> None:
    caps = load_profile("qemu-10.0")
    assert caps.version[:2] == (10, 0)
    assert caps.has_no_acpi is False
    assert caps.has_run_with is True
    assert caps.has_chroot is False
    assert caps.has_runas is False


def test_qemu_7_2_has_no_acpi_chroot_and_runas_but_no_run_with() -> None:
    caps = load_profile("qemu-7.2")
    assert caps.version[:2] == (7, 2)
    assert caps.has_no_acpi is True
    assert caps.has_run_with is False
    assert caps.has_chroot is True
    assert caps.has_runas is True


@pytest.mark.parametrize("name", ["qemu-7.2", "qemu-10.0"])
@pytest.mark.parametrize(
    ("field", "option"),
    [
        ("has_no_acpi", "no-acpi"),
        ("has_run_with", "run-with"),
        ("has_chroot", "chroot"),
        ("has_runas", "runas"),
        ("has_netdev", "netdev"),
        ("has_machine", "machine"),
        ("has_balloon_option", "balloon"),
    ],
)
def test_profile_matches_its_recorded_help(name: str, field: str, option: str) -> None:
    assert getattr(load_profile(name), field) is help_has(name, option)


@pytest.mark.parametrize("name", ["qemu-7.2", "qemu-10.0"])
def test_profile_version_and_default_machine_match_the_recording(name: str) -> None:
    caps = load_profile(name)
    first_line = recorded(name, "help.txt").splitlines()[0]
    assert f"version {caps.version_string} " in first_line
    default = [
        line.split()[0]
        for line in recorded(name, "machine.txt").splitlines()
        if "(default)" in line
    ]
    assert [caps.default_machine] == default
    assert caps.profile == name
    assert caps.devices, "the device list is recorded too"
    assert caps.supports_device("virtio-net-pci")


def test_default_capabilities_equal_the_7_2_recording() -> None:
    default, recording = QemuCapabilities(), load_profile("qemu-7.2")
    differing = [f for f in HAS_FIELDS if getattr(default, f) != getattr(recording, f)]
    assert differing == []
    assert default.default_machine == recording.default_machine
    assert default.version[:2] == recording.version[:2]
    assert QemuCapabilities.default() == default


def test_load_profile_is_cached() -> None:
    assert load_profile("qemu-10.0") is load_profile("qemu-10.0")


def test_unknown_profile_lists_the_known_ones() -> None:
    with pytest.raises(CapabilityError) as info:
        load_profile("qemu-9.9")
    message = str(info.value)
    assert "qemu-9.9" in message
    for name in available_profiles():
        assert name in message


@pytest.mark.parametrize(
    "name", ["../x", "..", "qemu-7.2/../qemu-10.0", "/etc", "qemu-7.2/", "", ".hidden", "a b"]
)
def test_path_like_profile_names_are_refused(name: str) -> None:
    with pytest.raises(CapabilityError) as info:
        load_profile(name)
    assert repr(name) in str(info.value)
