"""``kvmlab attach-disk`` and ``detach-disk``: their output, the saved runtime, exit codes."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from subprocess import CompletedProcess

import pytest
from test_cli import instance_data, one_line_error, run, state_dir, workdir

from kvmlab.runtime.ports import guest_sysfs_dir

__all__ = ["run", "state_dir", "workdir"]  # the fixtures, shared


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


def saved(state_dir: Path) -> dict[str, object]:
    return json.loads((state_dir / "conf" / "vm1.runtime").read_text())


def make_image(workdir: Path, name: str, mib: int) -> str:
    path = workdir / name
    with path.open("wb") as file:
        file.truncate(mib << 20)
    return str(path)


def test_attach_then_detach_rewrite_the_saved_runtime(
    run: Callable[..., CompletedProcess[str]],
    write_instance: Callable[..., Path],
    state_dir: Path,
    workdir: Path,
    machine: str,
) -> None:
    first, new = make_image(workdir, "a.img", 8), make_image(workdir, "b.img", 4)
    assert run("start", str(write_instance(disks=[{"path": first}]))).returncode == 0
    attached = run("attach-disk", "vm1", new, "--mode", "ro")
    assert attached.returncode == 0, attached.stderr
    assert attached.stdout == f"attached disk {new} to vm1 at PCI slot 0x09 (saved)\n"
    assert saved(state_dir)["disks"] == [{"path": first, "mode": "rw"}, {"path": new, "mode": "ro"}]
    assert saved(state_dir)["disk_slots"] == [0x08, 0x09]
    shown = run("exec", "vm1", "--", "cat", "/sys/block/vdb/size")
    assert shown.stdout == f"{4 << 11}\n"

    detached = run("detach-disk", "vm1", first)
    assert detached.returncode == 0, detached.stderr
    assert detached.stdout == f"detached disk {first} from vm1 (saved)\n"
    assert saved(state_dir)["disk_slots"] == [0x09]
    assert run("reboot", "vm1").returncode == 0
    block = f"{pci_dir(0x09, machine)}/virtio1/block"
    shown = run("exec", "vm1", "--", "sh", "-c", f"ls {block}")
    assert shown.stdout == "vda\n"


def test_refusals_are_exit_2_in_one_line_and_change_nothing(
    run: Callable[..., CompletedProcess[str]],
    write_instance: Callable[..., Path],
    state_dir: Path,
    workdir: Path,
) -> None:
    first = make_image(workdir, "a.img", 8)
    assert run("start", str(write_instance(disks=[{"path": first}]))).returncode == 0
    before = (state_dir / "conf" / "vm1.runtime").read_bytes()
    missing = str(workdir / "missing.img")
    for args, message in [
        (("attach-disk", "vm1", first), "already has disk"),
        (("attach-disk", "vm1", missing), f"disk image {missing} does not exist"),
        (("attach-disk", "vm1", first, "--mode", "rx"), "invalid choice"),
        (("attach-disk", "vm1", "/bad\npath"), "invalid disk"),
        (("detach-disk", "vm1", missing), "no disk"),
        (("attach-disk", "nosuch", first), "no instance named"),
    ]:
        result = run(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr, args
        if message != "invalid choice":  # argparse's usage lines
            one_line_error(result.stderr)
    assert run("stop", "vm1", "--force").returncode == 0
    for args in (("attach-disk", "vm1", missing), ("detach-disk", "vm1", first)):
        result = run(*args)
        assert result.returncode == 2
        assert "not running" in one_line_error(result.stderr)
    assert (state_dir / "conf" / "vm1.runtime").read_bytes() == before
