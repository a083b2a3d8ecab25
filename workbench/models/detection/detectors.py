"""Detectors: GPViT-Adapter and HLG pyramids with FPN in torchvision's Mask R-CNN and RetinaNet.

    detector = workbench.create_detector("gpvit_l1_maskrcnn", num_classes=80)
    losses = detector.losses(images, targets)   # training mode: {"loss", "loss_classifier", ...}
    detector.eval()(images)                     # [{"boxes", "labels", "scores", "masks"}, ...]

Images are lists of (3, H, W) float tensors in [0, 1] of any size; torchvision's transform inside
the model normalises them, resizes them as mmdet's test and training pipelines do (short side
``min_size``=800, long side at most ``max_size``=1333, aspect kept), pads the batch to multiples of 32,
and maps the predictions back to each image's own size. Labels are 1..num_classes (0: background) for
both kinds of detector.

The heads are torchvision's, set up as the released configs: GPViT Mask R-CNN uses mmdet's
``Shared4Conv1FCBBoxHead`` with BN (torchvision's ``FastRCNNConvFCHead``) and an FPN with BN; HLG's
Mask R-CNN the two-FC box head and a plain FPN. RetinaNet: 4-conv branches, 9 anchors
(4 x stride x 2^(i/3), ratios 0.5, 1, 2), extra FPN levels P6, P7 by stride-2 3x3 convs without a
ReLU between them (mmdet's default), on the FPN output (GPViT) or on C5 (HLG, ``start_level=1``).
Anchors are mmdet's (``anchors.py``: configured strides, fractional base anchors), not torchvision's.
Differences from mmdet 2.x that change no parameter count: torchvision's box regression of a
two-stage head holds rows for the background class (mmdet's does not), and its mask logits one more
channel.

HLG-Large detection uses the detection config's depths 2-2-14-2 (the segmentation models use 18).
"""

from __future__ import annotations

import difflib
import inspect
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import nn
from torchvision.models.detection import MaskRCNN, RetinaNet
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, LastLevelMaxPool

from workbench.config import IMAGENET_MEAN, IMAGENET_STD
from workbench.models.detection.adapter import GPViTAdapter
from workbench.models.detection.anchors import retinanet_anchors, rpn_anchors
from workbench.models.gpvit import GPViT
from workbench.models.hlg import HLG
from workbench.models.registry import model_info


class ExtraConvs(ExtraFPNBlock):
    """mmdet FPN's extra levels: P6 = conv(source), P7 = conv(P6), 3x3 stride 2, no ReLU between
    (``relu_before_extra_convs=False``); source = P5 (``on_output``) or C5 (``on_input``)."""

    def __init__(
        self, in_channels: int, out_channels: int, on_input: bool, norm_layer: Callable | None = None
    ) -> None:
        super().__init__()
        self.on_input = on_input
        self.convs = nn.ModuleList(
            _conv(channels, out_channels, 3, 2, norm_layer) for channels in (in_channels, out_channels)
        )

    def forward(
        self, results: list[torch.Tensor], x: list[torch.Tensor], names: list[str]
    ) -> tuple[list[torch.Tensor], list[str]]:
        level = x[-1] if self.on_input else results[-1]
        for conv in self.convs:
            level = conv(level)
            results.append(level)
        return results, [*names, "p6", "p7"]


