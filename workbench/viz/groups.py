"""GPViT through its group tokens: effective attention, the mixer's weights, group maps and purity.

A GP block (``workbench.models.gpvit.GPBlock``) groups, propagates and ungroups::

    groups = P  @ LN(tokens)            P: grouping   (B, heads_g, G, N), softmax over the N tokens
    groups = MLP-Mixer(groups)          token mixing over G, then channel mixing
    tokens = U  @ v(groups)             U: ungrouping (B, heads_u, N, G), softmax over the G groups

Everything here reads the recorded ``AttentionMap`` (``workbench.viz.record``) or the cached q/k
(``CachedAttention``, ``workbench.viz.capture``) of a block's ``blocks.{i}.grouping`` and
``blocks.{i}.ungrouping`` sites; maps stay on the token grid (rows, cols) and come back to the model
input through the site's ``TokenGrid`` (``on_input``), to the image through its ``View``.

Group-token visualisation follows the procedure proposed in the GPViT spec (§5; the paper released
none): average the grouping attention over heads, assign each token to its arg-max group.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

import torch
from torch import nn

from workbench.models.explain import AttentionMap, CachedAttention, attention_probs
from workbench.models.gpvit import GPBlock, GroupPropagation
from workbench.precision import model_device_dtype

Site = AttentionMap | CachedAttention
S = TypeVar("S", AttentionMap, CachedAttention)


def site_probs(site: Site, kind: str, sample: int | None = None) -> torch.Tensor:
    """The probabilities of a grouping (B, heads, G, N) or ungrouping (B, heads, N, G) site, from a
    recorded map or from cached q and k (G x N is small: nothing is avoided by caching); one image
    (B = 1) with ``sample``."""
    if site.layout.kind != kind:
        raise ValueError(f"expected a {kind} site, got {site.layout.kind} attention")
    batch = (site.probs if isinstance(site, AttentionMap) else site.q).shape[0]
    if sample is not None and not 0 <= sample < batch:
        raise ValueError(f"sample must be in [0, {batch}), got {sample}")
    chosen = slice(None) if sample is None else slice(sample, sample + 1)
    if isinstance(site, AttentionMap):
        return site.probs[chosen]
    mask = site.mask if site.mask is None or site.mask.shape[0] == 1 else site.mask[chosen]
    return attention_probs(site.q[chosen], site.k[chosen], mask)


def gp_sites(sites: Mapping[str, S]) -> dict[str, tuple[S, S]]:
    """Pair each GP block's sites: {"blocks.1": (grouping, ungrouping), ...} from a recording's
    ``attention`` or a ``capture`` dict (other sites are ignored; decode-head prefixes are kept)."""
    pairs = {}
    for name, site in sites.items():
        if name.endswith(".grouping") and f"{name[: -len('.grouping')]}.ungrouping" in sites:
            block = name[: -len(".grouping")]
            pairs[block] = (site, sites[f"{block}.ungrouping"])
    return pairs


def _check_pair(grouping: Site, ungrouping: Site) -> tuple[torch.Tensor, torch.Tensor]:
    groups, ungroups = site_probs(grouping, "grouping"), site_probs(ungrouping, "ungrouping")
    if groups.shape[0] != ungroups.shape[0] or groups.shape[-2:] != ungroups.shape[-2:][::-1]:
        raise ValueError(
            f"grouping {tuple(groups.shape)} and ungrouping {tuple(ungroups.shape)} are not of one GP block"
        )
    return groups, ungroups


def _ungrouping_heads(ungroups: torch.Tensor, head: int | None) -> torch.Tensor:
    """(B, heads, N, G) -> (B, N, G): one head, or their mean (None)."""
    heads = ungroups.shape[1]
    if head is None:
        return ungroups.mean(1)
    if not -heads <= head < heads:
        raise ValueError(f"head must be in [0, {heads}) (ungrouping heads) or None, got {head}")
    return ungroups[:, head]


def effective_attention(grouping: Site, ungrouping: Site, head: int | None = None) -> torch.Tensor:
    """Token-to-token attention of a GP block through its groups: (B, N, N), rows sum to one.

    E[n, m] = sum_g U[n, g] P[g, m]: token n reads group g with the ungrouping weight U (one
    ungrouping ``head``, or the heads' mean), and group g gathered token m with the grouping weight P,
    averaged over the grouping heads (the ungrouping's value projection mixes the channels every
    grouping head wrote, so its heads do not pair with the grouping's). The group-propagation
    MLP-Mixer between the two is left out: E says where information *can* travel through the groups,
    not how the mixer re-weights it (``token_mixing`` shows that). Memory O(N^2): for one query use
    ``effective_attention_at``.
    """
    groups, ungroups = _check_pair(grouping, ungrouping)
    return _ungrouping_heads(ungroups, head) @ groups.mean(1)


def effective_attention_at(
    grouping: Site, ungrouping: Site, row: int, col: int, head: int | None = None, sample: int = 0
) -> torch.Tensor:
    """The row of ``effective_attention`` of the image token at (row, col) of image ``sample``, on the
    token grid: (rows, cols), summing to one. Only the query's ungrouping row is computed: O(G * N)."""
    groups = site_probs(grouping, "grouping", sample)[0]  # (heads, G, N)
    if ungrouping.layout.kind != "ungrouping":
        raise ValueError(f"expected an ungrouping site, got {ungrouping.layout.kind} attention")
    if isinstance(ungrouping, CachedAttention):
        read = ungrouping.query_map(row, col, sample)  # (heads, G)
    else:
        read = ungrouping.query_map(row, col)[sample]
    if read.shape[-1] != groups.shape[-2] or ungrouping.layout.grid != grouping.layout.grid:
        raise ValueError("the grouping and ungrouping sites are not of one GP block")
    read = _ungrouping_heads(read[None, :, None], head)[0, 0]  # (G,)
    return (read @ groups.mean(0)).reshape(ungrouping.layout.grid)


def on_input(maps: torch.Tensor, site: Site, mode: str = "nearest") -> torch.Tensor:
    """Maps (..., rows, cols) on ``site``'s token grid -> (..., H, W) on the model input (padding
    cropped); ``View.to_image`` takes them on to the image. ``nearest``: each pixel gets its token's
    value, the token a click there picks (``TokenGrid.to_image``)."""
    return site.tokens.to_image(maps, mode)


# --------------------------------------------------------------------------- the mixer


@torch.no_grad()
def token_mixing(propagation: GroupPropagation | GPBlock, groups: torch.Tensor | None = None) -> torch.Tensor:
    """The group-propagation mixer's token mixing as a (G, G) matrix M[g_out, g_in].

    The token-mixing MLP maps every channel's G-vector x to fc2(act(fc1 x)). Without ``groups`` this
    is the linearisation fc2.W @ fc1.W (activation taken as the identity, biases dropped): what the
    weights mix, the same for every image, to compare blocks and trained vs untrained models; its
    scale is not the mixer's. With ``groups`` (B, G, C), the mixer's input (the grouping output), it
    is the Jacobian of the token-mixing branch at those groups, averaged over images and channels:
    fc2.W diag(mean act'(fc1 LN(groups))) fc1.W, exact for this input (LayerNorm and the residual
    path left out, the latter adds the identity). The mixer runs on its device and dtype; the matrix
    comes back on ``groups``' device and in its dtype (without ``groups``: the weights').
    """
    if isinstance(propagation, GPBlock):
        propagation = propagation.propagation
    mlp = propagation.token_mlp
    if groups is None:
        return mlp.fc2.weight @ mlp.fc1.weight
    num_groups = mlp.fc1.in_features
    if groups.ndim != 3 or groups.shape[1] != num_groups:
        raise ValueError(f"groups must be (B, {num_groups}, C), got {tuple(groups.shape)}")
    inputs = groups.to(*model_device_dtype(propagation))
    with torch.enable_grad():
        hidden = mlp.fc1(propagation.norm1(inputs).transpose(1, 2)).detach().requires_grad_()
        (slope,) = torch.autograd.grad(mlp.act(hidden).sum(), hidden)  # act' elementwise
    return (mlp.fc2.weight @ (slope.mean((0, 1))[:, None] * mlp.fc1.weight)).to(groups)


def gp_blocks(model: nn.Module) -> dict[str, GPBlock]:
    """The GP blocks of a GPViT or GPViT segmentor, by the name their sites carry ("blocks.1")."""
    backbone = getattr(model, "backbone", model)
    blocks = {
        f"blocks.{i}": block
        for i, block in enumerate(getattr(backbone, "blocks", []))
        if isinstance(block, GPBlock)
    }
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no GP blocks (expected a GPViT or GPViT segmentor)")
    return blocks


def propagation_inputs(model: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """The groups (B, G, C) each GP block's mixer receives for ``images``, by block name. The model
    runs on its device and dtype; the groups come back on ``images``' device and in its dtype."""
    blocks = gp_blocks(model)
    inputs: dict[str, torch.Tensor] = {}
    handles = [
        block.propagation.register_forward_pre_hook(
            lambda _m, args, name=name: inputs.__setitem__(name, args[0].detach().to(images))
        )
        for name, block in blocks.items()
    ]
    try:
        with torch.no_grad():
            model(images.to(*model_device_dtype(model)))
    finally:
        for handle in handles:
            handle.remove()
    return inputs


def mixing_matrices(model: nn.Module, images: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """``token_mixing`` (G, G) of every GP block by name: the weights' linearisation, or with
    ``images`` the mean Jacobian at the groups those images make."""
    inputs = propagation_inputs(model, images) if images is not None else {}
    return {name: token_mixing(block, inputs.get(name)) for name, block in gp_blocks(model).items()}


# --------------------------------------------------------------------------- group maps


def soft_group_maps(grouping: Site, over: str = "tokens", head: int | None = None) -> torch.Tensor:
    """Each group's soft map on the token grid: (B, G, rows, cols).

    ``over="tokens"``: the grouping attention as the model computes it, each group's distribution over
    the image tokens (sums to one over the grid). ``over="groups"``: each token's share among the
    groups, the columns normalised over G (sums to one over the groups at every token): the soft
    counterpart of ``group_assignment``. Heads averaged (None) or one ``head``.
    """
    probs = site_probs(grouping, "grouping")
    heads = probs.shape[1]
    if head is not None and not -heads <= head < heads:
        raise ValueError(f"head must be in [0, {heads}) or None, got {head}")
    probs = probs.mean(1) if head is None else probs[:, head]
    if over == "groups":
        probs = probs / probs.sum(1, keepdim=True)
    elif over != "tokens":
        raise ValueError(f"over must be 'tokens' or 'groups', got {over!r}")
    return probs.reshape(*probs.shape[:2], *grouping.layout.grid)


def group_assignment(grouping: Site) -> torch.Tensor:
    """Hard assignment of every image token to one group: (B, rows, cols) int64 in [0, G).

    The spec's procedure (§5): average the grouping attention over heads, take the arg-max over the G
    groups. The softmax runs over tokens, so a column is not a distribution over groups; normalising
    each column over G after the head average would not change the arg-max (all G entries share the
    column's sum), so it is not done. Ties go to the lower group index. Every token gets exactly one
    group: the assignments partition the grid, and through ``on_input`` the pixels.
    """
    return soft_group_maps(grouping).argmax(1)


def assignment_on_input(assignment: torch.Tensor, site: Site) -> torch.Tensor:
    """A hard assignment (..., rows, cols) -> (..., H, W) int64 on the model input, each pixel its
    token's group (nearest, padding cropped)."""
    return on_input(assignment, site, "nearest")


def gp_assignments(sites: Mapping[str, Site]) -> dict[str, torch.Tensor]:
    """``group_assignment`` of every GP block in a recording's ``attention`` or a ``capture`` dict, on
    the model input: block name -> (B, H, W) int64 (the figure of the four GP blocks)."""
    return {
        block: assignment_on_input(group_assignment(grouping), grouping)
        for block, (grouping, _) in gp_sites(sites).items()
    }


# --------------------------------------------------------------------------- purity against labels


def _contingency(assignment: torch.Tensor, labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """(groups, classes) pixel counts over the pixels whose label is not ``ignore_index``."""
    if assignment.shape != labels.shape:
        raise ValueError(
            f"assignment {tuple(assignment.shape)} and labels {tuple(labels.shape)} must have one shape"
        )
    if assignment.is_floating_point() or labels.is_floating_point():
        raise ValueError("assignment and labels must be integer maps")
    keep = labels != ignore_index
    groups, classes = assignment[keep].long(), labels[keep].long()
    if groups.numel() == 0:
        raise ValueError(f"every pixel is labelled {ignore_index} (ignored): nothing to score")
    if groups.min() < 0 or classes.min() < 0:
        raise ValueError("group ids and class labels must be non-negative")
    _, groups = groups.unique(return_inverse=True)
    _, classes = classes.unique(return_inverse=True)
    num_classes = int(classes.max()) + 1
    counts = torch.bincount(groups * num_classes + classes, minlength=(int(groups.max()) + 1) * num_classes)
    return counts.reshape(-1, num_classes).double()


def group_purity(assignment: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255) -> float:
    """Share of the labelled pixels whose group's majority class is their own class, in [0, 1].

    ``assignment`` and ``labels``: integer maps of one shape (e.g. ``assignment_on_input`` and the
    label map at the model input), pixels labelled ``ignore_index`` left out (also from the majority
    vote). 1 when every group holds one class; a single group scores the largest class's share.
    """
    counts = _contingency(assignment, labels, ignore_index)
    return float(counts.max(1).values.sum() / counts.sum())


def normalized_mutual_information(
    assignment: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255
) -> float:
    """NMI between groups and classes over the labelled pixels: I(A; L) / mean(H(A), H(L)), in [0, 1]
    (the arithmetic normalisation, scikit-learn's default). Unlike purity it does not reward splitting
    a class into many groups. 1 when both are a single cluster."""
    counts = _contingency(assignment, labels, ignore_index)
    joint = counts / counts.sum()
    groups, classes = joint.sum(1), joint.sum(0)

    def entropy(p: torch.Tensor) -> float:
        p = p[p > 0]
        return float(-(p * p.log()).sum())

    h_groups, h_classes = entropy(groups), entropy(classes)
    if h_groups == 0 and h_classes == 0:
        return 1.0
    nonzero = joint > 0
    mutual = float((joint[nonzero] * (joint / (groups[:, None] * classes[None, :]))[nonzero].log()).sum())
    return max(0.0, min(1.0, mutual / ((h_groups + h_classes) / 2)))  # clamp the rounding
