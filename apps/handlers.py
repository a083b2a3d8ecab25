"""What the app computes, as plain functions over the model store and the session cache: each returns
plain values (arrays, text, rows) and raises a one-line ValueError for bad input. No Gradio here.

Locks: only what runs the model takes the model's lock (a segmentation, in ``Sessions.get``, and an
attribution). Clicks, groups and rollout read the image's kept session (cached q/k) and take none, so
a long attribution never holds up another user's click.

The compact answers, PNG bytes the API sends inline (base64 in its JSON: one round trip, no file to
fetch): ``attention_png`` (``/attention_png``) is the distribution over the image's pixels
(``/attention``'s floats) as a 16-bit greyscale PNG, each pixel ``round(weight / scale * 65535)`` with
``scale`` the map's largest weight, so ``weight = value / 65535 * scale`` reads it back to within one
level (``scale / 65535``) of the float; ``label_png`` (``/label_png``) the labels as an 8-bit PNG (16-bit
above 256 classes). A few kB each where the JSON answers are megabytes.
"""

from __future__ import annotations

import html
import io
import os
import time
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from apps import vit_handlers
from apps.settings import ATTRIBUTIONS, MEAN, SEGMENTATION_ONLY, Settings
from apps.store import TIMM, TIMM_RANDOM_FROM_PAGE, Entry, Loaded, Models, Sessions
from workbench.cache import cache_dir
from workbench.data.classes import default_palette
from workbench.data.demo import render_scene
from workbench.data.examples import example_images
from workbench.data.image import label_png_array
from workbench.inference import Session
from workbench.inference.detection_predictor import Detections
from workbench.viz.explorers import heat_overlay, mark_pixel
from workbench.viz.groups import gp_sites
from workbench.viz.overlay import colorize, overlay
from workbench.viz.summary import attention_distribution, class_areas, clicked_region

NO_PATH = "give a run folder, a checkpoint folder or a released checkpoint file"
DEMO_NOTICE = (
    "**This is the demo model: it was trained on generated shapes only** ({classes}), so a photo of a "
    "real scene is labelled with those shapes. For real scenes load a released checkpoint: "
    "`python apps/app.py --checkpoint FILE --model NAME --num-classes K` (e.g. `--model "
    "gpvit_l1_upernet --num-classes 150` for ADE20K), or give it in the model box."
)


def _png(array: np.ndarray) -> bytes:
    """A grey PNG of ``array`` (H, W) uint8 or uint16."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


@dataclass
class SegmentView:
    """The main panel for an image: the picture, its notice, and what the explain tabs offer."""

    picture: np.ndarray | None = None
    notice: str = ""
    legend: str = ""
    areas: list[list] | None = None  # class, pixels, area % (segmentors); class, index, % (a ViT's top 5)
    detections: list[list] | None = None  # class, score, x1, y1, x2, y2 (detectors)
    detects: bool = False
    vit: bool = False  # a timm ViT: the picture is its features' PCA, the table its top five
    class_token: bool = False  # the class token's maps can be shown (a ViT with one)
    sites: list[str] = field(default_factory=list)
    heads: list[str] = field(default_factory=lambda: [MEAN])
    can_roll: bool = False
    blocks: list[str] = field(default_factory=list)
    groups: tuple = (None, None, "")  # group assignment, effective attention, caption


@dataclass
class ClickView:
    """What a click shows: the attention heat overlay, its caption, and the effective attention
    through the chosen GP block's groups (None without one)."""

    heat: np.ndarray | None
    text: str
    effective: np.ndarray | None = None


