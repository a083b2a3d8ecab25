"""One place that turns a ``Config`` into objects: the model, the data sets and the class list.

    model = build_model(cfg)                  # a registered segmentor, or a timm classifier wrapped
    train_set, val_set = build_datasets(cfg)  # the data set's own splits and transforms
    classes = classes_of(cfg)                 # names and palette, without reading an image

Layering: models and data know nothing of configs' tasks; the engine, the CLI, the Predictor and
the app build through here.
"""

from __future__ import annotations

import re
from typing import Any

import timm
from torch import nn

from workbench.config import Config
from workbench.data import DATASETS, Classes, dataset_class
from workbench.data.transforms import EvalTransform
from workbench.models import create_segmentor
from workbench.models.classifier import Classifier
from workbench.models.detection import create_detector


def _dataset_class(cfg: Config) -> type:
    """The class of ``cfg.data.dataset``, checked against ``cfg.task``."""
    cls = dataset_class(cfg.data.dataset)
    if cls.task != cfg.task:
        fitting = [name for name, c in DATASETS.items() if c.task == cfg.task]
        raise ValueError(
            f"data.dataset {cfg.data.dataset!r} is a {cls.task} data set but task is {cfg.task!r}; "
            f"{cfg.task} data sets: {', '.join(fitting)}"
        )
    return cls


def classes_of(cfg: Config) -> Classes:
    """Class names and colours of the configured data set, without reading its images.

    With ``data.num_classes`` set to another count than the data set's (e.g. a converted release
    checkpoint), the classes are numbered.
    """
    classes = _dataset_class(cfg).declared_classes(cfg.data)
    background = 1 if cfg.task == "detection" else 0  # a detection set's classes start with it
    if cfg.data.num_classes and cfg.data.num_classes + background != len(classes):
        return Classes.numbered(cfg.data.num_classes + background)
    return classes


def build_model(cfg: Config) -> nn.Module:
    """The configured segmentor, for ``task: classification`` a timm classifier in a ``Classifier``,
    for ``task: detection`` a registered detector (``data.num_classes``: foreground classes)."""
    num_classes = cfg.data.num_classes or len(classes_of(cfg))
    kwargs: dict[str, Any] = dict(cfg.model.kwargs)
    try:
        if cfg.task == "classification":
            data = cfg.data
            model = timm.create_model(cfg.model.name, num_classes=num_classes, **kwargs)
            return Classifier(model, num_classes, data.mixup, data.cutmix, data.label_smoothing)
        if cfg.task == "detection":  # the classes hold the background first; detectors count the others
            return create_detector(
                cfg.model.name, num_classes=cfg.data.num_classes or num_classes - 1, **kwargs
            )
        return create_segmentor(cfg.model.name, num_classes=num_classes, **kwargs)
    except TypeError as error:  # a typo in model.kwargs reaches the constructor as an unknown keyword
        unexpected = re.search(r"unexpected keyword argument '(\w+)'", str(error))
        if unexpected is None or unexpected[1] not in kwargs:
            raise
        raise ValueError(
            f"model.kwargs.{unexpected[1]}: {cfg.model.name} takes no argument {unexpected[1]!r}"
        ) from error


def build_datasets(cfg: Config) -> tuple[Any, Any]:
    """(train, val) splits of the configured data set with the recipe's transforms."""
    return _dataset_class(cfg).from_config(cfg.data)


def eval_transform(cfg: Config) -> EvalTransform:
    """The configured data set's test-time preprocessing, which the Predictor shares with evaluation."""
    return _dataset_class(cfg).eval_transform(cfg.data)
