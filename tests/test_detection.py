"""Detection: deformable attention, every detector kind trains and predicts, COCO evaluation, the
mmdet checkpoint layout, parameter counts against the README, the engine and explain mode."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import workbench
from tests.tiny import tiny_detection_config
from workbench.cli import main
from workbench.config import ScheduleConfig
from workbench.data.classes import DEMO
from workbench.data.coco import collate_detection
from workbench.data.demo_detection import DemoDetection, ensure_demo_detection_set
from workbench.engine import train
from workbench.engine.detection import coco_metrics, coco_results, evaluate_detector
from workbench.engine.optim import learning_rate
from workbench.inference.detection_predictor import Detections
from workbench.interop import export_state, load_pretrained
from workbench.models.complexity import count_params
from workbench.models.detection import create_detector, detector_info, list_detectors
from workbench.models.detection.deform_attn import multi_scale_deformable_attention
from workbench.viz import record

KINDS = ["gpvit_l1_maskrcnn", "gpvit_l1_retinanet", "hlg_small_maskrcnn", "hlg_small_retinanet"]


def _bilinear(value: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """value (D, H, W) at pixel coordinates (x, y), zero outside: the textbook formula."""
    _, height, width = value.shape
    x0, y0 = math.floor(x), math.floor(y)
    total = torch.zeros(value.shape[0], dtype=value.dtype)
    for dy in (0, 1):
        for dx in (0, 1):
            xi, yi = x0 + dx, y0 + dy
            if 0 <= xi < width and 0 <= yi < height:
                weight = (1 - abs(x - xi)) * (1 - abs(y - yi))
                total += weight * value[:, yi, xi]
    return total


def test_deformable_attention_equals_a_direct_sampling_loop():
    shapes = [(5, 7), (3, 4), (2, 2)]
    batch, queries, heads, depth, points = 2, 4, 2, 3, 3
    value = torch.randn(batch, sum(h * w for h, w in shapes), heads, depth, dtype=torch.float64)
    locations = torch.rand(batch, queries, heads, len(shapes), points, 2, dtype=torch.float64) * 1.4 - 0.2
    weights = torch.rand(batch, queries, heads, len(shapes), points, dtype=torch.float64).softmax(-1)
    fast = multi_scale_deformable_attention(value, shapes, locations, weights)
    expected = torch.zeros(batch, queries, heads, depth, dtype=torch.float64)
    starts = [0, *torch.tensor([h * w for h, w in shapes]).cumsum(0).tolist()]
    for b in range(batch):
        for q in range(queries):
            for m in range(heads):
                for level, (height, width) in enumerate(shapes):
                    level_value = value[b, starts[level] : starts[level + 1], m].T.reshape(
                        depth, height, width
                    )
                    for p in range(points):
                        x, y = locations[b, q, m, level, p].tolist()
                        sample = _bilinear(level_value, x * width - 0.5, y * height - 0.5)
                        expected[b, q, m] += weights[b, q, m, level, p] * sample
    torch.testing.assert_close(fast, expected.reshape(batch, queries, heads * depth))


@pytest.fixture(scope="module")
def tiny_sets():
    root = ensure_demo_detection_set(64, 8, 4)
    train_set = DemoDetection(*DemoDetection.split_files(root, "train"))
    val_set = DemoDetection(*DemoDetection.split_files(root, "val"))
    return train_set, val_set


def _tiny(name: str, **overrides):
    return create_detector(name, num_classes=5, **{**detector_info(name).tiny, **overrides})


@pytest.mark.parametrize("name", KINDS)
def test_detector_trains_and_predicts_on_odd_sizes(name, tiny_sets):
    train_set, _ = tiny_sets
    threshold = {"box_score_thresh": 0.0} if "maskrcnn" in name else {"score_thresh": 0.0}
    model = _tiny(name, **threshold)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    for step in range(2):
        images, targets = collate_detection([train_set[2 * step], train_set[2 * step + 1]])
        losses = model.losses(images, targets)
        assert set(losses) > {"loss"} and all(torch.isfinite(v) for v in losses.values())
        optimizer.zero_grad()
        losses["loss"].backward()
        silent = [
            n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()
        ]
        assert not silent, f"parameters without a finite gradient: {silent[:5]}"
        optimizer.step()
    model.eval()
    sizes = [(75, 61), (50, 93)]
    with torch.no_grad():
        detections = model([torch.rand(3, *size) for size in sizes])
    for found, (height, width) in zip(detections, sizes, strict=True):
        count = len(found["boxes"])
        assert count > 0 and found["boxes"].shape == (count, 4) and found["scores"].shape == (count,)
        assert found["labels"].min() >= 1 and found["labels"].max() <= 5
        assert (found["boxes"][:, 2] <= width).all() and (found["boxes"][:, 3] <= height).all()
        if "maskrcnn" in name:
            assert found["masks"].shape == (count, 1, height, width)
        else:
            assert "masks" not in found


def test_coco_evaluation_of_the_ground_truth_is_perfect(tiny_sets):
    _, val_set = tiny_sets
    category_of = {label: category for category, label in val_set.label_of.items()}
    names = {category: val_set.classes.names[label] for category, label in val_set.label_of.items()}
    exact, shifted = ([], []), ([], [])
    for index in range(len(val_set)):
        _, target = val_set[index]
        truth = {
            "boxes": target["boxes"],
            "labels": target["labels"],
            "scores": torch.ones(len(target["labels"])),
            "masks": target["masks"][:, None].float(),
        }
        moved = {**truth, "boxes": truth["boxes"] + 6, "masks": truth["masks"].roll(6, dims=-1)}
        for results, detections in ((exact, truth), (shifted, moved)):
            boxes, masks = coco_results(detections, val_set.image_ids[index], category_of)
            results[0].extend(boxes)
            results[1].extend(masks)
    perfect_box, perfect_mask = (
        coco_metrics(val_set.coco, r, k, names) for r, k in zip(exact, ("bbox", "segm"), strict=True)
    )
    assert perfect_box["bbox_mAP"] == pytest.approx(100.0) and perfect_mask["segm_mAP"] == pytest.approx(
        100.0
    )
    assert all(
        ap == pytest.approx(100.0) for ap in perfect_box["per_category"].values() if not math.isnan(ap)
    )
    worse = coco_metrics(val_set.coco, shifted[0], "bbox", names)
    assert worse["bbox_mAP"] < 90.0  # a shift of 6 pixels on 10-30 pixel shapes costs AP: it can fail


def test_parameter_counts_against_the_readme():
    """Built on the meta device with COCO's 80 classes. The GPViT README gives whole millions cut off
    (as for its segmentors): each count must fall in [figure, figure + 1) M, i.e. within 2% of the
    printed figure except where cutting off alone costs more (21.46M -> 21M, 37.91M -> 37M)."""
    for name in list_detectors():
        with torch.device("meta"):
            params = count_params(create_detector(name)) / 1e6
        figure = detector_info(name).params_m
        if figure is None:  # HLG's README gives no detector counts: they build, and are larger than HLG
            assert params > 30
            continue
        assert figure <= params < figure + 1, f"{name}: {params:.2f}M against the README's {figure}M"
        assert abs(params / figure - 1) < 0.025, name


@pytest.mark.parametrize("name", ["gpvit_l1_maskrcnn", "gpvit_l1_retinanet", "hlg_small_maskrcnn"])
def test_official_mmdet_layout_round_trip(name, tmp_path):
    torch.manual_seed(0)
    threshold = {"box_score_thresh": 0.0} if "maskrcnn" in name else {"score_thresh": 0.0}
    model = _tiny(name, **threshold).eval()
    state = export_state(model, "mmdet_detection")
    released_names = {  # as the released modules name them (mmdet 2.x, GPViT-Adapter, HLG)
        "gpvit_l1_maskrcnn": [
            "backbone.layers.1.group_layer.attn.k_proj.weight",
            "backbone.interactions.3.extra_extractors.1.ffn.dwconv.dwconv.weight",
            "backbone.interactions.0.injector.attn.sampling_offsets.bias",
            "backbone.spm.fc1.weight",
            "backbone.up.weight",
            "backbone.ad_norm1.running_var",
            "neck.lateral_convs.3.bn.weight",
            "neck.fpn_convs.0.conv.weight",
            "rpn_head.rpn_conv.weight",
            "roi_head.bbox_head.shared_convs.3.bn.running_mean",
            "roi_head.bbox_head.shared_fcs.0.weight",
            "roi_head.mask_head.upsample.weight",
        ],
        "gpvit_l1_retinanet": [
            "backbone.level_embed",
            "neck.fpn_convs.4.bn.weight",
            "bbox_head.cls_convs.3.conv.weight",
            "bbox_head.retina_reg.bias",
        ],
        "hlg_small_maskrcnn": ["backbone.s0_conv.0.0.weight", "roi_head.bbox_head.shared_fcs.1.weight"],
    }[name]
    assert set(released_names) <= set(state)
    assert not any(k.startswith("backbone.ln1.") for k in state)  # final_norm=False
    if "maskrcnn" in name:  # mmdet's class rows: background last in fc_cls, none in fc_reg / conv_logits
        assert state["roi_head.bbox_head.fc_cls.weight"].shape[0] == 6
        assert state["roi_head.bbox_head.fc_reg.weight"].shape[0] == 20
        assert state["roi_head.mask_head.conv_logits.weight"].shape[0] == 5
    torch.save(state, tmp_path / "official.pth")
    torch.manual_seed(1)
    fresh = _tiny(name, **threshold).eval()
    report = load_pretrained(fresh, tmp_path / "official.pth")
    assert report.format == "mmdet_detection" and report.clean and not report.kept, str(report)
    assert len(report.loaded) == len(state) == len(fresh.state_dict())
    images = [torch.rand(3, 70, 90)]
    with torch.no_grad():
        before, after = model(images)[0], fresh(images)[0]
    assert len(before["boxes"]) > 0
    for key in before:
        torch.testing.assert_close(after[key], before[key])


def test_the_released_full_size_class_rows_have_mmdet_shapes():
    with torch.device("meta"):
        state = export_state(create_detector("gpvit_l1_maskrcnn"), "mmdet_detection")
    assert state["roi_head.bbox_head.fc_cls.weight"].shape == (81, 1024)
    assert state["roi_head.bbox_head.fc_reg.weight"].shape == (320, 1024)
    assert state["roi_head.mask_head.conv_logits.weight"].shape == (80, 256, 1, 1)
    assert state["backbone.interactions.0.injector.attn.sampling_offsets.weight"].shape == (
        6 * 3 * 4 * 2,
        216,
    )
    assert state["backbone.interactions.0.extractor.ffn.fc1.weight"].shape == (54, 216)


def test_record_group_maps_of_a_detector():
    model = _tiny("gpvit_l1_maskrcnn").eval()
    body = model.backbone.body
    with torch.no_grad(), record(body, layers=["blocks.1.grouping"]) as rec:
        plain = model([torch.rand(3, 64, 80)])
    groups = rec.attention["blocks.1.grouping"].group_maps()
    assert groups.shape[:3] == (1, 6, 8) and groups.shape[-2:] == (96 // 8, 128 // 8)  # resized to 96 x 128
    assert plain[0]["boxes"].shape[1] == 4


def test_step_schedule_with_warm_up():
    cfg = ScheduleConfig(policy="step", steps=(8, 11), gamma=0.1, warmup_iters=4, warmup_ratio=0.001)
    rates = [learning_rate(step, 12, 1.0, cfg) for step in range(12)]
    assert rates[0] == pytest.approx(0.001) and rates[4:8] == [1.0] * 4
    assert rates[8] == pytest.approx(0.1) and rates[11] == pytest.approx(0.01)


def test_train_loop_trains_evaluates_and_resumes_a_detector(tmp_path):
    cfg = tiny_detection_config("gpvit_l1_retinanet", tmp_path / "run")
    result = train(cfg, progress=False)
    assert result["step"] == 2 and math.isfinite(result["losses"]["loss"])
    assert {"bbox_mAP", "bbox_mAP_50", "per_category"} <= set(result["metrics"])
    assert set(result["metrics"]["per_category"]) == {"disc", "square", "triangle", "ring", "cross"}
    cfg.iters = 3
    resumed = train(cfg, progress=False)
    assert resumed["step"] == 3
    assert "val/bbox_mAP" in (tmp_path / "run" / "log.csv").read_text().splitlines()[0]

    # workbench predict on a detection run: the drawing and the list of detections
    image = next((ensure_demo_detection_set(64, 8, 4) / "val").glob("*.png"))
    assert (
        main(["predict", str(image), "--checkpoint", str(tmp_path / "run"), "--out", str(tmp_path / "out")])
        == 0
    )
    assert (tmp_path / "out" / f"{image.stem}_detections.png").is_file()
    assert isinstance(json.loads((tmp_path / "out" / f"{image.stem}_detections.json").read_text()), list)


def test_detections_are_drawn_with_their_masks_boxes_and_labels():
    image = np.full((40, 50, 3), 128, np.uint8)
    mask = np.zeros((1, 40, 50), bool)
    mask[0, 10:20, 10:30] = True
    detections = Detections(np.array([[5.0, 5.0, 35.0, 25.0]]), np.array([2]), np.array([0.9]), mask, DEMO)
    drawn = detections.draw(image)
    assert drawn.shape == image.shape and (drawn[15, 20] != 128).any()  # the mask, in its colour
    assert tuple(drawn[5, 20]) == DEMO.palette[2]  # the box outline
    assert (drawn[30:, 40:] == 128).all()  # untouched elsewhere
    assert detections.to_json() == [{"label": "square", "score": 0.9, "box": [5.0, 5.0, 35.0, 25.0]}]


def test_models_table_lists_detectors():
    from workbench.viz.tables import models_table

    table = models_table("gpvit_l1_retinanet")
    assert "gpvit_l1_retinanet" in table and "21.00" in table
    assert workbench.create_detector is create_detector


def test_detector_evaluation_reports_masks_and_boxes(tiny_sets):
    _, val_set = tiny_sets
    metrics = evaluate_detector(_tiny("gpvit_l1_maskrcnn"), val_set, progress=False, batch_size=2)
    assert {"bbox_mAP", "segm_mAP"} <= set(metrics)
    assert all(set(aps) == {"bbox", "segm"} for aps in metrics["per_category"].values())
