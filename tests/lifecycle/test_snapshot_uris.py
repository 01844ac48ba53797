"""Which migration URI a state file is written and read with (kvmlab.lifecycle.snapshots.write).

QEMU 10.0 deprecates ``fd:`` on a regular file ("Use file: instead"), so a QEMU with
``file:`` URIs is given the path; but a QEMU that chroots or runs as another user could
not open a path under the state directory, so it keeps getting a descriptor.
"""

from __future__ import annotations

import pytest

from kvmlab.lifecycle.snapshots.write import file_uri_usable
from kvmlab.runtime.generator import generate_runtime
from kvmlab.runtime.saved import KVMRuntime
from kvmlab.spec.capabilities import QemuCapabilities, load_profile
from kvmlab.spec.instance import HvParams, Instance


def _runtime(profile: str, **hvparams: object) -> tuple[KVMRuntime, QemuCapabilities]:
    caps = load_profile(profile)
    instance = Instance(
        name="vm1",
        hvparams=HvParams.model_validate({"kernel_path": "", "vnc_bind_address": "", **hvparams}),
    )
    return generate_runtime(instance, caps), caps


@pytest.mark.parametrize(("profile", "expected"), [("qemu-7.2", False), ("qemu-10.0", True)])
def test_file_uri_from_qemu_8_2(profile: str, expected: bool) -> None:
    runtime, caps = _runtime(profile)
    assert file_uri_usable(runtime, caps) is expected


@pytest.mark.parametrize(
    "hvparams", [{"use_chroot": True}, {"security_model": "user", "security_domain": "nobody"}]
)
def test_confined_qemu_keeps_a_descriptor(hvparams: dict[str, object]) -> None:
    runtime, caps = _runtime("qemu-10.0", **hvparams)
    assert file_uri_usable(runtime, caps) is False