def _conv(
    in_channels: int, out_channels: int, kernel: int, stride: int, norm_layer: Callable | None
) -> nn.Module:
    """A conv (no bias before a norm) and its norm, as mmcv's ConvModule and torchvision's FPN blocks."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, bias=norm_layer is None)
    ]
    if norm_layer is not None:
        layers.append(norm_layer(out_channels))
    return nn.Sequential(*layers)


class PyramidBackbone(nn.Module):
    """A multi-level ``body`` (images -> list of maps), the levels the FPN reads, and the FPN.

    ``body`` is what ``workbench.viz.record`` takes to show a detector's attention (``attention_sites``).
    """

    def __init__(
        self, body: nn.Module, levels: Sequence[int], fpn: FeaturePyramidNetwork, out_channels: int
    ) -> None:
        super().__init__()
        self.body = body
        self.levels = tuple(levels)
        self.fpn = fpn
        self.out_channels = out_channels

    def forward(self, images: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        features = self.body(images)
        return self.fpn(OrderedDict((str(i), features[level]) for i, level in enumerate(self.levels)))


class DetectorMixin:
    """What the workbench asks of a detector besides torchvision's forward."""

    num_classes: int
    backbone: PyramidBackbone

    def losses(self, images: Sequence[torch.Tensor], targets: Sequence[dict[str, torch.Tensor]]) -> dict:
        """Training losses (the model must be in training mode): torchvision's parts and their sum ``loss``."""
        parts = self(list(images), list(targets))
        return {"loss": sum(parts.values()), **parts}

    def no_weight_decay(self) -> set[str]:
        """The backbone's (position embeddings, group tokens, level embedding, position biases)."""
        body = self.backbone.body
        names = body.no_weight_decay() if hasattr(body, "no_weight_decay") else set()
        return {f"backbone.body.{name}" for name in names}


class WorkbenchMaskRCNN(DetectorMixin, MaskRCNN):
    """torchvision's Mask R-CNN (``num_classes`` foreground classes, plus background)."""


class WorkbenchRetinaNet(DetectorMixin, RetinaNet):
    """torchvision's RetinaNet with labels 1..num_classes, as Mask R-CNN's (torchvision's RetinaNet
    numbers its sigmoid classes from 0: the labels are shifted on the way in and out)."""

    def compute_loss(self, targets, head_outputs, anchors):
        shifted = [{**target, "labels": target["labels"] - 1} for target in targets]
        return super().compute_loss(shifted, head_outputs, anchors)

    def postprocess_detections(self, head_outputs, anchors, image_shapes):
        detections = super().postprocess_detections(head_outputs, anchors, image_shapes)
        return [{**detection, "labels": detection["labels"] + 1} for detection in detections]


def _transform_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    return dict(
        min_size=kwargs.pop("min_size", 800),
        max_size=kwargs.pop("max_size", 1333),
        image_mean=[value / 255 for value in IMAGENET_MEAN],
        image_std=[value / 255 for value in IMAGENET_STD],
    )


def mask_rcnn(
    body: nn.Module,
    in_channels: Sequence[int],
    num_classes: int,
    *,
    fpn_norm: bool,
    conv_box_head: bool,
    fpn_channels: int = 256,
    box_fc: int = 1024,
    **kwargs: Any,
) -> WorkbenchMaskRCNN:
    """Mask R-CNN on a 4-level ``body`` (strides 4 .. 32): FPN to 5 levels (P6 by max pooling), RPN,
    box head (4 conv + 1 FC with BN, or 2 FC), 4-conv mask head."""
    norm = nn.BatchNorm2d if fpn_norm else None
    fpn = FeaturePyramidNetwork(list(in_channels), fpn_channels, LastLevelMaxPool(), norm_layer=norm)
    backbone = PyramidBackbone(body, range(4), fpn, fpn_channels)
    box_input = (fpn_channels, 7, 7)
    box_head = (
        FastRCNNConvFCHead(box_input, [fpn_channels] * 4, [box_fc], norm_layer=nn.BatchNorm2d)
        if conv_box_head
        else TwoMLPHead(fpn_channels * 49, box_fc)
    )
    model = WorkbenchMaskRCNN(
        backbone,
        **_transform_kwargs(kwargs),
        rpn_anchor_generator=rpn_anchors(),
        box_head=box_head,
        box_predictor=FastRCNNPredictor(box_fc, num_classes + 1),
        mask_head=MaskRCNNHeads(fpn_channels, [fpn_channels] * 4, 1),
        mask_predictor=MaskRCNNPredictor(fpn_channels, fpn_channels, num_classes + 1),
        **{"rpn_post_nms_top_n_train": 1000, **kwargs},  # mmdet's rpn_proposal.max_per_img
    )
    model.num_classes = num_classes
    return model


