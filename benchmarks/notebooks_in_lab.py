"""Every notebook run top to bottom in JupyterLab, as a researcher runs it: `make lab`'s server, Debian's
chromium driven by playwright, Run > Run All Cells, with the notebooks' default parameters.

    python benchmarks/notebooks_in_lab.py                     # all eight, defaults
    python benchmarks/notebooks_in_lab.py 03_attention_setr   # one
    python benchmarks/notebooks_in_lab.py --parameters '{"TRAINED": false}'

The notebooks are copied to a scratch folder first (their outputs never reach notebooks/). For each one
it prints the wall time from "Run All Cells" to the last cell's execution count, the cells that
raised, and the executed copy's path (saved by JupyterLab, outputs included). Exit status 1 if a cell
raised or a notebook did not finish within --timeout-s.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the repository root, for the tests' browser settings and lab command

from tests.test_app_browser import CHROMIUM, FLAGS  # noqa: E402
from tests.test_notebooks import lab_command  # noqa: E402


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for(url: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {seconds:.0f} s")


def _get_json(url: str, token: str) -> object:
    with urllib.request.urlopen(f"{url}?token={token}", timeout=30) as response:
        return json.load(response)


def _kernel_of(base: str, token: str, path: str) -> str:
    """The id of the kernel JupyterLab started for the notebook at ``path``."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        for session in _get_json(f"{base}/api/sessions", token):
            if session["path"] == path and session.get("kernel"):
                return session["kernel"]["id"]
        time.sleep(0.5)
    raise TimeoutError(f"no kernel for {path}")


def run_one(page, base: str, token: str, folder: Path, name: str, timeout_s: float) -> dict:
    """Open ``name`` in JupyterLab, Run All Cells, wait for every code cell's execution count, save."""
    path = folder / f"{name}.ipynb"
    page.goto(f"{base}/lab/tree/{name}.ipynb?reset&token={token}")  # reset: no earlier tabs reopened
    page.wait_for_selector(".jp-Notebook .jp-Cell", state="attached", timeout=120_000)
    page.wait_for_function(  # the kernel is up and idle
        "() => [...document.querySelectorAll('.jp-Notebook-ExecutionIndicator, .jp-StatusBar-TextItem')]"
        ".some(e => /Idle/.test(e.getAttribute('data-status') || e.textContent || ''))",
        timeout=120_000,
    )
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    start = time.perf_counter()
    page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
    kernel = _kernel_of(base, token, f"{name}.ipynb")
    deadline = time.monotonic() + timeout_s
    while True:  # the kernel idle, and the saved notebook executed to the end or stopped at an error
        time.sleep(1)
        if time.monotonic() > deadline:
            page.screenshot(path=f"{name}.timeout.png")  # what the page showed, beside the caller
            raise TimeoutError(f"{name} did not finish within {timeout_s:.0f} s")
        if _get_json(f"{base}/api/kernels/{kernel}", token)["execution_state"] != "idle":
            continue
        seconds = time.perf_counter() - start
        page.keyboard.press("Control+s")
        time.sleep(1.5)
        cells = [cell for cell in nbformat.read(path, as_version=4).cells if cell.cell_type == "code"]
        failed = any(output.output_type == "error" for cell in cells for output in cell.get("outputs", []))
        if failed or all(cell.execution_count is not None for cell in cells):
            break
    executed = nbformat.read(path, as_version=4)
    errors = [
        f"cell {index}: {output.get('ename')}: {output.get('evalue')}"
        for index, cell in enumerate(executed.cells)
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if output.output_type == "error"
    ]
    images = sum(
        "image/png" in output.get("data", {})
        for cell in executed.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
    )
    widgets = sum(
        "application/vnd.jupyter.widget-view+json" in output.get("data", {})
        for cell in executed.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
    )
    return {"name": name, "seconds": seconds, "errors": errors, "images": images, "widgets": widgets}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="notebook names without .ipynb (default: all)")
    parser.add_argument("--parameters", default="", help="WORKBENCH_NB_PARAMETERS for the kernels (JSON)")
    parser.add_argument("--timeout-s", type=float, default=1800, help="per notebook")
    parser.add_argument("--keep", type=Path, help="copy the executed notebooks here")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    folder = Path(tempfile.mkdtemp(prefix="notebooks-in-lab-"))
    for source in (ROOT / "notebooks").glob("*.ipynb"):
        shutil.copy(source, folder)
    names = args.names or sorted(path.stem for path in folder.glob("*.ipynb"))
    port, token = _free_port(), secrets.token_hex(16)
    command = lab_command(port).replace("--ServerApp.root_dir=notebooks", f"--ServerApp.root_dir={folder}")
    env = {**os.environ, "WORKBENCH_NB_PARAMETERS": args.parameters or "{}"}
    server = subprocess.Popen(
        f"{command} --IdentityProvider.token={token}",
        shell=True,
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    results = []
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_for(f"{base}/api/status?token={token}", 120)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            for name in names:
                try:
                    result = run_one(page, base, token, folder, name, args.timeout_s)
                except Exception as error:  # a timeout or a page that did not load
                    result = {"name": name, "seconds": float("nan"), "errors": [repr(error)[:300]]}
                results.append(result)
                print(json.dumps(result), flush=True)
                # Shut the notebook's kernel down before the next one (its memory, its threads).
                for session in _get_json(f"{base}/api/sessions", token):
                    kill = urllib.request.Request(
                        f"{base}/api/sessions/{session['id']}?token={token}", method="DELETE"
                    )
                    urllib.request.urlopen(kill, timeout=30).close()
            browser.close()
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        for name in names:
            shutil.copy(folder / f"{name}.ipynb", args.keep)
    shutil.rmtree(folder)
    print("\n| notebook | seconds | errors |\n|---|---:|---|")
    for result in results:
        print(f"| {result['name']} | {result['seconds']:.0f} | {'; '.join(result['errors']) or 'none'} |")
    return 1 if any(result["errors"] for result in results) else 0


if __name__ == "__main__":
    sys.exit(main())
