"""Charts (matplotlib) and DataFrames (pandas): optional, described, and lazily imported.

The core package must not need either (nor the explorer's ipywidgets): ``import
kvmlab.display`` is checked in a fresh interpreter. The charts themselves need matplotlib
(the ``notebooks`` extra, which the ``notebooks`` nox session installs); without it those
tests skip.
"""

from __future__ import annotations

import base64
import subprocess
import sys
import xml.etree.ElementTree as ET
from html import escape as html_escape

import pytest

from kvmlab import display
from kvmlab.lifecycle.migration.result import MigrationResult
from kvmlab.spec.capabilities import load_profile
from kvmlab.spec.instance import HvParams, Instance


def test_importing_display_imports_no_matplotlib_pandas_or_ipywidgets() -> None:
    code = (
        "import sys, kvmlab, kvmlab.display, kvmlab.display.explorer\n"
        "print(sorted(m for m in ('matplotlib', 'pandas', 'ipywidgets') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def _result(total: int, down: int) -> MigrationResult:
    return MigrationResult(
        name="vm1",
        source="a",
        target="b",
        status="completed",
        live=True,
        total_time_ms=total,
        downtime_ms=down,
        setup_time_ms=1,
        transferred_bytes=2**20,
        elapsed_ms=total + 50,
        source_version="7.2.0",
        target_version="7.2.0",
    )


def _matrix() -> display.CapabilityMatrix:
    instances = [Instance(name="plain"), Instance(name="no-acpi", hvparams=HvParams(acpi=False))]
    profiles = {name: load_profile(name) for name in ("ganeti-0.9.1", "qemu-7.2", "qemu-10.0")}
    return display.capability_matrix(instances, profiles)


def _svg_of(html: str) -> ET.Element:
    data = html.split("base64,", 1)[1].split("'", 1)[0]
    return ET.fromstring(base64.b64decode(data))


def test_the_migration_chart_describes_every_value() -> None:
    pytest.importorskip("matplotlib")
    chart = display.migration_chart([_result(412, 3), _result(388, 7)], labels=["A→B", "B→A"])
    assert "A→B: 412 ms total, 3 ms down" in chart.description
    assert "B→A: 388 ms total, 7 ms down" in chart.description
    html = chart._repr_html_()
    assert f"alt='{html_escape(chart.description)}'" in html
    _svg_of(html)  # a well-formed SVG picture
    panels = chart.figure.axes
    assert [axes.get_ylabel() for axes in panels] == ["milliseconds", "milliseconds"]
    labels = [text.get_text() for axes in panels for text in axes.texts]
    assert labels == ["412 ms", "388 ms", "3 ms", "7 ms"]  # downtimes readable, not slivers


def test_the_durations_chart_has_units_and_labels(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    chart = display.durations_chart({"start": 0.12, "boot": 3.456}, title="first boot")
    assert chart.description == "Bar chart, first boot: start: 0.12 s; boot: 3.46 s."
    axes = chart.figure.axes[0]
    assert axes.get_xlabel() == "time (s)"
    assert [text.get_text() for text in axes.texts] == ["0.12 s", "3.46 s"]
    chart.save(str(tmp_path / "boot.png"))
    assert (tmp_path / "boot.png").read_bytes().startswith(b"\x89PNG")


def test_the_matrix_chart_has_a_colour_legend_and_a_description() -> None:
    pytest.importorskip("matplotlib")
    matrix = _matrix()
    chart = display.matrix_chart(matrix)
    assert "3 QEMU profiles (ganeti-0.9.1, qemu-7.2, qemu-10.0)" in chart.description
    heat, legend = chart.figure.axes
    assert legend.get_ylabel() == "share of the instances"
    rows = [label.get_text() for label in heat.get_yticklabels()]
    assert rows[-1] == "cannot generate" and "-no-acpi" in rows
    assert [label.get_text() for label in heat.get_xticklabels()] == list(matrix.profiles)


def test_dataframes_of_the_matrix_and_migrations() -> None:
    pytest.importorskip("pandas")
    matrix = _matrix()
    frame = matrix.to_dataframe()
    assert list(frame.columns) == list(matrix.profiles)
    assert frame.loc["-no-acpi", "qemu-7.2"] == 1 and frame.loc["-no-acpi", "qemu-10.0"] == 0
    runs = display.migrations_dataframe([_result(412, 3), _result(388, 7)])
    assert list(runs["downtime_ms"]) == [3, 7]
