"""Seeing inside the models: attention recording (more to come: rollout, group maps, attributions)."""

from workbench.models.explain import AttentionMap
from workbench.viz.record import Recording, record

__all__ = ["AttentionMap", "Recording", "record"]
