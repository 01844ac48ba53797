"""An interactive explorer: change an instance with widgets, see its runtime and diff live.

Notebook 1 varies an instance in code, one cell per idea; the explorer lets a user try
memory, vCPUs, NICs, disks, a few hvparams and the QEMU profile with the mouse, and shows at
once the runtime those values generate (:func:`~kvmlab.display.runtime_html`) and its
semantic diff against the starting instance (:func:`~kvmlab.display.diff_html`)::

    from kvmlab.display.explorer import explore
    explore(vm, profile="qemu-7.2")

Its logic is the pure :func:`explorer_view`, from the widgets' values to the two tables or
an error, so tests check it without a browser or a kernel. Values that kvmlab refuses
(8 MiB of memory, a machine type with a space) are shown in place, naming the field and the
value, as ``instance_from_data`` words them; the tables keep the last valid configuration
and no traceback reaches the notebook.

ipywidgets comes with the ``notebooks`` extra: it is imported by :func:`explore` alone, so
``import kvmlab.display`` works without it. Only standard widgets are used (no custom
JavaScript), which JupyterLab, Notebook 7 and VS Code's notebooks all draw.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from kvmlab.display._markup import _BAD, _e, _require
from kvmlab.display.diff_view import diff_html
from kvmlab.display.objects import runtime_html

if TYPE_CHECKING:
    from kvmlab.spec.instance import Instance

__all__ = [
    "DEFAULT_PROFILE",
    "HV_FIELDS",
    "ExplorerView",
    "explore",
    "explorer_view",
    "start_values",
]

#: The QEMU profile the explorer starts on: the one ``generate_runtime`` assumes by default.
DEFAULT_PROFILE: Final = "qemu-7.2"
#: The hvparams the explorer offers: those that change what the guest sees most.
HV_FIELDS: Final = (
    "machine_version",
    "cpu_type",
    "nic_type",
    "disk_type",
    "boot_order",
    "acpi",
    "serial_console",
    "kernel_args",
)
#: The instance fields the explorer offers; ``nics`` and ``disks`` are counts.
INSTANCE_FIELDS: Final = ("memory", "vcpus", "nics", "disks")
#: At most this many NICs and disks: enough to see the pattern, few enough to read.
MAX_DEVICES: Final = 8


@dataclass(frozen=True)
class ExplorerView:
    """What the explorer shows for one set of values.

    :ivar runtime_html: the generated runtime, option by option (empty on an error).
    :ivar diff_html: its semantic diff against the starting instance (empty on an error).
    :ivar error: one line naming the field and the value kvmlab refused, or ``""``.
    :ivar field: the refused field (``memory``, ``hvparams.cpu_type``), or ``""``.
    """

    runtime_html: str
    diff_html: str
    error: str = ""
    field: str = ""

    @property
    def ok(self) -> bool:
        """True when the values made a runtime."""
        return not self.error


def start_values(instance: Instance, profile: str = DEFAULT_PROFILE) -> dict[str, object]:
    """The widgets' values for ``instance`` on ``profile``: where the explorer starts."""
    hv = instance.hvparams
    values: dict[str, object] = {
        "profile": profile,
        "memory": instance.memory,
        "vcpus": instance.vcpus,
        "nics": len(instance.nics),
        "disks": len(instance.disks),
    }
    for name in HV_FIELDS:
        value = getattr(hv, name)
        values[name] = str(value) if name == "boot_order" else value
    return values


def _extra_nics(instance: Instance, count: int) -> list[dict[str, object]]:
    """The first ``count`` NICs: the instance's own, then user-mode NICs with fresh MACs."""
    nics: list[dict[str, object]] = [nic.model_dump(mode="json") for nic in instance.nics]
    taken = {str(nic["mac"]) for nic in nics}
    suffix = 0
    while len(nics) < count:
        mac = f"52:54:00:ee:00:{suffix:02x}"
        suffix += 1
        if mac not in taken:
            nics.append({"mac": mac, "mode": "user"})
    return nics[:count]


def _extra_disks(instance: Instance, count: int) -> list[dict[str, object]]:
    """The first ``count`` disks: the instance's own, then images named after it."""
    disks: list[dict[str, object]] = [disk.model_dump(mode="json") for disk in instance.disks]
    taken = {str(disk["path"]) for disk in disks}
    index = len(disks)
    while len(disks) < count:
        path = f"/srv/kvmlab/{instance.name}/disk{index}.img"
        index += 1
        if path not in taken:
            disks.append({"path": path, "mode": "rw"})
    return disks[:count]


