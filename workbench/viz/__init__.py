"""Seeing inside the models: attention recording (more to come: rollout, group maps, attributions)."""

from workbench.viz.record import AttentionMap, Recording, record

__all__ = ["AttentionMap", "Recording", "record"]
