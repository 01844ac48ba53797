"""Look at executed notebooks as a user would: rendered by nbconvert, in headless Chromium.

``tools/run_notebooks.py --keep-outputs DIR`` proves that the notebooks run; this proves that
what they show can be read. Each executed notebook in DIR is rendered with nbconvert's ``lab``
template (the look of JupyterLab), loaded in Debian's headless Chromium at 1280 px through
Selenium and ``chromedriver``, and fails when:

- an output is wider than its column (the reader would have to scroll sideways);
- a picture (``<img>``, a top-level ``<svg>``) has no description (``alt``, ``<title>`` or
  ``aria-label``);
- a cell raised, or wrote to stderr;
- an absolute path in the temporary directory is shown (state directories belong to one run
  and say nothing to a reader).

``--screenshots DIR`` saves a full-page PNG of each notebook::

    python tools/run_notebooks.py --keep-outputs build/executed
    python tools/check_notebooks_browser.py build/executed --screenshots build/screenshots

Exit status: 0 when every notebook passed, 1 otherwise, 2 for bad arguments or no browser.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import nbformat

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WIDTH = 1280
#: Chromium flags: no sandbox as root, and nothing that reaches out to the network.
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    # The lab template loads require.js and MathJax from a CDN: fail those at once.
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE localhost",
)

#: Runs in the page; returns one message per problem.
CHECK_JS = r"""
const problems = [];
const tmp = arguments[0];
document.querySelectorAll('.jp-OutputArea-output').forEach((out, index) => {
  const cell = out.closest('.jp-Cell');
  const where = cell ? 'cell ' + [...document.querySelectorAll('.jp-Cell')].indexOf(cell) : '?';
  if (out.scrollWidth > out.clientWidth + 1) {
    problems.push(`${where}: output ${out.scrollWidth} px wide in a ${out.clientWidth} px column`);
  }
  out.querySelectorAll('img').forEach(img => {
    if (!(img.getAttribute('alt') || '').trim()) problems.push(`${where}: <img> without alt`);
  });
  out.querySelectorAll('svg').forEach(svg => {
    if (svg.parentElement.closest('svg')) return;
    const title = svg.querySelector(':scope > title');
    const label = svg.getAttribute('aria-label') || (title ? title.textContent : '');
    if (!label.trim()) problems.push(`${where}: <svg> without <title> or aria-label`);
  });
  const found = (out.innerText || '').match(new RegExp(tmp));
  if (found) problems.push(`${where}: shows a temporary path ${found[0]}`);
});
return problems;
"""


def temp_dir_pattern(project: Path = ROOT) -> str:
    """A directory made in the temporary folder (a JavaScript regular expression): a path
    goes on inside it, or its name ends in the eight random characters of ``mkdtemp``. A
    file such as ``/tmp/up`` in an example is not a state directory and passes, and neither
    does the project's own checkout when it sits there (the fake kvm in its virtualenv)."""
    temp = Path(tempfile.gettempdir())
    exempt = ""
    if project.is_relative_to(temp) and project != temp:
        exempt = rf"(?!{re.escape(str(project.relative_to(temp)))}/)"
    root = re.escape(str(temp).rstrip("/"))
    return rf"{root}/{exempt}(?:[^/\s,'\"<>]+/|[^/\s,'\"<>]*[-_.][a-z0-9_]{{8}}\b)\S*"


def notebook_problems(nb: Any) -> list[str]:
    """Errors and stderr in the executed notebook itself (not only in its rendering)."""
    problems: list[str] = []
    for index, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                problems.append(f"cell {index}: {output.get('ename')}: {output.get('evalue')}")
            elif output.get("output_type") == "stream" and output.get("name") == "stderr":
                text = str(output.get("text", "")).strip().splitlines()
                problems.append(f"cell {index}: stderr: {text[0] if text else ''}")
    return problems


def render(nb: Any, target: Path) -> Path:
    """The notebook as JupyterLab shows it (nbconvert, ``lab`` template)."""
    from nbconvert import HTMLExporter  # noqa: PLC0415 - only this tool needs nbconvert

    body, _ = HTMLExporter(template_name="lab").from_notebook_node(nb)
    target.write_text(body, encoding="utf-8")
    return target


def browser(profile: Path) -> Any:
    """Headless Chromium driven by Selenium, with a fresh profile directory."""
    from selenium import webdriver  # noqa: PLC0415
    from selenium.webdriver.chrome.service import Service  # noqa: PLC0415

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile}", f"--window-size={WIDTH},900"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))


def check_page(driver: Any, page: Path, screenshot: Path | None) -> list[str]:
    driver.set_window_size(WIDTH, 900)
    driver.get(page.as_uri())
    problems: list[str] = list(driver.execute_script(CHECK_JS, temp_dir_pattern()))
    if screenshot is not None:
        height = int(driver.execute_script("return document.documentElement.scrollHeight"))
        driver.set_window_size(WIDTH, min(max(height, 900), 16000))
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(screenshot))
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("executed", type=Path, help="a folder of executed notebooks, or one")
    parser.add_argument("--screenshots", type=Path, metavar="DIR", help="save a PNG of each")
    args = parser.parse_args(argv)
    paths = sorted(args.executed.glob("*.ipynb")) if args.executed.is_dir() else [args.executed]
    if not paths or not all(path.is_file() for path in paths):
        print(f"no executed notebook in {args.executed}", file=sys.stderr)
        return 2
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        print(f"needs {CHROMIUM} and {CHROMEDRIVER} (apt-get install chromium chromium-driver)")
        return 2
    failed = 0
    work = Path(tempfile.mkdtemp(prefix="kvmlab-browser-"))
    driver = browser(work / "profile")
    try:
        for path in paths:
            nb = nbformat.read(path, as_version=4)
            page = render(nb, work / f"{path.stem}.html")
            shot = args.screenshots / f"{path.stem}.png" if args.screenshots else None
            problems = notebook_problems(nb) + check_page(driver, page, shot)
            failed += bool(problems)
            print(f"{'FAIL' if problems else 'PASS'}  {path.name}", flush=True)
            for problem in problems:
                print(f"      {problem}")
    finally:
        driver.quit()
        shutil.rmtree(work, ignore_errors=True)
    print(f"{len(paths)} notebooks in Chromium at {WIDTH} px, {failed or 'none'} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
