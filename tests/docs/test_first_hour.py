"""What a new user meets first, where docs and code once disagreed: each side as mended."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from doc_examples import PROJECT
from helpers_tools import load_tool

from kvmlab.cli.app import build_parser, main
from kvmlab.errors import InstanceError, LaunchError
from kvmlab.host import executor
from kvmlab.host.backends import QemuBackend
from kvmlab.lifecycle.hypervisor import Hypervisor
from kvmlab.spec.instance import HvParams, Instance, Nic, instance_from_data
from kvmlab.testing.plugin import require_qemu, stop_all

QEMU_10 = "/opt/kvmlab/qemu-10.0/bin/qemu-system-x86_64"


def test_a_nic_without_mode_says_the_mode_defaults_to_bridged() -> None:
    with pytest.raises(InstanceError) as caught:
        instance_from_data({"name": "vm1", "nics": [{"mac": "52:54:00:12:34:56"}]})
    message = str(caught.value)
    assert message.startswith("nics.0.link: a bridged NIC needs a link (the bridge name)")
    assert "mode defaults to bridged" in message and "mode 'user'" in message
    assert caught.value.field == "nics.0.link"


def _help(command: str) -> str:
    parser = build_parser()
    actions = [a for a in parser._actions if a.dest == "command"]
    choices = actions[0].choices
    assert isinstance(choices, dict)
    return str(choices[command].format_help())


def test_attach_nic_help_names_every_mode() -> None:
    text = _help("attach-nic")
    assert "only user" not in text
    assert "bridged" in text and "routed" in text


def test_every_option_of_the_command_line_is_in_the_readme() -> None:
    readme = (PROJECT / "README.md").read_text(encoding="utf-8")
    for command, options in {
        "exec": ["--ready-timeout", "--timeout"],
        "doctor": ["--json", "--probe-all"],
        "migrate": ["--target-qemu", "--offline"],
    }.items():
        text = _help(command)
        for option in options:
            assert option in text and option in readme, (command, option)
    for option in ("--cache", "--kernel"):
        assert option in readme


def test_notebooks_page_counts_the_notebooks() -> None:
    count = len(list((PROJECT / "notebooks").glob("*.ipynb")))
    words = {4: "Four", 5: "Five", 6: "Six", 7: "Seven"}
    page = (PROJECT / "docs" / "notebooks.md").read_text(encoding="utf-8")
    assert f"{words[count]} notebooks in `notebooks/`" in page
    for number in range(1, count + 1):
        assert re.search(rf"Notebook(s [\d, and]*)? {number}\b|Notebooks {number},", page)


def test_derive_profiles_check_skips_without_the_optional_recordings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    tool: object = load_tool("derive_profiles")
    monkeypatch.setattr(tool, "DEFAULT_RECORDINGS", tmp_path / "absent")
    assert tool.main(["--check"]) == 0  # type: ignore[attr-defined]
    assert capsys.readouterr().out.startswith("skipped: no recordings folder")
    # Given explicitly but missing: still bad input.
    assert tool.main(["--check", str(tmp_path / "absent")]) == 2  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("output", "reason"),
    [
        ("qemu: warning: x\nqemu: boom\n", "qemu: boom"),
        ("", "no output"),
        (
            'Error: argument "br9" is wrong: Device does not exist\n'
            "qemu-system-x86_64: -netdev tap,id=n,script=/tmp/k-1/up-0,downscript=no:"
            " network script /tmp/k-1/up-0 failed with status 65280\n",
            "qemu-system-x86_64: -netdev tap,id=n,script=up-0,downscript=no: network script"
            ' up-0 failed with status 65280: Error: argument "br9" is wrong: Device does not'
            " exist",
        ),
    ],
)
def test_a_failed_up_script_gives_its_own_reason(output: str, reason: str) -> None:
    assert executor._last_line(output) == reason


@pytest.mark.skipif(os.geteuid() != 0, reason="tap NICs need root")
@pytest.mark.usefixtures("host_taps")  # creates a tap: tests/conftest.py
def test_a_missing_bridge_fails_with_ips_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KVMLAB_FAKE_TAP", "run")  # the fake runs the up-script, as QEMU does
    lab = Hypervisor(tmp_path / "lab", backend="fake")
    vm = Instance(
        name="vm1",
        nics=[Nic(mac="52:54:00:12:34:56", mode="bridged", link="kvmlabnobr9")],
        hvparams=HvParams(kernel_path="", vnc_bind_address=""),
    )
    with pytest.raises(LaunchError) as caught:
        lab.start(vm)
    message = str(caught.value)
    assert "network script up-0 failed with status" in message
    assert "kvmlabnobr9" in message.split("failed with status", 1)[1]


def test_console_of_a_stopped_vm_prints_its_last_boot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lab = Hypervisor(tmp_path / "lab", backend="fake")
    lab.start(Instance(name="vm1", hvparams=HvParams(kernel_path="", vnc_bind_address="")))
    lab.console("vm1").expect("KVMLAB-BOOT-OK", timeout=30)
    lab.stop("vm1")
    assert main(["--state-dir", str(tmp_path / "lab"), "--backend", "fake", "console", "vm1"]) == 0
    assert "KVMLAB-BOOT-OK" in capsys.readouterr().out


@pytest.mark.qemu
def test_migrate_defaults_to_the_binary_the_source_runs(
    tmp_path: Path,
    test_guest: object,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    require_qemu()
    if not os.access(QEMU_10, os.X_OK):
        if os.environ.get("CI"):
            pytest.fail(f"CI=true and no QEMU 10.0 at {QEMU_10}")
        pytest.skip(f"no QEMU 10.0 at {QEMU_10}")
    monkeypatch.delenv("KVMLAB_QEMU", raising=False)
    source = Hypervisor(tmp_path / "a", backend=QemuBackend(QEMU_10))
    target = Hypervisor(tmp_path / "b", backend="qemu")
    vm = Instance(
        name="vm1",
        memory=192,
        nics=[Nic(mac="52:54:00:12:34:56", mode="user")],
        hvparams=HvParams.model_validate(test_guest.hvparams()),  # type: ignore[attr-defined]
    )
    try:
        source.start(vm)
        source.console("vm1").expect("KVMLAB-BOOT-OK", timeout=60)
        code = main(
            [
                "--state-dir",
                str(tmp_path / "a"),
                "--backend",
                "qemu",
                "migrate",
                "vm1",
                "--to",
                str(tmp_path / "b"),
                "--json",
            ]
        )
        assert code == 0, capsys.readouterr().err
        assert '"target_version": "10.0' in capsys.readouterr().out
        assert target.info("vm1").saved_argv[0] == QEMU_10
    finally:
        stop_all(source)
        stop_all(target)
