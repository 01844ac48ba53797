"""``kvmlab doctor`` and ``kvmlab guest build``, run as a user runs them (a subprocess).

The doctor's answers are checked against the machine itself (``os.path.exists("/dev/kvm")``,
``os.geteuid()``, the QEMU on ``PATH``), not against figures written into the test, so the
same assertions hold on a laptop with working KVM and on the nested-virtualisation CI
machines where KVM is refused.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kvmlab.cli import app as cli
from kvmlab.cli import doctor
from kvmlab.errors import KvmlabError, ProbeError
from kvmlab.guest.build import GuestImage, boot_hvparams
from kvmlab.host import backends
from kvmlab.spec.instance import HvParams

KVMLAB = [sys.executable, "-m", "kvmlab.cli"]
# The accelerator probe boots the test guest under KVM once per binary and host boot
# (up to 12 s when KVM hangs); QEMU's help texts take a second more.
TIMEOUT = 120


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*KVMLAB, *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
        env={**os.environ, **(env or {})},
    )


# --- doctor -------------------------------------------------------------------------------


@pytest.mark.qemu
def test_doctor_text_names_qemu_kvm_state_and_accelerator(qemu_binary: str) -> None:
    result = run("--backend", "auto", "doctor")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert re.search(r"^  PATH: +\S*qemu-system-x86_64 .*QEMU 7\.2\.\d+", out, re.M), out
    kvm_state = "present" if os.path.exists("/dev/kvm") else "absent"
    assert re.search(rf"^/dev/kvm: +{kvm_state}\b", out, re.M), out
    accel = re.search(r"^accelerator: +(tcg|kvm): (\S.*)$", out, re.M)
    assert accel is not None, out
    assert re.search(r"^KVM works: +(yes|no|unverified): \S", out, re.M), out
    assert re.search(r"^root: +" + ("yes" if os.geteuid() == 0 else "no"), out, re.M), out
    assert out.rstrip().splitlines()[-1].startswith("ok: kvmlab can run VMs on: ")
    assert result.stderr == ""


@pytest.mark.qemu
def test_doctor_json_agrees_with_the_machine(qemu_binary: str) -> None:
    result = run("--backend", "qemu", "doctor", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)

    on_path = [b for b in report["binaries"] if b["label"] == "PATH"]
    assert len(on_path) == 1
    assert on_path[0]["real_path"] == os.path.realpath(qemu_binary)
    assert re.fullmatch(r"7\.2\.\d+", on_path[0]["version"]), on_path

    assert report["dev_kvm_exists"] is os.path.exists("/dev/kvm")
    if not report["dev_kvm_exists"]:
        assert report["dev_kvm_accessible"] is False
        assert report["kvm_works"] is False
    assert report["backend"] == "qemu"
    assert report["accelerator"] in {"tcg", "kvm"}
    assert report["accelerator_reason"].strip()
    # The verdict and the accelerator cannot disagree: KVM is used exactly when it works.
    assert (report["accelerator"] == "kvm") is (report["kvm_works"] is True)
    assert report["root"] is (os.geteuid() == 0)
    assert report["fake_kvm"] and Path(report["fake_kvm"]).exists()
    assert report["ok"] is True
    assert "qemu" in report["usable_backends"]
    assert "fake" in report["usable_backends"]
    if report["guest_built"]:
        assert Path(report["guest_kernel"]).is_file()
        assert Path(report["guest_initrd"]).is_file()


def test_doctor_on_the_fake_backend_says_tcg_and_why() -> None:
    result = run("--backend", "fake", "doctor", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["backend"] == "fake"
    assert report["accelerator"] == "tcg"
    assert "fake" in report["accelerator_reason"]


def test_doctor_probe_all_gives_every_working_binary_a_verdict() -> None:
    seen: list[str] = []

    def probe(binary: str) -> tuple[str | None, str]:
        seen.append(os.path.realpath(binary))
        return "tcg", "stub probe"

    report = doctor.diagnose("fake", probe_all=True, probe_accel=probe)
    working = [b for b in report.binaries if b.ok]
    assert all(b.accelerator == "tcg" and b.accelerator_reason == "stub probe" for b in working)
    # One probe per real binary: kvm and qemu-system-x86_64 are the same program.
    assert len(seen) == len(set(seen))


def test_doctor_exits_1_when_no_backend_can_run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def no_fake() -> str:
        raise KvmlabError("kvmlab-fake-kvm is not installed")

    def no_qemu(self: backends.QemuBackend, hv: object) -> str:
        raise ProbeError("no QEMU binary")

    monkeypatch.setattr(backends, "fake_program", no_fake)
    monkeypatch.setattr(backends.QemuBackend, "binary", no_qemu)
    monkeypatch.setattr(doctor, "_candidates", lambda qemu10: [])

    assert cli.main(["--backend", "fake", "doctor"]) == 1
    out = capsys.readouterr().out
    assert "none found" in out
    assert out.rstrip().splitlines()[-1] == "not ok: kvmlab cannot run VMs on any backend here"
    assert "hint: install QEMU" in out


# --- guest build --------------------------------------------------------------------------


def test_guest_build_json_prints_one_object_of_existing_files(test_guest: GuestImage) -> None:
    result = run("guest", "build", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)  # stdout holds the object and nothing else
    assert set(data) == {"kernel", "initrd", "hvparams"}
    assert Path(data["kernel"]).is_file() and Path(data["initrd"]).is_file()
    assert (data["kernel"], data["initrd"]) == (str(test_guest.kernel), str(test_guest.initrd))
    # The hvparams that boot it fast, ready for an instance file.
    assert data["hvparams"] == boot_hvparams(test_guest)
    HvParams.model_validate(data["hvparams"])
    assert "reusing guest" in result.stderr  # progress goes to stderr


def test_guest_build_text_output(test_guest: GuestImage) -> None:
    result = run("guest", "build")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"kernel: {test_guest.kernel}\ninitrd: {test_guest.initrd}\n"


def test_guest_build_failure_is_one_line_and_exit_1(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-vmlinuz"
    result = run("guest", "build", "--cache", str(tmp_path / "cache"), "--kernel", str(missing))
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == f"kvmlab: error: kernel {missing} is not a file\n"


def test_guest_build_unwritable_cache_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = run("guest", "build", "--cache", str(blocker / "cache"))
    assert result.returncode == 1
    assert result.stderr.startswith("kvmlab: error: cannot build the test guest:")
    assert len(result.stderr.splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_guest_without_subcommand_is_a_usage_error() -> None:
    result = run("guest")
    assert result.returncode == 2
    assert "SUBCOMMAND" in result.stderr
