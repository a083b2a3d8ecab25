"""What the app's tests share: a tiny checkpoint, a free port on 127.0.0.1, the app serving on it (on a
checkpoint or a tiny timm ViT)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from apps.handlers import Workbench
from apps.layout import build_app
from apps.serve import free_port, launch
from apps.settings import Settings


@contextmanager
def serving(
    checkpoint: Path | str,
    concurrency: int = 2,
    model: str = "",
    timm_kwargs: dict | None = None,
    **settings,
) -> Iterator[tuple[str, Workbench]]:
    """The app on ``checkpoint`` at a free 127.0.0.1 port (fp32, so labels match a plain Predictor);
    ``model="timm:NAME"``: a timm ViT, ``checkpoint`` its weights file ("": random) and ``timm_kwargs``."""
    settings = Settings(**{"precision": "fp32", **settings})
    workbench = Workbench(settings, str(checkpoint), model, timm_options=timm_kwargs)
    app = build_app(workbench)
    url = launch(app, "127.0.0.1", free_port(), concurrency)
    try:
        yield url, workbench
    finally:
        app.close()
