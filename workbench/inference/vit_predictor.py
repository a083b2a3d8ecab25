"""Any timm ViT on one image: the DINO and DINOv2 figures, clicks, rollout and relevance.

    vit = timm.create_model("vit_small_patch14_reg4_dinov2.lvd142m", pretrained=True, dynamic_img_size=True)
    predictor = ViTPredictor(vit)                     # used as given; size: its pretrained_cfg's
    session = predictor.open(photo)                   # one forward; q, k and patch features kept
    session.class_attention()                         # (heads, H, W): the class token's maps
    session.pca_rgb(foreground=0.5)                   # (H, W, 3): patch features as colours
    session.attention_at(120, 340, "blocks.11")       # (H, W): where that pixel looks
    session.relevance(target_class=207)               # (H, W): Chefer et al. for one class logit

A backbone without a segmentation head gets the queries that make sense for it; the segmentation
``Predictor`` keeps its labels, this one says what the model's classifier scores where it has one
(``ViTDescription``). The image goes through the one image reader, is resized (keeping its aspect,
each side a multiple of the patch) so that its short side is the model's input size, or to that
size exactly where the model takes no other, and is normalised with the model's own mean and std.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from timm.data import ImageNetInfo, resolve_data_config
from torch import nn

from workbench.data.classes import Classes, default_palette
from workbench.data.image import ImageSource, read_image
from workbench.inference.placement import as_given
from workbench.inference.queries import SessionQueries
from workbench.inference.session import Session
from workbench.models.any_vit import ExplainedViT
from workbench.models.explain import View
from workbench.precision import autocast, model_device_dtype, resolve_precision
from workbench.viz.distance import attention_distances
from workbench.viz.features import pca_rgb
from workbench.viz.record import capture, record
from workbench.viz.rollout import attention_relevance


@dataclass
class ViTDescription:
    """What a ViT's classifier says about an image: ``top`` (class index, name, probability), best
    first; empty for a backbone without a classifier. ``features``: the patch tokens (C, rows, cols)."""

    top: list[tuple[int, str, float]]
    features: torch.Tensor = field(repr=False)


def _class_names(count: int) -> Classes:
    """ImageNet's names for 1000 (or 21843) classes, from timm's bundled tables; numbers otherwise."""
    try:
        info = ImageNetInfo(f"imagenet-{'22k' if count > 1000 else '1k'}")
    except (ValueError, FileNotFoundError):
        return Classes.numbered(max(count, 1))
    if info.num_classes() != count:
        return Classes.numbered(max(count, 1))
    names = [info.index_to_description(i).split(",")[0] for i in range(count)]
    return Classes(tuple(names), default_palette(count))


def input_size(image_hw: tuple[int, int], short: int, patch: int) -> tuple[int, int]:
    """(H, W) of the model input for an image of ``image_hw``: short side ``short``, aspect kept, each
    side rounded to a multiple of ``patch`` (at least one patch)."""
    height, width = image_hw
    ratio = short / min(height, width)
    return tuple(max(patch, round(side * ratio / patch) * patch) for side in (height, width))


class ViTPredictor(SessionQueries):
    """Explain sessions for a timm plain ViT (``workbench.models.any_vit.FAMILIES`` lists them).

    Args:
        model: a timm ViT (or an ``ExplainedViT``); used as given on its device in eval mode, or an
            eval-mode copy where ``device`` asks for another or it is in training mode (``note``).
        size: the input's short side in pixels (default: the model's ``input_size``); models built
            without ``dynamic_img_size`` take their own size only, and the image is resized to it.
        device, precision: as the segmentation ``Predictor``'s.
    """

    def __init__(
        self,
        model: nn.Module,
        size: int | None = None,
        device: torch.device | str | None = None,
        precision: str = "fp32",
    ) -> None:
        vit = model.vit if isinstance(model, ExplainedViT) else model
        vit, self.note = as_given(vit, device)
        self.model = model if vit is getattr(model, "vit", None) else ExplainedViT(vit)
        self.device, self.dtype = model_device_dtype(vit)
        self.precision = resolve_precision(precision, self.device)
        config = resolve_data_config({}, model=vit)
        self.mean, self.std = config["mean"], config["std"]
        self.interpolation = config.get("interpolation", "bicubic")
        self.size = size or config["input_size"][-1]
        self.num_classes = self.model.num_classes
        self.classes = _class_names(self.num_classes)
        self.load_report = None
        self._current = None

    def preprocess(self, image: ImageSource) -> tuple[np.ndarray, torch.Tensor]:
        """The image as read (H, W, 3) uint8, and the model input (1, 3, h, w) on its device."""
        array = read_image(image)
        fixed = self.model.fixed_input_size
        size = fixed or input_size(array.shape[:2], self.size, self.model.patch_size)
        pixels = (
            torch.from_numpy(array if array.flags.writeable else array.copy()).permute(2, 0, 1)[None] / 255
        )
        mode = self.interpolation if self.interpolation in ("bilinear", "bicubic") else "bilinear"
        pixels = F.interpolate(pixels, size=size, mode=mode, antialias=True, align_corners=False)
        mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (self.mean, self.std))
        return array, ((pixels.clamp(0, 1) - mean) / std).to(self.device, self.dtype)

    def _describe(self, tokens: torch.Tensor) -> ViTDescription:
        features = self.model.patch_features(tokens)[0].float()
        if not self.num_classes:
            return ViTDescription([], features)
        probs = self.model.logits(tokens)[0].float().softmax(-1)
        best = probs.topk(min(5, self.num_classes))
        top = [(int(i), self.classes.names[int(i)], float(p)) for p, i in zip(*best, strict=True)]
        return ViTDescription(top, features)

    @torch.no_grad()
    def __call__(self, image: ImageSource) -> ViTDescription:
        """The classifier's top five and the patch features of one image."""
        _, tensor = self.preprocess(image)
        with autocast(self.precision, self.device):
            return self._describe(self.model(tensor))

    @torch.no_grad()
    def open(self, image: ImageSource) -> ViTSession:
        """One forward on the image keeping q, k of every block and the patch features."""
        array, tensor = self.preprocess(image)
        with capture(self.model) as cached, autocast(self.precision, self.device):
            description = self._describe(self.model(tensor))
        return ViTSession(array, View(tuple(tensor.shape[-2:])), cached, description, self)

    def class_attention(self, layer: int | str = -1, token: int = 0) -> torch.Tensor:
        return self.session.class_attention(layer, token)

    def pca_rgb(self, foreground: float | None = None) -> np.ndarray:
        return self.session.pca_rgb(foreground)

    def relevance(self, target_class: int | None = None) -> torch.Tensor:
        return self.session.relevance(target_class)


