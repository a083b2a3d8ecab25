"""The workbench's Gradio app: segment a photo, click a pixel to see where the model looks.

    python apps/app.py                                      # the demo model (trained once, cached)
    python apps/app.py --checkpoint runs/demo_gpvit         # a run folder or a converted checkpoint
    python apps/app.py --checkpoint runs/demo_detection     # a detection run: its detections drawn, listed
    python apps/app.py --checkpoint gpvit_l1.pth --model gpvit_l1_upernet --num-classes 150
    python apps/app.py --host 0.0.0.0 --port 8080           # listen beyond this machine

Everything computed here is a library call (``workbench.Predictor``, ``workbench.data.image.open_image``,
``workbench.viz``); this file is layout and wiring. Each checkpoint is loaded once and its model shared
by every user. A segmentation runs the backbone once (``Predictor.set_image``) and keeps the session
(``Sessions``: bounded, keyed by the model and the file's bytes), so a click computes only that pixel's
attention row. A detection run (``DetectionPredictor``) shows its detections drawn and listed instead;
the explain tabs apply to segmentors. Model calls take the model's lock one at a time; the Gradio queue
bounds how many requests run at once. API for ``gradio_client``: ``/label_map`` (image file -> labels),
``/attention`` (image file, y, x, layer, head -> that pixel's attention, a distribution over the
image's pixels) and ``/detections`` (image file, score threshold -> label, score and box of each).
"""

from __future__ import annotations

import argparse
import hashlib
import html
import os
import socket
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STARTED = time.perf_counter()  # before the heavy imports: the start-up time printed includes them

for name, value in (
    ("GRADIO_ANALYTICS_ENABLED", "False"),
    ("HF_HUB_OFFLINE", "1"),
    ("HF_HUB_DISABLE_TELEMETRY", "1"),
    ("MPLBACKEND", "Agg"),
):
    os.environ.setdefault(name, value)

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from workbench import Predictor  # noqa: E402
from workbench.cache import cache_dir  # noqa: E402
from workbench.data.classes import default_palette  # noqa: E402
from workbench.data.demo import render_scene  # noqa: E402
from workbench.data.examples import EXAMPLES_DIR, example_images  # noqa: E402
from workbench.data.image import DecodedImage, open_image  # noqa: E402
from workbench.inference import Session  # noqa: E402
from workbench.inference.detection_predictor import DetectionPredictor, Detections  # noqa: E402
from workbench.interop.checkpoint import is_checkpoint  # noqa: E402
from workbench.viz.explorers import heat_overlay, mark_pixel  # noqa: E402
from workbench.viz.groups import gp_sites  # noqa: E402
from workbench.viz.overlay import colorize, overlay  # noqa: E402
from workbench.viz.summary import attention_distribution, class_areas, clicked_region  # noqa: E402

