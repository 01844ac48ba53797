"""Drive the explorer in a running JupyterLab, in headless Chromium, as a user would.

The rendered notebooks (``tools/check_notebooks_browser.py``) are static: no kernel answers
their widgets. This starts a real JupyterLab on a copy of ``notebooks/06-explorer.ipynb`` in
a fresh temporary folder (its own token, a free port, its own settings), opens the notebook
in Debian's headless Chromium through Selenium and ``/usr/bin/chromedriver`` (from the file
browser, once its kernel is connected), runs every cell from the *Run* menu (*Run All
Cells*), then, in the explorer's form:

1. reads the ``-m`` row of the runtime table: the starting instance's 512 MiB;
2. types 1536 into *memory (MiB)* and waits for the ``-m`` row and the diff to show 1536;
3. types 8 and waits for the refusal to be shown in place (``memory`` and ``(got 8)``),
   the runtime table still showing 1536.

Every wait has a deadline. On a failure it says which step and what the page showed, saves
a screenshot in ``build/jupyterlab-explorer-failure.png`` and the server's log beside it::

    python tools/check_explorer_jupyterlab.py --screenshots build/notebook-screenshots

The server and its kernel are shut down through Jupyter's own API at the end, and the
temporary folder removed. Exit status: 0 when the explorer answered, 1 when it did not, 2
without a browser or JupyterLab.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from check_notebooks_browser import CHROMEDRIVER, CHROMIUM, WIDTH, browser

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "06-explorer.ipynb"
FAILURE_SHOT = ROOT / "build" / "jupyterlab-explorer-failure.png"
#: Seconds for each wait: a cold JupyterLab on a busy two-core machine takes ~10 s to serve,
#: a first kernel a few more.
SERVER_DEADLINE = 120.0
PAGE_DEADLINE = 120.0
UPDATE_DEADLINE = 60.0
RUN_ATTEMPTS = 3
START_MEMORY, NEW_MEMORY, BAD_MEMORY = "512", "1536", "8"

T = TypeVar("T")


class StepFailedError(Exception):
    """One step did not happen in time; the message says which and what was seen."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(what: str, probe: Callable[[], T | None], deadline: float) -> T:
    """Call ``probe`` until it returns something other than None (or False); fail after
    ``deadline`` seconds, naming ``what`` was awaited and the last thing the probe raised."""
    end = time.monotonic() + deadline
    last = ""
    while time.monotonic() < end:
        try:
            result = probe()
        except StepFailedError:
            raise
        except Exception as err:  # a page mid-render raises many things
            last = f" (last: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
            result = None
        if result is not None and result is not False:
            return result
        time.sleep(0.25)
    raise StepFailedError(f"{what}: not within {deadline:.0f} s{last}")


# --------------------------------------------------------------------------- the server


