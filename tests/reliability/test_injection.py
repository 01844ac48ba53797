"""Values that reach a shell script or a command line are data, never commands.

Three ways in: the tap up-script (a shell script QEMU runs as root), ``kvm_extra`` (split
like a shell, never run by one) and the kernel arguments (one ``-append`` argument); plus
the paths kvmlab writes into the script (the state directory and ``TMPDIR``). Each test
uses a unique marker path that an injected ``touch`` would create, and checks that the
script really ran (so "no marker" is not vacuous). As root, ``KVMLAB_FAKE_TAP=run`` makes
the fake create a real tap and run the up-script, as QEMU does.

``tests/lifecycle/test_tap_nics.py`` already covers one bypassed bridged link (the
script fails at ``ip link set master``); here the routed script runs to completion.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

import pytest
from helpers_reliability import MAC1, one_line_error, run_kvmlab, write_instance

from kvmlab.errors import LaunchError
from kvmlab.host.backends import FakeBackend
from kvmlab.host.executor import execute
from kvmlab.lifecycle.hypervisor import Hypervisor
from kvmlab.spec.instance import HvParams, Instance, Nic, NicMode
from kvmlab.spec.layout import StateLayout

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="the up-script runs for real only as root")
#: As root these create host taps: under the host_taps lock (tests/conftest.py), so the
#: tests that count taps do not see them.
HOST_TAPS = pytest.mark.usefixtures("host_taps")

PAYLOADS = [
    "br0; touch {m}",
    "$(touch {m})",
    "`touch {m}`",
    "x' ; touch {m} ; '",
    'x" ; touch {m} ; "',
    "x\ntouch {m}",
    "x && touch {m}",
    "x | touch {m}",
    "x;touch${{IFS}}{m}",
    "> {m}",
]


ROUTED = Instance(
    name="vm1",
    nics=(Nic(mac=MAC1, mode="routed", link="rt0"),),
    hvparams=HvParams(kernel_path="", vnc_bind_address=""),
)


def tap_lab(state_dir: Path) -> tuple[Hypervisor, FakeBackend]:
    backend = FakeBackend(faults={"KVMLAB_FAKE_TAP": "run"})
    lab = Hypervisor(state_dir, backend=backend)
    for directory in lab.layout.directories():
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    return lab, backend


@as_root
@HOST_TAPS
@pytest.mark.parametrize("payload", PAYLOADS)
def test_bypassed_routed_link_is_only_data_in_an_up_script_that_runs(
    state_dir: Path, marker: Path, payload: str
) -> None:
    lab, backend = tap_lab(state_dir)
    evil = Nic.model_construct(mac=MAC1, mode=NicMode.ROUTED, link=payload.format(m=marker))
    runtime = lab.generate(ROUTED).model_copy(update={"nics": (evil,)})
    assert runtime.nics[0].link == evil.link  # validation really was bypassed

    started = execute(runtime, lab.layout, backend, backend.capabilities(""), timeout=20)
    try:
        record = lab.layout.nic_dir("vm1") / "0"
        assert record.read_text().strip().startswith("tap")  # the script ran to its end
        assert not marker.exists()
    finally:
        os.kill(started.pid, 9)


@as_root
@HOST_TAPS
def test_bypassed_mac_never_runs(state_dir: Path, marker: Path) -> None:
    lab, backend = tap_lab(state_dir)
    evil = Nic.model_construct(
        mac=f"52:54:00:00:00:01;touch {marker}", mode=NicMode.ROUTED, link="rt0"
    )
    runtime = lab.generate(ROUTED).model_copy(update={"nics": (evil,)})
    with pytest.raises(LaunchError) as failed:  # QEMU's own check refuses the MAC first
        execute(runtime, lab.layout, backend, backend.capabilities(""), timeout=20)
    assert "mac" in str(failed.value)
    assert not marker.exists()


def test_bypassed_kvm_extra_and_kernel_args_stay_argv_words(
    workdir: Path, state_dir: Path, marker: Path
) -> None:
    """A model built without validation: the words go to QEMU's argv, no shell sees them."""
    kernel = workdir / "vmlinuz"
    kernel.write_bytes(b"\0" * 64)
    lab, backend = tap_lab(state_dir)
    hv = HvParams.model_construct(
        **{
            **HvParams().model_dump(),
            "kernel_path": str(kernel),
            "vnc_bind_address": "",
            "kernel_args": f"ro\n; touch {marker}",
            "kvm_extra": f"-usb ; touch {marker}",
        }
    )
    instance = Instance.model_construct(
        **{**Instance(name="vm1").model_dump(), "hvparams": hv, "nics": ()}
    )
    runtime = lab.generate(instance)
    assert [";", "touch", str(marker)] == list(runtime.argv[-3:])
    with pytest.raises(LaunchError) as failed:  # `;` is not an option: QEMU refuses it
        execute(runtime, lab.layout, backend, backend.capabilities(""), timeout=20)
    assert failed.value.exitcode == 1
    assert not marker.exists()