MEAN = "mean"  # the head selector's "average over heads"
SCORE_THRESHOLD = 0.3  # a detection run's default: detections scoring less are not shown
SEGMENTATION_ONLY = "{} apply to segmentation models; the loaded model is a detector"
IMAGE_HEIGHT = 360  # pixels on the page; images are scaled to fit, clicks map back to image pixels
# method -> captum options that keep a CPU answer within tens of seconds, from the model input's size
# (occlusion windows are in the model input's pixels, where captum runs, not the image's)
ATTRIBUTIONS = {
    "occlusion": lambda size: {  # an 8 x 8 grid of windows: 64 forward passes
        "window": max(8, max(size) // 8),
        "stride": max(8, max(size) // 8),
        "perturbations_per_eval": 4,
    },
    "integrated_gradients": lambda size: {"n_steps": 16, "internal_batch_size": 4},
}


@dataclass(frozen=True)
class Settings:
    """Limits and placement: images over ``pixel_budget`` are downscaled (with a notice), over
    ``max_pixels`` refused (checked from the header), under ``min_side`` refused."""

    pixel_budget: int = 1024 * 1024
    max_pixels: int = 50_000_000
    min_side: int = 8
    sessions: int = 16
    device: str | None = None
    precision: str = "auto"


# ----------------------------------------------------------------------------- models and sessions


@dataclass
class Loaded:
    """A predictor shared by every user, its lock (one model call at a time) and what loading said."""

    key: str
    predictor: Predictor | DetectionPredictor
    lock: threading.Lock
    report: str

    @property
    def detects(self) -> bool:
        return isinstance(self.predictor, DetectionPredictor)


def load_predictor(
    checkpoint: str, model: str = "", num_classes: int | None = None, **kwargs
) -> Predictor | DetectionPredictor:
    """A Predictor for a run folder or checkpoint (``Predictor.from_checkpoint``; a DetectionPredictor
    for a detection run), or for a released file with the segmentor or detector ``model`` and its class
    count (``Predictor.from_pretrained``)."""
    path = Path(checkpoint).expanduser()
    if not path.exists():
        raise ValueError(f"{checkpoint}: no such file or folder; expected a run folder or a checkpoint file")
    if is_checkpoint(path):
        return Predictor.from_checkpoint(path, **kwargs)
    if not model or not num_classes:
        raise ValueError(
            f"{checkpoint} is not a workbench checkpoint: give the segmentor or detector it belongs to and "
            "its class count (e.g. gpvit_l1_upernet, 150) to load it as a released checkpoint"
        )
    return Predictor.from_pretrained(path, model, int(num_classes), **kwargs)


class Models:
    """Predictors by checkpoint, each loaded once; the ``keep`` most recently used stay in memory."""

    def __init__(self, settings: Settings, keep: int = 2) -> None:
        self.settings, self.keep = settings, keep
        self._loaded: OrderedDict[str, Loaded] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, checkpoint: str, model: str = "", num_classes: int | None = None) -> Loaded:
        key = f"{Path(checkpoint).expanduser().resolve()}|{model}|{num_classes or ''}"
        with self._lock:
            if key not in self._loaded:
                predictor = load_predictor(
                    checkpoint,
                    model,
                    num_classes,
                    device=self.settings.device,
                    precision=self.settings.precision,
                )
                report = "\n".join(
                    [
                        str(predictor.load_report),
                        f"device {predictor.device}, precision {predictor.precision.name} "
                        f"({predictor.precision.reason}), {predictor.num_classes} classes",
                    ]
                )
                self._loaded[key] = Loaded(key, predictor, threading.Lock(), report)
            self._loaded.move_to_end(key)
            while len(self._loaded) > self.keep:
                self._loaded.popitem(last=False)
            return self._loaded[key]

    def find(self, key: str) -> Loaded:
        with self._lock:
            if key not in self._loaded:
                raise ValueError("that model was unloaded to make room for another: load it again")
            return self._loaded[key]


@dataclass
class Entry:
    """One image with a model: the image as read and the predictor's explain session (its prediction),
    or a detector's detections (every one the detector keeps: a threshold filters them later)."""

    decoded: DecodedImage
    session: Any

    def frame(self) -> dict:
        """What an API answer says of the image it read: the size its labels or boxes are in (images
        over the pixel budget are downscaled), the file's own size, and the reader's notes."""
        height, width = self.decoded.pixels.shape[:2]
        return {
            "height": int(height),
            "width": int(width),
            "original_size": list(self.decoded.size),
            "notes": list(self.decoded.notes),
        }


class Sessions:
    """Explain sessions by (model, image file bytes), the last ``size`` kept: a click on an image that
    was segmented runs no forward pass. An evicted image is segmented again on its next query."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._entries: OrderedDict[tuple[str, str], Entry] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, loaded: Loaded, path: str) -> Entry:
        if not path:
            raise ValueError("no image: upload one or pick an example")
        key = (loaded.key, hashlib.sha256(Path(path).read_bytes()).hexdigest())
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
        settings = self.settings
        try:
            decoded = open_image(
                path,
                max_pixels=settings.max_pixels,
                pixel_budget=settings.pixel_budget,
                min_side=settings.min_side,
            )
        except ValueError as error:  # name the file as the user knows it, not by Gradio's upload folder
            raise ValueError(str(error).replace(str(path), Path(path).name)) from None
        with loaded.lock:
            if loaded.detects:
                entry = Entry(decoded, loaded.predictor(decoded.pixels, score_threshold=0.0))
            else:
                entry = Entry(decoded, loaded.predictor.open(decoded.pixels, probs=False))  # labels suffice
        with self._lock:
            self._entries[key] = entry
            while len(self._entries) > settings.sessions:
                self._entries.popitem(last=False)
        return entry


# ----------------------------------------------------------------------------- what the app computes


class Workbench:
    """The app's handlers over a shared model store and session cache; each returns plain values."""

    def __init__(self, settings: Settings, checkpoint: str, model: str = "", num_classes: int | None = None):
        self.settings = settings
        self.models = Models(settings)
        self.sessions = Sessions(settings)
        self.default = self.models.get(checkpoint, model, num_classes)

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


# ----------------------------------------------------------------------------- the Blocks


def _fail(error: Exception) -> gr.Error:
    return gr.Error(str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__)


def build_app(workbench: Workbench) -> gr.Blocks:
    examples = demo_examples()
    detects = workbench.default.detects
    with gr.Blocks(title="ViT dense-prediction workbench", analytics_enabled=False) as app:
        model_key = gr.State(workbench.default.key)
        image_path = gr.State("")
        clicked = gr.State(None)
        gr.Markdown(
            "## ViT dense-prediction workbench\nUpload an image or pick an example, then click a pixel."
        )
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(label="image", file_count="single", type="filepath", elem_id="upload")
                gallery = gr.Gallery(
                    value=examples,
                    label="examples",
                    columns=4,
                    height=180,
                    allow_preview=False,
                    elem_id="examples",
                )
                opacity = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="opacity")
                notice = gr.Markdown(elem_id="notice")
                with gr.Accordion("model", open=False):
                    checkpoint = gr.Textbox(label="checkpoint (run folder, checkpoint or released file)")
                    with gr.Row():
                        model_name = gr.Textbox(
                            label="segmentor or detector, for a released file", placeholder="gpvit_l1_upernet"
                        )
                        num_classes = gr.Number(label="classes", precision=0, value=None)
                    load = gr.Button("load")
                    report = gr.Textbox(value=workbench.default.report, label="load report", lines=4)
            with gr.Column(scale=2):
                segmentation = gr.Image(
                    label="segmentation: click a pixel",
                    format="png",
                    interactive=False,
                    elem_id="segmentation",
                )
                legend = gr.HTML(elem_id="legend")
                areas = gr.Dataframe(
                    headers=["class", "pixels", "area %"],
                    label="area per class",
                    interactive=False,
                    visible=not detects,
                    elem_id="areas",
                )
                with gr.Column(visible=detects, elem_id="detection-panel") as detection_panel:
                    threshold = gr.Slider(0.0, 1.0, value=SCORE_THRESHOLD, step=0.05, label="score threshold")
                    detection_table = gr.Dataframe(
                        headers=["class", "score", "x1", "y1", "x2", "y2"],
                        label="detections",
                        interactive=False,
                        elem_id="detections",
                    )
        with gr.Tabs():
            with gr.Tab("attention", id="attention"):
                with gr.Row():
                    layer = gr.Dropdown(label="layer", choices=[], allow_custom_value=True)
                    head = gr.Dropdown(label="head", choices=[MEAN], value=MEAN, allow_custom_value=True)
                    rollout = gr.Checkbox(label="rollout (SETR)", value=False, interactive=False)
                attention_image = gr.Image(
                    label="attention of the clicked pixel", format="png", elem_id="attention-map"
                )
                click_text = gr.Markdown(elem_id="click-text")
            with gr.Tab("groups (GPViT)", id="groups", elem_id="groups-tab"):
                block = gr.Dropdown(label="GP block", choices=[], allow_custom_value=True)
                with gr.Row():
                    groups_image = gr.Image(label="group assignment", format="png", elem_id="group-map")
                    effective_image = gr.Image(
                        label="clicked pixel's attention through the groups",
                        format="png",
                        elem_id="effective-map",
                    )
                groups_text = gr.Markdown(elem_id="groups-text")
            with gr.Tab("attribution", id="attribution"):
                method = gr.Radio(list(ATTRIBUTIONS), value="occlusion", label="captum method")
                attribute_button = gr.Button("attribute the clicked pixel's class over its region")
                attribution_image = gr.Image(label="attribution (signed)", format="png", height=IMAGE_HEIGHT)
                attribution_text = gr.Markdown()

        def segment(key, path, alpha, score_threshold):
            """The main tab for a new image or model (a dict: component -> value); clicks are reset."""
            try:
                loaded = workbench.models.find(key)
            except ValueError as error:
                raise _fail(error) from None
            shown = {
                segmentation: None,
                legend: "",
                areas: gr.update(value=None, visible=not loaded.detects),
                detection_panel: gr.update(visible=loaded.detects),
                detection_table: None,
                notice: "",
                image_path: path or "",
                clicked: None,
                layer: gr.update(choices=[], value=None),
                head: gr.update(choices=[MEAN], value=MEAN),
                rollout: gr.update(value=False, interactive=False),
                block: gr.update(choices=[], value=None),
                groups_image: None,
                effective_image: None,
                groups_text: "",
                attention_image: None,
                click_text: "",
            }
            if not path:
                return shown
            if loaded.detects:
                drawn, text, rows = detections_view(key, path, alpha, score_threshold)
                return shown | {
                    segmentation: drawn,
                    notice: text,
                    detection_table: rows,
                    groups_text: SEGMENTATION_ONLY.format("GP groups"),
                }
            try:
                entry = workbench.sessions.get(loaded, path)
                session = entry.session
                sites, roll = click_sites(session), can_roll(session)
                heads = head_choices(session, sites[-1]) if sites else [MEAN]
                blocks = list(gp_sites(session.cached))
            except (ValueError, OSError) as error:
                raise _fail(error) from None
            found = class_areas(entry.session.prediction.labels, loaded.predictor.classes)
            height, width = entry.decoded.pixels.shape[:2]
            notes = "; ".join(entry.decoded.notes)
            groups = (
                groups_view(key, path, blocks[0], None)
                if blocks
                else (None, None, "no GP blocks: not a GPViT")
            )
            return shown | {
                segmentation: entry.session.prediction.overlay(entry.decoded.pixels, alpha),
                legend: legend_html(found),
                areas: gr.update(
                    value=[[a.name, a.pixels, round(a.percent, 2)] for a in found], visible=True
                ),
                notice: f"{width}x{height} pixels" + (f" — {notes}" if notes else ""),
                layer: gr.update(choices=sites, value=sites[-1] if sites else None),
                head: gr.update(choices=heads, value=MEAN),
                rollout: gr.update(value=False, interactive=roll),
                block: gr.update(choices=blocks, value=blocks[0] if blocks else None),
                **dict(zip((groups_image, effective_image, groups_text), groups, strict=True)),
            }

        def detections_view(key, path, alpha, score_threshold):
            try:
                return workbench.detection_view(key, path, alpha, score_threshold)
            except (ValueError, OSError) as error:
                raise _fail(error) from None

        def on_threshold(key, path, alpha, score_threshold):
            if not path:
                return None, "", None
            return detections_view(key, path, alpha, score_threshold)

        def groups_view(key, path, gp_block, pixel):
            def ask(session, entry):
                image = entry.decoded.pixels
                assignment = session.group_assignment(gp_block).numpy()
                count = int(assignment.max()) + 1
                coloured = overlay(image, colorize(assignment, default_palette(count)), 0.5)
                effective = None
                if pixel is not None:
                    weights = session.effective_attention_at(*pixel, gp_block)
                    effective = mark_pixel(heat_overlay(image, weights), *pixel)
                used = len(np.unique(assignment))
                return coloured, effective, f"{gp_block}: {used} groups hold pixels"

            return workbench.query(key, path, ask, what="GP groups")

        def attention_view(key, path, pixel, name, head_value, roll):
            if not path or pixel is None:
                return None, ""
            try:
                weights = workbench.attention(key, path, *pixel, name or "", head_value or MEAN, roll)
            except ValueError as error:
                raise _fail(error) from None
            image = workbench.sessions.get(workbench.models.find(key), path).decoded.pixels
            what = "rollout" if roll else f"{name}, head {head_value or MEAN}"
            return mark_pixel(
                heat_overlay(image, weights), *pixel
            ), f"pixel (y={pixel[0]}, x={pixel[1]}): {what}"

        def on_click(key, path, name, head_value, roll, gp_block, evt: gr.SelectData):
            if not path:
                raise gr.Error("no image: upload one or pick an example")
            if workbench.models.find(key).detects:
                return None, None, SEGMENTATION_ONLY.format("attention maps"), None
            x, y = (int(v) for v in evt.index[:2])
            pixel = (y, x)
            heat, text = attention_view(key, path, pixel, name, head_value, roll)
            effective = None
            if gp_block:
                _, effective, _ = groups_view(key, path, gp_block, pixel)
            return pixel, heat, text, effective

        def on_layer(key, path, pixel, name, roll):
            if not path or not name:
                return gr.update(), None, ""
            heads = workbench.query(key, path, lambda session, _: head_choices(session, name))
            return (gr.update(choices=heads, value=MEAN), *attention_view(key, path, pixel, name, MEAN, roll))

        def on_block(key, path, gp_block, pixel):
            if not path or not gp_block:
                return None, None, ""
            return groups_view(key, path, gp_block, pixel)

        def on_opacity(key, path, alpha, score_threshold):
            if not path:
                return None
            if workbench.models.find(key).detects:
                return detections_view(key, path, alpha, score_threshold)[0]
            entry = workbench.sessions.get(workbench.models.find(key), path)
            return entry.session.prediction.overlay(entry.decoded.pixels, alpha)

        def on_attribute(key, path, pixel, chosen, progress=gr.Progress()):  # noqa: B008 (Gradio's idiom)
            if workbench.models.find(key).detects:
                return None, SEGMENTATION_ONLY.format("attributions")
            if not path or pixel is None:
                raise gr.Error("click a pixel first: its class over its region is attributed")
            progress(0.0, desc=f"{chosen}")
            try:
                return workbench.attribution(key, path, pixel, chosen)
            except ValueError as error:
                raise _fail(error) from None

        def on_load(path, name, classes, current_path):
            if not path:
                raise gr.Error("give a run folder, a checkpoint folder or a released checkpoint file")
            try:
                loaded = workbench.models.get(
                    path.strip(), (name or "").strip(), int(classes) if classes else None
                )
            except (ValueError, OSError, RuntimeError) as error:
                raise _fail(error) from None
            return loaded.key, loaded.report

        def pick_example(evt: gr.SelectData):
            return examples[evt.index][0]

        segmented = [segmentation, legend, areas, detection_panel, detection_table, notice, image_path]
        segmented += [clicked, layer, head, rollout, block, groups_image, effective_image, groups_text]
        segmented += [attention_image, click_text]
        ui = {"api_visibility": "private"}
        upload.change(segment, [model_key, upload, opacity, threshold], segmented, **ui)
        gallery.select(pick_example, None, upload, **ui)
        opacity.release(on_opacity, [model_key, image_path, opacity, threshold], segmentation, **ui)
        threshold.release(
            on_threshold,
            [model_key, image_path, opacity, threshold],
            [segmentation, notice, detection_table],
            **ui,
        )
        segmentation.select(
            on_click,
            [model_key, image_path, layer, head, rollout, block],
            [clicked, attention_image, click_text, effective_image],
            **ui,
        )
        layer.input(
            on_layer,
            [model_key, image_path, clicked, layer, rollout],
            [head, attention_image, click_text],
            **ui,
        )
        for control in (head, rollout):
            control.input(
                attention_view,
                [model_key, image_path, clicked, layer, head, rollout],
                [attention_image, click_text],
                **ui,
            )
        block.input(
            on_block,
            [model_key, image_path, block, clicked],
            [groups_image, effective_image, groups_text],
            **ui,
        )
        attribute_button.click(
            on_attribute,
            [model_key, image_path, clicked, method],
            [attribution_image, attribution_text],
            **ui,
        )
        load.click(
            on_load, [checkpoint, model_name, num_classes, image_path], [model_key, report], **ui
        ).then(segment, [model_key, image_path, opacity, threshold], segmented, **ui)
        add_api(app, workbench)
    return app


