"""Real QEMU accepts every golden case's command line (started paused, then ``quit``).

For each case and each installed QEMU (7.2 is the system's ``qemu-system-x86_64``,
required under ``CI=true``; 10.0 is the backports wrapper, skipped when absent), the
case is generated with the binary's probed capabilities into a short temp layout,
its paths mapped to temp images and the test guest, TCG forced, ``-daemonize``
stripped and ``-S`` added, NIC arguments planned for this host; QEMU must answer a
QMP handshake (status ``prelaunch``). See ``helpers_acceptance`` for the mapping.

``KVMLAB_QEMU=<binary>`` (the ``nox -s qemu10`` session) runs only that binary: the
slot of its version uses it, the others skip.

Cases the golden profile refuses are not started: generating them with the probed
capabilities must refuse them the same way.

Known generator bugs are strict xfails (``BUG: ...``): when one is fixed, the xfail
turns into a failure and this table must shrink.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers_acceptance import (
    AcceptanceSkipError,
    acceptance_argv,
    run_paused,
    scratch_dir,
)

from kvmlab.errors import KvmlabError
from kvmlab.golden.cases import (
    GoldenCase,
    GoldenProfile,
    discover_cases,
    regenerate_requested,
    render_case,
)
from kvmlab.guest.build import GuestImage
from kvmlab.spec.capabilities import QemuCapabilities
from kvmlab.spec.instance import Instance

pytestmark = pytest.mark.qemu

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
SYSTEM_QEMU = "qemu-system-x86_64"
QEMU10_WRAPPER = "/opt/kvmlab/qemu-10.0/bin/qemu-system-x86_64"
SLOTS = ("qemu-7.2", "qemu-10.0")
CASES = discover_cases()

_BOTH = SLOTS
#: (case, profiles, reason): QEMU rejects what kvmlab generates. Reasons give QEMU's
#: message and what the argv should be.
KNOWN_BUGS: tuple[tuple[str, tuple[str, ...], str], ...] = ()


def _param(slot: str, case: GoldenCase) -> object:
    marks = [
        pytest.mark.xfail(strict=True, reason=reason)
        for name, profiles, reason in KNOWN_BUGS
        if name == case.name and slot in profiles
    ]
    return pytest.param(slot, case, marks=marks, id=f"{slot}/{case.name}")


@dataclass(frozen=True)
class Qemu:
    """One installed binary for a slot, with its probed capabilities."""

    slot: str
    binary: str
    caps: QemuCapabilities


def _skip_or_fail(reason: str, required: bool) -> None:
    if required and IN_CI:
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)


def _slot_name(caps: QemuCapabilities) -> str:
    return f"qemu-{caps.version[0]}.{caps.version[1]}"


_QEMUS: dict[str, Qemu] = {}


def _resolve(slot: str) -> Qemu:
    """The binary for ``slot`` on this host; skip, or fail under CI for the system QEMU."""
    if slot in _QEMUS:
        return _QEMUS[slot]
    override = os.environ.get("KVMLAB_QEMU")
    if override:
        caps = _probe(override, required=True)
        if _slot_name(caps) != slot:
            pytest.skip(f"KVMLAB_QEMU={override} is QEMU {caps.version_string}: only its slot runs")
        binary = override
    elif slot == "qemu-7.2":
        found = shutil.which(SYSTEM_QEMU)
        if found is None:
            _skip_or_fail(f"{SYSTEM_QEMU} is not installed (apt-get install qemu-system-x86)", True)
        binary = str(found)
        caps = _probe(binary, required=True)
        if _slot_name(caps) != slot:
            _skip_or_fail(f"{binary} is QEMU {caps.version_string}, not 7.2", True)
    else:
        if not Path(QEMU10_WRAPPER).exists():
            pytest.skip(f"QEMU 10.0 not installed at {QEMU10_WRAPPER} (.ci/install-qemu-backports)")
        binary = QEMU10_WRAPPER
        caps = _probe(binary, required=False)
    _QEMUS[slot] = Qemu(slot, binary, caps)
    return _QEMUS[slot]


def _probe(binary: str, *, required: bool) -> QemuCapabilities:
    try:
        return QemuCapabilities.probe(binary)
    except KvmlabError as err:
        _skip_or_fail(f"cannot probe {binary}: {err}", required)
        raise


@pytest.mark.parametrize(("slot", "case"), [_param(slot, case) for slot in SLOTS for case in CASES])
def test_qemu_accepts_case(slot: str, case: GoldenCase, request: pytest.FixtureRequest) -> None:
    if regenerate_requested():
        pytest.skip("KVMLAB_REGENERATE=1: rewriting golden files, real QEMU not started")
    qemu = _resolve(slot)
    recorded = render_case(case, GoldenProfile(slot, "recorded").caps)
    if recorded.refused:
        # Nothing to start: the installed binary must be refused exactly like its recording.
        probed = render_case(case, qemu.caps)
        assert probed.text == recorded.text, "probed and recorded capabilities disagree"
        return
    instance = case.loaded
    assert isinstance(instance, Instance)
    guest: GuestImage = request.getfixturevalue("test_guest")
    if any(nic.mode != "user" for nic in instance.nics):
        request.getfixturevalue("host_taps")  # QEMU makes a tap (as root): tests/conftest.py
    with scratch_dir() as root:
        try:
            argv, qmp = acceptance_argv(instance, qemu.caps, qemu.binary, root, guest)
        except AcceptanceSkipError as err:
            pytest.skip(str(err))
        run = run_paused(argv, qmp, root / "qemu.log")
        assert run.exitcode is not None, "QEMU was not reaped"
        if not run.accepted:
            pytest.fail(
                f"QEMU {qemu.caps.version_string} refused {case.name}: {run.error}\n"
                f"argv: {' '.join(argv)}\noutput:\n{run.output}",
                pytrace=False,
            )
        assert run.status == "prelaunch", f"-S should leave QEMU paused, status {run.status!r}"
    assert not root.exists(), "temp files left behind"
