"""How kvmlab's objects look in a notebook: HTML and plain-text renderings.

Notebooks are a first-class way to use kvmlab, and a command line of forty words
or a list of dataclasses is hard to read at a glance. Every function here is pure:
it takes one object and returns a string, HTML (``*_html``) or plain text
(``*_text``), so tests can check them without Jupyter::

    from IPython.display import HTML
    HTML(runtime_html(runtime))      # option | value | why it is there
    print(runtime_text(runtime))

The data classes do not know this module: it sits above every layer whose objects
it draws, and :func:`register` teaches IPython which renderer goes with which
class, by module and class name, so nothing is imported until an object is shown.
Importing kvmlab inside a running IPython shell (any Jupyter kernel) registers
them; ``%load_ext kvmlab.display`` does it by hand elsewhere. That keeps the
import graph one-way: models, runtimes and the lifecycle never import display.

Everything that comes from outside kvmlab (names, kernel arguments, paths, guest
output) is escaped with :func:`html.escape`: a ``kernel_args`` of
``console=ttyS0 <b>&x`` is valid, and must show as typed, not as markup.

Besides one renderer per object (instance, runtime, diff, invariant report,
hypervisor, instance info, guest facts) there is :func:`capability_matrix`: which
options each QEMU version gets for a set of instances, as a table.

Charts (:func:`migration_chart`, :func:`durations_chart`, :func:`matrix_chart`) are drawn
with matplotlib and DataFrames made with pandas, both from the ``notebooks`` extra and
imported only when a chart or a frame is asked for: ``import kvmlab.display`` needs
neither. :func:`explore` (ipywidgets, the same extra) changes an instance with widgets and
shows its runtime and diff live. The helpers (:func:`wait_for_facts`, :func:`live_argv`,
:func:`example_file`...) keep polling loops and ``/proc`` parsing out of the notebooks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from kvmlab.display.argv_view import OPTION_WHY, ArgvRow, argv_html, argv_rows, argv_text
from kvmlab.display.charts import Chart, durations_chart, matrix_chart, migration_chart
from kvmlab.display.diff_view import diff_html, diff_text
from kvmlab.display.explorer import ExplorerView, explore, explorer_view
from kvmlab.display.frames import lab_dataframe, migrations_dataframe
from kvmlab.display.helpers import (
    console_tail,
    example_file,
    example_files,
    live_argv,
    option_values,
    wait_for_facts,
)
from kvmlab.display.lab import (
    facts_html,
    facts_text,
    hypervisor_html,
    hypervisor_text,
    info_html,
    info_text,
    snapshot_html,
    snapshot_text,
)
from kvmlab.display.matrix import (
    CapabilityMatrix,
    capabilities_html,
    capabilities_text,
    capability_matrix,
    matrix_html,
    matrix_svg,
    matrix_text,
    option_features,
)
from kvmlab.display.objects import (
    instance_html,
    instance_text,
    report_html,
    report_text,
    runtime_html,
    runtime_text,
)

__all__ = [
    # the renderers, one pair per object
    "instance_html",
    "instance_text",
    "runtime_html",
    "runtime_text",
    "argv_html",
    "argv_text",
    "argv_rows",
    "ArgvRow",
    "OPTION_WHY",
    "diff_html",
    "diff_text",
    "report_html",
    "report_text",
    "hypervisor_html",
    "hypervisor_text",
    "info_html",
    "info_text",
    "facts_html",
    "facts_text",
    "snapshot_html",
    "snapshot_text",
    # what QEMU versions can do
    "capabilities_html",
    "capabilities_text",
    "capability_matrix",
    "CapabilityMatrix",
    "option_features",
    "matrix_html",
    "matrix_text",
    "matrix_svg",
    # charts (matplotlib) and DataFrames (pandas), imported when used
    "Chart",
    "migration_chart",
    "durations_chart",
    "matrix_chart",
    "migrations_dataframe",
    "lab_dataframe",
    # the interactive explorer (ipywidgets), imported when used
    "explore",
    "explorer_view",
    "ExplorerView",
    # notebook helpers
    "wait_for_facts",
    "console_tail",
    "live_argv",
    "option_values",
    "example_file",
    "example_files",
    # IPython
    "FORMATTERS",
    "register",
    "load_ipython_extension",
]

# --------------------------------------------------------------------------- IPython

#: ``(module, class, HTML renderer, text renderer)`` for every class IPython should draw.
#: By name, so that registering imports none of these modules; a subclass inherits
#: its base's renderer. Capability matrices, display's own class, carry ``_repr_html_``.
FORMATTERS: Final[
    tuple[tuple[str, str, Callable[[Any], str], Callable[[Any], str] | None], ...]
] = (
    ("kvmlab.spec.instance", "Instance", instance_html, instance_text),
    ("kvmlab.runtime.saved", "KVMRuntime", runtime_html, runtime_text),
    ("kvmlab.runtime.invariants", "InvariantReport", report_html, report_text),
    ("kvmlab.golden.diff", "RuntimeDiff", diff_html, diff_text),
    ("kvmlab.golden.diff", "TreeDiff", diff_html, diff_text),
    ("kvmlab.lifecycle.hypervisor", "Hypervisor", hypervisor_html, hypervisor_text),
    ("kvmlab.channels.console", "GuestFacts", facts_html, None),
    ("kvmlab.lifecycle.snapshots.record", "SnapshotInfo", snapshot_html, snapshot_text),
)


def _pretty(render: Callable[[Any], str]) -> Callable[[Any, Any, bool], None]:
    """An IPython pretty-printer (``printer.text``) from a text renderer."""

    def print_pretty(obj: Any, printer: Any, cycle: bool) -> None:
        printer.text(f"{type(obj).__name__}(...)" if cycle else render(obj))

    return print_pretty


def register(shell: Any) -> None:
    """Make ``shell`` (an IPython ``InteractiveShell``) draw kvmlab's objects.

    Called by ``import kvmlab`` when IPython is running; calling it again is harmless.

    :param shell: what ``IPython.get_ipython()`` returns.
    """
    formatters = shell.display_formatter.formatters
    for module, name, to_html, to_text in FORMATTERS:
        formatters["text/html"].for_type_by_name(module, name, to_html)
        if to_text is not None:
            formatters["text/plain"].for_type_by_name(module, name, _pretty(to_text))


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext kvmlab.display``: :func:`register` for a shell kvmlab was imported before."""
    register(ipython)