def add_api(app: gr.Blocks, workbench: Workbench) -> None:
    """``/label_map``, ``/attention`` and ``/detections`` for ``gradio_client`` (hidden components; the
    model the app started with). Each refuses the other kind of model in one line."""

    def label_map(path: str) -> dict:
        try:
            return workbench.label_map(workbench.default.key, path)
        except (ValueError, OSError) as error:
            raise _fail(error) from None

    def attention(path: str, y: float, x: float, layer: str, head: str) -> dict:
        try:
            weights = workbench.attention(
                workbench.default.key, path, int(y), int(x), layer or "", head or MEAN
            )
            distribution = attention_distribution(weights)
        except (ValueError, OSError) as error:
            raise _fail(error) from None
        return {
            "attention": distribution.tolist(),
            "height": distribution.shape[0],
            "width": distribution.shape[1],
        }

    def detections(path: str, score_threshold: float) -> dict:
        """Label, score and box (x1, y1, x2, y2 in the image's pixels, as ``height``/``width`` say) of
        each detection scoring at least ``score_threshold``."""
        try:
            entry, found = workbench.detections(workbench.default.key, path, float(score_threshold))
        except (ValueError, OSError) as error:
            raise _fail(error) from None
        return {"detections": found.to_json(), **entry.frame()}

    with gr.Row(visible=False):
        image = gr.File(type="filepath")
        y, x = gr.Number(precision=0), gr.Number(precision=0)
        layer, head = gr.Textbox(), gr.Textbox()
        score_threshold = gr.Number(value=SCORE_THRESHOLD)
        result = gr.JSON()
        run_label_map, run_attention, run_detections = gr.Button(), gr.Button(), gr.Button()
    run_label_map.click(label_map, image, result, api_name="label_map")
    run_attention.click(attention, [image, y, x, layer, head], result, api_name="attention")
    run_detections.click(detections, [image, score_threshold], result, api_name="detections")


