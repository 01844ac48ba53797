"""Run every notebook top to bottom on a fresh kernel, as a new user would; fail on any error.

The notebooks are stored without outputs, so nothing else proves that they still run against
the current kvmlab. This executes each one with nbclient on a fresh ``python3`` kernel, never
writes the outputs back into the stored file, and prints one line per notebook with its time
(as each ends: the notebooks run side by side, one per core unless ``--jobs`` says).
Each runs from a copy in a fresh temporary folder outside the repository, as a user's copy of
an installed kvmlab would: a notebook that only works inside the source tree fails here::

    python tools/run_notebooks.py                     # all of notebooks/*.ipynb
    python tools/run_notebooks.py notebooks/03-real-guest.ipynb --without-qemu
    python tools/run_notebooks.py --keep-outputs /tmp/executed   # to look at them
    python tools/run_notebooks.py --jobs 1            # one at a time

A notebook fails when a cell raises, or when any output mentions an event loop that is
"already running" (kvmlab's QMP calls must work inside Jupyter's loop, and a library that
catches and prints that error would otherwise go unnoticed).

``--without-qemu`` hides QEMU from ``PATH`` for the kernels, to check that the real-guest
notebook skips cleanly on a machine without it. Exit status: 0 when every notebook passed,
1 otherwise, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
#: Per cell: the real guest's first boot under TCG, plus a possible accelerator probe and a
#: first guest build (a ~30 MB download), fit with room to spare.
DEFAULT_TIMEOUT = 300
QEMU_NAMES = ("qemu-system-x86_64", "kvm")
SUSPICIOUS = ("event loop is already running",)
#: The prefix of the state directories notebooks 2 and 3 create (and remove when they pass).
STATE_PREFIX = "kvmlab-notebook-"


def path_without_qemu(path: str) -> str:
    """``PATH`` minus every directory holding a QEMU binary (so ``find_qemu()`` finds none)."""
    kept = [
        entry
        for entry in path.split(os.pathsep)
        if entry and not any((Path(entry) / name).exists() for name in QEMU_NAMES)
    ]
    return os.pathsep.join(kept)


def sweep(folder: Path) -> list[str]:
    """Stop the VMs a failed notebook left running, and remove its state directories.

    A notebook that fails half-way never reaches its clean-up cell, and the fake kvm or QEMU
    it started are daemons that outlive the kernel. ``folder`` is the notebook's own
    temporary folder (its kernel's ``TMPDIR``): only processes whose command line names a
    pidfile in a state directory there are signalled.
    """
    swept: list[str] = []
    for state in sorted(folder.glob(f"{STATE_PREFIX}*")):
        for pidfile in sorted((state / "pid").glob("*")):
            try:
                pid = int(pidfile.read_text().strip())
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except (OSError, ValueError):
                continue
            if str(pidfile).encode() in cmdline:
                os.kill(pid, signal.SIGKILL)
                swept.append(f"{pidfile.name} (pid {pid})")
        shutil.rmtree(state, ignore_errors=True)
    return swept


def _outputs_text(nb: Any) -> str:
    parts: list[str] = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            parts.append(str(output.get("text", "")))
            parts.extend(str(value) for value in output.get("data", {}).values())
            parts.append(str(output.get("evalue", "")))
    return "\n".join(parts)


def _first_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:200] if lines else "(no message)"


def run_one(path: Path, timeout: int, keep: Path | None) -> tuple[bool, float, str]:
    """Execute one notebook from a copy outside the repository; (passed, seconds, a note).

    The copy's folder is also the kernel's ``TMPDIR``: the state directories the notebook
    makes and kvmlab's own temporary files land there, so notebooks run side by side do
    not see each other's (notebook 2 counts the ``kvmlab-start-*`` folders a failed start
    leaves), and what a failed one left running is found and stopped.
    """
    nb = nbformat.read(path, as_version=4)
    # A short name: the notebooks' unix sockets live below it, and those take 107 bytes.
    with tempfile.TemporaryDirectory(prefix="nb-") as name:
        folder = Path(name)
        shutil.copy2(path, folder / path.name)
        outer = os.environ.get("TMPDIR")
        os.environ["TMPDIR"] = str(folder)  # the kernel started now inherits it
        try:
            passed, elapsed, note = _execute(nb, path, folder, timeout, keep)
        finally:
            if outer is None:
                del os.environ["TMPDIR"]
            else:
                os.environ["TMPDIR"] = outer
        leftovers = sweep(folder)
        if leftovers:
            note += f"; killed what it left running: {', '.join(leftovers)}"
        return passed, elapsed, note


def _execute(
    nb: Any, path: Path, folder: Path, timeout: int, keep: Path | None
) -> tuple[bool, float, str]:
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(folder)}},
        # The kernel's own log (not the cells' output) warns on every start that local TCP
        # is unencrypted; keep its errors only, so the summary stays one line a notebook.
        extra_arguments=["--IPKernelApp.log_level=ERROR"],
    )
    started = time.monotonic()
    note = f"{len(nb.cells)} cells"
    passed = True
    try:
        client.execute()
    except CellTimeoutError as err:
        passed, note = False, f"a cell ran longer than {timeout} s: {_first_line(str(err))}"
    except CellExecutionError as err:
        passed, note = False, f"{err.ename}: {_first_line(err.evalue or str(err))}"
    except DeadKernelError as err:
        passed, note = False, f"the kernel died: {err}"
    elapsed = time.monotonic() - started
    if passed:
        text = _outputs_text(nb)
        found = [marker for marker in SUSPICIOUS if marker in text]
        if found:
            passed, note = False, f"an output says {found[0]!r}"
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, keep / path.name)
    return passed, elapsed, note


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: notebooks/*.ipynb")
    parser.add_argument(
        "--timeout", type=int, default=DEFAULT_TIMEOUT, help="seconds per cell (default 300)"
    )
    parser.add_argument(
        "--without-qemu", action="store_true", help="hide QEMU from PATH for the kernels"
    )
    parser.add_argument(
        "--keep-outputs", type=Path, metavar="DIR", help="write the executed notebooks there"
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=os.cpu_count() or 1,
        metavar="N",
        help="notebooks run at once (default: one per core)",
    )
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    paths = args.notebooks or sorted(NOTEBOOKS.glob("*.ipynb"))
    missing = [str(path) for path in paths if not path.is_file()]
    if missing or not paths:
        print(f"no such notebook: {', '.join(missing) or NOTEBOOKS}", file=sys.stderr)
        return 2
    if args.without_qemu:
        # The kernels inherit this process's environment.
        os.environ["PATH"] = path_without_qemu(os.environ.get("PATH", ""))
        print(f"QEMU hidden from PATH (qemu-system-x86_64: {shutil.which(QEMU_NAMES[0])})")
    failed = 0
    total = time.monotonic()
    # Worker processes, not threads: each sets its own TMPDIR for its kernels. A notebook
    # waits on its kernel, its QEMU guests and their consoles for much of its time: on 2
    # cores the seven take 12 s side by side, 19 s one after the other.
    with ProcessPoolExecutor(max_workers=min(args.jobs, len(paths))) as pool:
        futures = {
            pool.submit(run_one, path.resolve(), args.timeout, args.keep_outputs): path
            for path in paths
        }
        for future in as_completed(futures):
            path = futures[future]
            passed, elapsed, note = future.result()
            failed += not passed
            resolved = path.resolve()
            shown = resolved.relative_to(ROOT) if resolved.is_relative_to(ROOT) else path
            print(f"{'PASS' if passed else 'FAIL'}  {shown}  {elapsed:6.1f} s  {note}", flush=True)
    verdict = "all passed" if not failed else f"{failed} failed"
    print(f"{len(paths)} notebooks, {verdict}, {time.monotonic() - total:.1f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