class Workbench:
    """The app's handlers over a shared model store and session cache; each returns plain values."""

    def __init__(
        self,
        settings: Settings,
        checkpoint: str,
        model: str = "",
        num_classes: int | None = None,
        timm_options: dict | None = None,
    ):
        """The app on ``checkpoint`` (``model``, ``num_classes``: for a released file), or on the timm
        ViT ``model="timm:NAME"`` with the weights file ``checkpoint`` ("": random weights) and
        ``timm_options`` (``load_vit_predictor`` keywords, e.g. timm's ``depth`` for a tiny test model)."""
        self.settings = settings
        self.models = Models(settings)
        self.sessions = Sessions(settings, self.models)
        if model.startswith(TIMM):  # never dropped, no folder check
            options = {**({"num_classes": num_classes} if num_classes else {}), **(timm_options or {})}
            self.default = self.models.pin_timm(model.removeprefix(TIMM), checkpoint or None, options)
        else:
            self.default = self.models.pin(checkpoint, model, num_classes)

    # ----------------------------------------------------------------------------- models

    def load(self, checkpoint: str, model: str = "", num_classes: int | float | None = None) -> Loaded:
        """The model box: a checkpoint loaded (once) with its report, or a timm ViT (``timm:NAME`` in
        the model box and its weights file in this one, or ``timm:NAME@FILE`` here); refused in one line."""
        if not (checkpoint or "").strip():
            raise ValueError(TIMM_RANDOM_FROM_PAGE if (model or "").strip().startswith(TIMM) else NO_PATH)
        try:
            return self.models.get(
                checkpoint.strip(), (model or "").strip(), int(num_classes) if num_classes else None
            )
        except (OSError, RuntimeError) as error:
            raise ValueError(one_line(error)) from None

    def model_card(self, key: str) -> str:
        """What the loaded model knows (Markdown): its name, data set, classes and where its weights came
        from; for the demo model, that it saw generated shapes only and how to load a real one."""
        loaded = self.models.find(key)
        if loaded.vit:
            return vit_handlers.model_card(loaded)
        predictor = loaded.predictor
        source = str(predictor.load_report.source) if predictor.load_report else "not recorded"
        name, dataset = _name_and_dataset(predictor, source)
        names = list(predictor.classes.names)
        shown = ", ".join(names[:12]) + (f" (+{len(names) - 12} more)" if len(names) > 12 else "")
        kind = "detector" if loaded.detects else "segmentor"
        lines = [
            f"**model** {name} ({kind}) · **data set** {dataset} · **{len(names)} classes**: {shown}",
            f"**weights** {source}",
        ]
        if dataset == "demo":
            lines.append(DEMO_NOTICE.format(classes=", ".join(names)))
        return "\n\n".join(lines)

    # ----------------------------------------------------------------------------- the main panel

    def segment(
        self, key: str, path: str, alpha: float, score_threshold: float, foreground: float | None = None
    ) -> SegmentView:
        """The main panel for a new image or model: segmentation (or detections, or a ViT's features'
        PCA with ``foreground`` its threshold) and the explain tabs' choices; empty without an image."""
        loaded = self.models.find(key)
        class_token = loaded.vit and vit_handlers.has_class_token(loaded)
        if not path:
            return SegmentView(detects=loaded.detects, vit=loaded.vit, class_token=class_token)
        if loaded.detects:
            drawn, text, rows = self.detection_view(key, path, alpha, score_threshold)
            return SegmentView(
                drawn,
                text,
                detections=rows,
                detects=True,
                groups=(None, None, SEGMENTATION_ONLY.format("GP groups")),
            )
        entry = self.sessions.get(loaded, path)
        session = entry.session
        sites, blocks = click_sites(session), list(gp_sites(session.cached))
        if loaded.vit:
            return SegmentView(
                picture=vit_handlers.picture(entry, alpha, foreground),
                notice=vit_handlers.notice(entry, foreground),
                areas=vit_handlers.top_rows(entry),
                vit=True,
                class_token=class_token,
                sites=sites,
                heads=head_choices(session, sites[-1]),
                can_roll=can_roll(session),
                groups=(None, None, "no GP blocks: not a GPViT"),
            )
        found = class_areas(session.prediction.labels, loaded.predictor.classes)
        height, width = entry.decoded.pixels.shape[:2]
        notes = "; ".join(entry.decoded.notes)
        return SegmentView(
            picture=session.prediction.overlay(entry.decoded.pixels, alpha),
            notice=f"{width}x{height} pixels" + (f" — {notes}" if notes else ""),
            legend=legend_html(found),
            areas=[[area.name, area.pixels, round(area.percent, 2)] for area in found],
            sites=sites,
            heads=head_choices(session, sites[-1]) if sites else [MEAN],
            can_roll=can_roll(session),
            blocks=blocks,
            groups=self.groups(key, path, blocks[0], None)
            if blocks
            else (None, None, "no GP blocks: not a GPViT"),
        )

    def picture(
        self, key: str, path: str, alpha: float, score_threshold: float, foreground: float | None = None
    ) -> np.ndarray | None:
        """The main picture at opacity ``alpha``: the segmentation overlay, the detections drawn, or a
        ViT's features' PCA (``foreground`` its threshold)."""
        if not path:
            return None
        loaded = self.models.find(key)
        if loaded.detects:
            return self.detection_view(key, path, alpha, score_threshold)[0]
        entry = self.sessions.get(loaded, path)
        if loaded.vit:
            return vit_handlers.picture(entry, alpha, foreground)
        return entry.session.prediction.overlay(entry.decoded.pixels, alpha)

    def label_map(self, key: str, path: str, as_list: bool = True) -> dict:
        """``/label_map``: the labels at the image's size (as nested lists, or the array), the class
        names and the frame (``Entry.frame``)."""
        loaded = self.models.find(key)
        if loaded.detects:
            raise ValueError(
                "the model is a detector: /detections gives its boxes; label maps come from segmentors"
            )
        if loaded.vit:
            raise ValueError(vit_handlers.NO_LABELS)
        entry = self.sessions.get(loaded, path)
        labels = entry.session.prediction.labels
        return {
            "labels": labels.tolist() if as_list else labels,  # at the image's size (the Predictor's)
            "classes": list(loaded.predictor.classes.names),
            **entry.frame(),
        }

    def label_png(self, key: str, path: str) -> tuple[bytes, dict]:
        """``/label_png``: the labels as a grey PNG (8-bit up to 256 classes, else 16-bit; a few kB
        where ``/label_map``'s JSON is a list per row), the class names and the frame."""
        answer = self.label_map(key, path, as_list=False)
        labels = answer.pop("labels")
        return _png(label_png_array(labels, len(answer["classes"]))), answer

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
        if not path:
            return None, "", None
        entry, found = self.detections(key, path, score_threshold)
        rows = [[item["label"], item["score"], *item["box"]] for item in found.to_json()]
        height, width = entry.decoded.pixels.shape[:2]
        notes = "".join(f"; {note}" for note in entry.decoded.notes)
        text = (
            f"{width}x{height} pixels — {len(rows)} detections scoring {score_threshold:.2f} or more{notes}"
        )
        return found.draw(entry.decoded.pixels, alpha), text, rows

    # ----------------------------------------------------------------------------- clicks (no lock)

    def explained(self, key: str, path: str, what: str = "attention maps") -> Entry:
        """The kept session of ``path`` with a segmentor (segmented first if it is not kept); refused
        for a detector (``what`` the query gives). Reading it needs no lock: nothing runs the model."""
        loaded = self.models.find(key)
        if loaded.detects:
            raise ValueError(SEGMENTATION_ONLY.format(what))
        return self.sessions.get(loaded, path)

    def attention(self, key: str, path: str, y: int, x: int, layer: str, head: str, rollout: bool = False):
        """Pixel (y, x)'s attention (H, W) on the image: rollout, through a GP block's groups at an
        ungrouping site, else the layer's own (``Predictor.attention_at``). Reads the session only."""
        entry = self.explained(key, path)
        session = entry.session
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

    def attention_json(self, key: str, path: str, y: int, x: int, layer: str, head: str) -> dict:
        """``/attention``: the distribution over the image's pixels as nested float lists."""
        distribution = attention_distribution(self.attention(key, path, y, x, layer, head))
        return {
            "attention": distribution.tolist(),
            "height": distribution.shape[0],
            "width": distribution.shape[1],
        }

    def attention_png(self, key: str, path: str, y: int, x: int, layer: str, head: str) -> tuple[bytes, dict]:
        """``/attention_png``: the distribution as a 16-bit grey PNG (module docstring) and its frame."""
        distribution = attention_distribution(self.attention(key, path, y, x, layer, head)).numpy()
        scale = float(distribution.max())
        levels = np.round(distribution / scale * 65535).astype(np.uint16)
        frame = {"scale": scale, "height": int(levels.shape[0]), "width": int(levels.shape[1])}
        return _png(levels), frame

    def click(
        self,
        key: str,
        path: str,
        y: int,
        x: int,
        layer: str,
        head: str,
        rollout: bool = False,
        block: str = "",
        class_token: bool = False,
    ) -> ClickView:
        """A click on the page: the heat overlay of (y, x)'s attention with the pixel marked, a caption,
        and its attention through ``block``'s groups (GPViT); with ``class_token`` (a ViT) the class
        token's map in ``layer`` instead; a detector says the tabs do not apply."""
        if not path:
            raise ValueError("no image: upload one or pick an example")
        if self.models.find(key).detects:
            return ClickView(None, SEGMENTATION_ONLY.format("attention maps"))
        if class_token:
            return ClickView(*self.class_attention(key, path, layer, head))
        weights = self.attention(key, path, y, x, layer, head or MEAN, rollout)
        entry = self.explained(key, path)
        what = "rollout" if rollout else f"{layer or click_sites(entry.session)[-1]}, head {head or MEAN}"
        heat = mark_pixel(heat_overlay(entry.decoded.pixels, weights), y, x)
        effective = self.groups(key, path, block, (y, x))[1] if block else None
        return ClickView(heat, f"pixel (y={y}, x={x}): {what}", effective)

    def class_attention(self, key: str, path: str, layer: str, head: str) -> tuple[np.ndarray, str]:
        """A ViT's class-token attention in ``layer`` (default: the last), one head or the mean, over
        the image, and its caption."""
        loaded = self.models.find(key)
        if not loaded.vit:
            raise ValueError("class-token maps are for a timm ViT with a class token")
        entry = self.explained(key, path)
        layer = layer or click_sites(entry.session)[-1]
        return vit_handlers.class_attention_view(entry, loaded, layer, head or MEAN)

    def heads(self, key: str, path: str, layer: str) -> list[str]:
        return head_choices(self.explained(key, path).session, layer)

    def groups(self, key: str, path: str, block: str, pixel: tuple[int, int] | None):
        """A GP block's group assignment coloured over the image, the pixel's attention through the
        groups (None without a pixel), and a caption."""
        entry = self.explained(key, path, "GP groups")
        session, image = entry.session, entry.decoded.pixels
        assignment = session.group_assignment(block).numpy()
        coloured = overlay(image, colorize(assignment, default_palette(int(assignment.max()) + 1)), 0.5)
        effective = None
        if pixel is not None:
            effective = mark_pixel(heat_overlay(image, session.effective_attention_at(*pixel, block)), *pixel)
        return coloured, effective, f"{block}: {len(np.unique(assignment))} groups hold pixels"

    # ----------------------------------------------------------------------------- attributions (lock)

    def attribution(self, key: str, path: str, pixel: tuple[int, int] | None, method: str):
        """The captum attribution of the clicked pixel's class over its region, as a heat map over the
        image, and a caption (a ViT: its top class's relevance). Runs the model, under its lock.
        Occlusion windows are sized from the model input, where captum runs."""
        loaded = self.models.find(key)
        if loaded.detects:
            return None, SEGMENTATION_ONLY.format("attributions")
        if loaded.vit:  # no regions to attribute: the top class's relevance, no click needed
            return vit_handlers.relevance_view(self.sessions.get(loaded, path), loaded)
        if not path or pixel is None:
            raise ValueError("click a pixel first: its class over its region is attributed")
        if method not in ATTRIBUTIONS:
            raise ValueError(f"method must be one of {', '.join(ATTRIBUTIONS)}, got {method!r}")
        entry = self.sessions.get(loaded, path)
        session = entry.session
        labels = session.prediction.labels
        region = clicked_region(labels, *pixel)
        target = int(labels[tuple(pixel)])
        start = time.perf_counter()
        with loaded.lock:
            heat = session.attribute(target, region, method, **ATTRIBUTIONS[method](session.view.size))
        name = session.predictor.classes.names[target]
        text = (
            f"{method}: class {name!r} over its {int(region.sum())}-pixel region at (y={pixel[0]}, "
            f"x={pixel[1]}), {time.perf_counter() - start:.1f} s"
        )
        return heat_overlay(entry.decoded.pixels, heat, cmap="coolwarm", alpha=0.6), text


def _name_and_dataset(predictor, source: str) -> tuple[str, str]:
    """The model's name and data set: from the run's config for a workbench checkpoint, else the
    architecture timm names and an unknown data set (a released file says only its class count)."""
    from workbench.interop.checkpoint import checkpoint_config

    try:
        cfg = checkpoint_config(source)
        return cfg.model.name, cfg.data.dataset
    except (ValueError, OSError):
        architecture = (getattr(predictor.model, "pretrained_cfg", None) or {}).get("architecture")
        return architecture or type(predictor.model).__name__, "not recorded (a released checkpoint)"


def one_line(error: Exception) -> str:
    """An error's first line (its type's name when it has no message): what the page shows."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


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
