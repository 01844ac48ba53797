"""What each QEMU version can do, and which options it gets: tables and an SVG chart."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from kvmlab.display._markup import (
    _MUTED,
    _box,
    _code,
    _e,
    _Html,
    _p,
    _require,
    _table,
    _text_table,
)
from kvmlab.display.argv_view import _split_options

if TYPE_CHECKING:
    from kvmlab.spec.capabilities import QemuCapabilities
    from kvmlab.spec.instance import Instance

__all__ = [
    "CapabilityMatrix",
    "capabilities_html",
    "capabilities_text",
    "capability_matrix",
    "matrix_html",
    "matrix_svg",
    "matrix_text",
    "option_features",
]

# --------------------------------------------------------------------------- capabilities

#: Fields of QemuCapabilities shown as counts (long lists) or not at all (the label).
_CAPS_COUNTED: Final = frozenset({"machines", "devices"})
_CAPS_HIDDEN: Final = frozenset({"profile"})


def _caps_value(key: str, value: object) -> str:
    if key in _CAPS_COUNTED and isinstance(value, list | tuple):
        return f"{len(value)} known" if value else "unknown"
    if key == "version" and isinstance(value, list | tuple):
        return ".".join(map(str, value))
    if isinstance(value, bool):
        return "yes" if value else "no"
    return "-" if value in (None, "") else str(value)


def _caps_rows(
    profiles: Mapping[str, QemuCapabilities], only_differing: bool
) -> list[tuple[str, list[str]]]:
    tables = {name: caps.to_dict() for name, caps in profiles.items()}
    keys = [key for key in next(iter(tables.values()), {}) if key not in _CAPS_HIDDEN]
    rows = []
    for key in keys:
        values = [_caps_value(key, table[key]) for table in tables.values()]
        if only_differing and len(profiles) > 1 and len(set(values)) == 1:
            continue
        rows.append((key, values))
    return rows


def capabilities_html(
    profiles: Mapping[str, QemuCapabilities], *, only_differing: bool = True
) -> str:
    """What each QEMU can do, side by side: one column per profile, one row per capability.

    :param only_differing: hide the capabilities every profile shares.
    """
    rows = _caps_rows(profiles, only_differing)
    table = _table(
        ["capability", *profiles],
        [
            [_code(key, breakable=False)]
            + [
                _Html(f"<span style='{_MUTED}'>no</span>") if value == "no" else value
                for value in values
            ]
            for key, values in rows
        ],
    )
    shown = "capabilities that differ" if only_differing else "all capabilities"
    return _box("QEMU capabilities", table, subtitle=f"{len(profiles)} profiles, {shown}")


def capabilities_text(
    profiles: Mapping[str, QemuCapabilities], *, only_differing: bool = True
) -> str:
    """Plain-text counterpart of :func:`capabilities_html`."""
    rows = [[key, *values] for key, values in _caps_rows(profiles, only_differing)]
    return _text_table(["capability", *profiles], rows, cap=32)


# --------------------------------------------------------------------------- capability matrix

#: Options whose value is the instance's own data (a name, a size, a path), not a spelling
#: QEMU's version chooses: in the matrix only the option itself counts.
_DATA_OPTIONS: Final = frozenset(
    {"-name", "-m", "-smp", "-pidfile", "-uuid", "-kernel", "-initrd", "-append", "-cpu", "-k"}
    | {"-mem-path", "-M", "-boot", "-vga"}
)
_SPLIT_COMMAS = re.compile(r"(?<!,),(?!,)")
_SHORT_VALUE = 12


#: Sub-options that name or locate something (``id=serial0``, ``path=...``): identities
#: and data, not spellings a QEMU version chooses.
_IDENTITY_KEYS: Final = frozenset({"id", "path", "file", "dir", "logfile", "chardev", "netdev"})


def _token_feature(option: str, token: str) -> str | None:
    key, eq, value = token.partition("=")
    if not eq:
        return f"{option} {token}"
    if key in _IDENTITY_KEYS:
        return None
    if "/" in value or len(value) > _SHORT_VALUE:
        return f"{option} {key}=…"
    return f"{option} {token}"


def option_features(argv: Sequence[str]) -> list[str]:
    """The spellings a command line uses, without the instance's own values.

    ``-device virtio-balloon`` and ``-balloon virtio`` are different features, and so
    are ``-monitor server=on`` and ``-monitor server``; ``-m 256`` is just ``-m``, and
    ``id=serial0`` or a path count for nothing. This is what changes between QEMU
    versions for the same instance. An option with sub-features is listed through them
    only (``-device virtio-balloon``, never a bare ``-device``).
    """
    features: list[str] = []
    for _, option, value in _split_options(argv):
        found: list[str] = []
        if value is not None and option not in _DATA_OPTIONS:
            tokens = _SPLIT_COMMAS.split(value)
            head, rest = tokens[0], tokens[1:]
            if "=" in head:
                rest = tokens
            elif option in {"-machine", "-vnc"} or head.startswith(("/", ":")):
                pass  # the machine type, a display address, a path: data, not a spelling
            elif ":" in head:
                found.append(f"{option} {head.split(':', 1)[0]}:")
            else:
                found.append(f"{option} {head}")
            found += filter(None, (_token_feature(option, token) for token in rest))
        features += found or [option]
    return list(dict.fromkeys(features))


@dataclass(frozen=True)
class CapabilityMatrix:
    """Which option spellings each QEMU profile gives each instance.

    :ivar present: ``(feature, profile)`` to the names of the instances whose argv has it.
    :ivar errors: ``(instance, profile)`` to the reason that QEMU cannot run it.
    """

    profiles: tuple[str, ...]
    instances: tuple[str, ...]
    features: tuple[str, ...]
    present: Mapping[tuple[str, str], frozenset[str]] = field(default_factory=dict)
    errors: Mapping[tuple[str, str], str] = field(default_factory=dict)
    versions: Mapping[str, str] = field(default_factory=dict)

    def generated(self, profile: str) -> int:
        """How many instances this profile could generate a runtime for."""
        return sum(1 for name in self.instances if (name, profile) not in self.errors)

    def failed(self, profile: str) -> frozenset[str]:
        """The instances this profile could not generate."""
        return frozenset(name for name in self.instances if (name, profile) in self.errors)

    def differing(self) -> tuple[str, ...]:
        """Features not given alike by every profile: the rows worth looking at.

        An instance a profile cannot generate says nothing either way, so it counts as
        agreeing with the other profiles.
        """
        if len(self.profiles) < 2:
            return self.features
        out = []
        for feature in self.features:
            seen = {
                self.present.get((feature, p), frozenset()) | self.failed(p) for p in self.profiles
            }
            if len(seen) > 1:
                out.append(feature)
        return tuple(out)

    def _repr_html_(self) -> str:
        return matrix_html(self)

    def to_dataframe(self) -> Any:
        """A pandas DataFrame: one row per option spelling, one column per profile, each cell
        the number of instances that get it (``errors`` are not rows). Needs pandas."""
        data = {
            profile: [
                len(self.present.get((feature, profile), frozenset())) for feature in self.features
            ]
            for profile in self.profiles
        }
        frame = _require("pandas", "DataFrames").DataFrame(data, index=list(self.features))
        frame.index.name = "option"
        return frame


def capability_matrix(
    instances: Sequence[Instance], profiles: Mapping[str, QemuCapabilities]
) -> CapabilityMatrix:
    """Generate every instance for every profile and record the spellings used.

    A combination a QEMU cannot express (a read-only disk on QEMU 0.12, ``-chroot`` on
    0.9) is recorded in ``errors`` with the generator's message instead of raising.
    """
    from kvmlab.errors import KvmlabError  # noqa: PLC0415
    from kvmlab.runtime.generator import generate_runtime  # noqa: PLC0415

    present: dict[tuple[str, str], set[str]] = {}
    errors: dict[tuple[str, str], str] = {}
    order: dict[str, None] = {}
    for profile, caps in profiles.items():
        for instance in instances:
            try:
                runtime = generate_runtime(instance, caps)
            except KvmlabError as err:
                errors[(instance.name, profile)] = str(err)
                continue
            for feature in option_features(runtime.argv):
                order.setdefault(feature)
                present.setdefault((feature, profile), set()).add(instance.name)
    return CapabilityMatrix(
        profiles=tuple(profiles),
        instances=tuple(instance.name for instance in instances),
        features=tuple(order),
        present={key: frozenset(names) for key, names in present.items()},
        errors=errors,
        versions={name: caps.version_string for name, caps in profiles.items()},
    )


def _matrix_rows(matrix: CapabilityMatrix, only_differing: bool) -> tuple[str, ...]:
    return matrix.differing() if only_differing else matrix.features


def _count_label(matrix: CapabilityMatrix, feature: str, profile: str) -> tuple[str, str]:
    names = matrix.present.get((feature, profile), frozenset())
    total = matrix.generated(profile)
    if not names:
        return "", ""
    ordered = ", ".join(n for n in matrix.instances if n in names)
    return ("✓" if len(names) == total else f"{len(names)}/{total}"), ordered


def matrix_html(matrix: CapabilityMatrix, *, only_differing: bool = True) -> str:
    """The matrix as a table: ✓ when every instance gets the spelling on that QEMU,
    ``k/n`` when only some do (hover for their names), then what could not be generated.

    :param only_differing: hide the rows every profile has alike (``-m``, ``-name``...).
    """
    rows = []
    for feature in _matrix_rows(matrix, only_differing):
        cells: list[object] = [_code(feature, breakable=False)]
        for profile in matrix.profiles:
            label, names = _count_label(matrix, feature, profile)
            cells.append(_Html(f"<span title='{_e(names)}'>{_e(label)}</span>") if label else "")
        rows.append(cells)
    headers = ["option"] + [
        f"{p} ({matrix.versions[p]})" if matrix.versions.get(p, p) not in p else p
        for p in matrix.profiles
    ]
    parts: list[str] = [_table(headers, rows)]
    if matrix.errors:
        parts.append(_p("cannot be generated:"))
        parts.append(
            _table(
                ("instance", "profile", "why"),
                [(inst, prof, why) for (inst, prof), why in matrix.errors.items()],
            )
        )
    shown = "options that differ between profiles" if only_differing else "all options"
    return _box(
        "Capability matrix",
        *parts,
        subtitle=f"{len(matrix.instances)} instances x {len(matrix.profiles)} profiles, {shown}",
    )


def matrix_text(matrix: CapabilityMatrix, *, only_differing: bool = True) -> str:
    """Plain-text counterpart of :func:`matrix_html`."""
    rows = [
        [feature] + [_count_label(matrix, feature, p)[0] for p in matrix.profiles]
        for feature in _matrix_rows(matrix, only_differing)
    ]
    out = _text_table(["option", *matrix.profiles], rows, cap=32)
    for (inst, prof), why in matrix.errors.items():
        out += f"\n{inst} on {prof}: {why}"
    return out


_SVG_CELL = 22
_SVG_FONT = "font-family:monospace;font-size:11px"


def matrix_svg(matrix: CapabilityMatrix, *, only_differing: bool = True) -> str:
    """The matrix as an inline SVG heat map: one column per profile, one row per option;
    the darker the cell, the more instances get that spelling on that QEMU. A crossed
    cell at the bottom marks an instance the profile cannot generate.

    Plain SVG text, so a notebook shows it with ``IPython.display.SVG`` or ``HTML`` and
    needs no plotting library.
    """
    features = _matrix_rows(matrix, only_differing)
    label_width = 8 + 7 * max([len(f) for f in features] + [len("cannot generate")])
    header_height = 8 + 7 * max([len(p) for p in matrix.profiles] + [4])
    rows = len(features) + 1  # the last row counts generation failures
    # The column labels are turned by 60 degrees: the last one reaches right by half its length.
    overhang = int(7 * 0.5 * max([len(p) for p in matrix.profiles] + [4]))
    width = label_width + _SVG_CELL * len(matrix.profiles) + overhang + 8
    height = header_height + _SVG_CELL * rows + 8
    out = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}'"
        f" viewBox='0 0 {width} {height}' role='img'>",
        "<title>kvmlab capability matrix</title>",
    ]
    for col, profile in enumerate(matrix.profiles):
        x = label_width + col * _SVG_CELL + _SVG_CELL // 2 + 4
        out.append(
            f"<text x='{x}' y='{header_height - 6}' transform='rotate(-60 {x} {header_height - 6})'"
            f" style='{_SVG_FONT}'>{_e(profile)}</text>"
        )
    for row, feature in enumerate(features):
        y = header_height + row * _SVG_CELL
        out.append(
            f"<text x='4' y='{y + _SVG_CELL * 0.7:.0f}' style='{_SVG_FONT}'>{_e(feature)}</text>"
        )
        for col, profile in enumerate(matrix.profiles):
            names = matrix.present.get((feature, profile), frozenset())
            total = matrix.generated(profile) or 1
            share = len(names) / total
            x = label_width + col * _SVG_CELL
            fill = f"rgba(31,111,235,{0.15 + 0.85 * share:.2f})" if names else "#f6f8fa"
            label = ", ".join(n for n in matrix.instances if n in names) or "none"
            out.append(
                f"<rect x='{x}' y='{y}' width='{_SVG_CELL - 2}' height='{_SVG_CELL - 2}'"
                f" fill='{fill}'><title>{_e(feature)} on {_e(profile)}: {_e(label)}</title></rect>"
            )
    y = header_height + len(features) * _SVG_CELL
    out.append(
        f"<text x='4' y='{y + _SVG_CELL * 0.7:.0f}' style='{_SVG_FONT}'>cannot generate</text>"
    )
    for col, profile in enumerate(matrix.profiles):
        failed = [n for n in matrix.instances if (n, profile) in matrix.errors]
        x = label_width + col * _SVG_CELL
        if failed:
            out.append(
                f"<rect x='{x}' y='{y}' width='{_SVG_CELL - 2}' height='{_SVG_CELL - 2}'"
                f" fill='#ffebe9' stroke='#cf222e'><title>{_e(profile)} cannot generate"
                f" {_e(', '.join(failed))}</title></rect>"
                f"<text x='{x + 5}' y='{y + 15}' style='{_SVG_FONT};fill:#cf222e'>"
                f"{len(failed)}</text>"
            )
    out.append("</svg>")
    return "".join(out)
