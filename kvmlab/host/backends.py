"""Where an instance really runs: real QEMU, or the fake kvm program.

A backend answers four questions for the lifecycle: which binary goes in
``argv[0]``, what that binary can do (its :class:`QemuCapabilities`), which
accelerator to ask for when ``kvm_flag`` leaves it open, and what environment the
binary needs. Everything else (generation, execution, stop, reboot) is the same
code for both, so the same tests hold on both.

``resolve_backend("auto")`` picks real QEMU when ``qemu-system-x86_64`` is
installed and answers ``-help``, and the fake otherwise.
"""

from __future__ import annotations

import os
import shutil
import sys
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path

from kvmlab.errors import InvalidInputError, KvmlabError, ProbeError
from kvmlab.host.qemu_help import cached_capabilities
from kvmlab.spec.capabilities import QemuCapabilities, load_profile, profile_kind
from kvmlab.spec.instance import Accel, HvParams

__all__ = [
    "Backend",
    "FakeBackend",
    "QemuBackend",
    "fake_program",
    "find_qemu",
    "resolve_backend",
]

QEMU_NAMES = ("qemu-system-x86_64", "kvm")


class Backend(ABC):
    """The seam between the lifecycle and a hypervisor binary."""

    #: ``"qemu"`` or ``"fake"``.
    name: str

    @abstractmethod
    def binary(self, hv: HvParams) -> str:
        """The program to put in ``argv[0]`` for an instance with these hvparams."""

    @abstractmethod
    def capabilities(self, binary: str) -> QemuCapabilities:
        """What ``binary`` can do."""

    @abstractmethod
    def accelerator(self, binary: str, hv: HvParams) -> tuple[Accel | None, str]:
        """The accelerator for ``kvm_flag == ""``, and why it was chosen."""

    def environment(self) -> dict[str, str]:
        """Variables added to the binary's environment."""
        return {}

    @property
    def can_create_taps(self) -> bool:
        """Whether bridged and routed NICs (tap devices) can be set up."""
        return os.geteuid() == 0

    def describe(self) -> str:
        return self.name


def find_qemu() -> str | None:
    """``$KVMLAB_QEMU`` when set (or ``None`` if it is not executable), else the
    system's QEMU binary, if any."""
    explicit = os.environ.get("KVMLAB_QEMU")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    for name in QEMU_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


class QemuBackend(Backend):
    """Real QEMU. The binary is ``binary`` if given, else ``$KVMLAB_QEMU`` (to run a
    whole suite against another QEMU), else the instance's ``kvm_path`` when it
    exists, else ``qemu-system-x86_64`` from ``PATH``.

    When ``kvm_flag`` is unset the accelerator comes from
    :func:`kvmlab.host.accel.probe_accelerator`: KVM only when it demonstrably boots
    the test guest, TCG otherwise.
    """

    name = "qemu"

    def __init__(self, binary: str | None = None) -> None:
        self._binary = binary or os.environ.get("KVMLAB_QEMU") or None
        self._accel_cache: dict[str, tuple[Accel | None, str]] = {}

    def binary(self, hv: HvParams) -> str:
        if self._binary:
            return self._binary
        if os.access(hv.kvm_path, os.X_OK):
            return hv.kvm_path
        found = find_qemu()
        if found is None:
            raise ProbeError(
                f"no QEMU binary: kvm_path {hv.kvm_path!r} is missing and"
                " qemu-system-x86_64 is not on PATH (apt-get install qemu-system-x86)"
            )
        return found

    def capabilities(self, binary: str) -> QemuCapabilities:
        return cached_capabilities(binary)

    def accelerator(self, binary: str, hv: HvParams) -> tuple[Accel | None, str]:
        cached = self._accel_cache.get(binary)
        if cached is None:
            from kvmlab.host.accel import probe_accelerator  # noqa: PLC0415 - only real QEMU needs it

            cached = probe_accelerator(binary)
            self._accel_cache[binary] = cached
        return cached

    def describe(self) -> str:
        return f"qemu ({self._binary or 'kvm_path or qemu-system-x86_64'})"


def fake_program() -> str:
    """Path of the installed ``kvmlab-fake-kvm`` script."""
    beside_python = Path(sys.executable).with_name("kvmlab-fake-kvm")
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("kvmlab-fake-kvm")
    if found is None:
        raise KvmlabError(
            "kvmlab-fake-kvm is not installed: install kvmlab (pip install -e .) so that"
            " its console scripts exist"
        )
    return found


class FakeBackend(Backend):
    """The fake kvm program: no QEMU, no root, faults on demand.

    :param profile: the recorded QEMU profile the fake imitates (``qemu-7.2``, ``qemu-10.0``).
    :param faults: ``KVMLAB_FAKE_*`` variables for fault injection (see ``kvmlab.fake``).
    :raise InvalidInputError: bad fault variables, or a profile of facts only (the fake
        answers ``-help`` with a recorded text, so it imitates recorded profiles only).
    :raise CapabilityError: an unknown profile.
    """

    name = "fake"

    def __init__(self, profile: str = "qemu-7.2", faults: Mapping[str, str] | None = None) -> None:
        self.profile = profile
        self.faults = dict(faults or {})
        bad = sorted(key for key in self.faults if not key.startswith("KVMLAB_FAKE_"))
        if bad:
            raise InvalidInputError(f"fault variables must start with KVMLAB_FAKE_: {bad}")
        if profile_kind(profile) != "recorded":
            raise InvalidInputError(
                f"the fake kvm imitates recorded help texts only; profile {profile!r} holds"
                " facts only (use it with `kvmlab generate --profile`)"
            )
        self._caps = load_profile(profile)

    def binary(self, hv: HvParams) -> str:
        return fake_program()

    def capabilities(self, binary: str) -> QemuCapabilities:
        return self._caps

    def accelerator(self, binary: str, hv: HvParams) -> tuple[Accel | None, str]:
        return "tcg", "fake backend: emulates TCG"

    def environment(self) -> dict[str, str]:
        return {"KVMLAB_FAKE_PROFILE": self.profile, **self.faults}

    @property
    def can_create_taps(self) -> bool:
        return True  # the fake records the up-script instead of creating a tap

    def describe(self) -> str:
        return f"fake ({self.profile})"


def resolve_backend(spec: str | Backend) -> Backend:
    """A backend from ``"auto"``, ``"qemu"``, ``"fake"`` or an instance.

    :raise InvalidInputError: an unknown name.
    """
    if isinstance(spec, Backend):
        return spec
    if spec == "fake":
        return FakeBackend()
    if spec == "qemu":
        return QemuBackend()
    if spec == "auto":
        binary = find_qemu()
        if binary is not None:
            try:
                cached_capabilities(binary)
            except KvmlabError:
                return FakeBackend()
            return QemuBackend()
        return FakeBackend()
    raise InvalidInputError(f"unknown backend {spec!r}: use auto, qemu or fake")
