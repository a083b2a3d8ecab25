"""The Blocks: the page's components and their wiring to the handlers (``apps.handlers``), and the API
for ``gradio_client``. Layout and wiring only: every answer comes from a ``Workbench`` handler, whose
one-line ValueError becomes the page's error."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from contextlib import contextmanager

import gradio as gr

from apps.handlers import Workbench, demo_examples, one_line
from apps.settings import ATTRIBUTIONS, IMAGE_HEIGHT, MEAN, SCORE_THRESHOLD
from apps.vit_handlers import TOP_HEADERS

AREA_HEADERS = ["class", "pixels", "area %"]
ATTRIBUTE = "attribute the clicked pixel's class over its region"
RELEVANCE = "relevance of the top class (Chefer et al.)"  # a ViT's: it has no regions


@contextmanager
def shown_as_error() -> Iterator[None]:
    """A handler's refusal (or an unreadable file) as the page's one-line error."""
    try:
        yield
    except (ValueError, OSError) as error:
        raise gr.Error(one_line(error)) from None


def build_app(workbench: Workbench) -> gr.Blocks:
    examples = demo_examples()
    detects, vit = workbench.default.detects, workbench.default.vit
    with gr.Blocks(title="ViT dense-prediction workbench", analytics_enabled=False) as app:
        model_key = gr.State(workbench.default.key)
        image_path = gr.State("")
        clicked = gr.State(None)
        gr.Markdown(
            "## ViT dense-prediction workbench\nUpload an image or pick an example, then click a pixel."
        )
        model_card = gr.Markdown(workbench.model_card(workbench.default.key), elem_id="model-card")
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
                opacity = gr.Slider(0.0, 1.0, value=1.0 if vit else 0.5, step=0.05, label="opacity")
                foreground = gr.Slider(
                    0.0,
                    1.0,
                    value=0.0,
                    step=0.05,
                    label="PCA foreground threshold on the first component (0: every patch)",
                    visible=vit,
                    elem_id="foreground",
                )
                notice = gr.Markdown(elem_id="notice")
                with gr.Accordion("model", open=False, elem_id="model-box"):
                    checkpoint = gr.Textbox(
                        label="checkpoint (run folder, checkpoint or released file)", elem_id="checkpoint"
                    )
                    with gr.Row():
                        model_name = gr.Textbox(
                            label="segmentor or detector for a released file, or timm:NAME (a timm ViT)",
                            placeholder="gpvit_l1_upernet or timm:vit_small_patch16_224.dino",
                        )
                        num_classes = gr.Number(label="classes", precision=0, value=None)
                    load = gr.Button("load", elem_id="load")
                    report = gr.Textbox(value=workbench.default.report, label="load report", lines=4)
            with gr.Column(scale=2):
                segmentation = gr.Image(
                    label="patch features' PCA: click a pixel" if vit else "segmentation: click a pixel",
                    format="png",
                    interactive=False,
                    elem_id="segmentation",
                )
                legend = gr.HTML(elem_id="legend")
                areas = gr.Dataframe(
                    headers=TOP_HEADERS if vit else AREA_HEADERS,
                    label="top-5 classes" if vit else "area per class",
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
                    rollout = gr.Checkbox(
                        label="rollout (SETR, ViT)", value=False, interactive=False, elem_id="rollout"
                    )
                    class_token = gr.Checkbox(
                        label="class token's map (not the clicked pixel's)",
                        value=False,
                        visible=vit,
                        elem_id="class-token",
                    )
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
                method = gr.Radio(
                    list(ATTRIBUTIONS), value="occlusion", label="captum method", visible=not vit
                )
                attribute_button = gr.Button(RELEVANCE if vit else ATTRIBUTE, elem_id="attribute")
                attribution_image = gr.Image(
                    label="attribution (signed)", format="png", height=IMAGE_HEIGHT, elem_id="attribution-map"
                )
                attribution_text = gr.Markdown(elem_id="attribution-text")

        def segment(key, path, alpha, score_threshold, threshold_pca=0.0):
            """The main tab for a new image or model (a dict: component -> value); clicks are reset."""
            with shown_as_error():
                view = workbench.segment(key, path, alpha, score_threshold, threshold_pca)
            headers, label = (TOP_HEADERS, "top-5 classes") if view.vit else (AREA_HEADERS, "area per class")
            return {
                segmentation: view.picture,
                legend: view.legend,
                areas: gr.update(
                    value=view.areas,
                    visible=not view.detects and (not view.vit or bool(view.areas)),
                    headers=headers,
                    label=label,
                ),
                foreground: gr.update(visible=view.vit),
                class_token: gr.update(value=False, visible=view.class_token),
                method: gr.update(visible=not view.vit),
                attribute_button: gr.update(value=RELEVANCE if view.vit else ATTRIBUTE),
                detection_panel: gr.update(visible=view.detects),
                detection_table: view.detections,
                notice: view.notice,
                image_path: path or "",
                clicked: None,
                layer: gr.update(choices=view.sites, value=view.sites[-1] if view.sites else None),
                head: gr.update(choices=view.heads, value=MEAN),
                rollout: gr.update(value=False, interactive=view.can_roll),
                block: gr.update(choices=view.blocks, value=view.blocks[0] if view.blocks else None),
                groups_image: view.groups[0],
                effective_image: view.groups[1],
                groups_text: view.groups[2],
                attention_image: None,
                click_text: "",
            }

        def on_threshold(key, path, alpha, score_threshold):
            with shown_as_error():
                return workbench.detection_view(key, path, alpha, score_threshold)

        def on_click(key, path, name, head_value, roll, gp_block, evt: gr.SelectData):
            """The clicked pixel's attention (a ViT's class-token map gives way to it)."""
            x, y = (int(v) for v in evt.index[:2])
            with shown_as_error():
                view = workbench.click(key, path, y, x, name or "", head_value or MEAN, roll, gp_block or "")
            return (y, x), view.heat, view.text, view.effective, False

        def attention_view(key, path, pixel, name, head_value, roll, cls):
            if not path or (pixel is None and not cls):
                return None, ""
            with shown_as_error():
                if cls:
                    return workbench.class_attention(key, path, name or "", head_value or MEAN)
                view = workbench.click(key, path, *pixel, name or "", head_value or MEAN, roll)
            return view.heat, view.text

        def on_layer(key, path, pixel, name, roll, cls):
            if not path or not name:
                return gr.update(), None, ""
            with shown_as_error():
                heads = workbench.heads(key, path, name)
            view = attention_view(key, path, pixel, name, MEAN, roll, cls)
            return (gr.update(choices=heads, value=MEAN), *view)

        def on_block(key, path, gp_block, pixel):
            if not path or not gp_block:
                return None, None, ""
            with shown_as_error():
                return workbench.groups(key, path, gp_block, pixel)

        def on_opacity(key, path, alpha, score_threshold, threshold_pca):
            with shown_as_error():
                return workbench.picture(key, path, alpha, score_threshold, threshold_pca)

        def on_attribute(key, path, pixel, chosen, progress=gr.Progress()):  # noqa: B008 (Gradio's idiom)
            progress(0.0, desc=f"{chosen}")
            with shown_as_error():
                return workbench.attribution(key, path, pixel, chosen)

        def on_load(path, name, classes, current_path):
            with shown_as_error():
                loaded = workbench.load(path, name, classes)
            return loaded.key, loaded.report

        def show_model(key):
            with shown_as_error():
                return workbench.model_card(key)

        def pick_example(evt: gr.SelectData):
            return examples[evt.index][0]

        segmented = [segmentation, legend, areas, detection_panel, detection_table, notice, image_path]
        segmented += [clicked, layer, head, rollout, block, groups_image, effective_image, groups_text]
        segmented += [attention_image, click_text, foreground, class_token, method, attribute_button]
        ui = {"api_visibility": "private"}
        upload.change(segment, [model_key, upload, opacity, threshold, foreground], segmented, **ui)
        gallery.select(pick_example, None, upload, **ui)
        for control in (opacity, foreground):
            control.release(
                on_opacity, [model_key, image_path, opacity, threshold, foreground], segmentation, **ui
            )
        threshold.release(
            on_threshold,
            [model_key, image_path, opacity, threshold],
            [segmentation, notice, detection_table],
            **ui,
        )
        segmentation.select(
            on_click,
            [model_key, image_path, layer, head, rollout, block],
            [clicked, attention_image, click_text, effective_image, class_token],
            **ui,
        )
        layer.input(
            on_layer,
            [model_key, image_path, clicked, layer, rollout, class_token],
            [head, attention_image, click_text],
            **ui,
        )
        for control in (head, rollout, class_token):
            control.input(
                attention_view,
                [model_key, image_path, clicked, layer, head, rollout, class_token],
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
        ).then(show_model, model_key, model_card, **ui).then(
            segment, [model_key, image_path, opacity, threshold, foreground], segmented, **ui
        )
        add_api(app, workbench)
    return app


def add_api(app: gr.Blocks, workbench: Workbench) -> None:
    """``/label_map``, ``/label_png``, ``/attention``, ``/attention_png`` and ``/detections`` for
    ``gradio_client`` (hidden components; the model the app started with). Each refuses the other kind
    of model in one line (a timm ViT answers the attention ones only). The compact answers carry their
    PNG inline, base64 in ``"png"``: for ``/attention_png`` with {"scale", "height", "width"} (the
    distribution is ``png / 65535 * scale``), for ``/label_png`` with the class names and the frame
    (``apps.handlers``)."""

    def label_map(path: str) -> dict:
        with shown_as_error():
            return workbench.label_map(workbench.default.key, path)

    def attention(path: str, y: float, x: float, layer: str, head: str) -> dict:
        with shown_as_error():
            return workbench.attention_json(
                workbench.default.key, path, int(y), int(x), layer or "", head or MEAN
            )

    def attention_png(path: str, y: float, x: float, layer: str, head: str) -> dict:
        with shown_as_error():
            png, frame = workbench.attention_png(
                workbench.default.key, path, int(y), int(x), layer or "", head or MEAN
            )
        return {"png": base64.b64encode(png).decode("ascii"), **frame}

    def label_png(path: str) -> dict:
        with shown_as_error():
            png, answer = workbench.label_png(workbench.default.key, path)
        return {"png": base64.b64encode(png).decode("ascii"), **answer}

    def detections(path: str, score_threshold: float) -> dict:
        """Label, score and box (x1, y1, x2, y2 in the image's pixels, as ``height``/``width`` say) of
        each detection scoring at least ``score_threshold``."""
        with shown_as_error():
            entry, found = workbench.detections(workbench.default.key, path, float(score_threshold))
        return {"detections": found.to_json(), **entry.frame()}

    with gr.Row(visible=False):
        image = gr.File(type="filepath")
        y, x = gr.Number(precision=0), gr.Number(precision=0)
        layer, head = gr.Textbox(), gr.Textbox()
        score_threshold = gr.Number(value=SCORE_THRESHOLD)
        result = gr.JSON()
        run_label_map, run_attention, run_detections = gr.Button(), gr.Button(), gr.Button()
        run_attention_png, run_label_png = gr.Button(), gr.Button()
    run_label_map.click(label_map, image, result, api_name="label_map")
    run_attention.click(attention, [image, y, x, layer, head], result, api_name="attention")
    run_attention_png.click(attention_png, [image, y, x, layer, head], result, api_name="attention_png")
    run_label_png.click(label_png, image, result, api_name="label_png")
    run_detections.click(detections, [image, score_threshold], result, api_name="detections")
