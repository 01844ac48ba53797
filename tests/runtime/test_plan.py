"""``plan_execution``: the start-time arguments, temp files and the tap up-script."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import typing
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kvmlab.errors import InvalidInputError, RuntimeFormatError
from kvmlab.runtime.generator import generate_runtime
from kvmlab.runtime.plan import ExecutionPlan, NicPlan, NicPlanKind, StartFacts, plan_execution
from kvmlab.runtime.saved import KVMRuntime
from kvmlab.spec.capabilities import QemuCapabilities, load_profile
from kvmlab.spec.instance import Instance, Nic, NicMode, NicType
from kvmlab.spec.layout import StateLayout

MAC1 = "02:00:00:00:00:01"
MAC2 = "02:00:00:00:00:02"
MAC3 = "02:00:00:00:00:03"
QMP = "/srv/kvmlab/ctrl/vm1.qmp"
QEMU_7_2 = QemuCapabilities()
USER = NicPlan(NicPlanKind.USER)

pytestmark = pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX sh")


LoadCaps = Callable[[str], QemuCapabilities]


@pytest.fixture
def ganeti_caps() -> LoadCaps:
    """Capabilities of one of Ganeti's QEMU versions (the bundled ``ganeti-<version>`` profile)."""

    def load(version: str) -> QemuCapabilities:
        return load_profile(f"ganeti-{version}")

    return load


def runtime_with(*nics: dict[str, str], **hvparams: Any) -> KVMRuntime:
    instance = Instance.model_validate({"name": "vm1", "nics": list(nics), "hvparams": hvparams})
    return generate_runtime(instance, layout=StateLayout(Path("/srv/kvmlab")))


def bridged(mac: str = MAC1, link: str = "br0") -> dict[str, str]:
    return {"mac": mac, "mode": "bridged", "link": link}


def user(mac: str = MAC1) -> dict[str, str]:
    return {"mac": mac, "mode": "user"}


def script(seq: int = 0) -> NicPlan:
    return NicPlan(NicPlanKind.SCRIPT, script_path=f"/run/kvmlab/tmp/vm1-up-{seq}")


def plan(
    runtime: KVMRuntime,
    *plans: NicPlan,
    caps: QemuCapabilities = QEMU_7_2,
    qmp: str | None = None,
    nic_dir: str | None = None,
) -> ExecutionPlan:
    return plan_execution(
        runtime, StartFacts(nic_plans=plans, qmp_socket=qmp, nic_dir=nic_dir, caps=caps)
    )


# --- NIC arguments ------------------------------------------------------------------------


def test_user_nic_on_modern_qemu() -> None:
    result = plan(runtime_with(user()), USER)
    assert list(result.start_args) == [
        "-netdev", "user,id=net-s10",
        "-device", f"virtio-net-pci,netdev=net-s10,mac={MAC1},id=nic-s10,addr=0x10",
    ]  # fmt: skip
    assert result.temp_files == ()


def test_script_nic_on_modern_qemu() -> None:
    result = plan(runtime_with(bridged()), script())
    assert list(result.start_args) == [
        "-netdev", "tap,id=net-s10,script=/run/kvmlab/tmp/vm1-up-0,downscript=no",
        "-device", f"virtio-net-pci,netdev=net-s10,mac={MAC1},id=nic-s10,addr=0x10",
    ]  # fmt: skip


def test_fd_nic_on_modern_qemu() -> None:
    result = plan(runtime_with(bridged()), NicPlan(NicPlanKind.FD, fd=7))
    assert list(result.start_args) == [
        "-netdev", "tap,id=net-s10,fd=7",  # QEMU refuses vnet_hdr= with fd=
        "-device", f"virtio-net-pci,netdev=net-s10,mac={MAC1},id=nic-s10,addr=0x10",
    ]  # fmt: skip
    assert result.temp_files == ()


