"""Predictor: inference on single images, and a session that answers explain queries about one image.

    predictor = Predictor.from_checkpoint(run_folder)
    prediction = predictor(photo)                    # labels (H, W), probabilities, colours
    predictor.set_image(photo)                       # one forward on the canonical view; q, k kept
    predictor.attention_at(120, 340, layer="blocks.11")  # (H, W): where that pixel looks
    predictor.group_maps("blocks.1.grouping")        # (heads, G, H, W): GPViT's groups

Shaped like segment-anything's predictor: ``set_image`` pays for the forward pass once, queries are
cheap. Every image goes through the one image reader (``workbench.data.image.read_image``) and the
evaluation's own preprocessing (``EvalTransform``: the recipe's test scale, the model's mean/std) and
inference (``predict_probs``: whole / sliding window, scales, flips). The canonical view the queries
read is the image at the test scale, whole, unflipped; image pixels map to it and back through
``View`` and tokens through ``TokenGrid`` (``workbench.models.explain``), the one place for every family.
Detectors have their own predictor (``workbench.engine.detection_predictor.DetectionPredictor``, the
same image reader and precision setting): ``Predictor.from_checkpoint`` gives one for a detection run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from workbench.config import IMAGENET_MEAN, IMAGENET_STD, Config, EvalConfig
from workbench.data.classes import Classes
from workbench.data.image import ImageSource, read_image
from workbench.data.transforms import EvalTransform
from workbench.engine.evaluate import forward_padded, predict_probs
from workbench.engine.precision import autocast, resolve_precision, use_channels_last
from workbench.models.detection.detectors import DetectorMixin
from workbench.models.explain import CachedAttention, View
from workbench.viz import groups as gp_groups
from workbench.viz.overlay import colorize, overlay
from workbench.viz.record import capture, select_sites
from workbench.viz.rollout import rollout_at as rollout

if TYPE_CHECKING:
    from workbench.engine.detection_predictor import DetectionPredictor
    from workbench.interop import LoadReport


@dataclass
class Prediction:
    """A segmentation of one image: ``labels`` (H, W), ``probs`` (K, H, W) and the classes' colours."""

    labels: np.ndarray
    probs: torch.Tensor
    classes: Classes = field(repr=False)

    def colorize(self) -> np.ndarray:
        """(H, W, 3) uint8 colour map of the labels."""
        return colorize(self.labels, self.classes.palette)

    def overlay(self, image: np.ndarray, alpha: float = 0.5) -> np.ndarray:
        """The colour map blended over ``image`` (H, W, 3) uint8."""
        return overlay(image, self.colorize(), alpha)


def load_run(path: str | Path, ema: bool = False) -> tuple[Config, nn.Module, LoadReport]:
    """The config of a run folder or checkpoint, the model it builds with the run's weights (EMA ones
    with ``ema``), and the load report."""
    from workbench.build import build_model
    from workbench.interop import load_weights
    from workbench.interop.checkpoint import checkpoint_config

    cfg = checkpoint_config(path)
    model = build_model(cfg)
    return cfg, model, load_weights(model, path, ema=ema)


