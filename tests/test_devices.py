"""Every public function of ``workbench.viz`` and ``workbench.studies.analysis`` that runs a model feeds it
on the model's device and in its dtype, and hands results back where the caller's inputs are (CPU
tensors in their dtype, numbers): the notebooks' calls on a GPU machine, where ``demo_predictor`` puts
the model on CUDA and the images come from a CPU data set.

Two placements of the model, each with CPU float32 inputs:

- "elsewhere": the model's tensors on a second device that carries real values (``tests/elsewhere.py``
  says why neither ``meta`` nor ``FakeTensorMode`` serves here): any op mixing it with a CPU tensor
  fails, as on CUDA;
- "bf16": the model's weights in bfloat16 on the CPU (``model.to(torch.bfloat16)``): inputs must be
  cast to its dtype (a float32 batch into bf16 convolutions fails).

The data-set analyses also take images of different sizes (ADE20K's test views keep each image's
aspect ratio), one image at a time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import torch

from workbench.config import EvalConfig
from workbench.inference.predictor import Predictor
from workbench.models.layers import pad_for
from workbench.precision import model_device_dtype
from workbench.studies.analysis import (
    dataset_attention_distances,
    dataset_receptive_field,
    family_summary,
    review,
)
from workbench.viz.attribution import attribute
from workbench.viz.distance import attention_distances
from workbench.viz.groups import mixing_matrices, propagation_inputs
from workbench.viz.panels import panels_figure
from workbench.viz.rollout import effective_receptive_field, segment_relevance

from .elsewhere import ELSEWHERE, Elsewhere, is_elsewhere
from .tiny import tiny_gpvit_segmentor, tiny_setr, tiny_setr_hlg

NUM_CLASSES = 3
SIZE = (32, 48)

BUILDERS: dict[str, Callable[[], torch.nn.Module]] = {
    "setr": lambda: tiny_setr("setr_naive_vit_base", NUM_CLASSES),
    "gpvit": lambda: tiny_gpvit_segmentor("segformer", NUM_CLASSES),
    "hlg": lambda: tiny_setr_hlg(NUM_CLASSES),
}


class MixedSizes:
    """A data set whose test views differ in size, as ADE20K's do (the evaluation keeps the aspect
    ratio): ``dataset[i]`` is (normalised image (3, H, W), labels (H, W)), ``load(i)`` the uint8 image."""

    sizes = ((32, 48), (48, 32), (32, 32))

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(0)
        self.images = [
            torch.randint(0, 256, (3, *size), dtype=torch.uint8, generator=generator) for size in self.sizes
        ]
        self.labels = [torch.randint(0, NUM_CLASSES, size, generator=generator) for size in self.sizes]

    def __len__(self) -> int:
        return len(self.sizes)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return (self.images[index].float() - 128) / 64, self.labels[index]

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]


def _region(images: torch.Tensor) -> torch.Tensor:
    region = torch.zeros(images.shape[-2:], dtype=torch.bool)
    region[8:16, 8:24] = True
    return region


# (name, model, call): each call runs a model the way a notebook or the app does, with CPU inputs.
CALLS: list[tuple[str, str, Callable[[torch.nn.Module, torch.Tensor], Any]]] = [
    *[
        (f"attention_distances[{m}]", m, lambda model, images: attention_distances(model, images))
        for m in BUILDERS
    ],
    ("effective_receptive_field", "setr", lambda model, images: effective_receptive_field(model, images)),
    (
        "segment_relevance",
        "setr",
        lambda model, images: segment_relevance(model, images, 1, _region(images)),
    ),
    *[
        (
            f"attribute[{method}]",
            "gpvit",
            lambda model, images, method=method, options=options: attribute(
                model, images, 1, (8, 8, 16, 24), method, **options
            ),
        )
        for method, options in {
            "saliency": {},
            "grad_cam": {},
            "integrated_gradients": {"n_steps": 2},
            "occlusion": {"window": 16, "stride": 16},
        }.items()
    ],
    ("propagation_inputs", "gpvit", lambda model, images: propagation_inputs(model, images)),
    ("mixing_matrices", "gpvit", lambda model, images: mixing_matrices(model, images)),
    ("review", "gpvit", lambda model, images: review(model, MixedSizes(), worst=1)),
    (
        "family_summary",
        "gpvit",
        lambda model, images: family_summary(Predictor(model, EvalConfig()), MixedSizes(), count=3),
    ),
]


def _leaves(result: Any) -> Iterator[Any]:
    """Every tensor and number in a result: dicts, sequences, dataclasses (``Attribution``, ``Review``)."""
    if dataclasses.is_dataclass(result):
        result = [getattr(result, field.name) for field in dataclasses.fields(result)]
    if isinstance(result, dict):
        result = list(result.values())
    if isinstance(result, list | tuple):
        for value in result:
            yield from _leaves(value)
    elif isinstance(result, torch.Tensor | float):
        yield result


def _check_on_the_callers_side(result: Any) -> None:
    """Tensors on the CPU, floating ones float32 like the inputs; numbers finite."""
    leaves = list(_leaves(result))
    assert leaves, "the call returned nothing to check"
    for leaf in leaves:
        if isinstance(leaf, float):
            assert np.isfinite(leaf)
            continue
        assert not is_elsewhere(leaf) and leaf.device.type == "cpu", "a result stayed on the model's device"
        assert not leaf.is_floating_point() or leaf.dtype == torch.float32, f"a {leaf.dtype} result"


def _model(kind: str) -> torch.nn.Module:
    return BUILDERS[kind]().eval()


@pytest.mark.parametrize("name, kind, call", CALLS, ids=[name for name, _, _ in CALLS])
def test_functions_feed_a_model_on_another_device_and_return_to_the_cpu(name, kind, call):
    model = _model(kind)
    images = torch.randn(2, 3, *SIZE)
    with Elsewhere() as elsewhere:
        model.to(ELSEWHERE)
        result = call(model, images)
    assert not elsewhere.mixes
    _check_on_the_callers_side(result)


@pytest.mark.parametrize("name, kind, call", CALLS, ids=[c[0] for c in CALLS])
def test_functions_run_a_bf16_model_on_float32_inputs(name, kind, call):
    model = _model(kind).to(torch.bfloat16)
    _check_on_the_callers_side(call(model, torch.randn(2, 3, *SIZE)))


def test_model_device_dtype_is_the_first_parameters_device_and_floating_dtype():
    model = _model("setr").to(torch.bfloat16)
    assert model_device_dtype(model) == (torch.device("cpu"), torch.bfloat16)
    with Elsewhere():
        assert model_device_dtype(model.to(ELSEWHERE)) == (ELSEWHERE, torch.bfloat16)
    assert model_device_dtype(torch.nn.ReLU()) == (torch.device("cpu"), torch.get_default_dtype())


def test_dataset_attention_distances_average_images_of_different_sizes():
    model, dataset = _model("hlg"), MixedSizes()
    per_image = [attention_distances(model, pad_for(model, dataset[i][0][None])) for i in range(len(dataset))]
    averaged = dataset_attention_distances(model, dataset)
    assert list(averaged) == list(per_image[0])
    for site, distances in averaged.items():
        torch.testing.assert_close(distances, torch.stack([d[site] for d in per_image]).mean(0))


class _Conv3x3(torch.nn.Module):
    """A segmentor whose receptive field is the 3x3 neighbourhood of a pixel."""

    num_classes = NUM_CLASSES

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, NUM_CLASSES, 3, padding=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.conv(images)


def test_dataset_receptive_field_lines_up_the_centres_of_images_of_different_sizes():
    field = dataset_receptive_field(_Conv3x3(), MixedSizes())
    assert field.shape == (32, 32)  # the smallest height and width
    reached = field.nonzero()
    assert reached.min(0).values.tolist() == [15, 15] and reached.max(0).values.tolist() == [17, 17]
    assert field.max() == 1


def test_figures_take_a_bf16_models_own_tensors():
    matrices = mixing_matrices(_model("gpvit").to(torch.bfloat16))  # the weights' product, in bf16
    assert panels_figure(matrices, signed=True).axes


def _session_queries(predictor: Predictor, photo: np.ndarray) -> list[Any]:
    """A prediction, a session and every query kind a click or a tab asks of it."""
    session = predictor.open(photo)
    answers = [predictor(photo).probs, session.prediction.probs]
    for name in session.sites():
        if session.cached[name].layout.kind != "grouping":
            answers.append(session.attention_at(5, 7, name))
    grouping = [name for name, site in session.cached.items() if site.layout.kind == "grouping"]
    if grouping:
        answers += [session.group_assignment(0), session.group_maps(grouping[0])]
    if all(site.layout.kind == "self" for site in session.cached.values()):
        answers.append(session.rollout_at(5, 7))
    region = session.prediction.labels == session.prediction.labels[5, 7]
    answers.append(session.attribute(int(session.prediction.labels[5, 7]), region, "saliency"))
    return answers


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_the_predictor_and_its_sessions_feed_a_model_on_another_device(kind):
    """The Predictor reads the model's device (it moves nothing) and every query's inputs follow it."""
    photo = np.random.default_rng(0).integers(0, 256, (*SIZE, 3), dtype=np.uint8)
    model = _model(kind)
    with Elsewhere() as elsewhere:
        model.to(ELSEWHERE)
        predictor = Predictor(model)
        assert predictor.model is model and is_elsewhere(next(model.parameters()))
        answers = _session_queries(predictor, photo)
    assert not elsewhere.mixes
    _check_on_the_callers_side(answers)
