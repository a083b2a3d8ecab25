"""Seeing inside the models: recorded attention, a pixel's attention, GPViT's groups, rollout and
relevance, attention distance, receptive fields, captum attributions, figures and explorers."""

from workbench.models.explain import AttentionMap, CachedAttention, TokenGrid, View
from workbench.viz.attribution import Attribution, attribute
from workbench.viz.distance import attention_distances, gp_attention_distance, mean_attention_distance
from workbench.viz.figures import (
    attention_distance_figure,
    attention_grid_figure,
    click_figure,
    group_assignment_figure,
    heatmap_figure,
    mask_figure,
)
from workbench.viz.groups import (
    effective_attention,
    effective_attention_at,
    gp_assignments,
    group_assignment,
    group_purity,
    mixing_matrices,
    normalized_mutual_information,
    soft_group_maps,
    token_mixing,
)
from workbench.viz.record import Recording, capture, record
from workbench.viz.rollout import (
    attention_relevance,
    attention_rollout,
    class_token_rollout,
    effective_receptive_field,
    rollout_at,
    segment_relevance,
)

EXPLORERS = ("AttentionExplorer", "AttributionExplorer", "GroupExplorer")


def __getattr__(name: str):
    # The notebook explorers load on first use: ipywidgets costs every ``import workbench.viz`` 0.3 s.
    if name in EXPLORERS:
        from workbench.viz import explorers

        return getattr(explorers, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    *EXPLORERS,
    "AttentionMap",
    "Attribution",
    "CachedAttention",
    "Recording",
    "TokenGrid",
    "View",
    "attention_distance_figure",
    "attention_distances",
    "attention_grid_figure",
    "attention_relevance",
    "attention_rollout",
    "attribute",
    "capture",
    "class_token_rollout",
    "click_figure",
    "effective_attention",
    "effective_attention_at",
    "effective_receptive_field",
    "gp_assignments",
    "gp_attention_distance",
    "group_assignment",
    "group_assignment_figure",
    "group_purity",
    "heatmap_figure",
    "mask_figure",
    "mean_attention_distance",
    "mixing_matrices",
    "normalized_mutual_information",
    "record",
    "rollout_at",
    "segment_relevance",
    "soft_group_maps",
    "token_mixing",
]