def test_fd_nic_without_vnet_hdr_is_the_same() -> None:
    # vnet_hdr is the descriptor's flag, set when the tap is opened: never an fd= option.
    result = plan(runtime_with(bridged(), vnet_hdr=False), NicPlan(NicPlanKind.FD, fd=7))
    assert result.start_args[1] == "tap,id=net-s10,fd=7"


def test_several_nics_keep_their_order_and_ids() -> None:
    runtime = runtime_with(bridged(MAC1), user(MAC2), {"mac": MAC3, "mode": "routed", "link": "10"})
    result = plan(runtime, script(0), USER, NicPlan(NicPlanKind.FD, fd=9))
    args = list(result.start_args)
    netdevs = [args[i + 1] for i, word in enumerate(args) if word == "-netdev"]
    devices = [args[i + 1] for i, word in enumerate(args) if word == "-device"]
    assert [n.split(",")[:2] for n in netdevs] == [
        ["tap", "id=net-s10"],
        ["user", "id=net-s11"],
        ["tap", "id=net-s12"],
    ]
    assert devices == [
        f"virtio-net-pci,netdev=net-s{slot:02x},mac={mac},id=nic-s{slot:02x},addr={slot:#04x}"
        for slot, mac in enumerate((MAC1, MAC2, MAC3), start=0x10)
    ]


@pytest.mark.parametrize("nic_type", typing.get_args(NicType))
def test_device_model_per_nic_type_exists_in_qemu_7_2(nic_type: str) -> None:
    profile = load_profile("qemu-7.2")
    result = plan(runtime_with(user(), nic_type=nic_type), USER, caps=profile)
    device = result.start_args[3]
    model = device.split(",")[0]
    assert profile.supports_device(model), f"{nic_type} -> {model} is not a QEMU 7.2 device"
    assert model == ("virtio-net-pci" if nic_type == "paravirtual" else nic_type)
    assert f"mac={MAC1}" in device.split(",")


def test_legacy_net_nic_on_old_qemu(ganeti_caps: LoadCaps) -> None:
    caps = ganeti_caps("0.9.1")
    runtime = runtime_with(bridged(MAC1), user(MAC2))
    result = plan(runtime, script(0), USER, caps=caps)
    assert list(result.start_args) == [
        "-net", f"nic,vlan=0,macaddr={MAC1},model=virtio",
        "-net", "tap,vlan=0,script=/run/kvmlab/tmp/vm1-up-0,downscript=no",
        "-net", f"nic,vlan=1,macaddr={MAC2},model=virtio",
        "-net", "user,vlan=1",
    ]  # fmt: skip
    assert "-netdev" not in result.start_args
    assert "-device" not in result.start_args


def test_legacy_model_for_other_nic_types(ganeti_caps: LoadCaps) -> None:
    result = plan(runtime_with(user(), nic_type="rtl8139"), USER, caps=ganeti_caps("0.9.1"))
    assert result.start_args[1] == f"nic,vlan=0,macaddr={MAC1},model=rtl8139"


@pytest.mark.parametrize("caps_name", ["qemu-7.2", "qemu-10.0"])
def test_no_nics_means_net_none(caps_name: str) -> None:
    result = plan(runtime_with(), caps=load_profile(caps_name))
    assert list(result.start_args) == ["-net", "none"]


# --- vhost --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("nic_plan", "vhost_net", "caps", "expected"),
    [
        (script(), True, QEMU_7_2, True),
        (NicPlan(NicPlanKind.FD, fd=5), True, QEMU_7_2, True),
        (script(), False, QEMU_7_2, False),
        (NicPlan(NicPlanKind.FD, fd=5), False, QEMU_7_2, False),
        (script(), True, QemuCapabilities(has_vhost=False), False),
    ],
)
def test_vhost_only_when_asked_and_supported(
    nic_plan: NicPlan, vhost_net: bool, caps: QemuCapabilities, expected: bool
) -> None:
    result = plan(runtime_with(bridged(), vhost_net=vhost_net), nic_plan, caps=caps)
    assert ("vhost=on" in result.start_args[1].split(",")) is expected


