"""What the app's handlers share: limits, the head selector's mean, attribution settings."""

from __future__ import annotations

from dataclasses import dataclass

MEAN = "mean"  # the head selector's "average over heads"
SCORE_THRESHOLD = 0.3  # a detection run's default: detections scoring less are not shown
SEGMENTATION_ONLY = "{} apply to segmentation models; the loaded model is a detector"
IMAGE_HEIGHT = 360  # pixels on the page; images are scaled to fit, clicks map back to image pixels
# method -> captum options that keep a CPU answer within tens of seconds, from the model input's size
# (occlusion windows are in the model input's pixels, where captum runs, not the image's)
ATTRIBUTIONS = {
    "occlusion": lambda size: {  # an 8 x 8 grid of windows: 64 forward passes
        "window": max(8, max(size) // 8),
        "stride": max(8, max(size) // 8),
        "perturbations_per_eval": 4,
    },
    "integrated_gradients": lambda size: {"n_steps": 16, "internal_batch_size": 4},
}


@dataclass(frozen=True)
class Settings:
    """Limits and placement: images over ``pixel_budget`` are downscaled (with a notice), over
    ``max_pixels`` refused (checked from the header), under ``min_side`` refused. Models and sessions
    (at most ``sessions``) share ``memory_budget_mb``; the load box loads only from the folders in
    ``allow_load`` (none: loading from the page is off); uploads over ``max_upload_mb`` are refused."""

    pixel_budget: int = 1024 * 1024
    max_pixels: int = 50_000_000
    min_side: int = 8
    sessions: int = 16
    device: str | None = None
    precision: str = "auto"
    memory_budget_mb: int = 4096
    allow_load: tuple[str, ...] = ()
    max_upload_mb: int = 64
