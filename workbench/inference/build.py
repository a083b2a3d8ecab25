"""Building predictors, in one place: from a run, a released checkpoint or a catalogue name.

    predictor = load_predictor("runs/demo_gpvit")                       # a run folder or checkpoint
    predictor = load_predictor("gpvit_l1_upernet_ade20k")              # a catalogue name
    predictor = load_predictor("upernet.pth", model="gpvit_l1_upernet", num_classes=150)  # a file

A segmentation run or release gives a ``Predictor``, a detection one a ``DetectionPredictor``: both
take a built model, read images through the one reader and run in the one precision setting, so the
callers (the CLI, the app, notebooks) treat them alike. A run predicts with its own config's test
recipe; a release with its paper's (``workbench.inference.recipes``). The builder owns the model it
builds: it puts it in eval mode on the device (None: the GPU when there is one) and, for segmentors,
in the channels-last layout when asked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from workbench.config import Config
from workbench.inference.detection_predictor import DetectionPredictor
from workbench.inference.predictor import Predictor
from workbench.inference.recipes import recipe_for
from workbench.interop import LoadReport
from workbench.precision import resolve_device, use_channels_last


def load_run(path: str | Path, ema: bool = False) -> tuple[Config, nn.Module, LoadReport]:
    """The config of a run folder or checkpoint, the model it builds with the run's weights (EMA ones
    with ``ema``), and the load report."""
    from workbench.build import build_model
    from workbench.interop import load_weights
    from workbench.interop.checkpoint import checkpoint_config

    cfg = checkpoint_config(path)
    # A timm encoder's starting weights are in the checkpoint now: its file need not exist any more.
    cfg.model.kwargs.pop("encoder_checkpoint", None)
    model = build_model(cfg)
    return cfg, model, load_weights(model, path, ema=ema)


def load_predictor(
    source: str | Path,
    *,
    model: str | None = None,
    num_classes: int | None = None,
    dataset: str | None = None,
    device: str | None = None,
    precision: str = "fp32",
    compile: str | bool = "auto",
    channels_last: bool = True,
    ema: bool = False,
    score_threshold: float = 0.3,
    **model_kwargs: Any,
) -> Predictor | DetectionPredictor:
    """A predictor for ``source``: a run folder or workbench checkpoint (``model`` None), or released
    weights (a path, URL or catalogue name) for the registered ``model`` with ``num_classes`` classes
    (a catalogue name supplies both when omitted). ``dataset`` names the release's data set where its
    class count does not (see ``recipes``); ``model_kwargs`` build the model. ``score_threshold``
    applies to detectors, ``channels_last`` and ``ema`` (a run's EMA weights) to what they fit.
    ``precision`` ("fp32"; "auto": ``workbench.precision``) and ``compile`` ("auto":
    ``workbench.fast_path``) are the Predictor's; a detector takes the precision."""
    from workbench.interop.download import CATALOGUE

    settings = dict(device=device, precision=precision, channels_last=channels_last, compile=compile)
    if model is None and str(source) in CATALOGUE:
        model = CATALOGUE[str(source)].model
    if model is None:
        return _from_run(source, ema, score_threshold, settings)
    return _from_release(source, model, num_classes, dataset, score_threshold, settings, model_kwargs)


def _placed(model: nn.Module, device: str | None, channels_last: bool) -> nn.Module:
    """The builder's own model in eval mode on ``device``, channels-last when asked (segmentors)."""
    model = model.to(resolve_device(device)).eval()
    use_channels_last(model, channels_last)
    return model


def _from_run(
    path: str | Path, ema: bool, score_threshold: float, settings: dict
) -> Predictor | DetectionPredictor:
    from workbench.build import classes_of, eval_transform

    cfg, model, report = load_run(path, ema)
    device, precision = settings["device"], settings["precision"]
    if cfg.task == "detection":
        model = _placed(model, device, False)
        predictor = DetectionPredictor(
            model, classes_of(cfg), precision=precision, score_threshold=score_threshold
        )
    else:
        model = _placed(model, device, settings["channels_last"])
        predictor = Predictor(
            model,
            cfg.eval,
            classes_of(cfg),
            eval_transform(cfg),
            precision=precision,
            compile=settings["compile"],
        )
    predictor.load_report = report
    return predictor


def _from_release(
    source: str | Path,
    name: str,
    num_classes: int | None,
    dataset: str | None,
    score_threshold: float,
    settings: dict,
    model_kwargs: dict,
) -> Predictor | DetectionPredictor:
    from workbench.build import classes_of, eval_transform
    from workbench.interop import load_pretrained
    from workbench.models import create_segmentor
    from workbench.models.detection import create_detector, list_detectors
    from workbench.models.registry import model_info

    device, precision = settings["device"], settings["precision"]
    if name in list_detectors():
        if num_classes is None:
            raise ValueError(
                f"num_classes is needed to build {name} (its foreground classes, e.g. 80 for COCO)"
            )
        detector = create_detector(name, num_classes=num_classes, **model_kwargs)
        report = load_pretrained(detector, source)
        predictor = DetectionPredictor(
            _placed(detector, device, False), precision=precision, score_threshold=score_threshold
        )
    else:
        num_classes = num_classes or model_info(name).paper.num_classes
        segmentor = create_segmentor(name, num_classes=num_classes, **model_kwargs)
        report = load_pretrained(segmentor, source)
        segmentor = _placed(segmentor, device, settings["channels_last"])
        recipe = recipe_for(name, num_classes, dataset)
        if recipe is None:  # no recipe known: whole images at their own size, the model's mean/std
            predictor = Predictor(segmentor, precision=precision, compile=settings["compile"])
        else:
            transform, classes = eval_transform(recipe), classes_of(recipe)
            predictor = Predictor(
                segmentor, recipe.eval, classes, transform, precision=precision, compile=settings["compile"]
            )
    predictor.load_report = report
    return predictor