def test_no_vhost_on_ganetis_qemu_0_12_5(ganeti_caps: LoadCaps) -> None:
    caps = ganeti_caps("0.12.5")
    assert not caps.has_vhost
    result = plan(runtime_with(bridged(), vhost_net=True), script(), caps=caps)
    assert not [arg for arg in result.start_args if "vhost" in arg]


def test_no_vhost_for_user_networking() -> None:
    result = plan(runtime_with(user(), vhost_net=True), USER)
    assert not [arg for arg in result.start_args if "vhost" in arg]


# --- QMP ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("caps", "switches"),
    [(QEMU_7_2, "server=on,wait=off"), (QemuCapabilities(version=(5, 2, 0)), "server,nowait")],
)
def test_qmp_is_appended_last(caps: QemuCapabilities, switches: str) -> None:
    result = plan(runtime_with(user()), USER, caps=caps, qmp=QMP)
    assert list(result.start_args[-2:]) == ["-qmp", f"unix:{QMP},{switches}"]
    assert result.start_args.count("-qmp") == 1


def test_qmp_on_ganetis_qemu_5_2(ganeti_caps: LoadCaps) -> None:
    result = plan(runtime_with(), caps=ganeti_caps("5.2.0"), qmp=QMP)
    assert list(result.start_args) == ["-net", "none", "-qmp", f"unix:{QMP},server,nowait"]


def test_no_qmp_without_socket() -> None:
    assert "-qmp" not in plan(runtime_with()).start_args


def test_no_qmp_on_qemu_without_it(ganeti_caps: LoadCaps) -> None:
    assert "-qmp" not in plan(runtime_with(), caps=ganeti_caps("0.9.1"), qmp=QMP).start_args


# --- the saved runtime stays as it is -----------------------------------------------------


def test_argv_is_the_saved_argv_then_start_args() -> None:
    runtime = runtime_with(bridged(MAC1), user(MAC2))
    result = plan(runtime, script(0), USER, qmp=QMP)
    assert result.argv == runtime.argv + result.start_args
    assert result.argv[: len(runtime.argv)] == runtime.argv


def test_planning_does_not_change_the_runtime() -> None:
    runtime = runtime_with(bridged(MAC1), user(MAC2))
    saved = runtime.to_json()
    argv = runtime.argv
    for _ in range(2):
        plan(runtime, script(0), USER, qmp=QMP)
    assert runtime.to_json() == saved
    assert runtime.argv is argv
    assert KVMRuntime.from_json(saved) == runtime


def test_planning_is_deterministic() -> None:
    runtime = runtime_with(bridged(MAC1), bridged(MAC2, "br1"))
    facts = (script(0), script(1))
    assert plan(runtime, *facts, qmp=QMP) == plan(runtime, *facts, qmp=QMP)


# --- temp files ---------------------------------------------------------------------------


def test_one_up_script_per_script_plan() -> None:
    runtime = runtime_with(bridged(MAC1), user(MAC2), bridged(MAC3, "br1"))
    result = plan(runtime, script(0), USER, script(2))
    assert [temp.path for temp in result.temp_files] == [
        "/run/kvmlab/tmp/vm1-up-0",
        "/run/kvmlab/tmp/vm1-up-2",
    ]
    for temp in result.temp_files:
        assert temp.mode == 0o700
        assert temp.content.startswith("#!/bin/sh\n")
    assert f"MAC={MAC1}" in result.temp_files[0].content
    assert f"MAC={MAC3}" in result.temp_files[1].content


def test_no_temp_file_for_fd_plans() -> None:
    result = plan(runtime_with(bridged()), NicPlan(NicPlanKind.FD, fd=3))
    assert result.temp_files == ()


