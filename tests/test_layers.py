"""The library's layers import downwards only: models at the bottom, the CLI on top, no circles."""

from __future__ import annotations

import ast
from pathlib import Path

import workbench

ROOT = Path(workbench.__file__).parent

# What each layer may import from the workbench (besides itself). Leaves: config and cache.
# Training (engine), inference and studies each have a room of their own above models, data and viz.
LOWER = {"config", "cache", "precision", "fast_path", "models", "data", "viz", "interop", "build"}
ALLOWED = {
    "config": set(),
    "cache": set(),
    "precision": set(),
    "fast_path": set(),
    "models": {"config"},
    "data": {"config", "cache"},
    "viz": {"config", "precision", "models", "data"},
    "interop": {"config", "cache", "models"},
    "build": {"config", "models", "data"},
    "engine": LOWER,
    "inference": LOWER | {"engine"},  # evaluation's inference (predict_probs) is the predictor's
    "studies": LOWER | {"engine", "inference"},
    "demo": LOWER | {"engine", "inference"},
    "cli": LOWER | {"engine", "inference", "studies", "demo"},
}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "workbench" and len(parts) > 1 else None


def _imports(path: Path) -> set[str]:
    """Every workbench module ``path`` imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names if node.module == "workbench")
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.startswith("workbench.")}


def test_every_layer_imports_only_the_layers_below_it():
    offences = []
    for path in sorted(ROOT.rglob("*.py")):
        relative = path.relative_to(ROOT.parent).with_suffix("")
        layer = _layer(".".join(relative.parts))
        if layer is None or layer not in ALLOWED:  # the package's __init__ / __main__ sit on top
            continue
        for module in _imports(path):
            target = _layer(module)
            if target not in (layer, None, "__version__") and target not in ALLOWED[layer]:
                offences.append(f"{relative} imports {module}")
    assert not offences, "\n".join(offences)


def test_the_layer_table_knows_every_module():
    layers = {_layer(".".join(p.relative_to(ROOT.parent).with_suffix("").parts)) for p in ROOT.rglob("*.py")}
    assert layers - {"__init__", "__main__", None} <= set(ALLOWED)


def test_the_library_never_imports_the_app_or_gradio():
    """The app sits on the library (``apps/``); the library runs where Gradio is not installed."""
    offences = []
    for path in sorted(ROOT.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            names += [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            offences += [
                f"{path.relative_to(ROOT.parent)} imports {name}"
                for name in names
                if name.split(".")[0] in ("apps", "gradio", "gradio_client")
            ]
    assert not offences, "\n".join(offences)
