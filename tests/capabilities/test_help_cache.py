"""A QEMU binary's help texts are kept on disk between kvmlab processes
(:mod:`kvmlab.host.qemu_help`): asked once per binary, asked again when anything that
could change them changes, and never trusted when damaged."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from test_from_help import FAKE_HELP, fake_qemu, runs

from kvmlab.errors import ProbeError
from kvmlab.host import qemu_help
from kvmlab.host.backends import QemuBackend
from kvmlab.spec.capabilities import QemuCapabilities


@pytest.fixture(autouse=True)
def cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "xdg"
    monkeypatch.setenv("XDG_CACHE_HOME", str(home))
    monkeypatch.setattr(qemu_help, "_MEMORY", {})
    return home


def new_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a new kvmlab process starts with: nothing in memory, the disk as it is."""
    monkeypatch.setattr(qemu_help, "_MEMORY", {})


@pytest.fixture
def qemu(tmp_path: Path) -> Path:
    """A fake QEMU installed under a prefix, with a module directory beside it."""
    prefix = tmp_path / "prefix"
    (prefix / "bin").mkdir(parents=True)
    (prefix / "lib" / "qemu").mkdir(parents=True)
    return fake_qemu(prefix / "bin")


def test_a_second_process_does_not_run_the_binary(
    qemu: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = qemu_help.cached_capabilities(str(qemu))
    assert runs(qemu.parent) == 3
    new_process(monkeypatch)
    assert QemuBackend().capabilities(str(qemu)) == first
    assert runs(qemu.parent) == 3, "the second process read the disk"
    files = list(qemu_help.help_cache_dir().glob("*.json"))
    assert len(files) == 1 and oct(files[0].stat().st_mode & 0o777) == "0o644"
    assert first == QemuCapabilities.probe(qemu)  # what the in-process probe says


def test_a_changed_binary_is_asked_again(qemu: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    qemu_help.cached_capabilities(str(qemu))
    (qemu.parent / "help.txt").write_text(FAKE_HELP.replace("9.1.3", "9.2.0"))
    mtime = qemu.stat().st_mtime_ns + 5_000_000_000
    os.utime(qemu, ns=(mtime, mtime))
    new_process(monkeypatch)
    assert qemu_help.cached_capabilities(str(qemu)).version == (9, 2, 0)
    assert runs(qemu.parent) == 6


def test_a_new_module_is_a_change_too(qemu: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A module package adds devices without touching the binary."""
    assert qemu_help.cached_capabilities(str(qemu)).devices == ("virtio-net-pci",)
    (qemu.parent / "device.txt").write_text('name "virtio-net-pci", bus PCI\nname "qxl"\n')
    modules = qemu.parent.parent / "lib" / "qemu"
    (modules / "hw-display-qxl.so").write_bytes(b"")
    mtime = modules.stat().st_mtime_ns + 5_000_000_000
    os.utime(modules, ns=(mtime, mtime))
    new_process(monkeypatch)
    assert qemu_help.cached_capabilities(str(qemu)).devices == ("virtio-net-pci", "qxl")


@pytest.mark.parametrize(
    "damage",
    [b"", b"{not json", b'{"identity": {}, "texts": []}', b'["a", "b", "c"]', b"\xff\xfe"],
    ids=["empty", "truncated", "other-identity", "not-an-object", "not-utf8"],
)
def test_a_damaged_entry_is_asked_again_and_rewritten(
    qemu: Path, monkeypatch: pytest.MonkeyPatch, damage: bytes
) -> None:
    qemu_help.cached_capabilities(str(qemu))
    (entry,) = qemu_help.help_cache_dir().glob("*.json")
    entry.write_bytes(damage)
    new_process(monkeypatch)
    assert qemu_help.cached_capabilities(str(qemu)).version == (9, 1, 3)
    assert runs(qemu.parent) == 6
    assert json.loads(entry.read_text())["texts"][0] == FAKE_HELP


def test_an_unwritable_cache_costs_only_the_probe(
    qemu: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))  # kvmlab/ cannot be made under a file
    assert qemu_help.cached_capabilities(str(qemu)).version == (9, 1, 3)
    new_process(monkeypatch)
    assert qemu_help.cached_capabilities(str(qemu)).version == (9, 1, 3)
    assert runs(qemu.parent) == 6


def test_a_failed_probe_is_not_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    broken = fake_qemu(tmp_path, exit_code=1)
    with pytest.raises(ProbeError, match="cannot start"):
        qemu_help.cached_capabilities(str(broken))
    assert not list(qemu_help.help_cache_dir().glob("*.json"))
    with pytest.raises(ProbeError, match=str(tmp_path / "missing")):
        qemu_help.cached_capabilities(str(tmp_path / "missing"))


def test_the_entries_of_binaries_that_are_gone_are_removed(
    qemu: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = tmp_path / "other"
    other.mkdir()
    old = fake_qemu(other)
    qemu_help.cached_capabilities(str(old))
    old.unlink()
    qemu_help.cached_capabilities(str(qemu))
    (kept,) = qemu_help.help_cache_dir().glob("*.json")
    assert json.loads(kept.read_text())["identity"]["binary"] == str(qemu.resolve())
