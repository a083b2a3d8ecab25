"""Detection: COCO box and mask mAP with pycocotools' evaluator, and the detection ``Task``.

    metrics = evaluate_detector(detector, val_set)   # val_set: a CocoDetection (its .coco is the truth)
    metrics["bbox_mAP"], metrics["segm_mAP_50"], metrics["per_category"]["disc"]["bbox"]

Figures are percent (COCO's AP x 100, as the papers print them). Predictions are taken in eval mode
at each image's own size (the detector resizes inside and maps its boxes back); masks are thresholded
at 0.5 and run-length encoded. Under DDP each process predicts its share and all of them evaluate
the gathered results.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import nn
from tqdm import tqdm

from workbench.config import Config
from workbench.engine.distributed import is_main
from workbench.precision import autocast, run_precision

SUMMARY = ("mAP", "mAP_50", "mAP_75", "mAP_s", "mAP_m", "mAP_l")  # COCOeval.stats[0:6]


def coco_results(
    detections: dict[str, torch.Tensor], image_id: int, category_of: dict[int, int]
) -> tuple[list[dict], list[dict]]:
    """One image's detections (boxes x1 y1 x2 y2, labels 1..K, scores, masks (N, 1, H, W) or none)
    -> COCO result entries for boxes and for masks."""
    boxes = detections["boxes"].detach().cpu().float()
    scores = detections["scores"].detach().cpu().tolist()
    categories = [category_of[int(label)] for label in detections["labels"].cpu()]
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
    box_results = [
        {"image_id": image_id, "category_id": c, "bbox": b, "score": s}
        for c, b, s in zip(categories, xywh, scores, strict=True)
    ]
    mask_results = []
    if "masks" in detections:
        binary = (detections["masks"][:, 0] > 0.5).cpu().numpy().astype(np.uint8)
        for mask, category, score in zip(binary, categories, scores, strict=True):
            rle = mask_utils.encode(np.asfortranarray(mask))
            rle["counts"] = rle["counts"].decode()
            mask_results.append(
                {"image_id": image_id, "category_id": category, "segmentation": rle, "score": score}
            )
    return box_results, mask_results


def coco_metrics(truth: COCO, results: list[dict], kind: str, names: dict[int, str]) -> dict[str, Any]:
    """COCOeval of ``results`` (``kind``: "bbox" or "segm"): the six summary APs and the AP of each
    category (IoU 0.5:0.95, all areas, 100 detections; NaN for a category without ground truth)."""
    if not results:
        return {
            **{f"{kind}_{name}": 0.0 for name in SUMMARY},
            "per_category": {name: 0.0 for name in names.values()},
        }
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(truth, truth.loadRes(results), kind)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    # COCOeval writes -1 where an area range holds no ground truth: NaN here, not -100%.
    metrics: dict[str, Any] = {
        f"{kind}_{name}": float(value) * 100 if value >= 0 else float("nan")
        for name, value in zip(SUMMARY, evaluator.stats, strict=False)
    }
    precision = evaluator.eval["precision"]  # (IoUs, recalls, categories, areas, max detections)
    per_category = {}
    for k, category in enumerate(evaluator.params.catIds):
        values = precision[:, :, k, 0, -1]
        values = values[values > -1]
        per_category[names[category]] = float(values.mean()) * 100 if values.size else float("nan")
    metrics["per_category"] = per_category
    return metrics


def _gather(items: list, world: int) -> list:
    if world == 1:
        return items
    gathered: list[list] = [[] for _ in range(world)]
    dist.all_gather_object(gathered, items)
    return [item for part in gathered for item in part]


@torch.no_grad()
def evaluate_detector(
    model: nn.Module,
    dataset: Any,
    device: torch.device | str = "cpu",
    rank: int = 0,
    world: int = 1,
    progress: bool = True,
    precision: str = "fp32",
    batch_size: int = 1,
) -> dict[str, Any]:
    """COCO bbox (and segm, for a detector that predicts masks) metrics of ``model`` on ``dataset``
    (a ``CocoDetection``); ``per_category`` maps each class to its bbox (and segm) AP."""
    chosen = run_precision(precision, device)
    was_training = model.training
    model.eval()
    category_of = {label: category for category, label in dataset.label_of.items()}
    boxes, masks = [], []
    indices = list(range(rank, len(dataset), world))
    batches = [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]
    for batch in tqdm(batches, desc="eval", disable=not (progress and is_main()), leave=False):
        images = [dataset[index][0].to(device) for index in batch]
        with autocast(chosen, device):
            detections = model(images)
        for index, found in zip(batch, detections, strict=True):
            box_results, mask_results = coco_results(found, dataset.image_ids[index], category_of)
            boxes += box_results
            masks += mask_results
    model.train(was_training)
    boxes, masks = _gather(boxes, world), _gather(masks, world)
    names = {category: dataset.classes.names[label] for category, label in dataset.label_of.items()}
    metrics = coco_metrics(dataset.coco, boxes, "bbox", names)
    per_category = {name: {"bbox": ap} for name, ap in metrics.pop("per_category").items()}
    if getattr(model, "roi_heads", None) is not None and model.roi_heads.has_mask():
        segm = coco_metrics(dataset.coco, masks, "segm", names)
        for name, ap in segm.pop("per_category").items():
            per_category[name]["segm"] = ap
        metrics.update(segm)
    metrics["per_category"] = per_category
    return metrics


class Detection:
    name = "detection"
    # Mask figures only where the detector predicts masks (Mask R-CNN; not RetinaNet).
    metric_names = ("bbox_mAP", "bbox_mAP_50", "bbox_mAP_75", "segm_mAP", "segm_mAP_50", "segm_mAP_75")
    best_metric = "bbox_mAP"

    def check(self, cfg: Config, val_set: Any) -> None:
        """The validation annotations were read (and checked by pycocotools) when the set was built."""

    def evaluate(
        self,
        cfg: Config,
        model: nn.Module,
        val_set: Any,
        device: torch.device | str = "cpu",
        rank: int = 0,
        world: int = 1,
        progress: bool = True,
    ) -> dict[str, Any]:
        """COCO box (and mask) mAP, percent, with the per-category table."""
        return evaluate_detector(model, val_set, device, rank, world, progress, cfg.amp, cfg.data.batch_size)
