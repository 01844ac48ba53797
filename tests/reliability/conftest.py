"""Fixtures of the reliability suite: a short private folder per test, its state directory,
a private TMPDIR, unique marker paths for injection tests, and a cleanup that kills
every process and unmounts every file system the test left under its folder."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers_reliability import kill_all_under, matrix_instance, run_instance, unmount_all_under

from kvmlab.lifecycle.hypervisor import Hypervisor
from kvmlab.spec.instance import Instance
from kvmlab.testing.templates import BootedVM


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A short folder under /tmp; everything running from it is killed at teardown."""
    path = Path(tempfile.mkdtemp(prefix="krel-", dir="/tmp"))
    try:
        yield path
    finally:
        unmount_all_under(path)
        kill_all_under(path)
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def state_dir(workdir: Path) -> Path:
    """The state directory (not created)."""
    return workdir / "sd"


@pytest.fixture
def private_tmp(workdir: Path) -> Path:
    """The TMPDIR of the kvmlab processes the test runs."""
    path = workdir / "tmp"
    path.mkdir(mode=0o700)
    return path


@pytest.fixture
def marker() -> Iterator[Path]:
    """A unique path an injected command would create; it must never exist."""
    path = Path("/tmp") / f"kvmlab-pwned-{uuid.uuid4().hex}"
    try:
        yield path
    finally:
        existed = path.exists()
        path.unlink(missing_ok=True)
        assert not existed, f"an injected command ran: {path} exists"


@pytest.fixture
def running_lab(
    request: pytest.FixtureRequest,
    lab: Hypervisor,
    booted_vm_factory: Callable[[Instance], BootedVM],
) -> Hypervisor:
    """The plugin's ``lab`` (a failure report shows its guest's console and logs) with a
    kill matrix's ``vm1`` running (:func:`helpers_reliability.run_instance`)."""
    guest = request.getfixturevalue("test_guest") if lab.backend.name == "qemu" else None
    run_instance(lab, matrix_instance(guest), booted_vm_factory)
    return lab
