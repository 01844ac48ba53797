"""Charts through matplotlib: migration times, start and boot times, the capability matrix.

matplotlib comes with the ``notebooks`` extra, not with kvmlab: it is imported inside each
chart function, so ``import kvmlab.display`` stays light and works without it. Every chart
is a :class:`Chart`: the matplotlib figure (to restyle or save) and a sentence that
describes it, which the notebook gives the picture as its ``alt`` text and tooltip, so a
screen reader and a text export get what the bars say.

Figures are drawn with ``matplotlib.figure.Figure`` directly, never through ``pyplot``: no
global figure list, no second copy drawn by the inline backend, nothing to close.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kvmlab.display._markup import _e, _require
from kvmlab.display.matrix import CapabilityMatrix, _count_label, _matrix_rows

if TYPE_CHECKING:
    from kvmlab.lifecycle.migration.result import MigrationResult

__all__ = ["Chart", "durations_chart", "matrix_chart", "migration_chart"]

_BLUE = "#4878a8"
_ORANGE = "#e08040"
#: Wide enough to read, narrow enough for a notebook column at 1280 px (100 dpi).
_WIDTH_IN = 9.0


def _figure(width: float, height: float) -> Any:
    """A new figure; :class:`ModuleNotFoundError` that says which extra to install."""
    figure_module = _require("matplotlib.figure", "kvmlab's charts")
    return figure_module.Figure(figsize=(width, height), dpi=100, layout="constrained")


@dataclass(frozen=True)
class Chart:
    """A matplotlib figure and the sentence that describes it (its ``alt`` text)."""

    figure: Any
    description: str

    def svg(self) -> str:
        """The figure as SVG text (text drawn as paths: it looks the same everywhere)."""
        buffer = io.StringIO()
        self.figure.savefig(buffer, format="svg", metadata={"Date": None})
        return buffer.getvalue()

    def save(self, path: str) -> None:
        """Write the figure; the format follows the suffix (``.png``, ``.svg``, ``.pdf``)."""
        self.figure.savefig(path, metadata={"Title": self.description})

    def _repr_html_(self) -> str:
        data = base64.b64encode(self.svg().encode()).decode()
        alt = _e(self.description)
        # The description is the alt text (and the tooltip), not a caption as well: the
        # values are on the bars, and a screen reader would read them twice.
        return (
            f"<img src='data:image/svg+xml;base64,{data}' alt='{alt}' title='{alt}'"
            " style='max-width:100%;height:auto'>"
        )


def _ms(value: int | None) -> str:
    return "not reported" if value is None else f"{value} ms"


def migration_chart(results: Sequence[MigrationResult], *, labels: Sequence[str] = ()) -> Chart:
    """Total time and downtime of each migration, side by side, each on its own scale.

    Downtimes are a few milliseconds and total times hundreds: on one axis the downtimes
    would be slivers, so each figure has its own panel, bars labelled with their values.

    :param labels: one per migration (``"A→B"``); ``"1"``, ``"2"``... by default.
    """
    names = list(labels) or [str(number) for number in range(1, len(results) + 1)]
    figure = _figure(_WIDTH_IN, 3.4)
    panels = figure.subplots(1, 2)
    for axes, key, colour, title in (
        (panels[0], "total_time_ms", _BLUE, "total time of the transfer"),
        (panels[1], "downtime_ms", _ORANGE, "downtime (guest paused)"),
    ):
        values = [getattr(result, key) or 0 for result in results]
        bars = axes.bar(names, values, color=colour)
        axes.bar_label(bars, labels=[f"{value} ms" for value in values], padding=2, fontsize=9)
        axes.set_title(title)
        axes.set_ylabel("milliseconds")
        axes.set_xlabel("migration")
        axes.set_ylim(0, max([*values, 1]) * 1.2)
        axes.spines[["top", "right"]].set_visible(False)
    figure.suptitle(f"{len(results)} live migrations, as QEMU reported them")
    pairs = "; ".join(
        f"{name}: {_ms(result.total_time_ms)} total, {_ms(result.downtime_ms)} down"
        for name, result in zip(names, results, strict=True)
    )
    what = f"Bar charts of {len(results)} migrations' total time and downtime"
    return Chart(figure, f"{what}: {pairs}.")


def durations_chart(
    durations: Mapping[str, float], *, title: str, unit: str = "s", digits: int = 2
) -> Chart:
    """One horizontal bar per step (start, boot, soft reboot...), labelled with its value.

    :param durations: step name to its duration, in ``unit``.
    """
    names = list(durations)
    values = [float(durations[name]) for name in names]
    figure = _figure(_WIDTH_IN, 0.6 + 0.45 * max(len(names), 2))
    axes = figure.subplots()
    bars = axes.barh(names, values, color=_BLUE)
    axes.bar_label(bars, labels=[f"{value:.{digits}f} {unit}" for value in values], padding=3)
    axes.invert_yaxis()  # the first step on top, as listed
    axes.set_xlabel(f"time ({unit})")
    axes.set_xlim(0, max([*values, 0.001]) * 1.2)
    axes.set_title(title)
    axes.spines[["top", "right"]].set_visible(False)
    listed = "; ".join(
        f"{name}: {value:.{digits}f} {unit}" for name, value in zip(names, values, strict=True)
    )
    return Chart(figure, f"Bar chart, {title}: {listed}.")


def matrix_chart(matrix: CapabilityMatrix, *, only_differing: bool = True) -> Chart:
    """The capability matrix as a heat map: one column per QEMU, one row per option spelling.

    The colour is the share of the instances that get the spelling on that QEMU (the colour
    bar is the legend), the cell says ``✓`` or ``k/n`` as the table does, and the last row
    counts the instances that QEMU cannot generate.
    """
    features = list(_matrix_rows(matrix, only_differing))
    profiles = list(matrix.profiles)
    shares = [
        [
            len(matrix.present.get((feature, profile), frozenset()))
            / max(matrix.generated(profile), 1)
            for profile in profiles
        ]
        for feature in features
    ]
    figure = _figure(_WIDTH_IN, 1.6 + 0.32 * (len(features) + 1))
    axes = figure.subplots()
    image = axes.imshow(
        shares or [[0.0] * len(profiles)], cmap="Blues", vmin=0, vmax=1, aspect="auto"
    )
    for row, feature in enumerate(features):
        for col, profile in enumerate(profiles):
            label, _ = _count_label(matrix, feature, profile)
            colour = "white" if shares[row][col] > 0.6 else "#24292f"
            axes.text(col, row, label, ha="center", va="center", fontsize=9, color=colour)
    failed = [len(matrix.failed(profile)) for profile in profiles]
    for col, count in enumerate(failed):
        if count:
            axes.text(col, len(features), str(count), ha="center", va="center", color="#cf222e")
    axes.set_ylim(len(features) + 0.5, -0.5)
    axes.set_xticks(range(len(profiles)), profiles, rotation=30, ha="right")
    axes.set_yticks(range(len(features) + 1), [*features, "cannot generate"], fontsize=9)
    axes.set_xlabel("QEMU profile")
    axes.set_title("Option spellings each QEMU version gets")
    colour_bar = figure.colorbar(image, ax=axes, shrink=0.8)
    colour_bar.set_label("share of the instances")
    differing = "that differ between profiles" if only_differing else "in all"
    refused = ", ".join(
        f"{profile} cannot generate {count}"
        for profile, count in zip(profiles, failed, strict=True)
        if count
    )
    return Chart(
        figure,
        f"Heat map of {len(features)} option spellings {differing} across"
        f" {len(profiles)} QEMU profiles ({', '.join(profiles)}) for"
        f" {len(matrix.instances)} instances; darker means more instances get it"
        + (f"; {refused}." if refused else "."),
    )
