"""``timm.create_model(name, pretrained=True)``: the released weights of ``name`` from the catalogue.

The models layer cannot import interop, so importing this package installs ``released_weights`` as
the registry's pretrained loader. Which release: a tag (``timm.create_model("name.tag", ...)``, a
catalogue name or its last part, e.g. ``in1k``), else the one trained for the model's default setting
(its ``pretrained_cfg["num_classes"]``: ImageNet-1k, ADE20K or Cityscapes). timm's
``pretrained_cfg_overlay=dict(file=PATH)`` (or ``url=``) loads that file instead. Every refusal is
one line that names the file and where to get it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from torch import nn

from workbench.interop.download import CATALOGUE, Release, download
from workbench.interop.load import LoadReport, load_pretrained

# The data set a default setting's class count stands for, as the catalogue names its releases.
SETTING_TAGS = {1000: "in1k", 150: "ade20k", 19: "cityscapes"}


def released_weights(
    cfg: dict[str, Any], tag: str | None = None, cache_dir: str | None = None
) -> Callable[[nn.Module], LoadReport]:
    """The weights ``pretrained=True`` asks for, as a function loading them into a built model.

    ``cfg``: the model's ``pretrained_cfg`` (with timm's overlay); ``tag``: timm's pretrained tag.
    The file is found (downloaded, hash-checked) before anything is built; a ValueError otherwise.
    """
    source = cfg.get("file") or cfg.get("url")
    if not source:
        key, release = release_for(cfg["architecture"], tag or SETTING_TAGS.get(cfg["num_classes"]))
        source = _fetch(cfg["architecture"], key, release, cache_dir)
    return lambda model: load_pretrained(model, source)


def release_for(name: str, tag: str | None) -> tuple[str, Release]:
    """The catalogue entry of model ``name`` named ``tag`` (or ending in ``_tag``)."""
    fitting = [key for key, release in CATALOGUE.items() if release.model == name]
    if not fitting:
        raise ValueError(
            f"{name}: pretrained=True: no weights are published for {name}; build it with pretrained=False, "
            "or pass weights of your own with pretrained_cfg_overlay=dict(file=PATH)"
        )
    chosen = [key for key in fitting if tag is not None and (key == tag or key.endswith(f"_{tag}"))]
    if not chosen:
        raise ValueError(
            f"{name}: pretrained=True: no release {tag!r} is published for {name}; the ones that fit it: "
            f"{', '.join(fitting)} (pick one: timm.create_model('{name}.{fitting[0]}', pretrained=True)), or "
            "pass weights of your own with pretrained_cfg_overlay=dict(file=PATH)"
        )
    return chosen[0], CATALOGUE[chosen[0]]


def _fetch(name: str, key: str, release: Release, cache_dir: str | None) -> Path:
    """The release's file, downloaded once; a one-line ValueError saying how to get it otherwise."""
    overlay = "pretrained_cfg_overlay=dict(file=PATH)"
    if release.url is None:
        raise ValueError(
            f"{name}: pretrained=True needs the {key} weights from {release.page}, which has no direct "
            f"download link: download them and pass {overlay}"
        )
    file_name = Path(urlparse(release.url).path).name
    try:
        return download(release.url, release.sha256, cache_dir)
    except ValueError as error:
        reason = getattr(error.__cause__, "reason", error.__cause__) or error
        raise ValueError(
            f"{name}: pretrained=True needs {file_name} from {release.url}; it could not be downloaded "
            f"({' '.join(str(reason).split())}): download it and pass "
            f"pretrained_cfg_overlay=dict(file='/path/to/{file_name}')"
        ) from error