def retinanet(
    body: nn.Module,
    in_channels: Sequence[int],
    levels: Sequence[int],
    num_classes: int,
    *,
    fpn_norm: bool,
    extra_on_input: bool,
    fpn_channels: int = 256,
    **kwargs: Any,
) -> WorkbenchRetinaNet:
    """RetinaNet on ``levels`` of ``body`` (strides 8, 16, 32): FPN to 5 levels (P6, P7 by convs)."""
    norm = nn.BatchNorm2d if fpn_norm else None
    used = [in_channels[level] for level in levels]
    extra = ExtraConvs(used[-1] if extra_on_input else fpn_channels, fpn_channels, extra_on_input, norm)
    fpn = FeaturePyramidNetwork(used, fpn_channels, extra, norm_layer=norm)
    anchors = retinanet_anchors()
    model = WorkbenchRetinaNet(
        PyramidBackbone(body, levels, fpn, fpn_channels),
        num_classes,
        **_transform_kwargs(kwargs),
        anchor_generator=anchors,
        head=RetinaNetHead(fpn_channels, anchors.num_anchors_per_location()[0], num_classes),
        **{"detections_per_img": 100, **kwargs},  # mmdet's test_cfg.max_per_img
    )
    model.num_classes = num_classes
    return model


# ---------------------------------------------------------------------------------------------
# The registry of detectors (beside the timm registry: detectors are torchvision models).


@dataclass(frozen=True)
class DetectorInfo:
    name: str
    family: str
    kind: str  # "maskrcnn" or "retinanet"
    entrypoint: Callable[..., nn.Module]
    params_m: float | None  # the README's count, rounded to the million (None: not reported)
    source: str
    tiny: dict[str, Any] = field(default_factory=dict)
    note: str = ""


_DETECTORS: dict[str, DetectorInfo] = {}
# Tiny builds for tests: narrow heads, small images, and fewer sampled anchors, proposals and RoIs.
_TINY_HEADS = {
    "maskrcnn": dict(
        fpn_channels=32,
        box_fc=64,
        min_size=96,
        max_size=128,
        rpn_batch_size_per_image=64,
        rpn_pre_nms_top_n_train=200,
        rpn_post_nms_top_n_train=100,
        rpn_pre_nms_top_n_test=200,
        rpn_post_nms_top_n_test=100,
        box_batch_size_per_image=64,
    ),
    "retinanet": dict(fpn_channels=32, min_size=96, max_size=128, topk_candidates=200),
}
_TINY_GPVIT = dict(embed_dim=24, depth=4, group_layers={1: 8, 3: 4}, spm_width=8)
_TINY_HLG = dict(dims=(32, 64, 128, 256), heads=(1, 2, 2, 4), depths=(2, 2, 2, 2))

_ADAPTER_KEYS = ("spm_width", "heads", "points", "ffn_ratio", "interactions")
_GPVIT_README = {  # Mask R-CNN 1x, RetinaNet 1x params (M), GPViT README
    "l1": (33, 21),
    "l2": (50, 37),
    "l3": (64, 52),
    "l4": (109, 96),
}
_GPVIT_NOTE = (
    "GPViT README (COCO, 80 classes): whole millions cut off, not rounded (as its segmentor counts): "
    "every count here lies in [figure, figure + 1)M; torchvision's Mask R-CNN adds 4.4k background rows."
)
_HLG_NOTE = "The HLG README reports no detector parameter counts."
_HLG_DEPTHS = {"small": (2, 2, 6, 2), "medium": (2, 2, 14, 2), "large": (2, 2, 14, 2)}  # detection configs
_HLG_DROP_PATH = {"small": 0.1, "medium": 0.3, "large": 0.3}


