"""The notebooks run top to bottom with tiny parameters, are committed without outputs, and
``make lab`` serves them on 127.0.0.1.

Each notebook opens with a Markdown statement and a ``parameters``-tagged cell; the cell after it reads
``WORKBENCH_NB_PARAMETERS`` (a JSON object), which this test sets for the kernel it starts, so the real
settings stay the notebook's defaults. Widget cells build their explorers but do not display them
(``INTERACTIVE: False``), and every cell has a short timeout (DESIGN.md: nbclient #312).
"""

from __future__ import annotations

import ast
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
CELL_TIMEOUT = 60  # seconds; the slowest tiny cell takes a few
ANSI = re.compile(r"\x1b\[[0-9;]*m")

# Tiny settings for each notebook: small models, untrained, few images and steps. ``{tmp}`` becomes
# the test's temporary folder.
TINY: dict[str, dict] = {
    "01_quickstart": {
        "MODELS": "gpvit_l1",
        "TINY_BUILDS": True,
        "BUILD_SIZE": 64,
        "CONFIG": "tiny_gpvit",
        "TRAINED": False,
        "DEMO_IMAGES": 1,
    },
    "02_train": {
        "CONFIG": "tiny_gpvit",
        "ITERS": 4,
        "EVAL_INTERVAL": 2,
        "PLOT_EVERY": 2,
        "WORK_DIR": "{tmp}/run",
        "WORST": 2,
    },
    "03_attention_setr": {
        "CONFIG": "tiny_setr",
        "TRAINED": False,
        "IMAGE_INDEX": 0,
        "DISTANCE_IMAGES": 2,
        "INTERACTIVE": False,
    },
    "04_groups_gpvit": {
        "CONFIG": "tiny_gpvit",
        "TRAINED": False,
        "IMAGE_INDEX": 0,
        "SOFT_GROUPS": 4,
        "PURITY_IMAGES": 2,
        "INTERACTIVE": False,
    },
    "05_hlg_local_global": {
        "CONFIG": "tiny_hlg",
        "TRAINED": False,
        "IMAGE_INDEX": 0,
        "DISTANCE_IMAGES": 2,
        "INTERACTIVE": False,
    },
    "06_attributions": {
        "CONFIG": "tiny_gpvit",
        "TRAINED": False,
        "IMAGE_INDEX": 0,
        "IG_STEPS": 4,
        "OCCLUSION_WINDOW": 32,
        "OCCLUSION_STRIDE": 32,
        "INTERACTIVE": False,
    },
    "07_compare_families": {
        "BENCH_SIZES": [32, 64],
        "BENCH_QUICK": True,
        "BENCH_REPEATS": 1,
        "CONFIGS": {"SETR": "tiny_setr", "GPViT": "tiny_gpvit", "HLG": "tiny_hlg"},
        "TRAINED": False,
        "SUMMARY_IMAGES": 2,
    },
    "08_pretrained_weights": {"TINY": True, "STANDIN_DIR": "{tmp}/standin"},
    "09_any_vit": {
        "TIMM_KWARGS": {"depth": 2, "embed_dim": 48, "num_heads": 2},
        "SIZE": 112,
        "HEAD_STEPS": 2,
        "HEAD_SIZE": 56,
        "INTERACTIVE": False,
    },
    "10_studies": {
        "MODELS": {"SETR": "tiny_setr", "GPViT": "tiny_gpvit", "HLG": "tiny_hlg"},
        "TRAINED": False,
        "COUNT": 4,
        "STEPS": 5,
        "PROBE_BATCH": 2,
        "PIXEL_MODEL": "SETR",
        "VIT_KWARGS": {"depth": 2, "embed_dim": 48, "num_heads": 2},
    },
}


def notebook_paths() -> list[Path]:
    return sorted(NOTEBOOKS.glob("*.ipynb"))


def parameter_names(notebook: nbformat.NotebookNode) -> set[str]:
    """The names the ``parameters``-tagged cell assigns."""
    (cell,) = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    return {
        target.id
        for node in ast.parse(cell.source).body
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Name)
    }


