"""Files in a release's own layout, written from a workbench model: stand-ins for released checkpoints.

A notebook or a test that must run offline writes the file a release would be (the same key names,
the same container) and loads it back through ``load_pretrained`` like the real download.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from workbench.interop.load import export_state

# What each release wraps its tensors in: mmcv-style {"meta", "state_dict"}, or HLG's {"model"}.
CONTAINERS = {
    "gpvit": "state_dict",
    "setr_official": "state_dict",
    "mmseg_setr": "state_dict",
    "hlg": "model",
}


def save_release_file(model: nn.Module, format: str, path: str | Path) -> Path:
    """Write ``model``'s tensors as a release of ``format`` would hold them (``export_state``'s key
    names in the release's container) to ``path`` (a .pth); returns the path."""
    if format not in CONTAINERS:
        raise ValueError(f"format must be one of {sorted(CONTAINERS)}, got {format!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = export_state(model, format)
    key = CONTAINERS[format]
    torch.save(
        {"meta": {"written_by": "workbench stand-in"}, key: state} if key == "state_dict" else {key: state},
        path,
    )
    return path