def _backbone_args(cls: type, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Remove from ``kwargs`` and return the keywords ``cls`` takes; the rest are the detector's."""
    names = inspect.signature(cls.__init__).parameters
    return {key: kwargs.pop(key) for key in list(kwargs) if key in names}


def _gpvit_detector(variant: str, kind: str, num_classes: int, kwargs: dict[str, Any]) -> nn.Module:
    adapter_args = {key: kwargs.pop(key) for key in _ADAPTER_KEYS if key in kwargs}
    drop_path = kwargs.pop("drop_path_rate", 0.1)  # 1x configs, Mask R-CNN and RetinaNet
    vit_args = _backbone_args(GPViT, kwargs)
    vit = model_info(f"gpvit_{variant}").entrypoint(
        num_classes=0, global_pool="", drop_path_rate=drop_path, **vit_args
    )
    single_stage = kind == "retinanet"
    body = GPViTAdapter(vit, single_stage=single_stage, drop_path_rate=drop_path, **adapter_args)
    if single_stage:
        return retinanet(
            body, body.out_channels, range(3), num_classes, fpn_norm=True, extra_on_input=False, **kwargs
        )
    return mask_rcnn(body, body.out_channels, num_classes, fpn_norm=True, conv_box_head=True, **kwargs)


def _hlg_detector(variant: str, kind: str, num_classes: int, kwargs: dict[str, Any]) -> nn.Module:
    args = {
        "depths": _HLG_DEPTHS[variant],
        "drop_path_rate": _HLG_DROP_PATH[variant],
        **_backbone_args(HLG, kwargs),
    }
    body = model_info(f"hlg_{variant}").entrypoint(num_classes=0, global_pool="", **args)
    body.forward = body.forward_dense  # the body of a pyramid: four maps
    if kind == "retinanet":  # start_level=1, extra convs on the input (C5)
        return retinanet(
            body, body.dims, (1, 2, 3), num_classes, fpn_norm=False, extra_on_input=True, **kwargs
        )
    return mask_rcnn(body, body.dims, num_classes, fpn_norm=False, conv_box_head=False, **kwargs)


def _register(
    name: str, family: str, kind: str, build: Callable, params_m: float | None, tiny: dict, note: str
) -> None:
    def entrypoint(num_classes: int = 80, **kwargs: Any) -> nn.Module:
        return build(num_classes, dict(kwargs))

    entrypoint.__name__ = name
    _DETECTORS[name] = DetectorInfo(name, family, kind, entrypoint, params_m, note.split(":")[0], tiny, note)


for _variant, (_mask_m, _retina_m) in _GPVIT_README.items():
    for _kind, _params in (("maskrcnn", _mask_m), ("retinanet", _retina_m)):
        _register(
            f"gpvit_{_variant}_{_kind}",
            "GPViT",
            _kind,
            partial(_gpvit_detector, _variant, _kind),
            _params,
            {**_TINY_GPVIT, **_TINY_HEADS[_kind]},
            _GPVIT_NOTE,
        )
for _variant in _HLG_DEPTHS:
    for _kind in ("maskrcnn", "retinanet"):
        _register(
            f"hlg_{_variant}_{_kind}",
            "HLG",
            _kind,
            partial(_hlg_detector, _variant, _kind),
            None,
            {**_TINY_HLG, **_TINY_HEADS[_kind]},
            _HLG_NOTE,
        )


def list_detectors(family: str | None = None) -> list[str]:
    """Names of the registered detectors, optionally of one family."""
    return [name for name, info in _DETECTORS.items() if family is None or info.family == family]


def detector_info(name: str) -> DetectorInfo:
    """The registry entry of ``name``; a ValueError that suggests close names if it is unknown."""
    if name not in _DETECTORS:
        close = difflib.get_close_matches(name, _DETECTORS, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown detector {name!r}.{hint} Detectors: {', '.join(_DETECTORS)}")
    return _DETECTORS[name]


def create_detector(name: str, num_classes: int = 80, **kwargs: Any) -> nn.Module:
    """Build a registered detector, e.g. ``create_detector("gpvit_l1_maskrcnn", num_classes=80)``.

    Keyword arguments reach the backbone (``embed_dim``, ``depth``, ``drop_path_rate`` ...), the
    adapter (``spm_width``, ``heads``, ``points``, ``interactions``), the heads (``fpn_channels``,
    ``box_fc``) and torchvision's model (``min_size``, ``max_size``, ``box_score_thresh`` ...).
    """
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
    model = detector_info(name).entrypoint(num_classes=num_classes, **kwargs)
    model.architecture = name
    return model
