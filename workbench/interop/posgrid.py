"""Which grid a released ``pos_embed`` holds, and whether it holds entries for the prefix tokens.

A checkpoint's ``pos_embed`` (1, N, C) is a row-major h x w grid of patch entries, after one entry per
prefix token (class, distillation, registers) in timm's default layout, or after none
(``no_embed_class``: DeiT-3, big_vision, DINOv2 with registers add the position before the prefix
tokens join). N alone does not always tell which: 16 entries beside a class token are a 3x5 grid with
the class entry or a 4x4 grid without it. As timm's ``checkpoint_filter_fn`` reads the grid from the
checkpoint's saved size and the prefix from the model, this module decides, first match wins:

1. the grid the caller gives (``pos_grid=(h, w)``, ``workbench convert --pos-grid HxW``), or the one
   saved beside the file (timm's ``config.json``: ``model_args.img_size`` or
   ``pretrained_cfg.input_size`` over the patch kernel); N then says whether the prefix entries are there;
2. with the prefix entries, the target model's grid, else a square one (every square release, timm's
   fallback);
3. the only plausible reading of either layout: per layout the target's grid, else a square, else the
   grids of aspect ratio at most 2 (Cityscapes' 1:2 crops are the widest in the papers). Several
   readings (or none) are refused in one line that lists them and asks for ``pos_grid``.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from workbench.interop.formats import StateDict
from workbench.models.layers import resample_pos_embed

Grid = tuple[int, int]
MAX_ASPECT = 2


@dataclass(frozen=True)
class KnownGrid:
    """A checkpoint's position grid (rows, columns) known besides its token count, and from where."""

    grid: Grid
    origin: str

    @classmethod
    def given(cls, pos_grid: Sequence[int]) -> KnownGrid:
        """The caller's ``pos_grid=(h, w)``, checked."""
        if len(pos_grid) != 2 or not all(isinstance(n, int) and n > 0 for n in pos_grid):
            raise ValueError(f"pos_grid must be two positive integers (rows, columns), got {pos_grid!r}")
        return cls((pos_grid[0], pos_grid[1]), f"pos_grid={pos_grid[0]}x{pos_grid[1]}")


def parse_grid(text: str) -> Grid:
    """``"24x32"`` -> (24, 32), the command line's ``--pos-grid``."""
    rows, sep, cols = text.lower().partition("x")
    if not (sep and rows.isdigit() and cols.isdigit() and int(rows) > 0 and int(cols) > 0):
        raise ValueError(f"--pos-grid expects HxW in tokens (e.g. 24x32), got {text!r}")
    return int(rows), int(cols)


def saved_grid(path: Path, state: StateDict) -> KnownGrid | None:
    """The grid timm's ``config.json`` beside ``path`` records (a Hugging Face hub folder), if any:
    the image size it was saved at over the kernel of the file's ``patch_embed.proj.weight``."""
    config = path.parent / "config.json"
    patch = state.get("patch_embed.proj.weight")
    if not config.is_file() or patch is None or patch.ndim != 4:
        return None
    try:
        saved = json.loads(config.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read {config} beside the checkpoint: {error}; pass pos_grid") from None
    if not isinstance(saved, dict):
        return None
    model_args, pretrained_cfg = saved.get("model_args") or {}, saved.get("pretrained_cfg") or {}
    size = model_args.get("img_size") or pretrained_cfg.get("input_size", [])[1:]
    size = [size, size] if isinstance(size, int) else list(size)
    if len(size) != 2 or not all(isinstance(side, int) for side in size):
        return None
    grid = (size[0] // patch.shape[-2], size[1] // patch.shape[-1])
    return KnownGrid(grid, f"{config.name} beside the file (img_size {size[0]}x{size[1]})")


def read_layout(
    tokens: int, prefix: Sequence[str], target: Grid, known: KnownGrid | None
) -> tuple[Grid, int]:
    """(grid, prefix entries) of a ``pos_embed`` with ``tokens`` entries in a checkpoint whose prefix
    tokens are ``prefix`` (their key names); the prefix entries are ``len(prefix)`` or 0, ahead of
    the grid. ``target`` is the grid of the model the file is loaded into."""
    with_prefix = tokens - len(prefix)
    if known is not None:
        height, width = known.grid
        if tokens - height * width not in {len(prefix), 0}:
            raise ValueError(
                f"{known.origin} gives {height * width} position entries, but pos_embed has {tokens} "
                f"({_prefix_text(prefix)}); pass the grid the file was saved at as pos_grid"
            )
        return known.grid, tokens - height * width
    first = _candidates(with_prefix, target) if with_prefix > 0 else []
    if len(first) == 1:  # the target's grid or a square: the layout of every square release
        return first[0], len(prefix)
    readings = [(grid, len(prefix)) for grid in first]
    if prefix:
        readings += [(grid, 0) for grid in _candidates(tokens, target)]
    if len(readings) == 1:
        return readings[0]
    raise ValueError(
        f"cannot tell the position grid of pos_embed ({tokens} entries, {_prefix_text(prefix)}) without "
        f"its saved size: {_readings_text(readings, prefix)}; pass pos_grid=(H, W) "
        f"(workbench convert --pos-grid HxW)"
    )


def fit_grid(
    pos_embed: torch.Tensor,
    prefix: Sequence[str],
    target: Grid,
    known: KnownGrid | None,
    rule: str,
    notes: list[str],
) -> tuple[torch.Tensor, int]:
    """A released (1, N, C) ``pos_embed`` -> its grid entries on ``target`` (1, H*W, C), resampled by
    ``rule`` where the grids differ (noted), and the number of prefix entries ahead of them in the file."""
    (height, width), entries = read_layout(pos_embed.shape[1], prefix, target, known)
    if known is not None:
        notes.append(f"read pos_embed as a {height}x{width} grid ({known.origin})")
    grid = resample_pos_embed(pos_embed[:, entries:], target, (height, width), rule=rule)
    if (height, width) != tuple(target):
        notes.append(f"resampled pos_embed {height}x{width} -> {target[0]}x{target[1]} ({rule})")
    return grid, entries


def _candidates(count: int, target: Grid) -> list[Grid]:
    """Grids of ``count`` entries: the target's if it fits, else a square, else those of aspect <= 2."""
    if target[0] * target[1] == count:
        return [target]
    side = math.isqrt(count)
    if side * side == count:
        return [(side, side)]
    return [
        (rows, count // rows)
        for rows in range(1, count + 1)
        if count % rows == 0 and max(rows, count // rows) <= MAX_ASPECT * min(rows, count // rows)
    ]


def _prefix_text(prefix: Sequence[str]) -> str:
    if not prefix:
        return "no prefix tokens"
    names = ", ".join(name if count == 1 else f"{count} x {name}" for name, count in Counter(prefix).items())
    return f"prefix token{'s' if len(prefix) > 1 else ''} {names}"


def _readings_text(readings: list[tuple[Grid, int]], prefix: Sequence[str]) -> str:
    if not readings:
        return f"no grid of aspect ratio up to {MAX_ASPECT} fits"
    text = []
    for entries in sorted({entries for _, entries in readings}, reverse=True):
        grids = " or ".join(f"{h}x{w}" for (h, w), n in readings if n == entries)
        layout = "" if not prefix else " with the prefix entries" if entries else " without (no_embed_class)"
        text.append(grids + layout)
    return "it reads as " + ", or ".join(text)
