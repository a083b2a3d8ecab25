"""Key mapping between workbench detectors and mmdet 2.x detection checkpoints (the GPViT release's
``gpvit_l{n}_{maskrcnn,retinanet}_{1x,3x}.pth``; the HLG release's configs, which ship no weights).

mmdet layout: ``backbone.`` (the GPViT keys of the classification release plus the adapter's
``level_embed``, ``spm``, ``interactions``, ``up``, ``ad_norm{1-4}``; or the released HLG names),
``neck.`` (FPN: ``lateral_convs.i`` / ``fpn_convs.i``, each ``conv`` and, with a norm, ``bn``; the
extra P6/P7 convs continue the ``fpn_convs`` numbering), ``rpn_head.`` (``rpn_conv``, ``rpn_cls``,
``rpn_reg``) and ``roi_head.`` (``bbox_head.shared_convs.i`` / ``shared_fcs.i`` / ``fc_cls`` /
``fc_reg``, ``mask_head.convs.i`` / ``upsample`` / ``conv_logits``) for Mask R-CNN, ``bbox_head.``
(``cls_convs.i``, ``reg_convs.i``, ``retina_cls``, ``retina_reg``) for RetinaNet.

Class rows: mmdet puts the background last in ``fc_cls`` and has no background rows in ``fc_reg``
and ``conv_logits``; torchvision puts it first and has them. Loading moves the background row of
``fc_cls`` first and sets the background rows of box regression and mask logits to zero (torchvision
never reads them: boxes and masks are taken at the predicted, foreground, class); exporting drops
them. A checkpoint therefore round-trips to the same predictions.
"""

from __future__ import annotations

import re

import torch
from torch import nn
from torchvision.models.detection.faster_rcnn import TwoMLPHead

from workbench.interop.formats import Format, StateDict
from workbench.interop.gpvit import BACKBONE as GPVIT_BACKBONE
from workbench.interop.hlg import RELEASED as HLG_BACKBONE
from workbench.interop.keymap import KeyMap, rename_keys
from workbench.models.detection.adapter import GPViTAdapter
from workbench.models.detection.detectors import DetectorMixin
from workbench.models.hlg import HLG

ADAPTER = KeyMap([("ffn.dwconv.", "ffn.dwconv.dwconv.")])
# Everything outside the backbone body and the FPN's extra convs: (ours, mmdet).
HEADS_PAIRS = (
    ("^backbone.fpn.inner_blocks.{n}.0.", "^neck.lateral_convs.{n}.conv."),
    ("^backbone.fpn.inner_blocks.{n}.1.", "^neck.lateral_convs.{n}.bn."),
    ("^backbone.fpn.layer_blocks.{n}.0.", "^neck.fpn_convs.{n}.conv."),
    ("^backbone.fpn.layer_blocks.{n}.1.", "^neck.fpn_convs.{n}.bn."),
    ("^rpn.head.conv.0.0.", "^rpn_head.rpn_conv."),
    ("^rpn.head.cls_logits.", "^rpn_head.rpn_cls."),
    ("^rpn.head.bbox_pred.", "^rpn_head.rpn_reg."),
    ("^roi_heads.box_head.{n}.0.", "^roi_head.bbox_head.shared_convs.{n}.conv."),
    ("^roi_heads.box_head.{n}.1.", "^roi_head.bbox_head.shared_convs.{n}.bn."),
    ("^roi_heads.box_predictor.cls_score.", "^roi_head.bbox_head.fc_cls."),
    ("^roi_heads.box_predictor.bbox_pred.", "^roi_head.bbox_head.fc_reg."),
    ("^roi_heads.mask_head.{n}.0.", "^roi_head.mask_head.convs.{n}.conv."),
    ("^roi_heads.mask_predictor.conv5_mask.", "^roi_head.mask_head.upsample."),
    ("^roi_heads.mask_predictor.mask_fcn_logits.", "^roi_head.mask_head.conv_logits."),
    ("^head.classification_head.conv.{n}.0.", "^bbox_head.cls_convs.{n}.conv."),
    ("^head.classification_head.cls_logits.", "^bbox_head.retina_cls."),
    ("^head.regression_head.conv.{n}.0.", "^bbox_head.reg_convs.{n}.conv."),
    ("^head.regression_head.bbox_reg.", "^bbox_head.retina_reg."),
)
_EXTRA_OURS = re.compile(r"^backbone\.fpn\.extra_blocks\.convs\.(\d+)\.(\d)\.(.*)$")
_FPN_THEIRS = re.compile(r"^neck\.fpn_convs\.(\d+)\.(conv|bn)\.(.*)$")
_CLS_ROWS = (
    "roi_heads.box_predictor.cls_score.",
    "roi_heads.box_predictor.bbox_pred.",
    "roi_heads.mask_predictor.mask_fcn_logits.",
)


