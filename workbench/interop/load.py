"""``load_pretrained``: released checkpoints of every supported layout into workbench models.

    report = workbench.load_pretrained(model, "gpvit_l1_in1k")        # catalogue name (downloads)
    report = workbench.load_pretrained(model, "jx_vit_large_p16_384-b3be5167.pth")
    print(report)                                                    # format, converted, missing ...

Everything is converted and checked before any tensor is copied: a failed load leaves the model
exactly as it was.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from workbench.interop.checkpoint import EMA_WEIGHTS, is_checkpoint, weights_file
from workbench.interop.detection import MMDET_DETECTION
from workbench.interop.download import resolve_source
from workbench.interop.files import first_line, read_state_dict
from workbench.interop.formats import BACKBONE_PREFIXES, StateDict
from workbench.interop.gpvit import GPVIT_RELEASE
from workbench.interop.hlg import HLG_RELEASE
from workbench.interop.posgrid import KnownGrid, saved_grid
from workbench.interop.vit import DEIT, JAX, MMSEG_SETR, SETR_OFFICIAL, TIMM

# Release layouts in detection order: the most specific key patterns first.
RELEASES = (MMDET_DETECTION, JAX, GPVIT_RELEASE, MMSEG_SETR, SETR_OFFICIAL, DEIT, TIMM, HLG_RELEASE)
_RELEASE_NAMED = {entry.name: entry for entry in RELEASES}
FORMATS = ("auto", "workbench", *_RELEASE_NAMED)


@dataclass
class LoadReport:
    """What ``load_pretrained`` did: the layout it read, and every tensor's fate by key name."""

    format: str
    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # model tensors the source does not provide
    unexpected: list[str] = field(default_factory=list)  # source tensors the model has no place for
    mismatched: list[str] = field(default_factory=list)  # "key: source shape vs model shape"
    kept: list[str] = field(default_factory=list)  # model tensors outside what the source covers
    notes: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        def listing(items: list[str]) -> str:
            return ", ".join(items[:6]) + (f" (+{len(items) - 6} more)" if len(items) > 6 else "")

        lines = [f"{self.source} ({self.format}): {len(self.loaded)} tensors loaded"]
        for name in ("missing", "unexpected", "mismatched", "kept"):
            items = getattr(self, name)
            if items:
                lines.append(f"  {name} {len(items)}: {listing(items)}")
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


def detect_format(state: StateDict, model: nn.Module) -> str:
    """The layout of ``state``: ``"workbench"`` when its keys are the model's own, else the first
    release format (in ``RELEASES`` order) that recognises them."""
    keys = set(state)
    if len(keys & set(model.state_dict())) >= 0.9 * len(keys):
        return "workbench"
    found = next((entry.name for entry in RELEASES if entry.detect(keys)), None)
    if found is None:
        raise ValueError(
            f"cannot tell the checkpoint layout from its keys (first: {sorted(keys)[:5]}); "
            f"pass format= one of {FORMATS[1:]}"
        )
    return found


