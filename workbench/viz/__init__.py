"""Seeing inside the models: attention recording (more to come: rollout, group maps, attributions)."""

from workbench.models.explain import AttentionMap, CachedAttention, TokenGrid, View
from workbench.viz.record import Recording, capture, record

__all__ = ["AttentionMap", "CachedAttention", "Recording", "TokenGrid", "View", "capture", "record"]
