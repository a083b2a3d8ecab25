"""Where the workbench keeps what it downloads or generates once (demo set, demo model, checkpoints)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$WORKBENCH_CACHE``, else ``~/.cache/workbench``."""
    return Path(os.environ.get("WORKBENCH_CACHE", Path.home() / ".cache" / "workbench"))
