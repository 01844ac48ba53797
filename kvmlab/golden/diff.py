"""Semantic diff of two runtimes: what changed on the command line, and would the guest notice?

A textual diff of two argvs is noisy (one more ``-drive`` shifts every line after it)
and says nothing about impact. Here each argv is parsed into ``(option, value)``
pairs, repeated options are matched by identity (``id=``, the device driver, the
drive's role and position), and each change is classified:

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
    >>> print(render_text(d))          # or display(d) in Jupyter: it has _repr_html_

``cli_diff`` is what ``kvmlab diff A B`` runs: exit 0 when equal, 1 when different;
bad input raises :class:`DiffInputError` (an :class:`InvalidInputError`: exit 2).
"""

from __future__ import annotations

import html
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, TextIO

from kvmlab.errors import DiffInputError
from kvmlab.golden.fileformat import ARGS_SUFFIX, ERROR_SUFFIX, GOLDEN_LAYOUT, parse_args_text
from kvmlab.runtime.generator import generate_runtime
from kvmlab.runtime.saved import KVMRuntime
from kvmlab.spec.argv import FLAG_OPTIONS
from kvmlab.spec.capabilities import QemuCapabilities
from kvmlab.spec.files import load_instance, parse_instance_text
from kvmlab.spec.instance import Nic, instance_from_data

__all__ = [
    "Change",
    "DiffInputError",
    "RuntimeDiff",
    "Side",
    "TreeDiff",
    "cli_diff",
    "diff_paths",
    "diff_runtimes",
    "diff_sides",
    "parse_options",
    "render_html",
    "render_text",
]

Section = Literal["argv", "start", "nics", "outcome"]

#: Pseudo-option for ``argv[0]``.
BINARY: Final = "(binary)"
#: Pseudo-option for a word that follows no option (old QEMU's positional disk image).
POSITIONAL: Final = "(positional)"

#: Options whose whole value only concerns the host.
HOST_ONLY_OPTIONS: Final = frozenset(
    {
        BINARY,
        "-name",
        "-pidfile",
        "-daemonize",
        "-monitor",
        "-qmp",
        "-qmp-pretty",
        "-chardev",
        "-vnc",
        "-display",
        "-nographic",
        "-k",
        "-chroot",
        "-runas",
        "-run-with",
        "-mem-path",
        "-mem-prealloc",
        "-D",
        "-d",
        "-msg",
        "-overcommit",
        "-sandbox",
        "-S",
        "-incoming",
        "-trace",
    }
)

#: Sub-options that only concern the host, per option; the rest of the value is guest-visible.
HOST_ONLY_SUBOPTIONS: Final[dict[str, frozenset[str]]] = {
    "-drive": frozenset({"aio"}),
    "-netdev": frozenset(
        {"script", "downscript", "fd", "fds", "vhost", "vhostfd", "vhostfds", "vnet_hdr", "ifname"}
    ),
    "-net": frozenset(
        {"script", "downscript", "fd", "fds", "vhost", "vhostfd", "vhostfds", "vnet_hdr", "ifname"}
    ),
}

#: ``-object`` types that are host-side credentials, not guest hardware.
_HOST_OBJECT_TYPES = ("tls-creds", "secret", "authz")

#: Options whose value is a plain string, not QEMU's ``key=value,...`` syntax.
_PLAIN_VALUE_OPTIONS: Final = frozenset(
    {BINARY, POSITIONAL, "-append", "-kernel", "-initrd", "-pidfile", "-mem-path", "-chroot"}
    | {"-runas", "-uuid", "-k", "-vga"}
)

_SPLIT_OPTS = re.compile(r"(?<!,),(?!,)")


# --- parsing -------------------------------------------------------------------------------


#: Options known to take a value even when it starts with ``-`` (``-append -v``).
_VALUED_OPTIONS: Final = frozenset(
    {"-append", "-name", "-m", "-smp", "-kernel", "-initrd", "-fw_cfg", "-global", "-set"}
)


def parse_options(argv: Sequence[str], *, binary: bool = True) -> list[tuple[str, str | None]]:
    """Split an argv into ``(option, value)`` pairs.

    ``--opt`` is read as ``-opt`` (QEMU accepts both). Flags get ``None``. An unknown
    option takes the next word as its value unless that word looks like an option.

    :param binary: ``argv[0]`` is the program (paired as ``(binary)``); ``False`` for
        start-time arguments, which have none.
    """
    pairs: list[tuple[str, str | None]] = []
    if not argv:
        return pairs
    index = 0
    if binary:
        pairs.append((BINARY, argv[0]))
        index = 1
    while index < len(argv):
        word = argv[index]
        if not (word.startswith("-") and len(word) > 1):
            pairs.append((POSITIONAL, word))
            index += 1
            continue
        option = "-" + word.lstrip("-")
        following = argv[index + 1] if index + 1 < len(argv) else None
        takes_value = following is not None and option not in FLAG_OPTIONS
        if takes_value and following is not None and following.startswith("-"):
            takes_value = option in _VALUED_OPTIONS or len(following) == 1
        if not takes_value or following is None:
            pairs.append((option, None))
            index += 1
        else:
            pairs.append((option, following))
            index += 2
    return pairs


