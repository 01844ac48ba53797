"""kvmlab's invariants (docs/architecture.md) as checks that return readable violations.

The hypothesis properties in ``tests/properties/`` assert that these checks find
nothing for every instance they draw; notebooks call the same checks and show
the :class:`InvariantReport`. A check never raises for a broken runtime: it
describes what is wrong, so a deliberately broken runtime can be shown too::

    report = check_runtime(runtime, instance)
    if not report.ok:
        for violation in report.violations:
            print(violation)
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from kvmlab.runtime.plan import StartFacts, plan_execution
from kvmlab.runtime.saved import KVMRuntime
from kvmlab.spec.instance import Instance

__all__ = [
    "INVARIANTS",
    "InvariantReport",
    "Violation",
    "check_execution",
    "check_nics_deferred",
    "check_no_temp_paths",
    "check_round_trip",
    "check_runtime",
    "temp_roots",
]

#: Short titles, by number, as in docs/architecture.md.
INVARIANTS: dict[int, str] = {
    1: "the saved argv holds no temp path and no file descriptor number",
    2: "NICs are deferred: not in the saved argv, kept as data",
    3: "generation is pure and deterministic",
    4: "the runtime survives a JSON round trip; old formats upgrade to a fixed point",
    5: "changing the instance after generation changes nothing in the runtime",
    6: "executing never changes the saved runtime",
    7: "the executed argv is the saved argv followed by start-time arguments only",
    8: "no temp file of kvmlab's is left behind",
    9: "a soft reboot replays the saved runtime",
}

_MAC_RE = re.compile(r"(?i)(?<![0-9a-f:])[0-9a-f]{2}(?::[0-9a-f]{2}){5}(?![0-9a-f:])")
_FD_RE = re.compile(r"(?:^|,)(?:fd|fds|vhostfd|vhostfds)=\d")
_NIC_OPTIONS = frozenset({"-net", "-netdev", "-nic"})
_NIC_DEVICES = frozenset(
    {"virtio-net-pci", "virtio-net", "e1000", "rtl8139", "ne2k_pci", "ne2k_isa", "pcnet"}
    | {"i82551", "i82557b", "i82559er", "virtio-net-device"}
)
#: Options the start-time half may append.
START_TIME_OPTIONS = frozenset({"-net", "-netdev", "-device", "-qmp"})


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken invariant, with the evidence."""

    invariant: int
    detail: str

    @property
    def title(self) -> str:
        return INVARIANTS[self.invariant]

    def __str__(self) -> str:
        return f"invariant {self.invariant} ({self.title}): {self.detail}"