def _heads_map(model: nn.Module) -> KeyMap:
    """``HEADS_PAIRS``, preceded by the box head's fully connected layers (mmdet's ``shared_fcs``): fc6 and
    fc7 of the two-FC head, or the linear layer after the convs and the flatten of the conv head."""
    box_head = getattr(getattr(model, "roi_heads", None), "box_head", None)
    if isinstance(box_head, TwoMLPHead):
        fcs = ["fc6", "fc7"]
    else:
        fcs = [
            name
            for name, module in (box_head or nn.Sequential()).named_children()
            if isinstance(module, nn.Linear)
        ]
    box_fcs = [
        (f"^roi_heads.box_head.{name}.", f"^roi_head.bbox_head.shared_fcs.{i}.") for i, name in enumerate(fcs)
    ]
    return KeyMap([*box_fcs, *HEADS_PAIRS])


def _detector(model: nn.Module) -> DetectorMixin:
    if not isinstance(model, DetectorMixin):
        raise ValueError(
            f"an mmdet detection checkpoint loads into workbench detectors, not {type(model).__name__}"
        )
    return model


def _body_map(model: nn.Module) -> tuple[str, KeyMap]:
    """The body's key prefix inside our ``backbone.body.`` and the key map to the release's names."""
    body = model.backbone.body
    if isinstance(body, GPViTAdapter):
        return "vit.", GPVIT_BACKBONE
    if isinstance(body, HLG):
        return "", HLG_BACKBONE
    raise ValueError(f"no mmdet layout is known for a {type(body).__name__} backbone")


def to_mmdet(model: nn.Module) -> StateDict:
    """A workbench detector's tensors under mmdet 2.x names and shapes."""
    _detector(model)
    vit_prefix, body_map = _body_map(model)
    levels = len(model.backbone.fpn.inner_blocks)
    heads = _heads_map(model)
    state = {}
    for key, value in model.state_dict().items():
        extra = _EXTRA_OURS.match(key)
        if key.startswith("backbone.body."):
            inner = key.removeprefix("backbone.body.")
            if vit_prefix and not inner.startswith(vit_prefix):
                name = "backbone." + ADAPTER.to_theirs(inner)
            else:
                name = "backbone." + body_map.to_theirs(inner.removeprefix(vit_prefix))
        elif extra:
            index, part, rest = extra.groups()
            name = f"neck.fpn_convs.{levels + int(index)}.{'conv' if part == '0' else 'bn'}.{rest}"
        else:
            name = heads.to_theirs(key)
        if key.startswith(_CLS_ROWS[0]):  # background first -> last
            value = torch.cat([value[1:], value[:1]])
        elif key.startswith(_CLS_ROWS[1]):
            value = value[4:]
        elif key.startswith(_CLS_ROWS[2]):
            value = value[1:]
        state[name] = value
    return state


def _from_mmdet(state: StateDict, model: nn.Module) -> tuple[StateDict, list[str]]:
    _detector(model)
    vit_prefix, body_map = _body_map(model)
    levels = len(model.backbone.fpn.inner_blocks)
    heads = _heads_map(model)
    adapter_names = ("level_embed", "spm.", "interactions.", "up.", "ad_norm")

    def rename(key: str) -> str:
        fpn = _FPN_THEIRS.match(key)
        if key.startswith("backbone."):
            inner = key.removeprefix("backbone.")
            if vit_prefix and inner.startswith(adapter_names):
                return "backbone.body." + ADAPTER.to_ours(inner)
            return "backbone.body." + vit_prefix + body_map.to_ours(inner)
        if fpn and int(fpn.group(1)) >= levels:
            index, part, rest = fpn.groups()
            return (
                f"backbone.fpn.extra_blocks.convs.{int(index) - levels}.{0 if part == 'conv' else 1}.{rest}"
            )
        return heads.to_ours(key)

    converted, notes = rename_keys(state, rename), []
    for key, value in list(converted.items()):
        if key.startswith(_CLS_ROWS[0]):
            converted[key] = torch.cat([value[-1:], value[:-1]])
        elif key.startswith(_CLS_ROWS[1]):
            converted[key] = torch.cat([value.new_zeros(4, *value.shape[1:]), value])
        elif key.startswith(_CLS_ROWS[2]):
            converted[key] = torch.cat([value.new_zeros(1, *value.shape[1:]), value])
    if any(key.startswith(_CLS_ROWS) for key in converted):
        notes.append(
            "moved fc_cls's background row first; zero background rows added to fc_reg and conv_logits"
        )
    return converted, notes


MMDET_DETECTION = Format(
    "mmdet_detection",
    detect=lambda keys: (
        any(k.startswith("neck.lateral_convs.") for k in keys)
        and any(k.startswith(("rpn_head.", "bbox_head.")) for k in keys)
    ),
    convert=lambda state, model, known: _from_mmdet(state, model),
    export=to_mmdet,
)
