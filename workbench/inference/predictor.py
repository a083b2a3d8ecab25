"""Predictor: segmentation of single images, and sessions that answer explain queries about one image.

    predictor = workbench.load_predictor(run_folder)  # built elsewhere: a run, a release, a name
    prediction = predictor(photo)                      # labels (H, W); probabilities at model scale
    session = predictor.open(photo)                    # one forward on the canonical view; q, k kept
    session.attention_at(120, 340, layer="blocks.11")  # (H, W): where that pixel looks

Shaped like segment-anything's predictor: building lives elsewhere (``workbench.inference.build``), the
predictor takes a built model and leaves it as it was given, and each image gets its own ``Session``
(``workbench.inference.session``). ``set_image`` keeps one current session for notebook use; servers
keep the sessions ``open`` returns. Every image goes through the one image reader
(``workbench.data.image.read_image``) and the evaluation's own preprocessing (``EvalTransform``: the
recipe's test scale, the model's mean/std) and inference (``predict_probs``: whole / sliding window,
scales, flips). Memory follows the model's input, not the photo: probabilities stay at the model's
resolution and labels are resized band by band (``workbench.inference.labels``).
Detectors have their own predictor (``workbench.inference.detection_predictor``); both share the
image reader, the device rule and the precision setting.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from workbench.config import IMAGENET_MEAN, IMAGENET_STD, EvalConfig
from workbench.data.classes import Classes
from workbench.data.image import ImageSource, read_image
from workbench.data.transforms import EvalTransform
from workbench.engine.evaluate import decode_padded, predict_probs
from workbench.fast_path import compiled, resolve_compile
from workbench.inference.labels import argmax_resized
from workbench.inference.placement import as_given, is_channels_last
from workbench.inference.queries import SessionQueries
from workbench.inference.session import Session
from workbench.models.detection.detectors import DetectorMixin
from workbench.models.explain import View
from workbench.models.layers import resize
from workbench.models.segmentor import Segmentor
from workbench.precision import autocast, model_device_dtype, resolve_precision
from workbench.viz.overlay import colorize, overlay
from workbench.viz.record import capture

if TYPE_CHECKING:
    from workbench.inference.detection_predictor import DetectionPredictor


class Prediction:
    """A segmentation of one image: ``labels`` (H, W) at the image's size, ``probs`` (K, h, w) on the
    model's input (the test-scale view; ``probs_on_image`` resizes them), the classes' colours.

    From a single view the prediction keeps how to make the logits (the head's, resized on request) and
    computes ``probs`` (their softmax) on first access: labels alone, what most callers want, never pay
    for the K x h x w resize and softmax.
    """

    def __init__(
        self,
        labels: np.ndarray,
        probs: torch.Tensor | None,
        classes: Classes,
        logits: Callable[[], torch.Tensor] | None = None,
    ) -> None:
        self.labels = labels
        self.classes = classes
        self._probs, self._logits = probs, logits

    @property
    def probs(self) -> torch.Tensor | None:
        """(K, h, w) probabilities on the model input; None where a session was opened without them
        (``open(probs=False)``)."""
        if self._probs is None and self._logits is not None:
            self._probs, self._logits = self._logits().float().softmax(0), None
        return self._probs

    @probs.setter
    def probs(self, value: torch.Tensor | None) -> None:
        self._probs, self._logits = value, None

    def __repr__(self) -> str:
        return f"Prediction(labels={self.labels.shape}, classes={len(self.classes)})"

    def probs_on_image(self) -> torch.Tensor:
        """Probabilities (K, H, W) at the image's size, bilinear (what the labels are the arg-max of).
        K x H x W floats: 7 GB for 150 classes on a 12 MP photo; ask for them only on small images."""
        if self.probs is None:
            raise ValueError(
                "this prediction kept no probabilities (its session was opened with probs=False)"
            )
        size = self.labels.shape
        return torch.nn.functional.interpolate(
            self.probs[None], size=size, mode="bilinear", align_corners=False
        )[0]

    def colorize(self) -> np.ndarray:
        """(H, W, 3) uint8 colour map of the labels."""
        return colorize(self.labels, self.classes.palette)

    def overlay(self, image: np.ndarray, alpha: float = 0.5) -> np.ndarray:
        """The colour map blended over ``image`` (H, W, 3) uint8."""
        return overlay(image, self.colorize(), alpha)


def _normalisation(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std on the 0-255 scale, from the model's ``pretrained_cfg`` (timm's 0-1 scale)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if "mean" in cfg and "std" in cfg:
        return tuple(255 * m for m in cfg["mean"]), tuple(255 * s for s in cfg["std"])
    return IMAGENET_MEAN, IMAGENET_STD


def check_segmentor(model: nn.Module) -> None:
    """Refuse, in one line naming what to use instead, what the Predictor cannot segment with."""
    name = type(model).__name__
    if isinstance(model, DetectorMixin):
        raise ValueError(
            f"{name} is a detector: use DetectionPredictor (workbench.inference), or "
            "workbench.load_predictor on its run"
        )
    if not isinstance(model, Segmentor) and hasattr(model, "forward_head"):  # a timm classifier
        raise ValueError(
            f"{name} is a classifier (one score per class, not per pixel): the Predictor takes a "
            "segmentor, e.g. workbench.create_segmentor('setr_pup_vit_base', num_classes=...); "
            "workbench.ViTPredictor explains a timm ViT (class-token maps, clicks, PCA)"
        )
    if not isinstance(getattr(model, "num_classes", None), int):
        raise ValueError(f"expected a segmentor with num_classes, got {name}")


class Predictor(SessionQueries):
    """Single-image segmentation and explain sessions for notebooks, the CLI and the app.

    Args:
        model: a segmentor (``model(images)`` gives (B, K, H, W) logits) with ``num_classes``; a
            detector or a classifier is refused. It is used as given: on its device, in its layout,
            in eval mode; where ``device`` or ``channels_last`` ask otherwise, or the model is in
            training mode, the predictor works on its own eval-mode copy (``self.note`` says why)
            and the given model is left untouched.
        eval_cfg: whole / sliding-window inference, scales and flips (default: whole, one scale).
        classes: names and palette; numbered classes when absent or of another count.
        transform: the evaluation preprocessing (default: no resize, the model's mean/std).
        device: None (the model's own), "cpu", "cuda" or "cuda:N" (refused without a GPU).
        precision: "fp32" (the default: reproducible to the last bit), "auto" (bf16 on a CUDA GPU
            or a CPU with native bf16, else fp32: the app's default), "bf16" or "fp16"
            (``workbench.precision``; ``self.precision.reason`` says what auto chose). Probabilities
            and explain queries are computed in fp32 whatever the forward ran in.
        compile: "auto" (the default: compiled on a CUDA GPU, eager on a CPU), "yes" or "no"
            (``workbench.fast_path``; ``self.compile.reason`` says why). Predictions only: explain
            sessions run eager. ``self.fast_path`` says, in one line, how predictions run.
        channels_last: None keeps the model's layout; True / False ask for channels-last /
            contiguous convolution weights (``use_channels_last``).
    """

    def __init__(
        self,
        model: nn.Module,
        eval_cfg: EvalConfig | None = None,
        classes: Classes | None = None,
        transform: EvalTransform | None = None,
        device: torch.device | str | None = None,
        precision: str = "fp32",
        channels_last: bool | None = None,
        compile: str | bool = "auto",
    ) -> None:
        check_segmentor(model)
        self.model, self.note = as_given(model, device, channels_last)
        self.device, self.dtype = model_device_dtype(self.model)
        self.precision = resolve_precision(precision, self.device)
        self.compile = resolve_compile(compile, self.device)
        self._forward = compiled(self.model, self.compile)  # predictions; sessions call the model
        self.eval_cfg = eval_cfg or EvalConfig()
        self.num_classes = model.num_classes
        if classes is None or len(classes) != self.num_classes:  # e.g. a converted release checkpoint
            classes = Classes.numbered(self.num_classes)
        self.classes = classes
        self.transform = transform or EvalTransform(None, *_normalisation(model))
        self.load_report = None  # the LoadReport of the weights, set by the builders
        self._current: Session | None = None

    @classmethod
    def from_checkpoint(cls, path: str | Path, **options: Any) -> Predictor | DetectionPredictor:
        """``workbench.inference.build.load_predictor(path, ...)``: a run folder or checkpoint."""
        from workbench.inference.build import load_predictor

        return load_predictor(path, **options)

    @classmethod
    def from_pretrained(
        cls, source: str | Path, model: str, num_classes: int, **options: Any
    ) -> Predictor | DetectionPredictor:
        """``workbench.inference.build.load_predictor(source, model=..., num_classes=...)``: a
        released checkpoint (path, URL or catalogue name) in a registered model, at its recipe's
        test scale and inference."""
        from workbench.inference.build import load_predictor

        return load_predictor(source, model=model, num_classes=num_classes, **options)

    @property
    def fast_path(self) -> str:
        """How predictions run, in one line: precision, compile and labels, each with its reason."""
        return (
            f"{self.precision.name} ({self.precision.reason}); {self.compile}; labels from the decode "
            "head's logits (no K x H x W resize)"
        )

    @property
    def channels_last(self) -> bool:
        return is_channels_last(self.model)

    def preprocess(self, image: ImageSource) -> tuple[np.ndarray, torch.Tensor]:
        """The image as read (H, W, 3) uint8, and the model's input (1, 3, h, w) at the test scale, on
        the model's device and in its dtype."""
        array = read_image(image)  # refuses empty images
        pixels = torch.from_numpy(array if array.flags.writeable else array.copy()).permute(2, 0, 1)
        tensor, _ = self.transform(pixels, None)
        return array, tensor[None].to(self.device, self.dtype)

    def _prediction(self, array: np.ndarray, probs: torch.Tensor) -> Prediction:
        """Probabilities (1, K, h, w) on the model input -> labels at the image's size, band by band."""
        labels = argmax_resized(probs[0], array.shape[:2])
        return Prediction(labels.cpu().numpy(), probs[0].cpu(), self.classes)

    def _from_view(self, array: np.ndarray, tensor: torch.Tensor, explain: bool = False) -> Prediction:
        """The prediction of the one whole view ``tensor`` (1, 3, h, w). Its labels are the arg-max of
        the forward's logits (the head's, resized to the input): taken from the head's logits by
        ``argmax_resized`` (exact, without the K x h x w resize), probabilities made on request. An
        input resized from the image gives probabilities first (the evaluation's rule resizes them).
        ``explain``: run the model itself (a session's probes), never its compiled module."""
        height, width = tensor.shape[-2:]
        with autocast(self.precision, self.device):
            head, padded = decode_padded(self.model, tensor, None if explain else self._forward)
        head = head[0]
        aligned = getattr(self.model, "align_corners", False)  # argmax_resized resizes as False does

        def logits() -> torch.Tensor:  # (K, h, w) as the forward gives them, in fp32
            return resize(head[None].float(), padded, aligned)[0, :, :height, :width]

        if (height, width) != tuple(array.shape[:2]) or aligned:
            return self._prediction(array, logits()[None].softmax(1))
        labels = argmax_resized(head, padded)[:height, :width]
        return Prediction(labels.cpu().numpy(), None, self.classes, logits=lambda: logits().cpu())

    def _single_view(self) -> bool:
        """Whether the recipe's inference is one whole forward (no scales, flips or windows)."""
        cfg = self.eval_cfg
        return cfg.mode == "whole" and tuple(cfg.scales) == (1.0,) and not cfg.flip and not cfg.min_short_side

    @torch.no_grad()
    def _predict(self, array: np.ndarray, tensor: torch.Tensor) -> Prediction:
        if self._single_view():
            return self._from_view(array, tensor)
        with autocast(self.precision, self.device):
            probs = predict_probs(self.model, tensor, self.eval_cfg, self.num_classes)
        return self._prediction(array, probs)

    def __call__(self, image: ImageSource) -> Prediction:
        """Segment one image (a path, PIL image or array; any mode the image reader takes)."""
        return self._predict(*self.preprocess(image))

    # ------------------------------------------------------------------ explain sessions

    @torch.no_grad()
    def open(self, image: ImageSource, probs: bool = True) -> Session:
        """Run the model once on ``image``'s canonical view (the test scale, whole, unflipped) keeping
        what queries need, and return the image's session; its ``prediction`` is the recipe's full
        inference when that has more than the canonical view. Sessions are independent. ``probs=False``
        keeps no probabilities (K x h x w floats, 210 MB for 150 classes at 512x683): what a server
        keeping many sessions wants when it shows labels only."""
        array, tensor = self.preprocess(image)
        view, single = View(tuple(tensor.shape[-2:])), self._single_view()
        with capture(self.model) as cached:  # one view: the labels are this forward's
            if single:
                prediction = self._from_view(array, tensor, explain=True)
            else:
                with autocast(self.precision, self.device):
                    decode_padded(self.model, tensor)
        if not single:  # the recipe's full inference gives the labels
            prediction = self._predict(array, tensor)
        if not probs:
            prediction.probs = None
        return Session(array, view, cached, prediction, self)

    def attribute(
        self, target_class: int, region: np.ndarray, method: str = "occlusion", **options: Any
    ) -> torch.Tensor:
        return self.session.attribute(target_class, region, method, **options)
