"""``kvmlab doctor``: can this machine run VMs, on which backend, with which accelerator, and why.

kvmlab takes several decisions on its own at start time: which QEMU binary goes in ``argv[0]``,
KVM or TCG (``/dev/kvm`` existing proves little under nested virtualisation, see
:mod:`kvmlab.host.accel`), whether bridged and routed NICs can get a tap device (root only), and
whether the auto backend means real QEMU or the fake kvm. Each is sensible alone, and together
they explain most "works on my laptop, fails on the CI machine" reports. The doctor takes the
same decisions with the same code (:class:`~kvmlab.host.backends.QemuBackend`,
:func:`~kvmlab.host.accel.probe_accelerator`,
:func:`~kvmlab.host.backends.resolve_backend`) and shows
each one with its reason, so what it says is what a start would do.

:func:`diagnose` gathers the facts into a :class:`Report` (it runs the QEMU binaries for their
help texts and, once per binary and host boot, boots the cached test guest under KVM);
:func:`render_text` turns a report into the lines the CLI prints; ``Report.to_dict`` is the
``--json`` form. Nothing here builds or downloads anything: without a test guest the KVM check
is reported as unverified, with the command that fixes it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["QEMU10_WRAPPER", "BinaryStatus", "Report", "diagnose", "render_text"]

#: Where ``.ci/install-qemu-backports`` puts the QEMU 10.0 wrapper (beside the system's 7.2).
QEMU10_WRAPPER = "/opt/kvmlab/qemu-10.0/bin/qemu-system-x86_64"
_DEV_KVM = "/dev/kvm"

#: ``probe_accelerator``'s signature: binary -> (accelerator, reason).
AccelProbe = Callable[[str], tuple[str | None, str]]


@dataclass(frozen=True, slots=True)
class BinaryStatus:
    """One QEMU binary the doctor found, and what running it told.

    :ivar label: how it was found (``PATH``, ``/usr/bin/kvm``, ``QEMU 10.0 wrapper``,
        ``$KVMLAB_QEMU``); one binary found several ways is listed once per way, because
        each is a different thing a user may have configured.
    :ivar version: ``"7.2.22"``, or ``None`` when the binary could not be probed.
    :ivar accelerator: what :func:`~kvmlab.host.accel.probe_accelerator` chose for it, or ``None``
        when it was not probed (only the binary kvmlab uses is, unless ``probe_all``).
    """

    label: str
    path: str
    real_path: str
    version: str | None = None
    version_extra: str = ""
    error: str | None = None
    accelerator: str | None = None
    accelerator_reason: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the binary answered ``-help`` with a QEMU version."""
        return self.version is not None


@dataclass(frozen=True, slots=True)
class Report:
    """Everything ``kvmlab doctor`` checks. ``ok`` is the exit status's source of truth."""

    binaries: tuple[BinaryStatus, ...]
    #: The binary the qemu backend runs for an instance with default hvparams.
    qemu_binary: str | None
    qemu_binary_error: str | None
    dev_kvm_exists: bool
    dev_kvm_accessible: bool
    #: ``True``: the test guest booted under KVM; ``False``: it did not, or KVM is unusable;
    #: ``None``: unverified (no test guest to probe with).
    kvm_works: bool | None
    kvm_detail: str
    #: The backend asked for (``auto``, ``qemu``, ``fake``) and what it resolves to.
    backend_requested: str
    backend: str | None
    backend_error: str | None
    #: The accelerator a start on that backend asks for when ``kvm_flag`` is unset.
    accelerator: str | None
    accelerator_reason: str
    fake_kvm: str | None
    fake_kvm_error: str | None
    root: bool
    guest_kernel: str | None
    guest_initrd: str | None
    #: Backends on which kvmlab can start a VM here.
    usable_backends: tuple[str, ...]
    hints: tuple[str, ...]

    @property
    def ok(self) -> bool:
        """kvmlab can run VMs on at least one backend."""
        return bool(self.usable_backends)

    @property
    def guest_built(self) -> bool:
        return self.guest_kernel is not None

    def to_dict(self) -> dict[str, Any]:
        """The ``doctor --json`` object (every field, plus ``ok`` and ``guest_built``)."""
        data = dataclasses.asdict(self)
        data["binaries"] = [{**dataclasses.asdict(b), "ok": b.ok} for b in self.binaries]
        data["ok"] = self.ok
        data["guest_built"] = self.guest_built
        data["hints"] = list(self.hints)
        data["usable_backends"] = list(self.usable_backends)
        return data


def _candidates(qemu10: str) -> list[tuple[str, str]]:
    """``(label, path)`` of every QEMU binary worth reporting, in the order kvmlab looks."""
    import shutil  # noqa: PLC0415

    found: list[tuple[str, str]] = []
    override = os.environ.get("KVMLAB_QEMU")
    if override:
        found.append(("$KVMLAB_QEMU", override))
    on_path = shutil.which("qemu-system-x86_64")
    if on_path:
        found.append(("PATH", on_path))
    if os.path.lexists("/usr/bin/kvm"):
        found.append(("/usr/bin/kvm", "/usr/bin/kvm"))
    if os.path.lexists(qemu10):
        found.append(("QEMU 10.0 wrapper", qemu10))
    return found


