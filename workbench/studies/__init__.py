"""Measurements over models and data sets: per-image review, family summaries, data-set analyses, and
the attention researchers' studies (CKA, linear probes, ablation, layer-wise decoding, attention
statistics), each a tidy ``Table`` with ``to_csv`` and a figure."""

from workbench.studies.ablation import (
    AblationRow,
    Component,
    PixelRow,
    ablated,
    component_means,
    components,
    head_importance,
    importance_figure,
    pixel_effect,
)
from workbench.studies.layers import layer_features
from workbench.studies.lens import LensRow, layer_decoding, lens_figure, lens_logits
from workbench.studies.probes import (
    LinearProbe,
    ProbeRow,
    fit_probes,
    layer_probes,
    probe_figure,
    probe_metrics,
)
from workbench.studies.similarity import CKARow, MinibatchCKA, cka, cka_figure, hsic, layer_cka, unbiased_hsic
from workbench.studies.statistics import (
    HeadStatistic,
    attention_entropy,
    attention_statistics,
    statistics_figure,
)
from workbench.studies.tables import Table

__all__ = [
    "AblationRow",
    "CKARow",
    "Component",
    "HeadStatistic",
    "LensRow",
    "LinearProbe",
    "MinibatchCKA",
    "PixelRow",
    "ProbeRow",
    "Table",
    "ablated",
    "attention_entropy",
    "attention_statistics",
    "cka",
    "cka_figure",
    "component_means",
    "components",
    "fit_probes",
    "head_importance",
    "hsic",
    "importance_figure",
    "layer_cka",
    "layer_decoding",
    "layer_features",
    "layer_probes",
    "lens_figure",
    "lens_logits",
    "pixel_effect",
    "probe_figure",
    "probe_metrics",
    "statistics_figure",
    "unbiased_hsic",
]
