"""The interactive explorer: values in, the runtime and its diff out, bad values named.

:func:`kvmlab.display.explorer.explorer_view` is the explorer's whole logic, and pure, so
most of this runs without ipywidgets: each view is compared with what kvmlab's own
generator, diff and renderers make of the same instance. The widget tests (ipywidgets, the
``notebooks`` extra) change a control as a user would and read the widgets that show the
tables; the browser drives the same widget in a running JupyterLab
(``tools/check_explorer_jupyterlab.py``, in the ``notebooks`` nox session).
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from kvmlab import display
from kvmlab.display.explorer import (
    DEFAULT_PROFILE,
    HV_FIELDS,
    MAX_DEVICES,
    explore,
    explorer_view,
    start_values,
)
from kvmlab.errors import CapabilityError
from kvmlab.golden.diff import diff_runtimes
from kvmlab.runtime.generator import generate_runtime
from kvmlab.spec.capabilities import available_profiles, load_profile
from kvmlab.spec.instance import Disk, HvParams, Instance, Nic

HOSTILE_ARGS = "console=ttyS0 <b>&x"


def _vm(**fields: Any) -> Instance:
    data: dict[str, Any] = {
        "name": "web1",
        "memory": 512,
        "vcpus": 2,
        "nics": [Nic(mac="52:54:00:12:34:56", mode="user")],
        **fields,
    }
    return Instance(**data)


def _expected(start: Instance, edited: Instance, profile: str = DEFAULT_PROFILE) -> tuple[str, str]:
    before = generate_runtime(start, load_profile(DEFAULT_PROFILE))
    after = generate_runtime(edited, load_profile(profile))
    labels = (f"{start.name} on {DEFAULT_PROFILE}", f"edited, on {profile}")
    return display.runtime_html(after), display.diff_html(
        diff_runtimes(before, after), labels=labels
    )


def _option_value(html: str, option: str) -> str:
    """The value column of one option's row in a runtime table."""
    found = re.search(
        rf"<code style='white-space:nowrap'>{re.escape(option)}</code></td>"
        r"<td[^>]*>(.*?)</td>",
        html,
    )
    assert found, f"no {option} row"
    return re.sub(r"<[^>]+>", "", found.group(1))


# --------------------------------------------------------------------------- explorer_view


def test_the_start_values_show_the_starting_runtime_and_no_difference() -> None:
    vm = _vm()
    view = explorer_view(vm, start_values(vm))
    assert view.ok and view.error == "" and view.field == ""
    assert (view.runtime_html, view.diff_html) == _expected(vm, vm)
    assert "no differences" in view.diff_html


def test_an_empty_mapping_keeps_every_starting_value() -> None:
    vm = _vm()
    assert explorer_view(vm, {}) == explorer_view(vm, start_values(vm))


def test_memory_and_vcpus_change_the_argv_and_the_diff() -> None:
    vm = _vm()
    view = explorer_view(vm, {**start_values(vm), "memory": 1536, "vcpus": 4})
    assert view.ok
    assert (view.runtime_html, view.diff_html) == _expected(vm, _vm(memory=1536, vcpus=4))
    assert _option_value(view.runtime_html, "-m") == "1536"
    assert "1536" in view.diff_html and "512" in view.diff_html


def test_hvparams_change_as_the_instance_would() -> None:
    vm = _vm()
    hv = {
        "machine_version": "pc-i440fx-7.2",
        "cpu_type": "qemu64",
        "nic_type": "e1000",
        "disk_type": "ide",
        "boot_order": "network",
        "acpi": False,
        "serial_console": False,
        "kernel_args": HOSTILE_ARGS,
    }
    assert set(hv) == set(HV_FIELDS)
    view = explorer_view(vm, {**start_values(vm), **hv})
    assert view.ok, view.error
    edited = _vm(hvparams=HvParams(**hv))  # type: ignore[arg-type]
    assert (view.runtime_html, view.diff_html) == _expected(vm, edited)
    # Shown as typed, never as markup.
    assert "&lt;b&gt;&amp;x" in view.runtime_html and "<b>&x" not in view.runtime_html


def test_another_profile_is_named_in_the_diff() -> None:
    vm = _vm(hvparams=HvParams(acpi=False))
    view = explorer_view(vm, {"profile": "qemu-10.0"})
    assert (view.runtime_html, view.diff_html) == _expected(vm, vm, "qemu-10.0")
    assert "web1 on qemu-7.2" in view.diff_html and "edited, on qemu-10.0" in view.diff_html
    assert "acpi=off" in view.runtime_html


def test_nic_and_disk_counts_keep_the_instances_own_then_add_fresh_ones() -> None:
    # The instance already holds the first MAC the explorer would make: it is skipped.
    vm = _vm(
        nics=[Nic(mac="52:54:00:ee:00:00", mode="user")],
        disks=[Disk(path="/srv/images/root.img")],
    )
    view = explorer_view(vm, {"nics": 3, "disks": 2})
    assert view.ok, view.error
    edited = _vm(
        nics=[
            Nic(mac="52:54:00:ee:00:00", mode="user"),
            Nic(mac="52:54:00:ee:00:01", mode="user"),
            Nic(mac="52:54:00:ee:00:02", mode="user"),
        ],
        disks=[Disk(path="/srv/images/root.img"), Disk(path="/srv/kvmlab/web1/disk1.img")],
    )
    assert (view.runtime_html, view.diff_html) == _expected(vm, edited)
    fewer = explorer_view(vm, {"nics": 0, "disks": 0})
    assert fewer.ok
    assert (fewer.runtime_html, fewer.diff_html) == _expected(vm, _vm(nics=[], disks=[]))