def _probe_binary(label: str, path: str) -> BinaryStatus:
    from kvmlab.errors import KvmlabError  # noqa: PLC0415
    from kvmlab.spec.capabilities import QemuCapabilities  # noqa: PLC0415

    real = os.path.realpath(path)
    try:
        caps = QemuCapabilities.probe(path)
    except KvmlabError as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        return BinaryStatus(label, path, real, error=first)
    return BinaryStatus(label, path, real, caps.version_string, caps.version_extra)


def diagnose(
    backend: str = "auto",
    *,
    probe_all: bool = False,
    qemu10: str = QEMU10_WRAPPER,
    probe_accel: AccelProbe | None = None,
) -> Report:
    """Check this machine the way a start would, and say why each answer is what it is.

    :param backend: the backend the user asked for (``--backend``): ``auto``, ``qemu``, ``fake``.
    :param probe_all: probe the accelerator of every QEMU binary found, not only the one kvmlab
        runs; each uncached probe boots the test guest under KVM (up to 12 s when KVM hangs).
    :param qemu10: where to look for the QEMU 10.0 wrapper.
    :param probe_accel: replaces :func:`kvmlab.host.accel.probe_accelerator` (tests).
    """
    from kvmlab.errors import KvmlabError  # noqa: PLC0415
    from kvmlab.guest.build import find_built_guest  # noqa: PLC0415
    from kvmlab.host.backends import QemuBackend, fake_program, resolve_backend  # noqa: PLC0415
    from kvmlab.spec.instance import HvParams  # noqa: PLC0415

    if probe_accel is None:
        from kvmlab.host.accel import probe_accelerator  # noqa: PLC0415

        probe_accel = probe_accelerator
    hints: list[str] = []

    # 1. The binaries, each probed once per real path (``kvm`` is a symlink to 7.2).
    statuses: list[BinaryStatus] = []
    by_real: dict[str, BinaryStatus] = {}
    for label, path in _candidates(qemu10):
        real = os.path.realpath(path)
        known = by_real.get(real)
        status = (
            dataclasses.replace(known, label=label, path=path)
            if known is not None
            else _probe_binary(label, path)
        )
        by_real.setdefault(real, status)
        statuses.append(status)

    # 2. The binary the qemu backend would run, by the backend's own rules.
    qemu_binary: str | None = None
    qemu_binary_error: str | None = None
    try:
        qemu_binary = QemuBackend().binary(HvParams())
    except KvmlabError as err:
        qemu_binary_error = str(err).splitlines()[0]
        hints.append("install QEMU: apt-get install qemu-system-x86")
    qemu_status = next((s for s in statuses if s.path == qemu_binary), None)
    if qemu_binary is not None and qemu_status is None:
        qemu_status = _probe_binary("kvm_path", qemu_binary)
        statuses.append(qemu_status)
    qemu_usable = qemu_status is not None and qemu_status.ok
    if qemu_status is not None and not qemu_status.ok:
        qemu_binary_error = qemu_status.error

    # 3. /dev/kvm, and whether KVM really boots a guest (the probe's cached verdict).
    dev_kvm_exists = os.path.exists(_DEV_KVM)
    dev_kvm_accessible = dev_kvm_exists and os.access(_DEV_KVM, os.R_OK | os.W_OK)
    guest = find_built_guest()
    probed: dict[str, tuple[str | None, str]] = {}

    def accel_of(status: BinaryStatus) -> BinaryStatus:
        real = os.path.realpath(status.path)
        if real not in probed:
            probed[real] = probe_accel(status.path)
        accel, reason = probed[real]
        return dataclasses.replace(status, accelerator=accel, accelerator_reason=reason)

    # A binary found two ways (``kvm`` and ``qemu-system-x86_64``) gets the same verdict.
    qemu_real = os.path.realpath(qemu_status.path) if qemu_usable and qemu_status else None
    statuses = [
        accel_of(s) if s.ok and (probe_all or os.path.realpath(s.path) == qemu_real) else s
        for s in statuses
    ]
    qemu_status = next((s for s in statuses if s.path == qemu_binary), None)
    kvm_works: bool | None
    if not dev_kvm_exists:
        kvm_works, kvm_detail = False, f"{_DEV_KVM} does not exist (no KVM module or a container)"
    elif not dev_kvm_accessible:
        kvm_works, kvm_detail = False, f"{_DEV_KVM} is not readable and writable by this user"
        hints.append(f"add this user to the group owning {_DEV_KVM} (usually 'kvm')")
    elif qemu_usable and qemu_status is not None:
        accel, reason = probed[os.path.realpath(qemu_status.path)]
        unverified = guest is None and accel != "kvm" and not reason.endswith("(cached)")
        kvm_works = None if unverified else accel == "kvm"
        kvm_detail = reason
    else:
        kvm_works, kvm_detail = None, "no QEMU binary to probe KVM with"
    if guest is None:
        hints.append("build the test guest: kvmlab guest build (needed to verify KVM and to boot)")

    # 4. The fake kvm, root, and the backend a start would use.
    fake_kvm: str | None = None
    fake_kvm_error: str | None = None
    try:
        fake_kvm = fake_program()
    except KvmlabError as err:
        fake_kvm_error = str(err).splitlines()[0]
        hints.append("install kvmlab's console scripts: pip install -e .")
    root = os.geteuid() == 0
    if not root:
        hints.append("bridged and routed NICs need root (tap devices); use mode 'user' instead")

    resolved: str | None = None
    backend_error: str | None = None
    accelerator: str | None = None
    accelerator_reason = ""
    try:
        resolved = resolve_backend(backend).name
    except KvmlabError as err:
        backend_error = str(err).splitlines()[0]
    if resolved == "fake":
        accelerator, accelerator_reason = "tcg", "fake backend: it emulates TCG, no QEMU runs"
        if backend == "auto":
            accelerator_reason += " (auto chose the fake: no working qemu-system-x86_64)"
    elif resolved == "qemu":
        if qemu_usable and qemu_status is not None:
            accelerator = qemu_status.accelerator
            accelerator_reason = qemu_status.accelerator_reason or ""
        else:
            accelerator_reason = f"the qemu backend cannot run: {qemu_binary_error}"
            backend_error = backend_error or qemu_binary_error

    usable = tuple(
        name for name, can in (("qemu", qemu_usable), ("fake", fake_kvm is not None)) if can
    )
    if not os.path.lexists(qemu10):
        hints.append("optional: QEMU 10.0 beside 7.2 with .ci/install-qemu-backports")
    return Report(
        binaries=tuple(statuses),
        qemu_binary=qemu_binary,
        qemu_binary_error=qemu_binary_error,
        dev_kvm_exists=dev_kvm_exists,
        dev_kvm_accessible=dev_kvm_accessible,
        kvm_works=kvm_works,
        kvm_detail=kvm_detail,
        backend_requested=backend,
        backend=resolved,
        backend_error=backend_error,
        accelerator=accelerator,
        accelerator_reason=accelerator_reason,
        fake_kvm=fake_kvm,
        fake_kvm_error=fake_kvm_error,
        root=root,
        guest_kernel=str(guest.kernel) if guest is not None else None,
        guest_initrd=str(guest.initrd) if guest is not None else None,
        usable_backends=usable,
        hints=tuple(hints),
    )


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def render_text(report: Report) -> str:
    """The report as ``kvmlab doctor`` prints it: one fact per line, its reason beside it."""
    lines = ["QEMU binaries:"]
    if not report.binaries:
        lines.append("  none found (apt-get install qemu-system-x86)")
    for b in report.binaries:
        target = f" -> {b.real_path}" if b.real_path != b.path else ""
        if b.ok:
            extra = f" ({b.version_extra})" if b.version_extra else ""
            what = f"QEMU {b.version}{extra}"
        else:
            what = f"unusable: {b.error}"
        lines.append(f"  {b.label + ':':<19} {b.path}{target}  {what}")
        if b.accelerator is not None:
            lines.append(f"  {'':<19} accelerator {b.accelerator}: {b.accelerator_reason}")
    lines.append(f"qemu backend binary: {report.qemu_binary or '-'}")
    if report.qemu_binary_error:
        lines.append(f"  problem: {report.qemu_binary_error}")
    state = (
        "absent"
        if not report.dev_kvm_exists
        else "present, accessible"
        if report.dev_kvm_accessible
        else "present, not accessible to this user"
    )
    lines.append(f"/dev/kvm:            {state}")
    works = {True: "yes", False: "no", None: "unverified"}[report.kvm_works]
    lines.append(f"KVM works:           {works}: {report.kvm_detail}")
    backend = report.backend or "-"
    if report.backend_error:
        backend += f" (cannot run: {report.backend_error})"
    lines.append(f"backend:             {report.backend_requested} -> {backend}")
    if report.accelerator is not None:
        lines.append(f"accelerator:         {report.accelerator}: {report.accelerator_reason}")
    else:
        lines.append(f"accelerator:         none: {report.accelerator_reason}")
    lines.append(
        f"fake kvm:            {report.fake_kvm or 'missing: ' + str(report.fake_kvm_error)}"
    )
    taps = "tap NICs (bridged, routed) possible" if report.root else "no tap NICs: use mode 'user'"
    lines.append(f"root:                {_yes(report.root)} ({taps})")
    if report.guest_built:
        lines.append(f"test guest:          built: {report.guest_kernel}")
        lines.append(f"                     {report.guest_initrd}")
    else:
        lines.append("test guest:          not built (kvmlab guest build)")
    for hint in report.hints:
        lines.append(f"hint: {hint}")
    if report.ok:
        lines.append(f"ok: kvmlab can run VMs on: {', '.join(report.usable_backends)}")
    else:
        lines.append("not ok: kvmlab cannot run VMs on any backend here")
    return "\n".join(lines) + "\n"