def _suboptions(value: str) -> list[tuple[str, str | None]]:
    """QEMU's ``a=b,c,d=e`` (``,,`` escapes a comma) as ``[(key, value)]``; a bare word's
    value is ``None``."""
    items: list[tuple[str, str | None]] = []
    for raw in _SPLIT_OPTS.split(value):
        part = raw.replace(",,", ",")
        key, sep, rest = part.partition("=")
        items.append((key, rest) if sep else (part, None))
    return items


def _first(value: str | None) -> str:
    return "" if value is None else _SPLIT_OPTS.split(value, maxsplit=1)[0].replace(",,", ",")


def _lookup(value: str | None, key: str) -> str | None:
    if value is None:
        return None
    for name, item in _suboptions(value):
        if name == key:
            return item
    return None


def _identity(option: str, value: str | None) -> str:
    """What pairs a repeated option across two argvs (before the occurrence number)."""
    if value is None:
        return ""
    ident = _lookup(value, "id")
    if ident is not None and option not in {"-machine", "-M"}:
        return f"id={ident}"
    if option == "-device":
        return _first(value)
    if option == "-drive":
        if _lookup(value, "media") == "cdrom":
            return "cdrom"
        interface = _lookup(value, "if")
        return "floppy" if interface == "floppy" else "disk"
    if option == "-net":
        vlan = _lookup(value, "vlan")
        return f"{_first(value)}:vlan={vlan}" if vlan is not None else _first(value)
    if option == "-global":
        return value.partition("=")[0]
    if option == "-fw_cfg":
        name = _lookup(value, "name")
        return f"name={name}" if name is not None else ""
    if option == "-object":
        return _first(value)
    return ""


def _keyed(pairs: Iterable[tuple[str, str | None]]) -> dict[tuple[str, str], str | None]:
    """``{(option, key): value}``; repeats of one identity are numbered in order."""
    seen: dict[tuple[str, str], int] = {}
    keyed: dict[tuple[str, str], str | None] = {}
    for option, value in pairs:
        ident = _identity(option, value)
        count = seen.get((option, ident), 0)
        seen[(option, ident)] = count + 1
        if ident.startswith("id="):
            key = ident if count == 0 else f"{ident}#{count}"
        elif ident:
            key = f"{ident}#{count}"
        else:
            key = "" if count == 0 else f"#{count}"
        keyed[(option, key)] = value
    return keyed


# --- classification ------------------------------------------------------------------------


def _guest_view(option: str, value: str | None) -> object:
    """The part of one option's value the guest can see; equal views mean host-only."""
    if option in HOST_ONLY_OPTIONS:
        return None
    if value is None:
        return True  # a flag's presence
    if option == "-serial":
        return value != "none"  # a port exists or not; where it leads is the host's business
    if option == "-object":
        return None if _first(value).startswith(_HOST_OBJECT_TYPES) else value
    hidden = HOST_ONLY_SUBOPTIONS.get(option)
    if hidden:
        return sorted((key, item or "") for key, item in _suboptions(value) if key not in hidden)
    return value


def _is_guest_visible(
    option: str, old: str | None, new: str | None, present: tuple[bool, bool]
) -> bool:
    if option in HOST_ONLY_OPTIONS:
        return False
    if present[0] != present[1]:
        if option == "-object":
            value = new if present[1] else old
            return _guest_view(option, value) is not None
        if option == "-serial":
            value = new if present[1] else old
            return value != "none"
        return True
    return _guest_view(option, old) != _guest_view(option, new)


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
        if self.option in _PLAIN_VALUE_OPTIONS or self.section == "outcome":
            return ()
        if "," not in self.old + self.new and "=" not in self.old + self.new:
            return ()
        old_items, new_items = _suboptions(self.old), _suboptions(self.new)
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
            text = _show(self.new)
        elif self.kind == "removed":
            text = _show(self.old)
        else:
            text = f"{_show(self.old)} -> {_show(self.new)}"
        prefix = "" if self.section == "argv" else f"({self.section}) "
        return f"{mark} {prefix}{self.label}: {text}"


def _show(value: str | None) -> str:
    return "(flag)" if value is None else value


def _show_sub(key: str, value: str | None) -> str:
    return key if value is None else f"{key}={value}"


@dataclass(frozen=True)
class RuntimeDiff:
    """The semantic difference between two runtimes (A -> B)."""

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

    def __str__(self) -> str:
        return render_text(self)

    def _repr_html_(self) -> str:
        return render_html(self)


