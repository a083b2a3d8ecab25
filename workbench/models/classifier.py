"""Image classification behind the segmentors' training interface: a timm classifier with ``losses``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from torch import nn


class Classifier(nn.Module):
    """Wraps a timm classifier: ``losses`` applies mixup / cutmix (timm) and label smoothing."""

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        mixup: float = 0.0,
        cutmix: float = 0.0,
        label_smoothing: float = 0.1,
    ):
        super().__init__()
        self.model = model
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing
        self.mix = (
            Mixup(
                mixup_alpha=mixup,
                cutmix_alpha=cutmix,
                label_smoothing=label_smoothing,
                num_classes=num_classes,
            )
            if mixup or cutmix
            else None
        )

    def no_weight_decay(self) -> set[str]:
        """The wrapped model's ``no_weight_decay`` names (timm's convention), under ``model.``."""
        inner = self.model.no_weight_decay() if hasattr(self.model, "no_weight_decay") else set()
        return {f"model.{name}" for name in inner}

    def group_matcher(self, coarse: bool = False) -> dict:
        """The wrapped model's timm parameter groups, their patterns moved under ``model.``."""

        def under_model(pattern: str) -> str:
            return rf"^model\.(?:{pattern.removeprefix('^')})"

        return {
            group: [(under_model(regex), suffix) for regex, suffix in spec]
            if isinstance(spec, list | tuple)
            else under_model(spec)
            for group, spec in self.model.group_matcher(coarse).items()
            if spec
        }

    def attention_sites(self) -> dict:
        """The wrapped model's attention sites (``workbench.viz.record``), under their own names."""
        if not hasattr(self.model, "attention_sites"):
            raise ValueError(
                f"{type(self.model).__name__} exposes no attention_sites(); it cannot be recorded"
            )
        return self.model.attention_sites()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits (B, num_classes) of images (B, 3, H, W)."""
        return self.model(images)

    def losses(self, images: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """Cross-entropy on (mixed) images (B, 3, H, W) and class indices (B,)."""
        if self.mix is not None and self.training:
            images, soft_targets = self.mix(images, targets)
            loss = SoftTargetCrossEntropy()(self.model(images), soft_targets)
        else:
            loss = F.cross_entropy(self.model(images), targets, label_smoothing=self.label_smoothing)
        return {"loss_main": loss, "loss": loss}
