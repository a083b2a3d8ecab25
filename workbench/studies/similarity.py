"""Representational similarity of layers: linear CKA (Kornblith et al., ICML 2019) and minibatch CKA
(Nguyen, Raghu, Kornblith, ICLR 2021), within one model and across two.

    cka(x, y)                                       # (n, p), (n, q) -> float tensor in [0, 1]
    table = layer_cka(model, val_set)               # every layer against every layer, minibatch CKA
    table = layer_cka(model, val_set, other=model_b, minibatch=False)   # two models, exact CKA
    cka_figure(table)                               # the layer x layer heat map

Linear CKA of centred features X (n, p), Y (n, q) of the same n examples:

    CKA(X, Y) = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)),   K = X X^T, L = Y Y^T,
    HSIC(K, L) = tr(K H L H) / (n - 1)^2,   H = I - 11^T / n   (centring)

which for linear kernels is ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F) on column-centred X, Y (``cka``,
the feature-space form; ``hsic`` is the Gram-matrix definition). Minibatch CKA replaces HSIC by the
unbiased estimator HSIC_1 (Song et al. 2012) averaged over k minibatches,

    CKA_mb = mean_i HSIC_1(K_i, L_i) / sqrt(mean_i HSIC_1(K_i, K_i) mean_i HSIC_1(L_i, L_i)),

so memory is a minibatch's Gram matrices whatever the size of the data set (``MinibatchCKA``).

Features of a layer over a data set (``features=``):

- "pooled" (default): each image's (C, h, w) map averaged over its tokens, one row (C,) per image, as
  Raghu et al. (2021) pool ViT representations; n = the number of images.
- "tokens": ``tokens_per_image`` pixels drawn per image (seeded), each read from the token that holds
  it in every layer (by its stride), so rows correspond across layers and models of any resolution;
  n = images x tokens_per_image.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from matplotlib.figure import Figure
from torch import nn

from workbench.models.layers import pad_for
from workbench.precision import model_device_dtype
from workbench.studies.batches import chosen_indices, image_batches, inference
from workbench.studies.layers import layer_features
from workbench.studies.tables import Table

FEATURES = ("pooled", "tokens")


def _centred(x: torch.Tensor) -> torch.Tensor:
    x = x.double()
    return x - x.mean(0, keepdim=True)


def cka(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Linear CKA of features x (n, p) and y (n, q) of the same n examples, in float64: the
    feature-space form ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F) on column-centred x, y."""
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"expected (n, p) and (n, q) features of the same n, got {tuple(x.shape)}, {tuple(y.shape)}"
        )
    x, y = _centred(x), _centred(y)
    cross = torch.linalg.matrix_norm(y.T @ x) ** 2
    return cross / (torch.linalg.matrix_norm(x.T @ x) * torch.linalg.matrix_norm(y.T @ y))


def hsic(gram_x: torch.Tensor, gram_y: torch.Tensor) -> torch.Tensor:
    """The (biased) HSIC of Gram matrices (n, n) by its definition, tr(K H L H) / (n - 1)^2."""
    n = gram_x.shape[0]
    centring = torch.eye(n, dtype=torch.float64, device=gram_x.device) - 1.0 / n
    return torch.trace(gram_x.double() @ centring @ gram_y.double() @ centring) / (n - 1) ** 2


def unbiased_hsic(gram_x: torch.Tensor, gram_y: torch.Tensor) -> torch.Tensor:
    """HSIC_1 of Gram matrices (n, n), n > 3 (Song et al. 2012; Nguyen et al. 2021, eq. 3): with
    K~, L~ the matrices with zeroed diagonals,
    [tr(K~ L~) + 1^T K~ 1 1^T L~ 1 / ((n-1)(n-2)) - 2/(n-2) 1^T K~ L~ 1] / (n (n-3))."""
    n = gram_x.shape[0]
    if n <= 3:
        raise ValueError(f"the unbiased HSIC needs more than 3 examples per minibatch, got {n}")
    k, ell = (gram.double().clone().fill_diagonal_(0) for gram in (gram_x, gram_y))
    trace = (k * ell).sum()  # tr(K~ L~): both symmetric
    sums = k.sum() * ell.sum() / ((n - 1) * (n - 2))
    cross = 2.0 / (n - 2) * (k.sum(0) @ ell.sum(1))
    return (trace + sums - cross) / (n * (n - 3))


def _gram(features: torch.Tensor) -> torch.Tensor:
    """Linear kernel (n, n) of rows (n, p), in float64."""
    features = features.double()
    return features @ features.T


class MinibatchCKA:
    """Minibatch CKA of layers ``names_x`` against ``names_y``, accumulated over ``update`` calls; the
    state is three sums of (len(names_x), len(names_y)) and per-layer HSIC_1s, whatever the data."""

    def __init__(self, names_x: list[str], names_y: list[str]) -> None:
        self.names_x, self.names_y = list(names_x), list(names_y)
        self.cross = torch.zeros(len(names_x), len(names_y), dtype=torch.float64)
        self.self_x = torch.zeros(len(names_x), dtype=torch.float64)
        self.self_y = torch.zeros(len(names_y), dtype=torch.float64)
        self.batches = 0

    def update(self, features_x: Mapping[str, torch.Tensor], features_y: Mapping[str, torch.Tensor]) -> None:
        """One minibatch: (n, p) rows per layer, the same n examples on both sides."""
        grams_x = [_gram(features_x[name]) for name in self.names_x]
        grams_y = [_gram(features_y[name]) for name in self.names_y]
        for i, gram_x in enumerate(grams_x):
            self.self_x[i] += unbiased_hsic(gram_x, gram_x).cpu()
            for j, gram_y in enumerate(grams_y):
                self.cross[i, j] += unbiased_hsic(gram_x, gram_y).cpu()
        for j, gram_y in enumerate(grams_y):
            self.self_y[j] += unbiased_hsic(gram_y, gram_y).cpu()
        self.batches += 1

    def compute(self) -> torch.Tensor:
        """(len(names_x), len(names_y)) CKA (the 1/k of the means cancels)."""
        if self.batches == 0:
            raise ValueError("no minibatch was added")
        return self.cross / torch.sqrt(self.self_x[:, None] * self.self_y[None, :]).clamp_min(1e-300)