def _count(values: Mapping[str, object], key: str, default: int) -> int | str:
    """A NIC or disk count, or the error that names it."""
    value = values.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        return f"{key}: a count of {key} is a whole number (got {value!r})"
    if not 0 <= value <= MAX_DEVICES:
        return f"{key}: the explorer offers 0 to {MAX_DEVICES} {key} (got {value!r})"
    return value


def _edited_data(start: Instance, values: Mapping[str, object]) -> tuple[dict[str, Any], str, str]:
    """The instance's data with the values applied; or the error and its field."""
    data: dict[str, Any] = start.model_dump(mode="json")
    for key in ("memory", "vcpus"):
        if key in values:
            data[key] = values[key]
    counts: dict[str, int] = {}
    for key, have in (("nics", len(start.nics)), ("disks", len(start.disks))):
        count = _count(values, key, have)
        if isinstance(count, str):
            return data, count, key
        counts[key] = count
    data["nics"] = _extra_nics(start, counts["nics"])
    data["disks"] = _extra_disks(start, counts["disks"])
    hv = dict(data["hvparams"])
    hv.update({name: values[name] for name in HV_FIELDS if name in values})
    data["hvparams"] = hv
    return data, "", ""


def explorer_view(
    start: Instance, values: Mapping[str, object], *, start_profile: str = DEFAULT_PROFILE
) -> ExplorerView:
    """The runtime and diff the explorer shows for ``values``; never raises for bad values.

    :param start: the instance the explorer started from (the left side of the diff).
    :param values: the widgets' values, as :func:`start_values` names them (``profile``,
        ``memory``, ``vcpus``, ``nics`` and ``disks`` as counts, and :data:`HV_FIELDS`);
        a key left out keeps the starting value.
    :param start_profile: the QEMU profile the starting runtime is generated for.
    :return: both tables, or an error naming the field and the value (and no tables).
    """
    from kvmlab.errors import InstanceError, KvmlabError  # noqa: PLC0415 - display loads late
    from kvmlab.golden.diff import diff_runtimes  # noqa: PLC0415
    from kvmlab.runtime.generator import generate_runtime  # noqa: PLC0415
    from kvmlab.spec.capabilities import load_profile  # noqa: PLC0415
    from kvmlab.spec.instance import instance_from_data  # noqa: PLC0415

    unknown = sorted(set(values) - {"profile", *INSTANCE_FIELDS, *HV_FIELDS})
    if unknown:
        offered = ", ".join(("profile", *INSTANCE_FIELDS, *HV_FIELDS))
        message = f"{unknown[0]}: not a field the explorer offers ({offered})"
        return ExplorerView("", "", message, unknown[0])
    profile = str(values.get("profile", start_profile))
    data, error, field = _edited_data(start, values)
    if error:
        return ExplorerView("", "", error, field)
    try:
        edited = instance_from_data(data)
    except InstanceError as err:
        return ExplorerView("", "", str(err), err.field)
    try:
        before = generate_runtime(start, load_profile(start_profile))
        after = generate_runtime(edited, load_profile(profile))
    except InstanceError as err:
        return ExplorerView("", "", str(err), err.field)
    except KvmlabError as err:
        return ExplorerView("", "", f"profile: {err}", "profile")
    diff = diff_runtimes(before, after)
    labels = (f"{start.name} on {start_profile}", f"edited, on {profile}")
    return ExplorerView(runtime_html(after), diff_html(diff, labels=labels))


# --------------------------------------------------------------------------- the widget

#: A label column wide enough for the longest description, so the inputs line up.
_LABEL_WIDTH = "130px"


def _choices(name: str) -> list[str]:
    """The values an hvparam accepts (a ``Literal`` or an enum), for a dropdown."""
    from kvmlab.spec.instance import HvParams  # noqa: PLC0415

    annotation = HvParams.model_fields[name].annotation
    if isinstance(annotation, type):  # an enum: BootOrder
        return [str(member) for member in typing.cast(Any, annotation)]
    return [str(choice) for choice in typing.get_args(annotation)]