class Lab:
    """A JupyterLab server of our own, in a temporary folder, shut down at the end."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.token = secrets.token_hex(16)
        self.port = free_port()
        self.root = work / "notebooks"
        self.root.mkdir()
        shutil.copy2(NOTEBOOK, self.root / NOTEBOOK.name)
        self.log = work / "jupyter.log"
        config = work / "config"
        (config / "labconfig").mkdir(parents=True)
        # No "official Jupyter news?" toast over the page.
        disabled = {"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}}
        (config / "labconfig" / "page_config.json").write_text(json.dumps(disabled))
        env = {
            **os.environ,
            "JUPYTER_CONFIG_DIR": str(config),
            "JUPYTER_RUNTIME_DIR": str(work / "runtime"),
            "JUPYTER_DATA_DIR": str(work / "data"),
            "IPYTHONDIR": str(work / "ipython"),
        }
        command = [
            sys.executable,
            "-m",
            "jupyter",
            "lab",
            "--allow-root",
            "--no-browser",
            "--ip=127.0.0.1",
            f"--port={self.port}",
            "--ServerApp.port_retries=0",
            f"--ServerApp.token={self.token}",
            f"--ServerApp.root_dir={self.root}",
            "--ServerApp.terminals_enabled=False",
            f"--LabApp.user_settings_dir={work / 'settings'}",
            f"--LabApp.workspaces_dir={work / 'workspaces'}",
        ]
        with self.log.open("wb") as log:
            # A session of its own, so that what it leaves behind can be ended as a group.
            self.process = subprocess.Popen(
                command,
                cwd=self.root,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def url(self, path: str) -> str:
        # "localhost": the browser resolves no other name (check_notebooks_browser.FLAGS).
        return f"http://localhost:{self.port}{path}"

    def api(self, path: str, method: str = "GET") -> int:
        request = urllib.request.Request(
            self.url(path), method=method, headers={"Authorization": f"token {self.token}"}
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)

    def wait_ready(self) -> None:
        def ready() -> bool | None:
            if self.process.poll() is not None:
                raise StepFailedError(f"jupyter lab exited with {self.process.returncode}")
            try:
                return self.api("/api/status") == 200 or None
            except (urllib.error.URLError, OSError):
                return None

        wait_for("JupyterLab answering /api/status", ready, SERVER_DEADLINE)

    def kernel_connected(self) -> bool:
        """The server holds one kernel, idle, with the page's websocket connected to it."""
        request = urllib.request.Request(
            self.url("/api/kernels"), headers={"Authorization": f"token {self.token}"}
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            kernels = json.loads(response.read())
        return any(
            kernel.get("connections", 0) >= 1 and kernel.get("execution_state") == "idle"
            for kernel in kernels
        )

    def log_tail(self, lines: int = 15) -> str:
        text = self.log.read_text(encoding="utf-8", errors="replace").splitlines()
        return "\n".join(f"      | {line}" for line in text[-lines:])

    def stop(self) -> None:
        """Shut the server and its kernels down through Jupyter's API; then end its group."""
        if self.process.poll() is None:
            try:
                self.api("/api/shutdown", method="POST")
                self.process.wait(timeout=20)
            except (urllib.error.URLError, OSError, subprocess.TimeoutExpired):
                pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # the session started above, by id
        self.process.wait()


# --------------------------------------------------------------------------- the page

#: The value column of the ``-m`` row of the explorer's runtime table, or null.
MEMORY_ROW_JS = """
const table = document.querySelector('.kvmlab-explorer-runtime');
if (!table) return null;
for (const row of table.querySelectorAll('tr')) {
  const cells = row.querySelectorAll('td');
  if (cells.length > 1 && cells[0].textContent.trim() === arguments[0])
    return cells[1].textContent.trim();
}
return null;
"""


def _text(driver: Any, selector: str) -> str:
    return str(
        driver.execute_script(
            "const e = document.querySelector(arguments[0]); return e ? e.innerText : '';",
            selector,
        )
    )


def open_notebook(driver: Any) -> bool:
    """Double-click the notebook in JupyterLab's file browser."""
    from selenium.webdriver.common.action_chains import ActionChains  # noqa: PLC0415
    from selenium.webdriver.common.by import By  # noqa: PLC0415

    for item in driver.find_elements(By.CSS_SELECTOR, ".jp-DirListing-item"):
        if NOTEBOOK.name in item.text:
            ActionChains(driver).double_click(item).perform()
            return True
    return False


def run_all_cells(driver: Any) -> None:
    """*Run > Run All Cells*, as a user would: the menu, then its item."""
    from selenium.webdriver.common.by import By  # noqa: PLC0415

    def open_menu() -> bool:
        driver.execute_script(ACCEPT_KERNEL_JS)
        for item in driver.find_elements(By.CSS_SELECTOR, ".lm-MenuBar-item"):
            if item.text.strip() == "Run":
                item.click()
                return True
        return False

    def click_item() -> bool:
        for item in driver.find_elements(By.CSS_SELECTOR, ".lm-Menu-item"):
            if item.text.strip().startswith("Run All Cells"):
                item.click()
                return True
        return False

    wait_for("the Run menu", open_menu, PAGE_DEADLINE)
    wait_for("Run All Cells in the Run menu", click_item, PAGE_DEADLINE)


#: Should JupyterLab ask which kernel to start: the default choice, the notebook's python3.
ACCEPT_KERNEL_JS = """
for (const dialog of document.querySelectorAll('.jp-Dialog')) {
  if (!dialog.textContent.includes('Select Kernel')) continue;
  const accept = dialog.querySelector('.jp-Dialog-button.jp-mod-accept');
  if (accept) { accept.click(); return true; }
}
return false;
"""


def kernel_idle(driver: Any) -> bool:
    """The notebook's kernel has started and waits for work (its kernel chosen if asked)."""
    driver.execute_script(ACCEPT_KERNEL_JS)
    status = driver.execute_script(
        "const e = document.querySelector('.jp-Notebook-ExecutionIndicator');"
        "return e ? e.getAttribute('data-status') : null;"
    )
    # The status bar says "Python 3 (ipykernel) | Idle" once the session has its kernel.
    return status == "idle" and "| Idle" in _text(driver, ".jp-StatusBar-Widget")


def memory_row(driver: Any, *, accept_kernel: bool = False) -> str | None:
    """The ``-m`` value in the explorer's runtime table, or None while there is none."""
    if accept_kernel:
        driver.execute_script(ACCEPT_KERNEL_JS)
    value = driver.execute_script(MEMORY_ROW_JS, "-m")
    return None if value is None else str(value)


def refusal(driver: Any) -> str | None:
    """The explorer's error line, once it names the memory field and the refused value."""
    text = _text(driver, ".kvmlab-explorer-error")
    return text if "memory" in text and f"(got {BAD_MEMORY})" in text else None


def cells_started(driver: Any) -> bool:
    """A code cell's prompt shows ``[*]`` or a number: the kernel took the cells."""
    driver.execute_script(ACCEPT_KERNEL_JS)
    return bool(
        driver.execute_script(
            "return [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')]"
            ".some(e => /\\[[0-9*]+\\]/.test(e.textContent));"
        )
    )


def type_memory(driver: Any, value: str) -> None:
    """Replace the memory field's text and press Enter (the widget sends it then)."""
    from selenium.webdriver.common.by import By  # noqa: PLC0415
    from selenium.webdriver.common.keys import Keys  # noqa: PLC0415

    field = driver.find_element(By.CSS_SELECTOR, ".kvmlab-explorer-memory input")
    field.click()
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(value, Keys.ENTER)


def drive(driver: Any, lab: Lab) -> list[str]:
    """Every step of the check; returns what was seen, one line a step."""
    seen: list[str] = []
    # JupyterLab first, then the notebook from its file browser, as a user opens it. Run All
    # waits until the server sees the page connected to an idle kernel: given earlier,
    # JupyterLab takes the notebook for one without a kernel and asks in a "Select Kernel"
    # dialog (should it still ask, its default choice, the notebook's python3, is taken).
    driver.get(lab.url(f"/lab?token={lab.token}"))
    wait_for(
        "JupyterLab's launcher offering the Python 3 kernel",
        lambda: "Python 3" in _text(driver, ".jp-Launcher") or None,
        PAGE_DEADLINE,
    )
    wait_for("the notebook opened from the file browser", lambda: open_notebook(driver), 30.0)
    wait_for(
        "the notebook open in JupyterLab",
        lambda: _text(driver, ".jp-NotebookPanel .jp-Notebook") or None,
        PAGE_DEADLINE,
    )
    wait_for("the notebook's kernel connected", lab.kernel_connected, PAGE_DEADLINE)
    wait_for("the notebook's kernel idle", lambda: kernel_idle(driver), PAGE_DEADLINE)
    # A Run All given while JupyterLab still connects to the new kernel can be dropped without
    # a word (the prompts stay empty): give it again, a few times, until a cell has started.
    for attempt in range(1, RUN_ATTEMPTS + 1):
        run_all_cells(driver)
        try:
            wait_for("a cell started by Run All Cells", lambda: cells_started(driver), 20.0)
            break
        except StepFailedError:
            if attempt == RUN_ATTEMPTS:
                raise
    start = wait_for(
        "the explorer's runtime table with a -m row",
        lambda: memory_row(driver, accept_kernel=True),
        PAGE_DEADLINE,
    )
    if start != START_MEMORY:
        raise StepFailedError(f"-m shows {start!r} at the start, expected {START_MEMORY!r}")
    seen.append(f"-m {start} at the start")

    type_memory(driver, NEW_MEMORY)
    wait_for(
        f"-m showing {NEW_MEMORY} after typing it into memory (MiB)",
        lambda: memory_row(driver) == NEW_MEMORY,
        UPDATE_DEADLINE,
    )
    wait_for(
        f"the diff naming {NEW_MEMORY}",
        lambda: NEW_MEMORY in _text(driver, ".kvmlab-explorer-diff"),
        UPDATE_DEADLINE,
    )
    seen.append(f"-m {NEW_MEMORY} and the diff 512 -> {NEW_MEMORY} after typing {NEW_MEMORY}")

    type_memory(driver, BAD_MEMORY)
    error = wait_for(
        "the refusal of 8 MiB shown in place",
        lambda: refusal(driver),
        UPDATE_DEADLINE,
    )
    kept = memory_row(driver)
    if kept != NEW_MEMORY:
        raise StepFailedError(f"after a refused value -m shows {kept!r}, expected {NEW_MEMORY!r}")
    seen.append(f"refused in place: {error.strip().splitlines()[0]}")
    return seen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--screenshots", type=Path, metavar="DIR", help="save the explorer in JupyterLab there"
    )
    args = parser.parse_args(argv)
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        print(f"needs {CHROMIUM} and {CHROMEDRIVER} (apt-get install chromium chromium-driver)")
        return 2
    if shutil.which("jupyter-lab", path=str(Path(sys.executable).parent)) is None:
        print("needs JupyterLab beside this Python: pip install 'kvmlab[notebooks]'")
        return 2
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="kvmlab-jupyterlab-"))
    lab = Lab(work)
    driver: Any = None
    try:
        lab.wait_ready()
        driver = browser(work / "profile")
        driver.set_window_size(WIDTH, 1000)
        seen = drive(driver, lab)
        if args.screenshots:
            driver.execute_script(
                "document.querySelector('.kvmlab-explorer').scrollIntoView({block: 'start'});"
            )
            args.screenshots.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(args.screenshots / "06-explorer-jupyterlab.png"))
    except Exception as err:  # a WebDriver error fails the check too
        message = str(err) if isinstance(err, StepFailedError) else f"{type(err).__name__}: {err}"
        print(f"FAIL  explorer in JupyterLab: {message.strip().splitlines()[0]}")
        if driver is not None:
            FAILURE_SHOT.parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(FAILURE_SHOT))
            print(f"      screenshot: {FAILURE_SHOT.relative_to(ROOT)}")
        shutil.copy2(lab.log, FAILURE_SHOT.with_suffix(".log"))
        print(f"      the server's log (all of it in {FAILURE_SHOT.with_suffix('.log').name}):")
        print(lab.log_tail())
        return 1
    finally:
        if driver is not None:
            driver.quit()
        lab.stop()
        shutil.rmtree(work, ignore_errors=True)
    for line in seen:
        print(f"      {line}")
    print(f"PASS  explorer in JupyterLab, {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