@dataclass(frozen=True, slots=True)
class InvariantReport:
    """The outcome of a set of checks."""

    checked: tuple[int, ...]
    violations: tuple[Violation, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return not self.violations

    def __str__(self) -> str:
        if self.ok:
            return f"all invariants hold ({', '.join(map(str, self.checked))})"
        return "\n".join(str(violation) for violation in self.violations)


def temp_roots() -> tuple[str, ...]:
    """Directories whose contents never belong in a saved argv."""
    roots = {tempfile.gettempdir(), "/tmp", "/var/tmp", "/dev/fd", "/proc/self/fd"}
    return tuple(sorted(root.rstrip("/") for root in roots))


def _paths_in(word: str) -> Iterable[str]:
    """Absolute paths inside one argument (``file=/a,,b,if=virtio`` -> ``/a,b``)."""
    for part in re.split(r"(?<!,),(?!,)", word):
        value = part.split("=", 1)[1] if "=" in part and not part.startswith("/") else part
        value = value.removeprefix("unix:").removeprefix("chardev:")
        if value.startswith("/"):
            yield value.replace(",,", ",")


def check_no_temp_paths(
    argv: Sequence[str], *, allowed: Iterable[str] = (), roots: Sequence[str] | None = None
) -> list[Violation]:
    """Invariant 1: no argument points under a temp root, none passes a descriptor.

    :param allowed: paths the user chose (a disk image under /tmp is theirs, not
        kvmlab's temp file) and state-directory roots to accept.
    """
    roots = tuple(roots) if roots is not None else temp_roots()
    allowed = tuple(allowed)
    found: list[Violation] = []
    for index, word in enumerate(argv):
        if _FD_RE.search(word):
            found.append(Violation(1, f"argv[{index}] {word!r} passes a file descriptor"))
        for path in _paths_in(word):
            if any(path == ok or path.startswith(ok.rstrip("/") + "/") for ok in allowed):
                continue
            if any(path == root or path.startswith(root + "/") for root in roots):
                found.append(Violation(1, f"argv[{index}] {word!r} points under a temp directory"))
    return found


def check_nics_deferred(runtime: KVMRuntime, instance: Instance | None = None) -> list[Violation]:
    """Invariant 2: no NIC option, NIC device or MAC in the saved argv; NICs kept as data."""
    found: list[Violation] = []
    argv = runtime.argv
    for index, word in enumerate(argv):
        if word in _NIC_OPTIONS:
            found.append(Violation(2, f"argv[{index}] is {word!r}"))
        if word == "-device" and index + 1 < len(argv):
            device = argv[index + 1].split(",", 1)[0]
            if device in _NIC_DEVICES or "netdev=" in argv[index + 1]:
                found.append(Violation(2, f"argv[{index + 1}] {argv[index + 1]!r} is a NIC"))
        if _MAC_RE.search(word):
            found.append(Violation(2, f"argv[{index}] {word!r} holds a MAC address"))
    if instance is not None and runtime.nics != instance.nics:
        found.append(
            Violation(
                2,
                f"runtime NICs {list(runtime.nics)} differ from the instance's"
                f" {list(instance.nics)}",
            )
        )
    return found


def check_round_trip(runtime: KVMRuntime) -> list[Violation]:
    """Invariant 4: ``from_json(to_json(rt)) == rt`` and the JSON is a fixed point."""
    text = runtime.to_json()
    again = KVMRuntime.from_json(text)
    found: list[Violation] = []
    if again != runtime:
        found.append(Violation(4, "from_json(to_json(runtime)) differs from the runtime"))
    if again.to_json() != text:
        found.append(Violation(4, "to_json is not a fixed point after one round trip"))
    return found


def check_execution(runtime: KVMRuntime, facts: StartFacts) -> list[Violation]:
    """Invariants 6 and 7 for one execution plan."""
    before = runtime.to_json()
    plan = plan_execution(runtime, facts)
    found: list[Violation] = []
    if runtime.to_json() != before:
        found.append(Violation(6, "planning the execution changed the saved runtime"))
    saved = runtime.argv
    if plan.argv[: len(saved)] != saved:
        found.append(Violation(7, "the executed argv does not start with the saved argv"))
    extra = plan.argv[len(saved) :]
    if extra != plan.start_args:
        found.append(Violation(7, f"the executed argv adds {extra!r}, not the start arguments"))
    options = [word for word in extra if word.startswith("-")]
    unexpected = sorted(set(options) - START_TIME_OPTIONS)
    if unexpected:
        found.append(Violation(7, f"start-time arguments include {', '.join(unexpected)}"))
    return found


def _user_paths(runtime: KVMRuntime) -> list[str]:
    hv = runtime.hvparams
    chosen = [disk.path for disk in runtime.disks]
    chosen += [
        hv.kernel_path,
        hv.initrd_path,
        hv.cdrom_image_path,
        hv.cdrom2_image_path,
        hv.floppy_image_path,
        hv.mem_path,
        hv.vnc_x509_path,
        hv.kvm_path,
    ]
    if hv.vnc_bind_address.startswith("/"):
        chosen.append(hv.vnc_bind_address)
    return [path for path in chosen if path]


def check_runtime(
    runtime: KVMRuntime,
    instance: Instance | None = None,
    *,
    state_dir: str | None = None,
) -> InvariantReport:
    """Check the invariants that one runtime alone can show (1, 2, 4).

    :param instance: when given, the NICs must equal its NICs (2).
    :param state_dir: the state directory the runtime was generated for, accepted
        even when it lies under a temp directory (a test's scratch lab).
    """
    allowed = _user_paths(runtime) + ([state_dir] if state_dir else [])
    allowed.append(runtime.argv[0])
    violations = [
        *check_no_temp_paths(runtime.argv, allowed=allowed),
        *check_nics_deferred(runtime, instance),
        *check_round_trip(runtime),
    ]
    return InvariantReport(checked=(1, 2, 4), violations=tuple(violations))
