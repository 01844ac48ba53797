"""In IPython, kvmlab's objects draw themselves with kvmlab.display's renderers.

The data classes carry no ``_repr_html_`` (that would make models import display, a
cycle); :func:`kvmlab.display.register` tells IPython's formatters instead, and importing
kvmlab inside a running shell calls it. Each check runs in a fresh interpreter, because
an IPython shell is a process-wide singleton.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

CHECK_EVERY_TYPE = """
from IPython.core.interactiveshell import InteractiveShell
shell = InteractiveShell.instance()
{import_kvmlab}
from kvmlab import display
from kvmlab.channels.console import GuestFacts
from kvmlab.golden.diff import diff_runtimes
from kvmlab.runtime.generator import generate_runtime
from kvmlab.runtime.invariants import check_runtime
from kvmlab.lifecycle.hypervisor import Hypervisor
from kvmlab.spec.instance import Instance, Nic

vm = Instance(name="vm1", nics=[Nic(mac="52:54:00:12:34:56", mode="user")])
runtime = generate_runtime(vm)
objects = {{
    "instance": vm,
    "runtime": runtime,
    "report": check_runtime(runtime, vm),
    "hypervisor": Hypervisor(STATE_DIR, backend="fake"),
    "facts": GuestFacts(mem_kb=1000, cpus=1, nics={{"eth0": "52:54:00:12:34:56"}}),
    "diff": diff_runtimes(runtime, generate_runtime(vm.model_copy(update={{"memory": 512}}))),
}}
for kind, obj in objects.items():
    data, _ = shell.display_formatter.format(obj)
    assert data.get("text/html") == getattr(display, kind + "_html")(obj), kind
    if kind != "facts":
        assert data["text/plain"] == getattr(display, kind + "_text")(obj), kind
print("drawn:", ", ".join(objects))
"""


def run_in_fresh_python(code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    source = f"STATE_DIR = {str(tmp_path / 'lab')!r}\n" + textwrap.dedent(code)
    return subprocess.run(
        [sys.executable, "-c", source], capture_output=True, text=True, timeout=60, check=False
    )


def test_importing_kvmlab_in_a_shell_registers_every_renderer(tmp_path: Path) -> None:
    result = run_in_fresh_python(CHECK_EVERY_TYPE.format(import_kvmlab="import kvmlab"), tmp_path)
    assert result.returncode == 0, result.stderr
    assert "drawn: instance, runtime, report, hypervisor, facts, diff" in result.stdout


def test_load_ext_registers_for_a_shell_started_after_kvmlab(tmp_path: Path) -> None:
    code = """
    import kvmlab  # before any shell: nothing to register with
    from IPython.core.interactiveshell import InteractiveShell
    from kvmlab.spec.instance import Instance
    shell = InteractiveShell.instance()
    vm = Instance(name="vm1")
    before, _ = shell.display_formatter.format(vm)
    assert "text/html" not in before, before
    shell.run_line_magic("load_ext", "kvmlab.display")
    after, _ = shell.display_formatter.format(vm)
    assert "<table" in after["text/html"]
    print("registered by load_ext")
    """
    result = run_in_fresh_python(code, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "registered by load_ext" in result.stdout


def test_without_a_shell_importing_kvmlab_loads_no_renderer(tmp_path: Path) -> None:
    code = """
    import sys
    import IPython  # importable, but no shell runs
    import kvmlab.spec.instance
    assert "kvmlab.display" not in sys.modules
    print("display not loaded")
    """
    result = run_in_fresh_python(code, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "display not loaded" in result.stdout