def resolve_device(device: torch.device | str | None) -> torch.device:
    """``device`` checked ("cpu", "cuda", "cuda:N"; CUDA refused without a GPU), None: the GPU if any."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {str(device)!r} was asked for but no CUDA GPU is available; use device='cpu'"
        )
    return device


def _normalisation(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std on the 0-255 scale, from the model's ``pretrained_cfg`` (timm's 0-1 scale)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if "mean" in cfg and "std" in cfg:
        return tuple(255 * m for m in cfg["mean"]), tuple(255 * s for s in cfg["std"])
    return IMAGENET_MEAN, IMAGENET_STD


class Predictor:
    """Single-image inference and explain queries for notebooks, the CLI and the app.

    Args:
        model: a segmentor (``model(images)`` gives (B, K, H, W) logits) with ``num_classes``; a
            detector is refused (``DetectionPredictor`` serves those).
        eval_cfg: whole / sliding-window inference, scales and flips (default: whole, one scale).
        classes: names and palette; numbered classes when absent or of another count.
        transform: the evaluation preprocessing (default: no resize, the model's mean/std).
        device: "cpu", "cuda" (refused without a GPU), or None for the GPU when there is one.
        precision: "fp32" (the default), "bf16", "fp16" or "auto" (``workbench.engine.precision``;
            ``self.precision.reason`` says what auto chose). Probabilities and explain queries are
            computed in fp32 whatever the forward ran in.
        channels_last: convolution weights in channels-last layout (``use_channels_last``; faster
            stems and heads on CPU and GPU, the same results within float rounding).
    """

    def __init__(
        self,
        model: nn.Module,
        eval_cfg: EvalConfig | None = None,
        classes: Classes | None = None,
        transform: EvalTransform | None = None,
        device: torch.device | str | None = None,
        precision: str = "fp32",
        channels_last: bool = True,
    ) -> None:
        if isinstance(model, DetectorMixin):
            raise ValueError(
                f"{type(model).__name__} is a detector: use DetectionPredictor "
                "(workbench.engine.detection_predictor), or Predictor.from_checkpoint on its run"
            )
        if not isinstance(getattr(model, "num_classes", None), int):
            raise ValueError(f"expected a segmentor with num_classes, got {type(model).__name__}")
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.model = model.to(self.device).eval()
        self.channels_last = use_channels_last(self.model, channels_last)
        self.eval_cfg = eval_cfg or EvalConfig()
        self.num_classes = model.num_classes
        if classes is None or len(classes) != self.num_classes:  # e.g. a converted release checkpoint
            classes = Classes.numbered(self.num_classes)
        self.classes = classes
        self.transform = transform or EvalTransform(None, *_normalisation(model))
        self.load_report = None  # the LoadReport of the weights, set by from_checkpoint / from_pretrained
        self._session: _Session | None = None

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        device: torch.device | str | None = None,
        ema: bool = False,
        precision: str = "fp32",
        channels_last: bool = True,
    ) -> Predictor | DetectionPredictor:
        """A Predictor for a run folder or checkpoint, with its recipe's test scale and inference; a
        detection run (``task: detection``) gives a DetectionPredictor (same device, EMA and precision
        settings; ``channels_last`` does not apply to it)."""
        from workbench.build import classes_of, eval_transform
        from workbench.engine.detection_predictor import DetectionPredictor
        from workbench.interop.checkpoint import checkpoint_config

        if checkpoint_config(path).task == "detection":
            return DetectionPredictor.from_checkpoint(path, device, ema, precision)
        cfg, model, report = load_run(path, ema)
        predictor = cls(
            model, cfg.eval, classes_of(cfg), eval_transform(cfg), device, precision, channels_last
        )
        predictor.load_report = report
        return predictor

    @classmethod
    def from_pretrained(
        cls,
        source: str | Path,
        model: str,
        num_classes: int,
        device: torch.device | str | None = None,
        precision: str = "fp32",
        channels_last: bool = True,
        **model_kwargs,
    ) -> Predictor | DetectionPredictor:
        """A Predictor for a released checkpoint without a workbench config (official GPViT / SETR /
        mmseg / HLG files): the registered segmentor ``model`` built for ``num_classes`` and filled by
        ``load_pretrained(source)`` (strict; its report in ``load_report``). Whole-image inference
        with the model's own mean/std; numbered classes. A registered detector's name (mmdet-layout
        releases, ``num_classes`` foreground classes) gives a DetectionPredictor."""
        from workbench.engine.detection_predictor import DetectionPredictor
        from workbench.interop import load_pretrained
        from workbench.models import create_segmentor
        from workbench.models.detection import list_detectors

        if model in list_detectors():
            return DetectionPredictor.from_pretrained(
                source, model, num_classes, device, precision, **model_kwargs
            )

        segmentor = create_segmentor(model, num_classes=num_classes, **model_kwargs)
        report = load_pretrained(segmentor, source)
        predictor = cls(segmentor, device=device, precision=precision, channels_last=channels_last)
        predictor.load_report = report
        return predictor

    def preprocess(self, image: ImageSource) -> tuple[np.ndarray, torch.Tensor]:
        """The image as read (H, W, 3) uint8, and the model's input (1, 3, h, w) at the test scale."""
        array = read_image(image)  # refuses empty images
        pixels = torch.from_numpy(array if array.flags.writeable else array.copy()).permute(2, 0, 1)
        tensor, _ = self.transform(pixels, None)
        return array, tensor[None].to(self.device)

    def _on_image(self, array: np.ndarray, probs: torch.Tensor) -> Prediction:
        """Probabilities (1, K, h, w) on the model input -> the prediction at the image's size."""
        probs = torch.nn.functional.interpolate(
            probs, size=array.shape[:2], mode="bilinear", align_corners=False
        )
        return Prediction(probs[0].argmax(0).cpu().numpy(), probs[0].cpu(), self.classes)

    @torch.no_grad()
    def _predict(self, array: np.ndarray, tensor: torch.Tensor) -> Prediction:
        with autocast(self.precision, self.device):
            probs = predict_probs(self.model, tensor, self.eval_cfg, self.num_classes)
        return self._on_image(array, probs)

    def __call__(self, image: ImageSource) -> Prediction:
        """Segment one image (a path, PIL image or array; any mode the image reader takes)."""
        return self._predict(*self.preprocess(image))

    # ------------------------------------------------------------------ the explain session

    @torch.no_grad()
    def set_image(self, image: ImageSource) -> Prediction:
        """Run the model once on ``image``'s canonical view, keep what queries need, and return the
        prediction (the recipe's full inference when it has more than the canonical view)."""
        array, tensor = self.preprocess(image)
        view = View(tuple(tensor.shape[-2:]))
        with capture(self.model) as cached, autocast(self.precision, self.device):
            logits = forward_padded(self.model, tensor).float()
        cfg = self.eval_cfg
        if cfg.mode == "whole" and tuple(cfg.scales) == (1.0,) and not cfg.flip and not cfg.min_short_side:
            prediction = self._on_image(array, logits.softmax(1))  # what predict_probs would compute
        else:
            prediction = self._predict(array, tensor)
        self._session = _Session(array, view, cached, prediction)
        return prediction

    @property
    def session(self) -> _Session:
        """What the last ``set_image`` kept; queries read it. A server keeps one per user and sets it
        back (``predictor.session = kept``) to answer that user's click without a forward pass."""
        if self._session is None:
            raise ValueError("no image is set: call predictor.set_image(image) first")
        return self._session

    @session.setter
    def session(self, session: _Session) -> None:
        if not isinstance(session, _Session):
            raise ValueError(f"expected a session from predictor.session, got {type(session).__name__}")
        self._session = session

    def sites(self) -> list[str]:
        """Names of the attention sites a query can name (``model.attention_sites()``)."""
        return list(select_sites(self.model, None))

    def _site(self, layer: int | str) -> tuple[str, CachedAttention]:
        name = next(iter(select_sites(self.model, [layer])))
        return name, self.session.cached[name]

    @staticmethod
    def _pick_head(maps: torch.Tensor, head: int | None, layer: int | str) -> torch.Tensor:
        """(heads, ...) -> one head's map, or their mean for None."""
        heads = maps.shape[0]
        if head is not None and not -heads <= head < heads:
            raise ValueError(f"head must be in [0, {heads}) for {layer!r}, got {head}")
        return maps.mean(0) if head is None else maps[head]

    def attention_at(self, y: int, x: int, layer: int | str, head: int | None = None) -> torch.Tensor:
        """Where image pixel (y, x) looks in ``layer`` (index or site name): (H, W) on the image, for one
        ``head`` or averaged over heads (None). Only the query's row is computed: O(heads * N).

        Every site kind answers: self, window, dilated and HLG's global attention (each window's weight
        painted over its tokens) directly; GPViT's ungrouping through its block's groups
        (``effective_attention_at``); GPViT's grouping with the soft map of the pixel's own group.
        """
        session = self.session
        name, cached = self._site(layer)
        if cached.layout.kind == "ungrouping":
            return self.effective_attention_at(y, x, name.removesuffix(".ungrouping"), head)
        if cached.layout.kind == "grouping":
            group = int(self.group_assignment(name.removesuffix(".grouping"))[y, x])
            return self._pick_head(self.group_maps(name)[:, group], head, layer)
        height, width = session.image.shape[:2]
        token = cached.tokens.token_at(*session.view.from_image(y, x, (height, width)))
        on_grid = self._pick_head(cached.layout.on_grid(cached.query_map(*token)), head, layer)
        on_input = cached.tokens.to_image(on_grid)
        return session.view.to_image(on_input, (height, width), mode="nearest").cpu()

    def group_maps(self, layer: int | str) -> torch.Tensor:
        """GPViT grouping attention of ``layer``: (heads, G, H, W), each group token's distribution over
        the image (each map sums to 1 over the token grid)."""
        session = self.session
        _, cached = self._site(layer)
        if cached.layout.kind != "grouping":
            raise ValueError(
                f"{layer!r} is {cached.layout.kind} attention; group maps come from a grouping site"
            )
        probs = gp_groups.site_probs(cached, "grouping", sample=0)[0]  # (heads, G, N)
        maps = cached.tokens.to_image(probs.reshape(*probs.shape[:2], *cached.layout.grid))
        return session.view.to_image(maps, session.image.shape[:2], mode="nearest").cpu()

    def rollout_at(self, y: int, x: int, class_token: bool = True) -> torch.Tensor:
        """Attention rollout (``workbench.viz.rollout.rollout_at``) of image pixel (y, x) through every
        layer of a ViT (SETR): (H, W) on the image. O(layers * N^2) time: seconds, not a click's
        milliseconds, for ViT-L at 1024 px on a CPU."""
        session = self.session
        sites = list(session.cached.values())
        height, width = session.image.shape[:2]
        token = sites[0].tokens.token_at(*session.view.from_image(y, x, (height, width)))
        on_grid = rollout(sites, *token, class_token=class_token)
        on_input = sites[0].tokens.to_image(on_grid)
        return session.view.to_image(on_input, (height, width), mode="nearest").cpu()

    def attribute(
        self, target_class: int, region: np.ndarray, method: str = "occlusion", **options
    ) -> torch.Tensor:
        """captum attribution of "class ``target_class`` over ``region``" (a bool mask (H, W) on the
        image) to the image's pixels (``workbench.viz.attribution.attribute``, ``options`` its method's
        keywords): (H, W) on the image, signed. Runs the model as the method needs (in fp32)."""
        from workbench.models.layers import pad_for
        from workbench.viz.attribution import attribute

        session = self.session
        mask = torch.as_tensor(np.asarray(region, dtype=bool))
        if tuple(mask.shape) != session.image.shape[:2]:
            raise ValueError(
                f"region must be an (H, W) mask of the image, {session.image.shape[:2]}; got {tuple(mask.shape)}"
            )
        if not mask.any():
            raise ValueError("the region is empty: it must hold at least one pixel")
        inputs = pad_for(self.model, self.preprocess(session.image)[1])
        # The canonical view is the image resized to the input: nearest keeps the mask a mask.
        on_view = torch.nn.functional.interpolate(
            mask[None, None].float(), size=session.view.size, mode="nearest"
        )
        height, width = inputs.shape[-2:]
        padding = (0, width - session.view.size[1], 0, height - session.view.size[0])
        on_input = torch.nn.functional.pad(on_view[0, 0], padding).bool().to(self.device)
        result = attribute(self.model, inputs, int(target_class), on_input, method, **options)
        return session.view.to_image(result.map.cpu(), session.image.shape[:2], mode="bilinear")[0]

    def _gp_block(self, block: int | str) -> tuple[CachedAttention, CachedAttention]:
        """(grouping, ungrouping) cached sites of a GP block: its name ("blocks.1") or its index
        among the model's GP blocks."""
        pairs = gp_groups.gp_sites(self.session.cached)
        names = list(pairs)
        if isinstance(block, int) and not isinstance(block, bool) and -len(names) <= block < len(names):
            return pairs[names[block]]
        if block in pairs:
            return pairs[block]
        raise ValueError(
            f"unknown GP block {block!r}: expected an index in [0, {len(names)}) or one of {names}"
        )

    def effective_attention_at(
        self, y: int, x: int, block: int | str, head: int | None = None
    ) -> torch.Tensor:
        """Where image pixel (y, x) looks through a GP block's groups (ungrouping x grouping, the mixer
        left out; ``workbench.viz.groups.effective_attention``): (H, W) on the image, each pixel its
        token's weight (the weights sum to one over the token grid). ``head``: one ungrouping head, or
        None for their mean."""
        session = self.session
        grouping, ungrouping = self._gp_block(block)
        height, width = session.image.shape[:2]
        token = ungrouping.tokens.token_at(*session.view.from_image(y, x, (height, width)))
        on_grid = gp_groups.effective_attention_at(grouping, ungrouping, *token, head=head)
        on_input = ungrouping.tokens.to_image(on_grid)
        return session.view.to_image(on_input, (height, width), mode="nearest").cpu()

    def group_assignment(self, block: int | str) -> torch.Tensor:
        """Each image pixel's group in a GP block (arg-max of the head-averaged grouping attention,
        ``workbench.viz.groups.group_assignment``): (H, W) int64 in [0, G)."""
        session = self.session
        grouping, _ = self._gp_block(block)
        on_input = gp_groups.assignment_on_input(gp_groups.group_assignment(grouping)[0], grouping)
        on_image = session.view.to_image(on_input.float(), session.image.shape[:2], mode="nearest")
        return on_image.round().long().cpu()


@dataclass
class _Session:
    """What ``set_image`` keeps: the image, its canonical view, the cached q/k and the prediction."""

    image: np.ndarray
    view: View
    cached: dict[str, CachedAttention]
    prediction: Prediction