@pytest.mark.parametrize(
    "kvm_extra",
    ["; touch {m}", "$(touch {m})", "`touch {m}`", "-usb && touch {m}", "-usb | tee {m}"],
)
def test_kvm_extra_with_shell_syntax_never_runs(
    workdir: Path, state_dir: Path, private_tmp: Path, marker: Path, kvm_extra: str
) -> None:
    value = kvm_extra.format(m=marker)
    vm = write_instance(
        workdir / "vm1.json",
        hvparams={"kernel_path": "", "vnc_bind_address": "", "kvm_extra": value},
    )
    result = run_kvmlab(state_dir, "start", str(vm), tmpdir=private_tmp)
    # Valid input: QEMU gets the words as arguments and refuses them (exit 1, one line).
    assert result.returncode == 1, result
    one_line_error(result.stderr)
    header = (state_dir / "log" / "vm1.log").read_text().splitlines()[0]
    assert shlex.join(shlex.split(value)) in header  # as separate words, quoted in the log
    assert not marker.exists()
    assert list(private_tmp.iterdir()) == []


@pytest.mark.parametrize(
    "kernel_args", ["console=ttyS0 $(touch {m})", "`touch {m}`", "ro; touch {m} &"]
)
def test_kernel_args_with_shell_syntax_are_one_append_argument(
    workdir: Path, state_dir: Path, private_tmp: Path, marker: Path, kernel_args: str
) -> None:
    kernel = workdir / "vmlinuz"
    kernel.write_bytes(b"\0" * 64)
    value = kernel_args.format(m=marker)
    vm = write_instance(
        workdir / "vm1.json",
        hvparams={"kernel_path": str(kernel), "vnc_bind_address": "", "kernel_args": value},
    )
    result = run_kvmlab(state_dir, "start", str(vm), tmpdir=private_tmp)
    assert result.returncode == 0, result.stderr
    info = json.loads(run_kvmlab(state_dir, "info", "vm1", "--json").stdout)
    argv = info["argv"]
    append = argv[argv.index("-append") + 1]
    assert value in append and "\n" not in append
    assert not marker.exists()
    assert run_kvmlab(state_dir, "stop", "vm1", "--force").returncode == 0


@as_root
@HOST_TAPS
def test_state_dir_and_tmpdir_with_shell_syntax_are_quoted_in_the_up_script(
    workdir: Path, marker: Path
) -> None:
    """Paths kvmlab writes into the up-script: the NIC record path (state dir) is
    shell-quoted; the script path (TMPDIR) only ever reaches execv."""
    state_dir = workdir / f"s;touch {marker};x" / "sd"
    tmpdir = workdir / f"t;touch {marker}&y"
    tmpdir.mkdir(parents=True)
    vm = write_instance(workdir / "vm1.json", nics=[{"mac": MAC1, "mode": "routed", "link": "rt0"}])
    result = run_kvmlab(state_dir, "start", str(vm), tmpdir=tmpdir, env={"KVMLAB_FAKE_TAP": "run"})
    assert result.returncode == 0, result.stderr
    record = state_dir / "nic" / "vm1" / "0"
    assert record.read_text().strip().startswith("tap")  # the script ran, wrote here
    assert not marker.exists()
    assert list(tmpdir.iterdir()) == []
    assert run_kvmlab(state_dir, "stop", "vm1", "--force").returncode == 0


def test_state_dir_with_quote_or_dollar_is_refused(workdir: Path) -> None:
    for bad in ("a'b", "a$b", "a`b", 'a"b', "a\\b", "a,b"):
        result = run_kvmlab(workdir / bad, "list")
        assert result.returncode == 2, (bad, result)
        assert "state directory" in one_line_error(result.stderr)
    assert StateLayout(workdir).root == workdir
