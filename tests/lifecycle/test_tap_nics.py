"""Bridged and routed NICs on real QEMU, as root: the up-script, the taps, and their removal.

Tap NICs are where kvmlab touches the host network, so they are tested against the real
thing: a bridge made for the test, QEMU creating the taps and running kvmlab's up-script with
their names, and the kernel's view of the result in ``/sys/class/net``. Without root there
are no taps to make, so the module is skipped; as root (the CI machines) it runs, and a
missing QEMU or test guest is then a failure under ``CI=true`` (the ``qemu`` marker's rule).

The injection test is defence in depth: the models refuse a bridge name carrying shell
syntax, and even a NIC that bypassed them (``model_construct``) must not run a command when
the generated up-script is run for real by a process that creates a real tap.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers_lifecycle import BOOT_TIMEOUT, kvmlab_temp_leftovers, mac
from pydantic import ValidationError

from kvmlab.errors import LaunchError
from kvmlab.guest.build import GuestImage
from kvmlab.host.backends import FakeBackend
from kvmlab.host.executor import execute
from kvmlab.lifecycle.hypervisor import Hypervisor
from kvmlab.runtime.generator import generate_runtime
from kvmlab.spec.instance import HvParams, Instance, Nic, NicMode

# Creates and counts host taps: under the host_taps lock (tests/conftest.py).
pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="tap NICs need root"),
    pytest.mark.usefixtures("host_taps"),
]

SYS_NET = Path("/sys/class/net")
IFF_UP = 0x1
NAME = "tapvm"


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=10)


@pytest.fixture
def bridge() -> Iterator[str]:
    """A fresh Linux bridge, unique to this test, deleted afterwards whatever happened."""
    if shutil.which("ip") is None:
        pytest.fail("root but no 'ip' command (apt-get install iproute2)")
    name = f"kvmlabbr{uuid.uuid4().hex[:6]}"  # 14 characters: under IFNAMSIZ
    ip("link", "add", name, "type", "bridge")
    try:
        ip("link", "set", name, "up")
        yield name
    finally:
        subprocess.run(["ip", "link", "delete", name], check=False, capture_output=True)


def is_up(interface: str) -> bool:
    return bool(int((SYS_NET / interface / "flags").read_text(), 16) & IFF_UP)


def wait_gone(interfaces: list[str], timeout: float = 5.0) -> list[str]:
    """The interfaces still present after ``timeout`` (QEMU's taps die with its descriptors)."""
    deadline = time.monotonic() + timeout
    while True:
        left = [name for name in interfaces if (SYS_NET / name).exists()]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)


@pytest.mark.qemu
@pytest.mark.parametrize("kvmlab_backend", ["qemu"], indirect=True)
def test_bridged_and_routed_taps_on_real_qemu(
    lab: Hypervisor, test_guest: GuestImage, bridge: str
) -> None:
    instance = Instance(
        name=NAME,
        memory=192,
        vcpus=1,
        nics=(
            Nic(mac=mac(1), mode="bridged", link=bridge),
            Nic(mac=mac(2), mode="routed"),
        ),
        hvparams=HvParams.model_validate(test_guest.hvparams()),
    )
    before = kvmlab_temp_leftovers()

    lab.start(instance)

    # The guest sees both NICs, in order, with the MACs asked for.
    facts = lab.console(NAME).facts(BOOT_TIMEOUT)
    assert facts.macs == [mac(1), mac(2)]

    # QEMU ran each up-script with its tap's name; the script recorded it for stop.
    nic_dir = lab.layout.nic_dir(NAME)
    bridged_tap = (nic_dir / "0").read_text().strip()
    routed_tap = (nic_dir / "1").read_text().strip()
    assert bridged_tap != routed_tap
    for tap in (bridged_tap, routed_tap):
        assert (SYS_NET / tap).is_dir(), f"{tap} is not a network interface"
        assert is_up(tap), f"{tap} is down"
    master = SYS_NET / bridged_tap / "master"
    assert os.readlink(master) == f"../{bridge}"
    assert not (SYS_NET / routed_tap / "master").exists()  # routed: on no bridge

    # The up-scripts lived in a private temp dir that is gone once QEMU has started.
    assert kvmlab_temp_leftovers() == before

    lab.stop(NAME)

    assert wait_gone([bridged_tap, routed_tap]) == []
    assert not nic_dir.exists() or list(nic_dir.iterdir()) == []
    assert kvmlab_temp_leftovers() == before


@pytest.mark.parametrize(
    "link",
    [
        "br0;touch /tmp/x",
        "br0$(id)",
        "br0`id`",
        "br0|id",
        "br0 br1",
        "br0&",
        "br0'",
        "br0\n",
        "b" * 16,
    ],
)
def test_bridge_names_with_shell_syntax_are_refused(link: str) -> None:
    with pytest.raises(ValidationError, match="link"):
        Nic(mac=mac(1), mode="bridged", link=link)
    with pytest.raises(ValidationError):
        Instance.model_validate(
            {"name": "vm1", "nics": [{"mac": mac(1), "mode": "bridged", "link": link}]}
        )


def test_up_script_of_an_unvalidated_link_runs_no_command(fake_lab: Hypervisor) -> None:
    """The up-script runs for real (a real tap, the real ``ip``), and still only quotes."""
    marker = Path("/tmp") / f"kvmlab-pwned-{uuid.uuid4().hex}"
    evil = Nic.model_construct(mac=mac(1), mode=NicMode.BRIDGED, link=f"br0;touch${{IFS}}{marker}")
    instance = Instance(name=NAME, nics=(Nic(mac=mac(1), mode="bridged", link="br0"),))
    runtime = generate_runtime(instance, layout=fake_lab.layout).model_copy(
        update={"nics": (evil,)}
    )
    assert runtime.nics[0].link == evil.link  # the validation really was bypassed
    backend = FakeBackend(faults={"KVMLAB_FAKE_TAP": "run"})
    for directory in fake_lab.layout.directories():
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    before = kvmlab_temp_leftovers()

    try:
        # `ip link set ... master 'br0;touch...'` finds no such bridge: the script fails
        # (set -e), and the fake fails the start like QEMU does.
        with pytest.raises(LaunchError) as failed:
            execute(runtime, fake_lab.layout, backend, backend.capabilities(""), timeout=20)
        # The script did reach the real `ip`, with the whole link as one argument.
        assert f'"{evil.link}"' in failed.value.output
    finally:
        pid_text = (
            fake_lab.layout.pidfile(NAME).read_text().strip()
            if fake_lab.layout.pidfile(NAME).exists()
            else ""
        )
        if pid_text.isdigit():  # started after all: do not leak it
            subprocess.run(["kill", "-9", pid_text], check=False)

    assert not marker.exists()
    assert kvmlab_temp_leftovers() == before
