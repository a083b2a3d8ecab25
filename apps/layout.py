"""The Blocks: the page's components and their wiring to the handlers (``apps.handlers``), and the API
for ``gradio_client``. Layout and wiring only."""

from __future__ import annotations

import gradio as gr
import numpy as np

from apps.handlers import Workbench, can_roll, click_sites, demo_examples, head_choices, legend_html
from apps.settings import ATTRIBUTIONS, IMAGE_HEIGHT, MEAN, SCORE_THRESHOLD, SEGMENTATION_ONLY
from workbench.data.classes import default_palette
from workbench.viz.explorers import heat_overlay, mark_pixel
from workbench.viz.groups import gp_sites
from workbench.viz.overlay import colorize, overlay
from workbench.viz.summary import attention_distribution, class_areas


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