@dataclass
class CKARow:
    """CKA of ``layer_x`` (the first model) and ``layer_y`` (the other, or the same model)."""

    layer_x: str
    layer_y: str
    cka: float


def _rows(
    features: Mapping[str, torch.Tensor], mode: str, points: torch.Tensor | None, size: tuple[int, int]
) -> dict[str, torch.Tensor]:
    """Each layer's map (B, C, h, w) -> rows: (B, C) pooled, or (B * P, C) at the pixels ``points``
    (B, P, 2) of the input ``size``, each read from the token that holds it."""
    if mode == "pooled":
        return {name: f.float().mean((-2, -1)) for name, f in features.items()}
    rows = {}
    for name, f in features.items():
        h, w = f.shape[-2:]
        row = (points[..., 0] * h // size[0]).clamp_max(h - 1)  # stride-exact on padded inputs
        col = (points[..., 1] * w // size[1]).clamp_max(w - 1)
        batch = torch.arange(f.shape[0], device=f.device)[:, None]
        rows[name] = f.float().permute(0, 2, 3, 1)[batch, row, col].reshape(-1, f.shape[1])
    return rows


def layer_cka(
    model: nn.Module,
    dataset: Any,
    other: nn.Module | None = None,
    *,
    features: str = "pooled",
    tokens_per_image: int = 16,
    minibatch: bool = True,
    count: int | None = None,
    batch_size: int = 16,
    seed: int = 0,
    precision: str = "fp32",
    progress: bool = True,
) -> Table:
    """CKA of every layer of ``model`` (``layer_features``) against every layer of ``other`` (None:
    ``model`` itself) over the first ``count`` images of ``dataset`` (all by default), ``batch_size``
    images per forward on each model's device under ``precision``.

    ``minibatch`` (default): minibatch CKA with one minibatch per forward (``batch_size`` images, or
    their tokens; more than 3 rows each: a smaller last one is left out), memory independent of the
    data set; False: exact linear CKA
    of all the rows, kept on the CPU (n x C per layer). ``features``: "pooled" or "tokens" (the module
    docstring); ``seed`` draws the token pixels. Returns a Table of ``CKARow``, layer_x-major."""
    if features not in FEATURES:
        raise ValueError(f"features must be one of {FEATURES}, got {features!r}")
    models = [model] if other is None else [model, other]
    generator = torch.Generator().manual_seed(seed)
    accumulator: MinibatchCKA | None = None
    kept: list[list[dict[str, torch.Tensor]]] = [[] for _ in models]
    indices = chosen_indices(dataset, count)
    for batch in image_batches(model, dataset, indices, batch_size, progress, desc="CKA"):
        points = None
        if features == "tokens":
            high = torch.tensor(batch.size)
            points = (torch.rand(len(batch.labels), tokens_per_image, 2, generator=generator) * high).long()
        per_model = []
        for current in models:
            images = pad_for(current, batch.images.to(*model_device_dtype(current)))
            with inference(current, precision):
                maps = layer_features(current, images)
            on = None if points is None else points.to(images.device)
            per_model.append(_rows(maps, features, on, tuple(images.shape[-2:])))
        if minibatch and next(iter(per_model[0].values())).shape[0] <= 3:
            continue  # a last minibatch of 3 rows or fewer: the unbiased HSIC is undefined on it
        if minibatch:
            accumulator = accumulator or MinibatchCKA(list(per_model[0]), list(per_model[-1]))
            accumulator.update(per_model[0], per_model[-1])
        else:
            for store, rows in zip(kept, per_model, strict=True):
                store.append({name: r.cpu() for name, r in rows.items()})
    if minibatch:
        matrix, names_x, names_y = accumulator.compute(), accumulator.names_x, accumulator.names_y
    else:
        stacked = [{name: torch.cat([b[name] for b in store]) for name in store[0]} for store in kept]
        names_x, names_y = list(stacked[0]), list(stacked[-1])
        matrix = torch.tensor([[float(cka(stacked[0][a], stacked[-1][b])) for b in names_y] for a in names_x])
    return Table(
        CKARow(a, b, float(matrix[i, j])) for i, a in enumerate(names_x) for j, b in enumerate(names_y)
    )


def cka_figure(
    table: Table, title: str = "linear CKA", label_x: str = "layer", label_y: str = "layer"
) -> Figure:
    """The CKA table as a heat map: ``layer_x`` down, ``layer_y`` across, colour 0 to 1."""
    names_x = list(dict.fromkeys(table.column("layer_x")))
    names_y = list(dict.fromkeys(table.column("layer_y")))
    values = torch.tensor(table.column("cka")).reshape(len(names_x), len(names_y))
    figure = Figure(figsize=(1.2 + 0.45 * len(names_y), 1.0 + 0.45 * len(names_x)), layout="constrained")
    axes = figure.add_subplot()
    image = axes.imshow(values.numpy(), vmin=0, vmax=1, cmap="magma", origin="lower")
    axes.set_xticks(range(len(names_y)), names_y, rotation=90, fontsize=7)
    axes.set_yticks(range(len(names_x)), names_x, fontsize=7)
    axes.set_xlabel(label_y)
    axes.set_ylabel(label_x)
    axes.set_title(title)
    figure.colorbar(image, ax=axes)
    return figure