# --- refused plans ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("nics", "plans"),
    [
        ([bridged()], []),
        ([bridged()], [script(0), script(1)]),
        ([], [USER]),
    ],
)
def test_plan_count_must_match_the_nics(nics: list[dict[str, str]], plans: list[NicPlan]) -> None:
    with pytest.raises(InvalidInputError) as info:
        plan(runtime_with(*nics), *plans)
    assert str(len(plans)) in str(info.value)


@pytest.mark.parametrize("nic_plan", [script(), NicPlan(NicPlanKind.FD, fd=4)])
def test_user_nic_planned_as_tap_is_refused(nic_plan: NicPlan) -> None:
    with pytest.raises(InvalidInputError, match="NIC 0"):
        plan(runtime_with(user()), nic_plan)


@pytest.mark.parametrize("mode", ["bridged", "routed"])
def test_tap_nic_planned_as_user_is_refused(mode: str) -> None:
    with pytest.raises(InvalidInputError, match="NIC 0"):
        plan(runtime_with({"mac": MAC1, "mode": mode, "link": "br0"}), USER)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kind": NicPlanKind.SCRIPT},
        {"kind": NicPlanKind.SCRIPT, "script_path": ""},
        {"kind": NicPlanKind.FD},
        {"kind": NicPlanKind.FD, "fd": -1},
        {"kind": NicPlanKind.SCRIPT, "script_path": "/tmp/up,script=/evil"},
        {"kind": NicPlanKind.SCRIPT, "script_path": "/tmp/up\n"},
    ],
)
def test_incomplete_or_unsafe_nic_plans_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(InvalidInputError):
        NicPlan(**kwargs)


# --- the up-script, run for real ---------------------------------------------------------


