"""What the app computes, as plain functions over the model store and the session cache: each returns
plain values (arrays, text, rows) and raises a one-line ValueError for bad input. No Gradio here."""

from __future__ import annotations

import html
import os
import time

import numpy as np
import torch
from PIL import Image

from apps.settings import ATTRIBUTIONS, MEAN, SEGMENTATION_ONLY, Settings
from apps.store import Entry, Models, Sessions
from workbench.cache import cache_dir
from workbench.data.demo import render_scene
from workbench.data.examples import example_images
from workbench.inference import Session
from workbench.inference.detection_predictor import Detections
from workbench.viz.explorers import heat_overlay
from workbench.viz.summary import clicked_region


class Workbench:
    """The app's handlers over a shared model store and session cache; each returns plain values."""

    def __init__(self, settings: Settings, checkpoint: str, model: str = "", num_classes: int | None = None):
        self.settings = settings
        self.models = Models(settings)
        self.sessions = Sessions(settings, self.models)
        self.default = self.models.pin(checkpoint, model, num_classes)  # never dropped, no folder check

    def query(self, key: str, path: str, ask, what: str = "attention maps"):
        """``ask(session, entry)`` on the session of ``path`` with model ``key``, under the model's lock;
        refused for a detector (``what`` the query gives)."""
        loaded = self.models.find(key)
        if loaded.detects:
            raise ValueError(SEGMENTATION_ONLY.format(what))
        entry = self.sessions.get(loaded, path)
        with loaded.lock:
            return ask(entry.session, entry)

    def label_map(self, key: str, path: str) -> dict:
        loaded = self.models.find(key)
        if loaded.detects:
            raise ValueError(
                "the model is a detector: /detections gives its boxes; label maps come from segmentors"
            )
        entry = self.sessions.get(loaded, path)
        return {
            "labels": entry.session.prediction.labels.tolist(),  # at the image's size (the Predictor's)
            "classes": list(loaded.predictor.classes.names),
            **entry.frame(),
        }

    def detections(self, key: str, path: str, score_threshold: float) -> tuple[Entry, Detections]:
        """The image of ``path`` and its detections scoring at least ``score_threshold`` (a detector)."""
        loaded = self.models.find(key)
        if not loaded.detects:
            raise ValueError(
                "the model is a segmentor: /label_map gives its labels; detections come from detectors"
            )
        entry = self.sessions.get(loaded, path)
        return entry, entry.session.above(score_threshold)

    def detection_view(self, key: str, path: str, alpha: float, score_threshold: float):
        """The main tab for a detector: the image with the detections drawn (masks at opacity ``alpha``),
        a caption, and the table's rows (class, score, x1, y1, x2, y2)."""
        entry, found = self.detections(key, path, score_threshold)
        rows = [[item["label"], item["score"], *item["box"]] for item in found.to_json()]
        height, width = entry.decoded.pixels.shape[:2]
        notes = "".join(f"; {note}" for note in entry.decoded.notes)
        text = (
            f"{width}x{height} pixels — {len(rows)} detections scoring {score_threshold:.2f} or more{notes}"
        )
        return found.draw(entry.decoded.pixels, alpha), text, rows

    def attention(self, key: str, path: str, y: int, x: int, layer: str, head: str, rollout: bool = False):
        """Pixel (y, x)'s attention (H, W) on the image: rollout, through a GP block's groups at an
        ungrouping site, else the layer's own (``Predictor.attention_at``)."""

        def ask(session: Session, entry: Entry) -> torch.Tensor:
            height, width = entry.decoded.pixels.shape[:2]
            if not (0 <= y < height and 0 <= x < width):
                raise ValueError(f"pixel ({y}, {x}) is outside the {width}x{height} image")
            if rollout:
                if not can_roll(session):
                    raise ValueError("rollout needs self-attention in every layer (SETR, a ViT)")
                return session.rollout_at(y, x)
            sites = click_sites(session)
            name = layer or sites[-1]
            if name not in sites:
                raise ValueError(f"unknown layer {name!r}; expected one of {', '.join(sites)}")
            return session.attention_at(y, x, name, None if head in ("", MEAN) else int(head))

        return self.query(key, path, ask)

    def attribution(self, key: str, path: str, pixel: tuple[int, int], method: str):
        """The captum attribution of the clicked pixel's class over its region, as a heat map over the
        image, and a caption. Occlusion windows are sized from the model input, where captum runs."""
        if method not in ATTRIBUTIONS:
            raise ValueError(f"method must be one of {', '.join(ATTRIBUTIONS)}, got {method!r}")

        def ask(session: Session, entry: Entry):
            labels = session.prediction.labels
            region = clicked_region(labels, *pixel)
            target = int(labels[pixel])
            start = time.perf_counter()
            heat = session.attribute(target, region, method, **ATTRIBUTIONS[method](session.view.size))
            name = session.predictor.classes.names[target]
            text = (
                f"{method}: class {name!r} over its {int(region.sum())}-pixel region at (y={pixel[0]}, "
                f"x={pixel[1]}), {time.perf_counter() - start:.1f} s"
            )
            return heat_overlay(entry.decoded.pixels, heat, cmap="coolwarm", alpha=0.6), text

        return self.query(key, path, ask, what="attributions")


def click_sites(session: Session) -> list[str]:
    """The attention sites a pixel queries: all but GPViT's grouping (group tokens query there)."""
    return [name for name, site in session.cached.items() if site.layout.kind != "grouping"]


def can_roll(session: Session) -> bool:
    return all(site.layout.kind == "self" for site in session.cached.values())


def head_choices(session: Session, layer: str) -> list[str]:
    site = session.cached.get(layer)
    return [MEAN] + [str(h) for h in range(site.q.shape[1] if site is not None else 0)]


def legend_html(areas) -> str:
    swatches = "".join(
        f'<span style="display:inline-block;margin:2px 10px 2px 0"><span style="display:inline-block;'
        f'width:12px;height:12px;background:{area.hex};border:1px solid #888;margin-right:4px"></span>'
        f"{html.escape(area.name)} {area.percent:.1f}%</span>"
        for area in areas
    )
    return f'<div class="legend">{swatches}</div>'


def demo_examples(size: int = 128, count: int = 3) -> list[tuple[str, str]]:
    """Demo scenes at the demo set's size (the shapes and scale the demo models learnt), written once to
    the cache, and the shipped photos."""
    folder = cache_dir() / "app-examples"
    folder.mkdir(parents=True, exist_ok=True)
    scenes = []
    for seed in range(count):
        path = folder / f"demo-scene-{seed}-{size}px.png"
        if not path.is_file():
            staging = path.with_suffix(".tmp.png")
            Image.fromarray(render_scene(np.random.default_rng(1000 + seed), size)[0]).save(staging)
            os.replace(staging, path)
        scenes.append((str(path), f"demo scene {seed}"))
    return scenes + [(str(example.path), example.name) for example in example_images()]
