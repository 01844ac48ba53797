"""The lifecycle suite runs on both backends: the fake kvm and real QEMU with the test guest.

Tiers (after Firecracker's conftest)::

    kvmlab_backend (fake | qemu)  ->  lab (Hypervisor)  ->  make_instance  ->  booted
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from helpers_lifecycle import mac

from kvmlab.guest.build import boot_hvparams
from kvmlab.spec.instance import HvParams, Instance, Nic

BACKENDS = ["fake", pytest.param("qemu", marks=pytest.mark.qemu)]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "kvmlab_backend" in metafunc.fixturenames and not any(
        mark.name == "parametrize" and "kvmlab_backend" in mark.args[0]
        for mark in metafunc.definition.iter_markers()
    ):
        metafunc.parametrize("kvmlab_backend", BACKENDS, indirect=True)


@pytest.fixture
def make_instance(request: pytest.FixtureRequest, kvmlab_backend: str) -> Callable[..., Instance]:
    """Build an instance that boots on this backend (the test guest on real QEMU).

    Both backends get the test guest's boot options (``kvmlab.guest.build.boot_hvparams``: Q35,
    ``-nodefaults``, a quiet kernel), so the fake kvm is handed the same command line.
    """
    guest = request.getfixturevalue("test_guest") if kvmlab_backend == "qemu" else None

    def make(
        name: str = "vm1", memory: int = 192, vcpus: int = 2, nics: int = 1, **hv: object
    ) -> Instance:
        params = boot_hvparams(guest, **hv)
        return Instance(
            name=name,
            memory=memory,
            vcpus=vcpus,
            nics=tuple(Nic(mac=mac(i), mode="user") for i in range(nics)),
            hvparams=HvParams.model_validate(params),
        )

    return make


@pytest.fixture
def fault_env(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Set fake-kvm fault variables for the next start (inherited through os.environ)."""

    def set_faults(**faults: str) -> None:
        for key, value in faults.items():
            monkeypatch.setenv(f"KVMLAB_FAKE_{key.upper()}", value)

    return set_faults
