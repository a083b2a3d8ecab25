"""Detection and instance segmentation: GPViT-Adapter and HLG pyramids in torchvision's detectors."""

from workbench.models.detection.adapter import GPViTAdapter
from workbench.models.detection.deform_attn import MSDeformAttn, multi_scale_deformable_attention
from workbench.models.detection.detectors import (
    DetectorInfo,
    create_detector,
    detector_info,
    list_detectors,
)

__all__ = [
    "DetectorInfo",
    "GPViTAdapter",
    "MSDeformAttn",
    "create_detector",
    "detector_info",
    "list_detectors",
    "multi_scale_deformable_attention",
]