def test_every_notebook_is_numbered_opens_with_markdown_and_parameters_and_has_tiny_settings():
    names = [path.stem for path in notebook_paths()]
    assert names == sorted(TINY), f"notebooks {names} and their tiny settings {sorted(TINY)} differ"
    for path in notebook_paths():
        assert re.fullmatch(r"\d\d_[a-z0-9_]+", path.stem), path.name
        notebook = nbformat.read(path, as_version=4)
        nbformat.validate(notebook)
        first, second, third = notebook.cells[:3]
        assert first.cell_type == "markdown" and first.source.startswith("# "), path.name
        assert second.cell_type == "code" and second.metadata.get("tags") == ["parameters"], path.name
        assert "WORKBENCH_NB_PARAMETERS" in third.source, f"{path.name}: no override cell after parameters"
        unknown = set(TINY[path.stem]) - parameter_names(notebook)
        assert not unknown, f"{path.name}: the tiny settings name {sorted(unknown)}, not its parameters"


def test_committed_notebooks_carry_no_outputs_or_execution_counts():
    dirty = []
    for path in notebook_paths():
        notebook = nbformat.read(path, as_version=4)
        if "widgets" in notebook.metadata:
            dirty.append(f"{path.name}: widget state in the metadata")
        for index, cell in enumerate(notebook.cells):
            if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None):
                dirty.append(f"{path.name} cell {index}: outputs or an execution count")
    assert not dirty, "strip the outputs (JupyterLab: Edit > Clear Outputs of All Cells):\n" + "\n".join(
        dirty
    )


@pytest.mark.parametrize("name", sorted(TINY))
def test_notebook_runs_top_to_bottom_with_tiny_parameters(name, tmp_path, monkeypatch):
    parameters = json.loads(json.dumps(TINY[name]).replace("{tmp}", str(tmp_path)))
    monkeypatch.setenv("WORKBENCH_NB_PARAMETERS", json.dumps(parameters))  # the kernel inherits it
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    current = {"index": -1}
    client = NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOKS)}},
        on_cell_start=lambda cell, cell_index: current.update(index=cell_index),
    )
    start = time.perf_counter()
    try:
        client.execute()
    except Exception as error:  # CellExecutionError, CellTimeoutError, a dead kernel
        index = current["index"]
        source = notebook.cells[index].source.strip().splitlines()[0] if index >= 0 else ""
        message = ANSI.sub("", str(error))[-3000:]  # IPython colours its tracebacks
        pytest.fail(f"{name}.ipynb cell {index} ({source!r}) failed:\n{message}", pytrace=False)
    print(f"{name}: {time.perf_counter() - start:.1f} s with tiny parameters")
    errors = [
        o for c in notebook.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"
    ]
    assert not errors
    shown = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]
    assert any("image/png" in o.get("data", {}) for o in shown) or name == "08_pretrained_weights"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def lab_command(port: int) -> str:
    """The command ``make lab`` runs (from ``make -n``: the Makefile's own line, not a copy)."""
    printed = subprocess.run(
        ["make", "-n", "-s", "lab", f"LAB_PORT={port}"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.replace("\\\n", " ")
    (command,) = [line for line in printed.splitlines() if " lab " in f"{line} " and "jupyter" in line]
    return command


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.status, response.read()


def test_make_lab_serves_the_notebooks_on_localhost():
    port = _free_port()
    command = lab_command(port)
    assert "--ip=127.0.0.1" in command and "0.0.0.0" not in command
    process = subprocess.Popen(
        command,
        shell=True,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # the shell and jupyter in one process group, stopped together
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(process.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        pattern = re.compile(rf"http://127\.0\.0\.1:{port}/lab\?token=(\w+)")
        deadline = time.monotonic() + 120
        while not (found := pattern.search("".join(lines))) and time.monotonic() < deadline:
            assert process.poll() is None, "make lab exited:\n" + "".join(lines)[-3000:]
            time.sleep(0.5)
        assert found, "make lab printed no URL with a token:\n" + "".join(lines)[-3000:]
        base, token = f"http://127.0.0.1:{port}", found[1]
        status, page = _get(f"{base}/lab?token={token}")
        assert status == 200 and b"JupyterLab" in page
        _, listing = _get(f"{base}/api/contents?token={token}")
        listed = {item["name"] for item in json.loads(listing)["content"]}
        assert {path.name for path in notebook_paths()} <= listed
        _, specs = _get(f"{base}/api/kernelspecs?token={token}")
        specs = json.loads(specs)
        kernel = specs["kernelspecs"][specs["default"]]["spec"]["argv"][0]
        assert Path(kernel).parent.resolve() == (ROOT / ".venv" / "bin").resolve() or kernel == "python"
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
