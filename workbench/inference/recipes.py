"""The papers' test recipes, which released models predict with: test scale and inference mode.

One table, (family, data set) -> the preset config that holds the recipe (``workbench/configs/``): its
``data.scale`` is the test scale (ADE20K: short side 512, long side at most 2048; Cityscapes:
2048x1024), its ``eval`` section the inference (GPViT on ADE20K: whole image; SETR and HLG:
sliding windows of the crop size). The family comes from the model registry, the data set from the
caller or from the class count of the release (150: ADE20K, 19: Cityscapes, 59: Pascal Context).
Training runs carry their own recipe in their config; this table serves releases without one.
"""

from __future__ import annotations

from workbench.config import Config, load_config
from workbench.models.registry import model_info

TEST_RECIPES: dict[tuple[str, str], str] = {
    ("SETR", "ade20k"): "setr_mla_vit_large_ade20k",
    ("SETR", "cityscapes"): "setr_pup_vit_large_cityscapes",
    ("SETR", "pascal_context"): "setr_naive_vit_large_pascal_context",
    ("GPViT", "ade20k"): "gpvit_l1_upernet_ade20k",
    ("HLG", "ade20k"): "setr_hlg_medium_ade20k",
    ("HLG", "cityscapes"): "setr_hlg_small_cityscapes",
}
DATASET_OF_CLASS_COUNT = {150: "ade20k", 19: "cityscapes", 59: "pascal_context"}


def recipe_for(model: str, num_classes: int, dataset: str | None = None) -> Config | None:
    """The preset config holding the test recipe of registered segmentor ``model`` on ``dataset``
    (None: the data set of ``num_classes`` classes), with ``model`` and the class count filled in;
    None where the table has no recipe (the Predictor then runs whole images at their own size)."""
    known = sorted(set(DATASET_OF_CLASS_COUNT.values()))
    if dataset is not None and dataset not in known:
        raise ValueError(f"dataset must be one of {', '.join(known)} or None, got {dataset!r}")
    preset = TEST_RECIPES.get((model_info(model).family, dataset or DATASET_OF_CLASS_COUNT.get(num_classes)))
    if preset is None:
        return None
    cfg = load_config(preset)
    cfg.model.name, cfg.model.kwargs, cfg.model.pretrained = model, {}, ""
    cfg.data.num_classes = num_classes
    cfg.validate()
    return cfg
