"""``kvmlab attach-nic`` and ``detach-nic``: output, saved runtime, exit codes (docs/hotplug.md)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

import pytest
from test_cli import instance_data, one_line_error, run, state_dir, workdir

from kvmlab.runtime.ports import guest_sysfs_dir

__all__ = ["run", "state_dir", "workdir"]  # the fixtures, shared

FIRST = instance_data()["nics"][0]["mac"]  # type: ignore[index]
NEW = "52:54:00:6b:02:09"


@pytest.fixture(params=["q35", "pc"])
def machine(request: pytest.FixtureRequest) -> str:
    """q35 (devices behind PCIe root ports) and pc (on the root bus): docs/hotplug.md."""
    return str(request.param)


@pytest.fixture
def write_instance(workdir: Path, machine: str) -> Callable[..., Path]:
    """test_cli's instance files, on ``machine``."""

    def write(filename: str = "vm1.json", **data: object) -> Path:
        hv = {"kernel_path": "", "vnc_bind_address": "", "machine_version": machine}
        path = workdir / filename
        path.write_text(json.dumps(instance_data(hvparams=hv, **data)))
        return path

    return write


def pci_dir(slot: int, machine: str) -> str:
    """The guest's sysfs directory (a glob) of the device of reserved slot ``slot``."""
    return guest_sysfs_dir(slot, root_ports=machine == "q35")


def saved(state_dir: Path) -> dict[str, Any]:
    return json.loads((state_dir / "conf" / "vm1.runtime").read_text())


def test_attach_then_detach_rewrite_the_saved_runtime(
    run: Callable[..., CompletedProcess[str]],
    write_instance: Callable[..., Path],
    state_dir: Path,
    machine: str,
) -> None:
    assert run("start", str(write_instance())).returncode == 0
    attached = run("attach-nic", "vm1", "--mac", NEW.upper(), "--mode", "user")
    assert attached.returncode == 0, attached.stderr
    assert attached.stdout == f"attached NIC {NEW} to vm1 at PCI slot 0x11 (saved)\n"
    assert [nic["mac"] for nic in saved(state_dir)["nics"]] == [FIRST, NEW]
    assert saved(state_dir)["nic_slots"] == [0x10, 0x11]
    shown = run("exec", "vm1", "--", "cat", "/sys/class/net/eth1/address")
    assert shown.stdout == f"{NEW}\n"

    detached = run("detach-nic", "vm1", FIRST)
    assert detached.returncode == 0, detached.stderr
    assert detached.stdout == f"detached NIC {FIRST} from vm1 (saved)\n"
    assert saved(state_dir)["nic_slots"] == [0x11]
    assert run("reboot", "vm1").returncode == 0
    address = f"{pci_dir(0x11, machine)}/virtio0/net/eth0/address"
    shown = run("exec", "vm1", "--", "sh", "-c", f"cat {address}")
    assert shown.stdout == f"{NEW}\n"


@pytest.mark.usefixtures("host_taps")  # as root, a bridged attach makes a tap
def test_refusals_are_exit_2_in_one_line_and_change_nothing(
    run: Callable[..., CompletedProcess[str]], write_instance: Callable[..., Path], state_dir: Path
) -> None:
    assert run("start", str(write_instance())).returncode == 0
    before = (state_dir / "conf" / "vm1.runtime").read_bytes()
    for args, message in [
        (("attach-nic", "vm1", "--mac", FIRST), "already has a NIC with MAC"),
        (("attach-nic", "vm1", "--mac", "zz"), "invalid NIC"),
        (("detach-nic", "vm1", NEW), "no NIC with MAC"),
        (("attach-nic", "nosuch", "--mac", NEW), "no instance named"),
    ]:
        result = run(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert message in one_line_error(result.stderr), args
    tap_nic = ("attach-nic", "vm1", "--mac", NEW, "--mode", "bridged", "--link", "kvmlabnobr")
    result = run(*tap_nic)
    if os.geteuid() == 0:  # the tap is made, its up-script finds no such bridge
        assert result.returncode == 1, result.stderr
        assert "up-script" in one_line_error(result.stderr)
    else:
        assert result.returncode == 2, result.stderr
        assert "needs root" in one_line_error(result.stderr)
    assert run("stop", "vm1", "--force").returncode == 0
    for args in (("attach-nic", "vm1", "--mac", NEW), ("detach-nic", "vm1", FIRST)):
        result = run(*args)
        assert result.returncode == 2
        assert "not running" in one_line_error(result.stderr)
    assert (state_dir / "conf" / "vm1.runtime").read_bytes() == before


def test_info_reports_a_hotplug_left_pending(
    run: Callable[..., CompletedProcess[str]], write_instance: Callable[..., Path], state_dir: Path
) -> None:
    assert run("start", str(write_instance())).returncode == 0
    # What a kvmlab killed between device_add and the save leaves behind.
    intent = {"op": "attach-nic", "mac": NEW, "slot": 0x11}
    (state_dir / "conf" / "vm1.hotplug").write_text(json.dumps(intent))
    shown = run("info", "vm1")
    assert shown.returncode == 0
    assert f"hotplug: PENDING {json.dumps(intent)}" in shown.stdout
    as_json = json.loads(run("info", "vm1", "--json").stdout)
    assert as_json["hotplug_pending"] == intent
    assert run("stop", "vm1", "--force").returncode == 0
    assert run("cleanup", "vm1").returncode == 0
    assert not (state_dir / "conf" / "vm1.hotplug").exists()