# ----------------------------------------------------------------------------- serving


def free_port() -> int:
    """A TCP port nobody listens on at 127.0.0.1 now (``--port 0``, tests, benchmarks)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch(app: gr.Blocks, host: str, port: int | None, concurrency: int, block: bool = True, **kwargs):
    """Queue (``concurrency`` requests at once), then serve on ``host``: no share link, no analytics."""
    app.queue(default_concurrency_limit=concurrency, max_size=64)
    folders = [str(EXAMPLES_DIR), str(cache_dir() / "app-examples")]
    _, url, _ = app.launch(
        server_name=host,
        server_port=port,
        share=False,
        prevent_thread_lock=True,
        allowed_paths=folders,
        max_file_size="64mb",
        ssr_mode=False,
        mcp_server=False,
        quiet=True,
        theme=gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["monospace"]),
        **kwargs,
    )
    return url


def serve(
    checkpoint: str | Path,
    host: str = "127.0.0.1",
    port: int = 7860,
    concurrency: int = 2,
    model: str = "",
    num_classes: int | None = None,
    **settings,
) -> tuple[gr.Blocks, str]:
    """The app on ``checkpoint``, served in the background at ``host``:``port`` (0: a free port):
    the Blocks (``close()`` stops it) and its URL. ``settings``: ``Settings`` fields."""
    workbench = Workbench(Settings(**settings), str(checkpoint), model, num_classes)
    app = build_app(workbench)
    return app, launch(app, host, port or free_port(), concurrency)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--checkpoint", help="run folder, checkpoint or released file (default: the demo model)"
    )
    parser.add_argument("--model", default="", help="segmentor name, for a released checkpoint file")
    parser.add_argument("--num-classes", type=int, default=None, help="class count, for a released file")
    parser.add_argument("--config", default="demo_gpvit", help="demo config when no --checkpoint is given")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=7860, help="0: a free port")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: the GPU if any)")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument("--pixel-budget", type=int, default=Settings.pixel_budget, help="downscale above")
    parser.add_argument("--max-pixels", type=int, default=Settings.max_pixels, help="refuse above")
    parser.add_argument("--concurrency", type=int, default=2, help="requests the queue runs at once")
    args = parser.parse_args(argv)
    checkpoint = args.checkpoint
    if checkpoint is None:
        from workbench.demo import demo_checkpoint

        checkpoint = str(demo_checkpoint(args.config))
    settings = Settings(args.pixel_budget, args.max_pixels, device=args.device, precision=args.precision)
    try:
        workbench = Workbench(settings, checkpoint, args.model, args.num_classes)
    except ValueError as error:
        sys.exit(f"app: {error}")
    print(workbench.default.report)
    app = build_app(workbench)
    url = launch(app, args.host, args.port or free_port(), args.concurrency)
    print(
        f"the app is serving at {url} (ready {time.perf_counter() - STARTED:.1f} s after start; Ctrl-C stops it)",
        flush=True,
    )
    try:
        app.block_thread()
    except KeyboardInterrupt:
        app.close()


if __name__ == "__main__":
    main()