@dataclass(frozen=True)
class TreeDiff:
    """Two golden trees compared file by file (``profile/case`` without suffix)."""

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

    def __str__(self) -> str:
        return render_text(self)

    def _repr_html_(self) -> str:
        return render_html(self)


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
    left = _keyed(parse_options(a, binary=binary))
    right = _keyed(parse_options(b, binary=binary))
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
                _is_guest_visible(option, old, new, present),
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


# --- rendering -----------------------------------------------------------------------------


def _runtime_lines(diff: RuntimeDiff, indent: str = "") -> Iterator[str]:
    if diff.equal:
        yield f"{indent}no differences"
        return
    for title, group in (("guest-visible", diff.guest_visible), ("host-only", diff.host_only)):
        if not group:
            continue
        yield f"{indent}{title} ({len(group)}):"
        for change in group:
            yield f"{indent}  {change}"
            for detail in change.details:
                yield f"{indent}      {detail}"


def render_text(diff: RuntimeDiff | TreeDiff) -> str:
    """A plain-text report, for terminals and test failures."""
    lines = [f"--- {diff.a}", f"+++ {diff.b}"]
    if isinstance(diff, RuntimeDiff):
        lines += _runtime_lines(diff)
        return "\n".join(lines) + "\n"
    lines += [f"+ case {key} (only in {diff.b})" for key in diff.added]
    lines += [f"- case {key} (only in {diff.a})" for key in diff.removed]
    for key, runtime_diff in diff.changed:
        lines.append(f"~ case {key}:")
        lines += _runtime_lines(runtime_diff, "    ")
    lines.append(
        f"{len(diff.changed)} changed, {len(diff.added)} added, {len(diff.removed)} removed,"
        f" {diff.unchanged} unchanged; {len(diff.guest_visible)} guest-visible changes"
    )
    return "\n".join(lines) + "\n"


_KIND_STYLE = {
    "added": "color:#1a7f37",
    "removed": "color:#cf222e",
    "changed": "color:#9a6700",
}


def _html_table(diff: RuntimeDiff) -> str:
    if diff.equal:
        return "<p><em>no differences</em></p>"
    esc = html.escape
    rows = []
    for change in diff.changes:
        impact = "guest-visible" if change.guest_visible else "host-only"
        weight = "font-weight:bold;" if change.guest_visible else ""
        details = "<br>".join(esc(detail) for detail in change.details)
        rows.append(
            f'<tr style="{_KIND_STYLE[change.kind]}">'
            f"<td>{esc(change.kind)}</td><td>{esc(change.section)}</td>"
            f"<td><code>{esc(change.label)}</code></td>"
            f"<td><code>{esc(_show(change.old)) if change.present[0] else ''}</code></td>"
            f"<td><code>{esc(_show(change.new)) if change.present[1] else ''}</code></td>"
            f'<td style="{weight}">{esc(impact)}</td><td>{details}</td></tr>'
        )
    head = "".join(
        f"<th>{name}</th>"
        for name in ("change", "section", "option", "A", "B", "impact", "details")
    )
    return f'<table class="kvmlab-diff"><tr>{head}</tr>{"".join(rows)}</table>'


def render_html(diff: RuntimeDiff | TreeDiff) -> str:
    """An HTML fragment (a table per case) for notebooks; every value is escaped."""
    esc = html.escape
    parts = [
        '<div class="kvmlab-diff">',
        f"<p><code>--- {esc(diff.a)}</code><br><code>+++ {esc(diff.b)}</code></p>",
    ]
    if isinstance(diff, RuntimeDiff):
        parts.append(_html_table(diff))
    else:
        summary = (
            f"{len(diff.changed)} changed, {len(diff.added)} added, {len(diff.removed)} removed,"
            f" {diff.unchanged} unchanged"
        )
        parts.append(f"<p>{esc(summary)}</p>")
        if diff.added or diff.removed:
            items = [f"<li>+ {esc(key)}</li>" for key in diff.added]
            items += [f"<li>- {esc(key)}</li>" for key in diff.removed]
            parts.append(f"<ul>{''.join(items)}</ul>")
        for key, runtime_diff in diff.changed:
            parts.append(f"<h4>{esc(key)}</h4>{_html_table(runtime_diff)}")
    parts.append("</div>")
    return "".join(parts)


def cli_diff(a: str, b: str, out: TextIO | None = None) -> int:
    """``kvmlab diff A B``: print the report; 0 when equal, 1 when different.

    :raise InvalidInputError: (via :class:`DiffInputError` and the readers' own
        subclasses) bad input; the CLI maps it to exit code 2.
    """
    stream = sys.stdout if out is None else out
    diff = diff_paths(a, b)
    stream.write(render_text(diff))
    return 0 if diff.equal else 1