def run_up_script(content: str, directory: Path, tap: str = "tap0") -> list[list[str]]:
    """Run the script as QEMU would (``script TAP``) with ``ip`` faked; return ip's calls.

    The script sets its own PATH (so a fake ``ip`` earlier in PATH would not be found);
    a shell function shadows any PATH lookup, so the script is sourced after defining one.
    """
    path = directory / "up.sh"
    path.write_text(content)
    path.chmod(0o700)
    log = directory / "ip.log"
    wrapper = (
        'ip() { for a in "$@"; do printf "%s\\037" "$a"; done >> "$IPLOG"; echo >> "$IPLOG"; }; '
        '. "$0"'
    )
    completed = subprocess.run(
        ["sh", "-c", wrapper, str(path), tap],
        cwd=directory,
        env={"IPLOG": str(log), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    if not log.exists():
        return []
    return [line.split("\037")[:-1] for line in log.read_text().splitlines()]


def up_script(nic: Nic, nic_dir: Path | None = None, name: str = "vm1") -> str:
    runtime = KVMRuntime(name=name, argv=("/usr/bin/kvm",), nics=(nic,))
    result = plan(runtime, script(), nic_dir=str(nic_dir) if nic_dir else None)
    (temp,) = result.temp_files
    return temp.content


@pytest.mark.parametrize(
    "nic",
    [
        Nic(mac=MAC1, mode=NicMode.BRIDGED, link="br0"),
        Nic(mac=MAC1, mode=NicMode.ROUTED, link="100"),
        Nic(mac=MAC1, mode=NicMode.ROUTED),
    ],
)
def test_up_script_syntax(tmp_path: Path, nic: Nic) -> None:
    path = tmp_path / "up.sh"
    path.write_text(up_script(nic, tmp_path / "nic"))
    completed = subprocess.run(["sh", "-n", str(path)], capture_output=True, text=True, check=False)
    assert completed.returncode == 0, completed.stderr


def test_up_script_brings_the_tap_up_attaches_it_and_records_it(tmp_path: Path) -> None:
    nic_dir = tmp_path / "nic"
    nic_dir.mkdir()
    content = up_script(Nic(mac=MAC1, link="br0"), nic_dir)
    calls = run_up_script(content, tmp_path, tap="tap42")
    assert calls == [
        ["link", "set", "dev", "tap42", "up"],
        ["link", "set", "dev", "tap42", "master", "br0"],
    ]
    assert (nic_dir / "0").read_text() == "tap42\n"


def test_routed_up_script_does_not_touch_a_bridge(tmp_path: Path) -> None:
    calls = run_up_script(up_script(Nic(mac=MAC1, mode=NicMode.ROUTED, link="100")), tmp_path)
    assert calls == [["link", "set", "dev", "tap0", "up"]]


def test_dangerous_link_is_only_ever_a_quoted_value(tmp_path: Path) -> None:
    marker = tmp_path / f"pwned-{uuid.uuid4().hex}"
    link = f"br0; touch {marker}; $(touch {marker}) `touch {marker}` '\""
    nic = Nic.model_construct(mac=MAC1, mode=NicMode.BRIDGED, link=link)
    content = up_script(nic, tmp_path / "nic-dir")
    (tmp_path / "nic-dir").mkdir()

    calls = run_up_script(content, tmp_path)

    assert not marker.exists()
    assert calls[-1] == ["link", "set", "dev", "tap0", "master", link]


def test_dangerous_mac_is_only_ever_a_quoted_value(tmp_path: Path) -> None:
    marker = tmp_path / f"pwned-{uuid.uuid4().hex}"
    nic = Nic.model_construct(mac=f"x'; touch {marker}; '", mode=NicMode.BRIDGED, link="br0")
    run_up_script(up_script(nic), tmp_path)
    assert not marker.exists()


def test_runtime_name_cannot_inject_into_the_up_script(tmp_path: Path) -> None:
    marker = tmp_path / f"pwned-{uuid.uuid4().hex}"
    document = {
        "format": 1,
        "name": f"vm1\ntouch {marker} #",
        "argv": ["/usr/bin/kvm"],
        "nics": [{"mac": MAC1, "mode": "bridged", "link": "br0"}],
    }
    # The saved runtime is refused before anything could run...
    with pytest.raises(RuntimeFormatError, match="name"):
        KVMRuntime.from_json(json.dumps(document))
    # ...and a runtime built around validation still gets its name shell-quoted only.
    document["name"] = "vm1"
    runtime = KVMRuntime.from_json(json.dumps(document))
    evil = f"vm1\ntouch {marker} #"
    bypassed = runtime.model_copy(update={"name": evil})
    (temp,) = plan(bypassed, script()).temp_files
    assert temp.content.count("touch") == 1
    assert f"INSTANCE={shlex.quote(evil)}" in temp.content
    run_up_script(temp.content, tmp_path)
    assert not marker.exists()


def test_a_q35_nic_goes_behind_its_root_port() -> None:
    """q35: the NIC of slot 0x10 sits in port ``port-s10`` (docs/hotplug.md, "q35")."""
    runtime = runtime_with(user(), machine_version="q35")
    assert (
        "pcie-root-port,id=port-s10,bus=pcie.0,chassis=16,port=0x10,addr=0x10,multifunction=on"
        in (runtime.argv)
    )
    assert list(plan(runtime, USER).start_args)[-1] == (
        f"virtio-net-pci,netdev=net-s10,mac={MAC1},id=nic-s10,bus=port-s10,addr=0x0"
    )


def test_a_q35_runtime_saved_without_root_ports_keeps_the_root_bus() -> None:
    """A q35 runtime of a kvmlab before the ports replays as it was saved: ``addr=0x10``."""
    runtime = runtime_with(user(), machine_version="q35")
    words = runtime.argv
    ports = {i for i, word in enumerate(words) if word.startswith("pcie-root-port,")}
    argv = tuple(word for i, word in enumerate(words) if i not in ports and i + 1 not in ports)
    old = runtime.model_copy(update={"argv": argv})
    assert not any("pcie-root-port" in word for word in old.argv)
    assert list(plan(old, USER).start_args)[-1] == (
        f"virtio-net-pci,netdev=net-s10,mac={MAC1},id=nic-s10,addr=0x10"
    )