class ViTSession(Session):
    """One image's forward through a timm ViT: the segmentation session's click and rollout queries,
    and the ones a backbone answers (its ``prediction`` is a ``ViTDescription``)."""

    def class_attention(self, layer: int | str = -1, token: int = 0) -> torch.Tensor:
        """Where prefix token ``token`` (0: the class token) looks in ``layer``, per head: (heads, H, W)
        on the image (the DINO figure: the last layer's). Its weights on prefix tokens are left out."""
        _, cached = self._site(layer)
        return self._painted(cached.prefix_map(token), cached)

    def pca_rgb(self, foreground: float | None = None) -> np.ndarray:
        """The patch features' principal components as colours (``workbench.viz.features.pca_rgb``):
        (H, W, 3) uint8 on the image, background black where ``foreground`` thresholds."""
        colours, _ = pca_rgb(self.prediction.features, foreground)
        site = next(iter(self.cached.values()))
        painted = self._painted(colours.permute(2, 0, 1), site)  # (3, H, W)
        return (painted.permute(1, 2, 0) * 255).round().byte().numpy()

    def relevance(self, target_class: int | None = None) -> torch.Tensor:
        """Chefer et al.'s relevance of the patches to class ``target_class``'s logit (default: the
        top class), read from the class token's row: (H, W) on the image. Runs one forward and
        backward in fp32 with every block recorded."""
        predictor = self.predictor
        model = predictor.model
        if not model.num_prefix_tokens or not model.num_classes:
            raise ValueError("relevance needs a class token and a classifier (num_classes > 0)")
        target = self.prediction.top[0][0] if target_class is None else int(target_class)
        if not 0 <= target < model.num_classes:
            raise ValueError(f"target_class must be in [0, {model.num_classes}), got {target}")
        _, tensor = predictor.preprocess(self.image)
        with torch.enable_grad(), record(model, keep_grad=True) as recording:
            model.logits(model(tensor))[0, target].backward()
        relevance = attention_relevance(recording.attention)[0, 0, model.num_prefix_tokens :]
        site = next(iter(self.cached.values()))
        return self._painted(relevance.reshape(site.layout.grid).detach(), site)

    def attention_distances(self) -> dict[str, torch.Tensor]:
        """Mean attention distance (heads,) of every block on this image, in model-input pixels, on
        the CPU."""
        _, tensor = self.predictor.preprocess(self.image)
        distances = attention_distances(self.predictor.model, tensor)
        return {name: distance.float().cpu() for name, distance in distances.items()}

    def attribute(self, *args, **kwargs) -> torch.Tensor:
        raise ValueError("region attribution is for segmentors; a ViT's is relevance(target_class)")
