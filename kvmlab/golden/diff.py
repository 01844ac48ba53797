"""Semantic diff of two runtimes: what changed on the command line, and would the guest notice?

A textual diff of two argvs is noisy (one more ``-drive`` shifts every line after it)
and says nothing about impact. Here each argv is parsed into ``(option, value)``
pairs, repeated options are matched by identity (``id=``, the device driver, the
drive's role and position; both in :mod:`kvmlab.golden.options`), and each change is
classified:

- **guest-visible**: the guest sees different hardware or firmware input (memory,
  CPUs, devices, machine type, NICs, disks, CPU model, kernel and its command line,
  boot order, ACPI, RTC, UUID...);
- **host-only**: only the host side differs (socket and pidfile paths, logs, the
  monitor, VNC and its TLS credentials, ``-runas``/``-chroot``, the process name,
  tap scripts and descriptors, AIO engine...).

Unknown options count as guest-visible: a reviewer should look at them.

Inputs (:func:`diff_paths`): saved runtime files (kvmlab's JSON or Ganeti's legacy
list), instance files (generated with the default capabilities and the fixed
``/var/lib/kvmlab`` layout), golden ``.args``/``.error`` files, or two golden trees
(directories, compared file by file)::

    >>> d = diff_paths("fixtures/golden/qemu-7.2", "/tmp/new-golden/qemu-7.2")
    >>> d.equal, len(d.guest_visible)

This module only computes: :func:`kvmlab.display.diff_text` and
:func:`kvmlab.display.diff_html` render a diff (and draw it in Jupyter), and
``kvmlab diff A B`` prints the text. Bad input raises :class:`DiffInputError` (an
:class:`InvalidInputError`: the CLI's exit 2).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from kvmlab.errors import DiffInputError
from kvmlab.golden.fileformat import ARGS_SUFFIX, ERROR_SUFFIX, GOLDEN_LAYOUT, parse_args_text
from kvmlab.golden.options import (
    PLAIN_VALUE_OPTIONS,
    is_guest_visible,
    keyed_options,
    parse_options,
    suboptions,
)
from kvmlab.runtime.generator import generate_runtime
from kvmlab.runtime.rebase import machine_of, pin_machine
from kvmlab.runtime.saved import KVMRuntime
from kvmlab.spec.capabilities import QemuCapabilities
from kvmlab.spec.files import load_instance, parse_instance_text
from kvmlab.spec.instance import Nic, instance_from_data

__all__ = [
    "Change",
    "DiffInputError",
    "RuntimeDiff",
    "Side",
    "TreeDiff",
    "diff_paths",
    "diff_runtimes",
    "diff_sides",
    "rebase_changes",
    "show_value",
]

Section = Literal["argv", "start", "nics", "outcome"]


# --- the result ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Change:
    """One option (or NIC, or outcome) that differs between the two sides.

    :ivar section: ``argv`` (the saved command line), ``start`` (start-time arguments
        of a golden file), ``nics`` (the NICs kept as data), ``outcome`` (generated
        versus refused, or the refusal's text).
    :ivar option: ``-m``, ``-device``, ``nic``... ; ``key`` tells repeats apart.
    :ivar old: the value on side A, ``None`` when absent there (or a flag).
    :ivar new: the value on side B.
    """

    section: Section
    option: str
    key: str
    old: str | None
    new: str | None
    guest_visible: bool
    present: tuple[bool, bool] = (True, True)

    @property
    def kind(self) -> Literal["added", "removed", "changed"]:
        if not self.present[0]:
            return "added"
        if not self.present[1]:
            return "removed"
        return "changed"

    @property
    def label(self) -> str:
        """``-device [id=nic0]``, ``-m``."""
        return f"{self.option} [{self.key}]" if self.key else self.option

    @property
    def details(self) -> tuple[str, ...]:
        """For a changed ``k=v,...`` value: the sub-options added, removed or changed."""
        if self.kind != "changed" or self.old is None or self.new is None:
            return ()
        if self.option in PLAIN_VALUE_OPTIONS or self.section == "outcome":
            return ()
        if "," not in self.old + self.new and "=" not in self.old + self.new:
            return ()
        old_items, new_items = suboptions(self.old), suboptions(self.new)
        # QEMU's implied first key (driver, backend, machine type) is a bare word.
        old_head = old_items.pop(0)[0] if old_items and old_items[0][1] is None else ""
        new_head = new_items.pop(0)[0] if new_items and new_items[0][1] is None else ""
        out: list[str] = []
        if old_head != new_head:
            out.append(f"{old_head or '(none)'} -> {new_head or '(none)'}")
        before, after = dict(old_items), dict(new_items)
        for key in dict.fromkeys([*before, *after]):
            if key not in after:
                out.append(f"-{_show_sub(key, before[key])}")
            elif key not in before:
                out.append(f"+{_show_sub(key, after[key])}")
            elif before[key] != after[key]:
                out.append(f"{_show_sub(key, before[key])} -> {_show_sub(key, after[key])}")
        return tuple(out)

    def __str__(self) -> str:
        mark = {"added": "+", "removed": "-", "changed": "~"}[self.kind]
        if self.kind == "added":
            text = show_value(self.new)
        elif self.kind == "removed":
            text = show_value(self.old)
        else:
            text = f"{show_value(self.old)} -> {show_value(self.new)}"
        prefix = "" if self.section == "argv" else f"({self.section}) "
        return f"{mark} {prefix}{self.label}: {text}"


def show_value(value: str | None) -> str:
    """How one side's value reads in a report: a flag has none, so it reads ``(flag)``."""
    return "(flag)" if value is None else value


def _show_sub(key: str, value: str | None) -> str:
    return key if value is None else f"{key}={value}"


@dataclass(frozen=True)
class RuntimeDiff:
    """The semantic difference between two runtimes (A -> B).

    Data only: :func:`kvmlab.display.diff_text` and :func:`~kvmlab.display.diff_html`
    render it, and IPython draws it with them (:data:`kvmlab.display.FORMATTERS`).
    """

    a: str
    b: str
    changes: tuple[Change, ...] = ()

    @property
    def equal(self) -> bool:
        return not self.changes

    @property
    def guest_visible(self) -> tuple[Change, ...]:
        """The changes the guest would notice; empty (falsy) when none."""
        return tuple(change for change in self.changes if change.guest_visible)

    @property
    def host_only(self) -> tuple[Change, ...]:
        return tuple(change for change in self.changes if not change.guest_visible)


@dataclass(frozen=True)
class TreeDiff:
    """Two golden trees compared file by file (``profile/case`` without suffix).

    Rendered like :class:`RuntimeDiff`, by :mod:`kvmlab.display`.
    """

    a: str
    b: str
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[tuple[str, RuntimeDiff], ...] = ()
    unchanged: int = 0

    @property
    def equal(self) -> bool:
        return not (self.added or self.removed or self.changed)

    @property
    def changes(self) -> tuple[Change, ...]:
        return tuple(change for _, diff in self.changed for change in diff.changes)

    @property
    def guest_visible(self) -> tuple[Change, ...]:
        return tuple(change for change in self.changes if change.guest_visible)


# --- comparing -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Side:
    """One input, normalised: the saved argv, start-time arguments, NICs, or a refusal.

    :ivar nics: the NICs as data (runtimes, instances), ``None`` when the input has
        none to compare (a golden ``.args`` file holds them as start-time arguments).
    :ivar refused: the text of a golden ``.error`` file.
    """

    label: str
    argv: tuple[str, ...] = ()
    start: tuple[str, ...] = ()
    nics: tuple[Nic, ...] | None = None
    nic_params: tuple[tuple[str, str], ...] = ()
    refused: str | None = None
    #: The PCI slot of each NIC (runtimes); empty when the input has none.
    nic_slots: tuple[int, ...] = ()

    @classmethod
    def from_runtime(cls, runtime: KVMRuntime, label: str = "") -> Side:
        hv = runtime.hvparams
        params = (
            ("nic_type", hv.nic_type),
            ("vhost_net", str(hv.vhost_net).lower()),
            ("vnet_hdr", str(hv.vnet_hdr).lower()),
        )
        return cls(
            label or runtime.name, runtime.argv, (), runtime.nics, params, None, runtime.nic_slots
        )


def _diff_words(section: Section, a: Sequence[str], b: Sequence[str]) -> list[Change]:
    binary = section == "argv"
    left = keyed_options(parse_options(a, binary=binary))
    right = keyed_options(parse_options(b, binary=binary))
    changes: list[Change] = []
    for option, key in dict.fromkeys([*left, *right]):
        in_a, in_b = (option, key) in left, (option, key) in right
        old, new = left.get((option, key)), right.get((option, key))
        if in_a and in_b and old == new:
            continue
        present = (in_a, in_b)
        changes.append(
            Change(
                section,
                option,
                key,
                old,
                new,
                is_guest_visible(option, old, new, present),
                present,
            )
        )
    return changes


def _nic_text(nic: Nic, slots: tuple[int, ...] = (), index: int = 0) -> str:
    text = (
        f"mac={nic.mac},mode={nic.mode},link={nic.link}"
        if nic.link
        else f"mac={nic.mac},mode={nic.mode}"
    )
    return f"{text},addr={slots[index]:#04x}" if index < len(slots) else text


#: NIC parameters (from the hvparams) that change only the host side of a NIC.
_HOST_NIC_PARAMS = frozenset({"vhost_net", "vnet_hdr"})


def _diff_nics(a: Side, b: Side) -> list[Change]:
    if a.nics is None or b.nics is None:
        return []
    changes: list[Change] = []
    for index in range(max(len(a.nics), len(b.nics))):
        old = _nic_text(a.nics[index], a.nic_slots, index) if index < len(a.nics) else None
        new = _nic_text(b.nics[index], b.nic_slots, index) if index < len(b.nics) else None
        if old != new:
            present = (old is not None, new is not None)
            changes.append(Change("nics", "nic", f"nic{index}", old, new, True, present))
    if a.nics or b.nics:
        before, after = dict(a.nic_params), dict(b.nic_params)
        for name in dict.fromkeys([*before, *after]):
            if before.get(name) != after.get(name):
                visible = name not in _HOST_NIC_PARAMS
                present = (name in before, name in after)
                changes.append(
                    Change("nics", name, "", before.get(name), after.get(name), visible, present)
                )
    return changes


def diff_sides(a: Side, b: Side) -> RuntimeDiff:
    """Compare two normalised inputs (what :func:`diff_paths` does after reading them)."""
    if a.refused is not None or b.refused is not None:
        if a.refused == b.refused:
            return RuntimeDiff(a.label, b.label)
        old = a.refused if a.refused is not None else "generated"
        new = b.refused if b.refused is not None else "generated"
        # A refusal appearing or disappearing decides whether there is a guest at all.
        visible = (a.refused is None) != (b.refused is None)
        change = Change("outcome", "(outcome)", "", old.strip(), new.strip(), visible)
        return RuntimeDiff(a.label, b.label, (change,))
    changes = [
        *_diff_words("argv", a.argv, b.argv),
        *_diff_words("start", a.start, b.start),
        *_diff_nics(a, b),
    ]
    return RuntimeDiff(a.label, b.label, tuple(changes))


def diff_runtimes(a: KVMRuntime, b: KVMRuntime) -> RuntimeDiff:
    """Compare two runtimes: their saved argvs option by option, and their NICs (data)."""
    return diff_sides(Side.from_runtime(a, f"a:{a.name}"), Side.from_runtime(b, f"b:{b.name}"))


def rebase_changes(original: KVMRuntime, rebased: KVMRuntime) -> str | None:
    """What the guest would see change if ``rebased`` ran instead of ``original`` (the
    first three guest-visible changes, in words), or ``None``: nothing.

    A migration and a state load both rebase a runtime (:mod:`kvmlab.runtime.rebase`) and
    must refuse any change the guest could see. The rebase may pin a machine alias to the
    type it *is* on the original QEMU (``q35`` is ``pc-q35-7.2`` on 7.2), so the original
    is compared with that pin applied: the pin itself changes nothing for the guest.
    """
    machine = machine_of(rebased)
    reference = original if machine == machine_of(original) else pin_machine(original, machine)
    visible = diff_runtimes(reference, rebased).guest_visible
    if not visible:
        return None
    return "; ".join(str(change) for change in visible[:3])


# --- reading inputs ------------------------------------------------------------------------


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DiffInputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DiffInputError(f"{path}: is a directory") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DiffInputError(f"{path}: cannot read: {err}") from err


def _instance_side(data: object, path: Path) -> Side:
    instance = instance_from_data(data, str(path))
    runtime = generate_runtime(instance, QemuCapabilities.default(), layout=GOLDEN_LAYOUT)
    return Side.from_runtime(runtime, str(path))


def load_side(path: str | Path) -> Side:
    """Read one input file, whatever its kind.

    ``.args``/``.error``: a golden file. ``.toml``/``.yaml``/``.yml``: an instance.
    ``.json``: a runtime when it is a list (Ganeti) or an object with ``argv``, else an
    instance. Anything else: a saved runtime (``conf/<name>.runtime``).

    :raise DiffInputError: missing or unreadable.
    :raise InvalidInputError: invalid content (its own subclass says which kind).
    """
    file = Path(path)
    if file.is_dir():
        raise DiffInputError(f"{file}: is a directory; compare two directories or two files")
    suffix = file.suffix.lower()
    text = _read_text(file)
    if suffix == ARGS_SUFFIX:
        argv, start = parse_args_text(text, str(file))
        return Side(str(file), argv, start)
    if suffix == ERROR_SUFFIX:
        return Side(str(file), refused=text)
    if suffix in {".toml", ".yaml", ".yml"}:
        return Side.from_runtime(_generate(file), str(file))
    if suffix == ".json":
        data = parse_instance_text(text.encode("utf-8"), suffix, str(file))
        if isinstance(data, list) or (isinstance(data, dict) and "argv" in data):
            return Side.from_runtime(KVMRuntime.from_json(text), str(file))
        return _instance_side(data, file)
    return Side.from_runtime(KVMRuntime.from_json(text), str(file))


def _generate(file: Path) -> KVMRuntime:
    instance = load_instance(file)
    return generate_runtime(instance, QemuCapabilities.default(), layout=GOLDEN_LAYOUT)


def _golden_files(root: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix in (ARGS_SUFFIX, ERROR_SUFFIX):
            key = str(path.relative_to(root).with_suffix(""))
            if key in files:
                raise DiffInputError(f"{root}: both {key}.args and {key}.error exist")
            files[key] = path
    return files


def diff_trees(a: Path, b: Path) -> TreeDiff:
    """Compare two golden trees file by file.

    :raise DiffInputError: a tree holds both an ``.args`` and an ``.error`` for one case.
    """
    left, right = _golden_files(a), _golden_files(b)
    changed: list[tuple[str, RuntimeDiff]] = []
    unchanged = 0
    for key in sorted(left.keys() & right.keys()):
        if left[key].read_bytes() == right[key].read_bytes():
            unchanged += 1
            continue
        diff = diff_sides(load_side(left[key]), load_side(right[key]))
        if diff.equal:
            unchanged += 1  # only reordered: semantically the same
        else:
            changed.append((key, diff))
    return TreeDiff(
        str(a),
        str(b),
        added=tuple(sorted(right.keys() - left.keys())),
        removed=tuple(sorted(left.keys() - right.keys())),
        changed=tuple(changed),
        unchanged=unchanged,
    )


def diff_paths(a: str | Path, b: str | Path) -> RuntimeDiff | TreeDiff:
    """Compare two inputs: two files (runtimes, instances, golden files, mixed) or two
    golden trees (directories).

    :raise DiffInputError: missing path, or a directory against a file.
    :raise InvalidInputError: an input's content is invalid (instance, runtime, golden file).
    """
    left, right = Path(a), Path(b)
    for path in (left, right):
        if not path.exists():
            raise DiffInputError(f"{path}: no such file or directory")
    if left.is_dir() and right.is_dir():
        return diff_trees(left, right)
    if left.is_dir() or right.is_dir():
        raise DiffInputError(f"cannot compare a directory with a file: {left} and {right}")
    return diff_sides(load_side(left), load_side(right))