def load_pretrained(
    model: nn.Module,
    source: str | Path,
    format: str = "auto",
    strict: bool = True,
    ema: bool = False,
    pos_grid: tuple[int, int] | None = None,
) -> LoadReport:
    """Load ``source`` into ``model``; see ``LoadReport``.

    ``source`` is a path (a released file, or a workbench checkpoint / run folder), a URL or a
    catalogue name; ``ema`` picks a workbench checkpoint's EMA weights. Backbone-only sources (ImageNet
    releases) fill a dense model's backbone, a segmentor's or a detector's, and keep the rest (heads,
    a detector's adapter and FPN) as initialised (``kept``); what only a classifier has (its head, a
    final norm the dense model lacks) is dropped and noted. A classifier whose class count differs is
    dropped (reported). Position embeddings are resampled to the model's grid; the grid the file holds
    is ``pos_grid`` (rows, columns of tokens) when given, else read as ``interop.posgrid`` says (a
    ``config.json`` beside the file, the model, a square), and a file that reads several ways is
    refused. With ``strict``, any missing, unexpected or mis-shaped tensor (outside those documented
    cases) raises a ValueError whose text is the report, and nothing is loaded. Every failure is a
    ValueError.
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    known = KnownGrid.given(pos_grid) if pos_grid is not None else None
    workbench_source = format == "workbench" or (format == "auto" and is_checkpoint(source))
    if known is not None and workbench_source:
        raise ValueError(
            "pos_grid is for released checkpoints; a workbench checkpoint holds its model's grid"
        )
    if ema and not workbench_source:
        raise ValueError(f"ema=True needs a workbench checkpoint with {EMA_WEIGHTS}; {source} is not one")
    path = weights_file(source, ema) if workbench_source else resolve_source(source)
    state = read_state_dict(path)
    kind = "workbench" if workbench_source else detect_format(state, model) if format == "auto" else format
    report = LoadReport(kind, str(source))
    if kind == "workbench":  # the model's own layout: nothing to convert
        converted, fresh = dict(state), ""
    else:
        converted, notes = _convert(state, model, kind, known or saved_grid(path, state), source)
        report.notes += notes
        fresh = _RELEASE_NAMED[kind].fresh
    expected = model.state_dict()
    for key, value in list(converted.items()):
        if key in expected and value.shape != expected[key].shape:
            if _is_classifier(key):
                report.notes.append(
                    f"dropped {key}: {tuple(value.shape)} in the source, {tuple(expected[key].shape)} here (another class count)"
                )
                del converted[key]
                continue
            report.mismatched.append(
                f"{key}: source {tuple(value.shape)} vs model {tuple(expected[key].shape)}"
            )
    report.unexpected = sorted(k for k in converted if k not in expected)
    covered = _covered(converted)
    absent = sorted(k for k in expected if k not in converted)
    new = [k for k in absent if fresh and fresh in f".{k}"]
    if new:
        report.notes.append(f"{len(new)} {fresh.strip('.')} tensors are new in this model (initialised)")
    report.missing = [
        k for k in absent if k.startswith(covered) and not _is_dropped_head(k, report) and k not in new
    ]
    report.kept = [k for k in absent if k not in report.missing]
    if strict and not report.clean:
        raise ValueError(f"checkpoint does not fit {type(model).__name__}; nothing was loaded.\n{report}")
    loadable = {k: v for k, v in converted.items() if k in expected and v.shape == expected[k].shape}
    model.load_state_dict({**expected, **{k: v.to(expected[k].dtype) for k, v in loadable.items()}})
    report.loaded = sorted(loadable)
    return report


def _convert(
    state: StateDict, model: nn.Module, kind: str, known: KnownGrid | None, source: str | Path
) -> tuple[StateDict, list[str]]:
    """``state`` in layout ``kind`` -> ``model``'s key names, and notes; any failure a ValueError."""
    try:
        return _RELEASE_NAMED[kind].convert(state, model, known)
    except ValueError:
        raise
    except Exception as error:  # a tensor the layout does not expect makes torch raise almost anything
        raise ValueError(f"cannot convert {source} as a {kind} checkpoint: {first_line(error)}") from error


def export_state(model: nn.Module, format: str) -> StateDict:
    """``model``'s tensors under a release layout's names (``gpvit``, ``setr_official``,
    ``mmseg_setr``, ``hlg``): what ``load_pretrained(..., format=format)`` reads back."""
    entry = _RELEASE_NAMED.get(format)
    if entry is None or entry.export is None:
        exportable = [e.name for e in RELEASES if e.export is not None]
        raise ValueError(f"format must be one of {exportable} to export, got {format!r}")
    return entry.export(model)


def load_weights(model: nn.Module, path: str | Path, ema: bool = False) -> LoadReport:
    """A workbench checkpoint or run folder into ``model``, strictly (``load_pretrained``'s report)."""
    return load_pretrained(model, path, format="workbench", ema=ema)


def _is_classifier(key: str) -> bool:
    """The last layer that maps to classes: its shape follows the class count, nothing else does."""
    return bool(
        re.fullmatch(
            r"(.*\.)?classifier\.(weight|bias)|head\.(weight|bias)|aux_heads\.\d+\.(weight|bias)", key
        )
    )


def _covered(converted: StateDict) -> str:
    """The part of the model a source fills: the backbone (the deepest of ``BACKBONE_PREFIXES`` that
    holds all its tensors) for a backbone-only source, else all of it (``""``)."""
    inside = [p for p in BACKBONE_PREFIXES if converted and all(k.startswith(p) for k in converted)]
    return inside[-1] if inside else ""


def _is_dropped_head(key: str, report: LoadReport) -> bool:
    return any(note.startswith(f"dropped {key}:") for note in report.notes)
