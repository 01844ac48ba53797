"""The fake kvm imports nothing but the standard library and its own package.

It must start faster than QEMU, so pydantic, yaml, qemu.qmp, asyncio and the
rest of kvmlab (which pulls those in) are out. Checked twice, each check able
to fail where the other would not:

1. statically: every ``import``/``from`` in ``kvmlab/fake/**/*.py``, including
   those inside functions and ``TYPE_CHECKING`` blocks, names a standard
   library module or ``kvmlab.fake.*`` (catches an import on a rarely taken path);
2. at run time: a fresh interpreter that imports ``kvmlab.fake``, parses a
   full command line and loads the VM side (``kvmlab.fake.Machine``) has none
   of the heavy modules loaded, not even standard library ones such as
   ``asyncio`` (catches what the imports pull in), and still has not loaded
   ``json``, which the fake imports on first use.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import kvmlab.fake

FAKE_DIR = Path(kvmlab.fake.__file__).resolve().parent
SOURCE_ROOT = str(FAKE_DIR.parents[1])
#: Never in a fake process: slow to import, or kvmlab's own heavy modules.
FORBIDDEN = ("pydantic", "yaml", "qemu", "asyncio", "typing", "dataclasses", "pathlib")
#: Imported on first use only (a QMP command, a log line), never by argv parsing.
LAZY = ("json", "re")

#: A command line touching every option handler family: chardevs, monitors,
#: serial, netdevs and NICs of each kind, disks, machine, memory, CPUs.
ARGV = [
    "-name", "vm1,debug-threads=on", "-m", "512", "-smp", "2,sockets=1,cores=2,threads=1",
    "-machine", "pc,accel=tcg", "-cpu", "qemu64", "-uuid", "12345678-1234-1234-1234-123456789abc",
    "-daemonize", "-pidfile", "/tmp/x.pid", "-S", "-nodefaults", "-no-reboot",
    "-display", "none", "-boot", "order=c", "-drive", "file=/tmp/d,,1,if=virtio",
    "-chardev", "socket,id=mon0,path=/tmp/m,server=on,wait=off",
    "-mon", "chardev=mon0,mode=control",
    "-qmp", "unix:/tmp/q,server,nowait", "-monitor", "unix:/tmp/h,server=on,wait=off",
    "-serial", "unix:/tmp/s,server=on,wait=off,logfile=/tmp/s.log",
    "-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56",
    "-netdev", "tap,id=n1,script=no,downscript=no",
    "-device", "e1000,netdev=n1,mac=52:54:00:12:34:57",
    "-net", "nic,model=virtio,macaddr=52:54:00:12:34:58", "-net", "user",
    "-nic", "user,model=e1000,mac=52:54:00:12:34:59",
]  # fmt: skip


def imported_modules(path: Path, package: str = "kvmlab.fake") -> list[tuple[int, str]]:
    """``(line, module)`` for every import statement in a file, nested ones too.

    :param package: the package the file is in, which relative imports start from.
    """
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative, from a module of ``package``
                parts = package.split(".")
                base = ".".join(parts[: max(0, len(parts) + 1 - node.level)])
                found.append((node.lineno, f"{base}.{node.module}" if node.module else base))
            else:
                found.append((node.lineno, node.module or ""))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name | ast.Attribute)
            and (node.func.id if isinstance(node.func, ast.Name) else node.func.attr)
            in ("__import__", "import_module")
        ):
            found.append((node.lineno, "<dynamic import>"))
    return found


def allowed(module: str) -> bool:
    """A standard library module, or part of the fake itself."""
    if module == "kvmlab.fake" or module.startswith("kvmlab.fake."):
        return True
    return module.split(".", 1)[0] in sys.stdlib_module_names


def test_every_import_in_the_fake_is_stdlib_or_the_fake() -> None:
    files = sorted(FAKE_DIR.rglob("*.py"))
    assert FAKE_DIR / "__init__.py" in files and len(files) > 5
    bad = []
    count = 0
    for path in files:
        package = ".".join(["kvmlab", "fake", *path.relative_to(FAKE_DIR).parent.parts])
        for line, module in imported_modules(path, package):
            count += 1
            if not allowed(module):
                bad.append(f"{path.relative_to(FAKE_DIR)}:{line}: {module}")
    assert count > 30, "the import walker found too few imports to be working"
    assert bad == [], "the fake may import only the standard library and kvmlab.fake"


def test_the_walker_sees_nested_and_non_stdlib_imports(tmp_path: Path) -> None:
    source = (
        "import os\nfrom . import loop\nif TYPE_CHECKING:\n    from typing import Any\n"
        "def f():\n    from kvmlab.spec.capabilities import x\n    import pydantic\n"
        "    importlib.import_module('yaml')\n"
    )
    (tmp_path / "m.py").write_text(source, encoding="utf-8")
    modules = [module for _, module in imported_modules(tmp_path / "m.py")]
    assert sorted(modules) == sorted(
        ["os", "kvmlab.fake", "typing", "kvmlab.spec.capabilities", "pydantic", "<dynamic import>"]
    )
    assert [module for module in modules if not allowed(module)] == [
        "kvmlab.spec.capabilities",
        "pydantic",
        "<dynamic import>",
    ]


BARE = """
import sys
sys.stdout.write("\\n".join(sorted(sys.modules)))
"""

PROBE = """
import sys
import kvmlab.fake
from kvmlab.fake import Faults, load_profile, parse_argv
cfg = parse_argv(sys.argv[1:], load_profile())
assert len(cfg.nics) == 4 and cfg.daemonize, "the command line was not parsed"
Faults.from_env()
kvmlab.fake.Machine  # the VM side, which main() imports only to run a VM
sys.stdout.write("\\n".join(sorted(sys.modules)))
"""


def loaded_modules(code: str, *args: str) -> set[str]:
    """``sys.modules`` at the end of ``python -c code`` in a fresh interpreter."""
    result = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        check=False,
        cwd="/",
        env={"PYTHONPATH": SOURCE_ROOT, "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    return set(result.stdout.split())


def test_importing_and_parsing_loads_no_heavy_module() -> None:
    # Whatever the interpreter loads by itself (site, .pth files) is not the fake's doing.
    modules = loaded_modules(PROBE, *ARGV) - loaded_modules(BARE)
    # The probe really ran this tree's fake, both halves.
    assert {
        "kvmlab.fake.cmdline.parser",
        "kvmlab.fake.machine",
        "kvmlab.fake.monitor.qmp",
    } <= modules
    heavy = sorted(
        name
        for name in modules
        if name.split(".", 1)[0] in FORBIDDEN
        or (name.startswith("kvmlab.") and not name.startswith("kvmlab.fake"))
    )
    assert heavy == [], "the fake must stay stdlib-only and light"
    assert sorted(modules & set(LAZY)) == [], "json (and re) must be imported on first use only"
