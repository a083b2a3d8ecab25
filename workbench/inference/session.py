"""A session: what one forward pass on one image keeps, and the explain queries it answers.

    session = predictor.open(photo)              # one forward on the canonical view; q, k kept
    session.prediction.labels                    # (H, W) at the photo's size
    session.attention_at(120, 340, "blocks.11")  # (H, W): where that pixel looks
    session.group_assignment("blocks.1")         # (H, W): each pixel's GP group

Sessions are independent objects: two users' images live side by side, and a query reads only its
own session (never the model's state). Image pixels map to the model input and back through ``View``
and tokens through ``TokenGrid`` (``workbench.models.explain``): a pixel goes to the token that holds
its centre, and maps are painted back by the same rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from workbench.models.explain import CachedAttention, View, resize_nearest
from workbench.viz import groups as gp_groups
from workbench.viz.record import select_sites
from workbench.viz.rollout import rollout_at as rollout

if TYPE_CHECKING:
    from workbench.inference.predictor import Prediction, Predictor


@dataclass
class Session:
    """One image's forward pass: ``image`` (H, W, 3) uint8 as read, its canonical ``view``, the
    ``cached`` q/k of every attention site, the ``prediction``, and the ``predictor`` that made it
    (the model attributions run)."""

    image: np.ndarray
    view: View
    cached: dict[str, CachedAttention]
    prediction: Prediction
    predictor: Predictor

    @property
    def size(self) -> tuple[int, int]:
        return self.image.shape[0], self.image.shape[1]

    def sites(self) -> list[str]:
        """Names of the attention sites a query can name."""
        return list(self.cached)

    def _site(self, layer: int | str) -> tuple[str, CachedAttention]:
        name = next(iter(select_sites(self.predictor.model, [layer])))
        return name, self.cached[name]

    def _token(self, site: CachedAttention, y: int, x: int) -> tuple[int, int]:
        """The token of ``site`` that holds image pixel (y, x)."""
        return site.tokens.token_at(*self.view.from_image(y, x, self.size))

    def _painted(self, on_grid: torch.Tensor, site: CachedAttention) -> torch.Tensor:
        """Maps (..., rows, cols) on ``site``'s grid -> (..., H, W) on the image, each pixel its token's."""
        return self.view.to_image(site.tokens.to_image(on_grid), self.size, mode="nearest").cpu()

    @staticmethod
    def _pick_head(maps: torch.Tensor, head: int | None, layer: int | str) -> torch.Tensor:
        """(heads, ...) -> one head's map, or their mean for None."""
        heads = maps.shape[0]
        if head is not None and not -heads <= head < heads:
            raise ValueError(f"head must be in [0, {heads}) for {layer!r}, got {head}")
        return maps.mean(0) if head is None else maps[head]

    def attention_at(self, y: int, x: int, layer: int | str, head: int | None = None) -> torch.Tensor:
        """Where image pixel (y, x) looks in ``layer`` (index or site name): (H, W) on the image, for one
        ``head`` or averaged over heads (None). Only the query's row is computed: O(heads * N).

        Every site kind answers: self, window, dilated and HLG's global attention (each window's weight
        painted over its tokens) directly; GPViT's ungrouping through its block's groups
        (``effective_attention_at``); GPViT's grouping with the soft map of the pixel's own group.
        """
        name, cached = self._site(layer)
        if cached.layout.kind == "ungrouping":
            return self.effective_attention_at(y, x, name.removesuffix(".ungrouping"), head)
        if cached.layout.kind == "grouping":
            group = int(self.group_assignment(name.removesuffix(".grouping"))[y, x])
            return self._pick_head(self.group_maps(name)[:, group], head, layer)
        on_grid = cached.layout.on_grid(cached.query_map(*self._token(cached, y, x)))
        return self._painted(self._pick_head(on_grid, head, layer), cached)

    def group_maps(self, layer: int | str) -> torch.Tensor:
        """GPViT grouping attention of ``layer``: (heads, G, H, W), each group token's distribution over
        the image (each map sums to 1 over the token grid)."""
        _, cached = self._site(layer)
        if cached.layout.kind != "grouping":
            raise ValueError(
                f"{layer!r} is {cached.layout.kind} attention; group maps come from a grouping site"
            )
        probs = gp_groups.site_probs(cached, "grouping", sample=0)[0]  # (heads, G, N)
        return self._painted(probs.reshape(*probs.shape[:2], *cached.layout.grid), cached)

    def rollout_at(self, y: int, x: int, class_token: bool = True) -> torch.Tensor:
        """Attention rollout (``workbench.viz.rollout.rollout_at``) of image pixel (y, x) through every
        layer of a ViT (SETR): (H, W) on the image. O(layers * N^2) time: seconds, not a click's
        milliseconds, for ViT-L at 1024 px on a CPU."""
        sites = list(self.cached.values())
        on_grid = rollout(sites, *self._token(sites[0], y, x), class_token=class_token)
        return self._painted(on_grid, sites[0])

    def _gp_block(self, block: int | str) -> tuple[CachedAttention, CachedAttention]:
        """(grouping, ungrouping) cached sites of a GP block: its name ("blocks.1") or its index
        among the model's GP blocks."""
        pairs = gp_groups.gp_sites(self.cached)
        names = list(pairs)
        if isinstance(block, int) and not isinstance(block, bool) and -len(names) <= block < len(names):
            return pairs[names[block]]
        if block in pairs:
            return pairs[block]
        raise ValueError(
            f"unknown GP block {block!r}: expected an index in [0, {len(names)}) or one of {names}"
        )

    def effective_attention_at(
        self, y: int, x: int, block: int | str, head: int | None = None
    ) -> torch.Tensor:
        """Where image pixel (y, x) looks through a GP block's groups (ungrouping x grouping, the mixer
        left out; ``workbench.viz.groups.effective_attention``): (H, W) on the image, each pixel its
        token's weight (the weights sum to one over the token grid). ``head``: one ungrouping head, or
        None for their mean."""
        grouping, ungrouping = self._gp_block(block)
        token = self._token(ungrouping, y, x)
        return self._painted(
            gp_groups.effective_attention_at(grouping, ungrouping, *token, head=head), ungrouping
        )

    def group_assignment(self, block: int | str) -> torch.Tensor:
        """Each image pixel's group in a GP block (arg-max of the head-averaged grouping attention,
        ``workbench.viz.groups.group_assignment``): (H, W) int64 in [0, G)."""
        grouping, _ = self._gp_block(block)
        assignment = gp_groups.group_assignment(grouping)[0]  # (rows, cols)
        return self._painted(assignment.float(), grouping).round().long()

    def region_on_input(self, region: np.ndarray, padded: tuple[int, int]) -> torch.Tensor:
        """A bool mask (H, W) on the image -> the mask on the model input padded to ``padded`` (h, w),
        the padding False: each input pixel takes the image pixel at its centre, the rule clicks follow."""
        mask = torch.as_tensor(np.asarray(region, dtype=bool))
        if tuple(mask.shape) != self.size:
            raise ValueError(
                f"region must be an (H, W) mask of the image, {self.size}; got {tuple(mask.shape)}"
            )
        if not mask.any():
            raise ValueError("the region is empty: it must hold at least one pixel")
        (view_h, view_w), (height, width) = self.view.size, padded
        return torch.nn.functional.pad(
            resize_nearest(mask, self.view.size), (0, width - view_w, 0, height - view_h)
        )

    def attribute(
        self, target_class: int, region: np.ndarray, method: str = "occlusion", **options
    ) -> torch.Tensor:
        """captum attribution of "class ``target_class`` over ``region``" (a bool mask (H, W) on the
        image) to the image's pixels (``workbench.viz.attribution.attribute``, ``options`` its method's
        keywords, e.g. ``window`` and ``stride`` in model-input pixels for occlusion): (H, W) on the
        image, signed. Runs the model as the method needs (in fp32)."""
        from workbench.models.layers import pad_for
        from workbench.viz.attribution import attribute

        predictor = self.predictor
        inputs = pad_for(predictor.model, predictor.preprocess(self.image)[1])
        on_input = self.region_on_input(region, inputs.shape[-2:]).to(predictor.device)
        result = attribute(predictor.model, inputs, int(target_class), on_input, method, **options)
        return self.view.to_image(result.map.cpu(), self.size, mode="bilinear")[0]