@pytest.mark.parametrize(
    ("values", "field", "shown"),
    [
        ({"memory": 8}, "memory", "8"),
        ({"vcpus": 0}, "vcpus", "0"),
        ({"memory": "lots"}, "memory", "'lots'"),
        ({"cpu_type": "host model"}, "hvparams.cpu_type", "'host model'"),
        ({"machine_version": "pc;q35"}, "hvparams.machine_version", "'pc;q35'"),
        ({"kernel_args": "ro\nquiet"}, "hvparams.kernel_args", "'ro\\nquiet'"),
        ({"nic_type": "virtio"}, "hvparams.nic_type", "'virtio'"),
        # A rule across fields: booting from a CD-ROM needs its image.
        ({"boot_order": "cdrom"}, "hvparams.cdrom_image_path", "'cdrom'"),
        ({"nics": MAX_DEVICES + 1}, "nics", str(MAX_DEVICES + 1)),
        ({"disks": -1}, "disks", "-1"),
        ({"nics": "2"}, "nics", "'2'"),
        ({"profile": "qemu-0.1"}, "profile", "'qemu-0.1'"),
        ({"ram": 1024}, "ram", "ram"),
    ],
)
def test_a_refused_value_is_named_with_its_field_and_no_tables(
    values: dict[str, object], field: str, shown: str
) -> None:
    view = explorer_view(_vm(), values)
    assert not view.ok
    assert view.field == field
    assert view.error.startswith(f"{field}: ")
    assert shown in view.error
    assert "\n" not in view.error and "Traceback" not in view.error
    assert (view.runtime_html, view.diff_html) == ("", "")


def test_start_values_name_every_control() -> None:
    values = start_values(_vm(), "qemu-10.0")
    assert set(values) == {"profile", "memory", "vcpus", "nics", "disks", *HV_FIELDS}
    assert values["profile"] == "qemu-10.0" and values["nics"] == 1 and values["disks"] == 0
    assert values["boot_order"] == "disk"


# --------------------------------------------------------------------------- the widget


def _by_class(widget: Any, name: str) -> Any:
    """The widget (anywhere below ``widget``) that carries the CSS class ``name``."""
    if name in widget._dom_classes:
        return widget
    for child in getattr(widget, "children", ()):
        found = _by_class(child, name)
        if found is not None:
            return found
    return None


@pytest.fixture
def explorer() -> Any:
    pytest.importorskip("ipywidgets")
    return explore(_vm())


def test_the_widget_shows_the_start_and_offers_every_field(explorer: Any) -> None:
    runtime = _by_class(explorer, "kvmlab-explorer-runtime")
    vm = _vm()
    expected_runtime, expected_diff = _expected(vm, vm)
    assert expected_runtime in runtime.value
    assert expected_diff in _by_class(explorer, "kvmlab-explorer-diff").value
    assert _by_class(explorer, "kvmlab-explorer-error").value == ""
    for name in ("profile", "memory", "vcpus", "nics", "disks", *HV_FIELDS):
        assert _by_class(explorer, f"kvmlab-explorer-{name.replace('_', '-')}") is not None, name
    profile = _by_class(explorer, "kvmlab-explorer-profile")
    assert list(profile.options) == available_profiles()
    nic_type = _by_class(explorer, "kvmlab-explorer-nic-type")
    assert "e1000" in nic_type.options and "paravirtual" in nic_type.options
    boot = _by_class(explorer, "kvmlab-explorer-boot-order")
    assert list(boot.options) == ["floppy", "cdrom", "disk", "network"]


def test_changing_a_control_updates_the_tables_live(explorer: Any) -> None:
    _by_class(explorer, "kvmlab-explorer-memory").value = 1536
    runtime = _by_class(explorer, "kvmlab-explorer-runtime").value
    assert _option_value(runtime, "-m") == "1536"
    assert "1536" in _by_class(explorer, "kvmlab-explorer-diff").value


def test_a_refused_value_is_shown_in_place_and_the_last_tables_stay(explorer: Any) -> None:
    memory = _by_class(explorer, "kvmlab-explorer-memory")
    memory.value = 1024
    before = _by_class(explorer, "kvmlab-explorer-runtime").value
    memory.value = 8
    error = _by_class(explorer, "kvmlab-explorer-error").value
    assert "memory: Input should be greater than or equal to 16 (got 8)" in error
    assert _by_class(explorer, "kvmlab-explorer-runtime").value == before
    memory.value = 2048
    assert _by_class(explorer, "kvmlab-explorer-error").value == ""
    assert _option_value(_by_class(explorer, "kvmlab-explorer-runtime").value, "-m") == "2048"


def test_the_reset_button_goes_back_to_the_start(explorer: Any) -> None:
    _by_class(explorer, "kvmlab-explorer-memory").value = 4096
    _by_class(explorer, "kvmlab-explorer-acpi").value = False
    form = explorer.children[1]
    form.children[-1].click()
    assert _by_class(explorer, "kvmlab-explorer-memory").value == 512
    assert _by_class(explorer, "kvmlab-explorer-acpi").value is True
    assert "no differences" in _by_class(explorer, "kvmlab-explorer-diff").value


def test_explore_refuses_an_unknown_profile_and_starts_without_an_instance() -> None:
    pytest.importorskip("ipywidgets")
    with pytest.raises(CapabilityError, match=r"unknown QEMU profile 'qemu-0\.1'"):
        explore(profile="qemu-0.1")
    widget = explore()
    assert "Exploring explorer" in widget.children[0].value
    assert _by_class(widget, "kvmlab-explorer-error").value == ""
