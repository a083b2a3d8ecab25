"""Attributions of a segmentor's decision "class c over region R" to its input pixels, with captum.

The target is the score ``F(x) = sum over (y, x) in R of logits[c, y, x]``: one number per image, so
every captum method applies unchanged. Following captum's pattern for segmentors, ``RegionScore``
wraps the model to return that score and the region travels as a forward argument (captum repeats
``additional_forward_args`` along the batch with the inputs; a closure over the mask would break for
batches larger than one).

Methods (``attribute(..., method=...)``; each function takes the score, the images and the region's
weights on the model's device and in its dtype, where ``attribute`` puts them):

- ``integrated_gradients`` (Sundararajan et al. 2017): path integral of gradients from a baseline
  (default zeros: the mean image after normalisation); completeness ``sum(map) = F(x) - F(baseline)``
  up to the returned convergence ``delta``.
- ``grad_cam`` (Selvaraju et al. 2017), captum's ``LayerGradCam`` on the decode head's last
  image-shaped feature map, the input of ``decode_head.classifier`` (every head here has one):
  SETR Naive/PUP the last conv-BN-ReLU stage, SETR-MLA the four concatenated streams (stride 4),
  GPViT UPerNet the FPN bottleneck and SegFormer the fusion conv (stride 8 for GPViT), SETR-HLG the
  last HLG head layer (stride 4). Upsampled to the input with ``LayerAttribution.interpolate``.
- ``occlusion`` (Zeiler & Fergus 2014): score drop when a ``window`` slides with ``stride``.
- ``saliency`` (Simonyan et al. 2014): absolute input gradient.

Regions and maps live in model-input pixels (the images given); ``View.to_image`` brings a map back
to the original image. Memory: IG back-propagates ``internal_batch_size`` images at a time and
occlusion evaluates ``perturbations_per_eval`` at a time, so the peak is a few forward/backward
passes of the model at the input size, whatever ``n_steps`` or the number of windows. Measured on
2 CPU cores, GPViT-L1 UPerNet at 512x512 (0.9 GiB resident with its weights): peak 2.4 GiB for IG with
one image and ``internal_batch_size=1``, 6.2 GiB with 4; 2.3 GiB for Grad-CAM.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from workbench.precision import model_device_dtype

# captum is imported inside each method: its import takes ~1.4 s and pulls in matplotlib.pyplot, a cost
# every ``import workbench.viz`` (the Predictor, the app) would pay for a feature few calls use.

# A region: a mask (H, W) or (B, H, W), a box (top, left, bottom, right) with exclusive ends, or a
# pixel (y, x).
Region = torch.Tensor | np.ndarray | tuple[int, ...]


@dataclass
class Attribution:
    """Attribution maps (B, H, W) over the input pixels (channels summed), and for integrated gradients
    the convergence delta (B,): ``sum(map) - (F(x) - F(baseline))``; None for the other methods."""

    map: torch.Tensor
    delta: torch.Tensor | None
    method: str


class RegionScore(nn.Module):
    """``model``'s class-``target_class`` logits summed over a region: images (B, C, H, W) and region
    weights (B, H, W) -> scores (B,)."""

    def __init__(self, model: nn.Module, target_class: int) -> None:
        super().__init__()
        self.model = model
        self.target_class = target_class

    def forward(self, images: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
        logits = self.model(images)[:, self.target_class]
        return (logits * region).sum(dim=(-2, -1))


def region_mask(region: Region, batch: int, size: tuple[int, int]) -> torch.Tensor:
    """``region`` (mask, box or pixel, see ``Region``) as float weights (batch, H, W), 1 inside."""
    height, width = size
    if isinstance(region, torch.Tensor | np.ndarray):
        mask = region.cpu() if isinstance(region, torch.Tensor) else torch.from_numpy(region)
        if mask.dtype != torch.bool or mask.shape not in ((height, width), (batch, height, width)):
            raise ValueError(
                f"a region mask must be bool of shape ({height}, {width}) or ({batch}, {height}, {width}), "
                f"got {mask.dtype} {tuple(mask.shape)}"
            )
        if not mask.flatten(-2).any(-1).all():
            raise ValueError("the region mask selects no pixel (of some image)")
        return mask.float().expand(batch, height, width).clone()
    corners = tuple(region)
    if len(corners) == 2:  # a pixel is the box one pixel wide
        corners = (corners[0], corners[1], corners[0] + 1, corners[1] + 1)
    if len(corners) != 4 or not all(isinstance(v, int | np.integer) for v in corners):
        raise ValueError(
            f"a region is a bool mask, a box (top, left, bottom, right) or a pixel (y, x), got {region!r}"
        )
    top, left, bottom, right = corners
    if not (0 <= top < bottom <= height and 0 <= left < right <= width):
        raise ValueError(
            f"region {tuple(region)} is empty or outside the {height}x{width} input "
            "(boxes are top, left, bottom, right with exclusive ends)"
        )
    mask = torch.zeros(batch, height, width)
    mask[:, top:bottom, left:right] = 1.0
    return mask


def integrated_gradients(
    score: RegionScore,
    images: torch.Tensor,
    region: torch.Tensor,
    *,
    n_steps: int = 50,
    internal_batch_size: int | None = None,
    baselines: torch.Tensor | float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """IG attributions (B, C, H, W) and convergence deltas (B,).

    ``internal_batch_size`` path points go through the model at a time, the memory bound; captum's
    least (and the default) is B, one point of every image.
    """
    from captum.attr import IntegratedGradients

    return IntegratedGradients(score).attribute(
        images,
        baselines=baselines,
        additional_forward_args=(region,),
        n_steps=n_steps,
        internal_batch_size=max(internal_batch_size or 0, images.shape[0]),
        return_convergence_delta=True,
    )


def grad_cam(
    score: RegionScore,
    images: torch.Tensor,
    region: torch.Tensor,
    *,
    layer: nn.Module | None = None,
    relu: bool = True,
) -> torch.Tensor:
    """Grad-CAM (B, 1, H, W) on ``layer``'s input (default: the decode head's classifier, whose input is
    the last image-shaped feature map), ReLU-ed as in the paper unless ``relu=False``."""
    from captum.attr import LayerAttribution, LayerGradCam

    if layer is None:
        layer = getattr(getattr(score.model, "decode_head", None), "classifier", None)
        if not isinstance(layer, nn.Module):
            raise ValueError("grad_cam needs layer=... for a model without decode_head.classifier")
    cam = LayerGradCam(score, layer).attribute(
        images, additional_forward_args=(region,), attribute_to_layer_input=True, relu_attributions=relu
    )
    return LayerAttribution.interpolate(cam, tuple(images.shape[-2:]), interpolate_mode="bilinear")


def occlusion(
    score: RegionScore,
    images: torch.Tensor,
    region: torch.Tensor,
    *,
    window: int | tuple[int, int] = 16,
    stride: int | tuple[int, int] = 8,
    baselines: float = 0.0,
    perturbations_per_eval: int = 1,
) -> torch.Tensor:
    """Occlusion attributions (B, C, H, W): the score drop when a ``window`` (pixels, all channels)
    is set to ``baselines``, averaged over the windows covering each pixel."""
    from captum.attr import Occlusion

    window, stride = _pair(window, "window"), _pair(stride, "stride")
    channels = images.shape[1]
    return Occlusion(score).attribute(
        images,
        sliding_window_shapes=(channels, *window),
        strides=(channels, *stride),
        baselines=baselines,
        additional_forward_args=(region,),
        perturbations_per_eval=perturbations_per_eval,
    )


def saliency(score: RegionScore, images: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """Absolute gradients of the score with respect to the input (B, C, H, W)."""
    from captum.attr import Saliency

    # A leaf that requires grad, so captum neither warns nor flips the caller's tensor.
    leaf = images.detach().requires_grad_()
    return Saliency(score).attribute(leaf, additional_forward_args=(region,), abs=True)


METHODS: dict[str, Callable[..., torch.Tensor | tuple[torch.Tensor, torch.Tensor]]] = {
    "integrated_gradients": integrated_gradients,
    "grad_cam": grad_cam,
    "occlusion": occlusion,
    "saliency": saliency,
}


def attribute(
    model: nn.Module,
    images: torch.Tensor,
    target_class: int,
    region: Region,
    method: str = "integrated_gradients",
    **options,
) -> Attribution:
    """Attribute "class ``target_class`` over ``region``" of a segmentor to its input pixels.

    Args:
        model: a segmentor, ``model(images)`` -> logits (B, K, H, W); it runs in eval mode (its own
            mode is restored afterwards).
        images: model inputs (B, C, H, W), normalised as the model expects.
        target_class: the class c whose logits are summed.
        region: bool mask (H, W) or (B, H, W), box (top, left, bottom, right) with exclusive ends, or
            pixel (y, x), in the pixels of ``images``.
        method: one of ``METHODS``; ``options`` are that method's keywords (``n_steps``,
            ``internal_batch_size``, ``baselines``; ``layer``, ``relu``; ``window``, ``stride``,
            ``baselines``, ``perturbations_per_eval``).

    Returns:
        ``Attribution`` with maps (B, H, W), the per-channel attributions summed (signed, so integrated
        gradients keep their completeness), and IG's convergence delta, on ``images``' device and in
        its dtype. The methods run on the model's device and dtype, ``images`` and any tensor among
        ``options`` (a ``baselines`` batch) moved there.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}")
    function = METHODS[method]
    allowed = list(inspect.signature(function).parameters)[3:]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"{method} takes options {allowed}, got {unknown}")
    if images.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    num_classes = getattr(model, "num_classes", None)
    if isinstance(target_class, bool) or not isinstance(target_class, int | np.integer):
        raise ValueError(f"target_class must be an int class index, got {target_class!r}")
    if num_classes is not None and not 0 <= target_class < num_classes:
        raise ValueError(f"target_class must lie in [0, {num_classes}), got {target_class}")
    device, dtype = model_device_dtype(model)
    inputs = images.to(device, dtype)
    mask = region_mask(region, images.shape[0], tuple(images.shape[-2:])).to(device, dtype)
    options = {name: v.to(device, dtype) if isinstance(v, torch.Tensor) else v for name, v in options.items()}
    score = RegionScore(model, int(target_class))
    was_training = model.training
    model.eval()  # dropout off, batch-norm statistics frozen: attributions of the deployed model
    try:
        result = function(score, inputs, mask, **options)
    finally:
        model.train(was_training)
    attributions, delta = result if isinstance(result, tuple) else (result, None)
    maps = attributions.detach().float().sum(dim=1).to(images)  # channels summed in fp32
    return Attribution(maps, None if delta is None else delta.detach().to(images), method)


def _pair(value: int | tuple[int, int], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and v > 0 for v in pair):
        raise ValueError(f"{name} must be a positive int or (height, width), got {value!r}")
    return pair