def _controls(widgets: Any, values: Mapping[str, object]) -> dict[str, Any]:
    """One standard widget per value, each labelled with the field it sets.

    Numbers and names are free text boxes, not sliders bounded to valid values: what kvmlab
    refuses, and why, is part of what the explorer shows.
    """
    from kvmlab.spec.capabilities import available_profiles  # noqa: PLC0415

    style = {"description_width": _LABEL_WIDTH}
    controls: dict[str, Any] = {
        "profile": widgets.Dropdown(
            options=available_profiles(), value=values["profile"], description="QEMU profile"
        ),
        "memory": widgets.IntText(value=values["memory"], description="memory (MiB)"),
        "vcpus": widgets.IntText(value=values["vcpus"], description="vCPUs"),
        "nics": widgets.BoundedIntText(
            value=values["nics"], min=0, max=MAX_DEVICES, description="NICs"
        ),
        "disks": widgets.BoundedIntText(
            value=values["disks"], min=0, max=MAX_DEVICES, description="disks"
        ),
    }
    for name in HV_FIELDS:
        value = values[name]
        if isinstance(value, bool):
            controls[name] = widgets.Checkbox(value=value, description=name, indent=False)
        elif name in ("nic_type", "disk_type", "boot_order"):
            controls[name] = widgets.Dropdown(
                options=_choices(name), value=str(value), description=name
            )
        else:
            controls[name] = widgets.Text(
                value=str(value), description=name, continuous_update=False
            )
    for name, control in controls.items():
        if not isinstance(control, widgets.Checkbox):
            control.style = style
        control.layout = widgets.Layout(width="auto")
        # A stable hook for the browser check (and for user CSS): kvmlab-explorer-memory.
        control.add_class(f"kvmlab-explorer-{name.replace('_', '-')}")
    return controls


def _readable(html: str) -> str:
    """A table inside an HTML widget: the widget's own line height (one form row, 28 px)
    would double-space every wrapped value."""
    return f"<div style='line-height:1.4'>{html}</div>"


def _error_html(view: ExplorerView) -> str:
    return (
        f"<div style='{_BAD};padding:4px 0'>&#9888; {_e(view.error)}</div>"
        "<div style='color:#6e7781;font-size:90%'>The tables below still show the last valid"
        " configuration.</div>"
    )


def explore(instance: Instance | None = None, profile: str = DEFAULT_PROFILE) -> Any:
    """A widget to change ``instance`` and watch its runtime and diff update.

    :param instance: where to start; a small VM with one user-mode NIC when omitted.
    :param profile: the QEMU profile the starting runtime is generated for (one of
        ``available_profiles()``).
    :return: an ``ipywidgets.VBox``; the last expression of a cell displays it.
    :raise ModuleNotFoundError: without ipywidgets (``pip install 'kvmlab[notebooks]'``).
    :raise CapabilityError: when ``profile`` is not a bundled profile.
    """
    from kvmlab.spec.capabilities import load_profile  # noqa: PLC0415
    from kvmlab.spec.instance import Instance, Nic  # noqa: PLC0415

    widgets = _require("ipywidgets", "kvmlab's explorer")
    load_profile(profile)  # a bad profile name fails here, with the bundled ones named
    start = instance or Instance(
        name="explorer", memory=512, nics=(Nic(mac="52:54:00:12:34:56", mode="user"),)
    )
    first = start_values(start, profile)
    controls = _controls(widgets, first)
    error = widgets.HTML(value="")
    diff = widgets.HTML(value="")
    runtime = widgets.HTML(value="")
    error.add_class("kvmlab-explorer-error")
    diff.add_class("kvmlab-explorer-diff")
    runtime.add_class("kvmlab-explorer-runtime")

    def update(_change: object = None) -> None:
        view = explorer_view(
            start, {name: c.value for name, c in controls.items()}, start_profile=profile
        )
        error.value = "" if view.ok else _error_html(view)
        if view.ok:
            diff.value, runtime.value = _readable(view.diff_html), _readable(view.runtime_html)

    def reset(_button: object = None) -> None:
        for name, control in controls.items():
            control.value = first[name]

    for control in controls.values():
        control.observe(update, names="value")
    button = widgets.Button(description="back to the start", icon="undo")
    button.on_click(reset)
    update()
    form = widgets.GridBox(
        [*controls.values(), button],
        layout=widgets.Layout(
            grid_template_columns="repeat(3, minmax(0, 1fr))", grid_gap="4px 16px"
        ),
    )
    title = widgets.HTML(
        value=f"<strong>Exploring {_e(start.name)}</strong> <span style='color:#6e7781'>"
        f"changes are compared with {_e(start.name)} on {_e(profile)}</span>"
    )
    box = widgets.VBox([title, form, error, diff, runtime])
    box.add_class("kvmlab-explorer")
    return box
