"""Explain probes: the attention the fast path computes is the attention the explain mode sees.

Every attention module of the workbench computes its attention with ``attend(q, k, v, mask, probe,
layout)``. Without a probe (the fast path) that is ``scaled_dot_product_attention``: no attention
probabilities are ever materialised. ``workbench.viz.record`` gives the chosen modules a probe; the
probe computes the probabilities explicitly, keeps them as an ``AttentionMap``, and hands them back to
``attend``, which multiplies *those* probabilities with the values. So a recorded map is the one the
forward pass used, on the autograd path (``keep_grad=True`` gives d(output)/d(attention)), and the
outputs differ from the fast path only by the rounding of SDPA versus an explicit softmax: within
``EXPLICIT_ATOL`` / ``EXPLICIT_RTOL`` in fp32 (tested per family).

A probe can also cache q, k and the mask without materialising anything (``CachedAttention``): a single
query row is then computed later in O(heads * N) memory, which is how a click is answered.

Probes live in the recording, never on the shared modules: ``probing`` makes a recording's probes
(keyed by module and slot) active in the current context only (a thread, or an asyncio task), and a
module asks ``active_probe`` for its own. A forward pass of the same model in another thread, e.g.
another user's request in a server, runs the fast path and is neither recorded nor counted.

Where tokens sit on the image: ``TokenGrid`` (one place for every family). Token (r, c) of a grid with
``stride`` s covers the pixels [r*s, (r+1)*s) x [c*s, (c+1)*s) of the model's input; the grid may
overhang the input (GPViT and HLG pad at the bottom and right), and maps come back to the input's
resolution cropped exactly there. One pixel <-> token rule everywhere, by pixel centre: a click picks
the view pixel that holds the image pixel's centre (``View.from_image``), and maps are painted back with
the same rule (``resize_nearest``, PyTorch's ``nearest-exact``), so a pixel's click token is the token
painted at that pixel. How the attention probabilities are laid out: one ``Layout`` class per attention
layout, each with its own reader (no if-chain over kinds).
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

EXPLICIT_ATOL, EXPLICIT_RTOL = 1e-5, 1e-4  # explicit softmax vs SDPA, fp32 outputs


# --------------------------------------------------------------------------- where tokens sit


@dataclass(frozen=True)
class TokenGrid:
    """A (rows, cols) token grid over a model input of ``image_size`` (H, W), ``stride`` pixels a token."""

    rows: int
    cols: int
    stride: int
    image_size: tuple[int, int]

    def token_at(self, y: int, x: int) -> tuple[int, int]:
        """The token that holds input pixel (y, x)."""
        height, width = self.image_size
        if not (0 <= y < height and 0 <= x < width):
            raise ValueError(f"pixel ({y}, {x}) is outside the {height}x{width} model input")
        return min(y // self.stride, self.rows - 1), min(x // self.stride, self.cols - 1)

    def to_image(self, maps: torch.Tensor, mode: str = "nearest") -> torch.Tensor:
        """Maps (..., rows, cols) on this grid -> (..., H, W) on the model input, overhang cropped.

        ``nearest`` paints each token's pixels with its value (``token_at``'s rule); ``bilinear``
        interpolates between token centres.
        """
        height, width = self.image_size
        return resize(maps, (self.rows * self.stride, self.cols * self.stride), mode)[..., :height, :width]


@dataclass(frozen=True)
class View:
    """How one forward pass saw the image: scaled to ``size`` (H, W) (then flipped if ``flip``), and
    for a sliding window the crop at ``offset`` (top, left) of that scaled image, of ``crop`` pixels."""

    size: tuple[int, int]
    flip: bool = False
    offset: tuple[int, int] = (0, 0)
    crop: tuple[int, int] | None = None

    def from_image(self, y: int, x: int, image_size: tuple[int, int]) -> tuple[int, int]:
        """Pixel (y, x) of the image (H, W) -> the pixel of the model input that sees it."""
        (height, width), (view_h, view_w) = image_size, self.size
        if not (0 <= y < height and 0 <= x < width):
            raise ValueError(f"pixel ({y}, {x}) is outside the {height}x{width} image")
        y, x = _centre(y, height, view_h), _centre(x, width, view_w)
        x = view_w - 1 - x if self.flip else x
        y, x = y - self.offset[0], x - self.offset[1]
        crop_h, crop_w = self.crop or self.size
        if not (0 <= y < crop_h and 0 <= x < crop_w):
            raise ValueError(f"pixel lies outside this view's {crop_h}x{crop_w} window at {self.offset}")
        return y, x

    def to_image(
        self, maps: torch.Tensor, image_size: tuple[int, int], mode: str = "bilinear"
    ) -> torch.Tensor:
        """Maps (..., h, w) on the model input (padding included) -> (..., H, W) on the image: padding
        cropped, a window put back at its offset (zeros elsewhere), unflipped, resized. ``nearest`` (or
        ``nearest-exact``, the same) is the pixel-centre rule of ``from_image``: a pixel gets the value
        of the token a click there picks."""
        crop_h, crop_w = self.crop or self.size
        maps = maps[..., :crop_h, :crop_w]
        if self.crop is not None:
            full = maps.new_zeros(*maps.shape[:-2], *self.size)
            top, left = self.offset
            full[..., top : top + crop_h, left : left + crop_w] = maps
            maps = full
        maps = maps.flip(-1) if self.flip else maps
        if tuple(maps.shape[-2:]) == tuple(image_size):
            return maps
        return resize(maps, image_size, mode)


def _centre(index: int, size: int, new_size: int) -> int:
    """The pixel of ``new_size`` pixels that holds the centre of pixel ``index`` of ``size``:
    floor((index + 1/2) * new_size / size), in integers (float rounding would move exact boundaries)."""
    return (2 * index + 1) * new_size // (2 * size)


def resize_nearest(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Maps (..., h, w) -> (..., H, W), each output pixel taking the input pixel that holds its centre.

    PyTorch's ``nearest-exact`` rule, the one ``View.from_image`` clicks with, computed in integers:
    F.interpolate computes it in float and, at sizes in the thousands, can take the neighbour. The
    dtype is kept (a mask stays a mask, indices stay indices).
    """
    for dim, old, new in zip((-2, -1), maps.shape[-2:], size, strict=True):
        index = (2 * torch.arange(new, device=maps.device) + 1) * old // (2 * new)
        maps = maps.index_select(dim, index)
    return maps


def resize(maps: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Maps (..., h, w) -> (..., H, W): ``nearest`` / ``nearest-exact`` by ``resize_nearest`` (the
    pixel-centre rule, dtype kept); other modes by F.interpolate (align_corners False), in float."""
    if mode in ("nearest", "nearest-exact"):
        return resize_nearest(maps, size)
    lead = maps.shape[:-2]
    flat = maps.reshape(-1, 1, *maps.shape[-2:]).float()
    return F.interpolate(flat, size=tuple(size), mode=mode, align_corners=False).reshape(*lead, *size)


_CURRENT_VIEW: contextvars.ContextVar[View | None] = contextvars.ContextVar("workbench_view", default=None)


@contextmanager
def seen_as(view: View) -> Iterator[None]:
    """Tag every forward pass inside the block with ``view`` (multi-scale, flip and sliding inference)."""
    token = _CURRENT_VIEW.set(view)
    try:
        yield
    finally:
        _CURRENT_VIEW.reset(token)


def current_view() -> View | None:
    return _CURRENT_VIEW.get()


# --------------------------------------------------------------------------- attention layouts


@dataclass(frozen=True)
class Layout:
    """How an attention call's (batch', heads, Nq, Nk) probabilities lie on the token grid.

    ``per_sample``: how many rows of the attention's batch belong to one image (windows per image).
    """

    grid: tuple[int, int]

    per_sample = 1
    kind = "self"

    def locate(self, row: int, col: int) -> tuple[int, int]:
        """(window within the image, query position) of the image token at (row, col)."""
        raise ValueError(f"{self.kind} attention has no image-token queries (use group_maps)")

    def place(self, keys: torch.Tensor, window: int) -> torch.Tensor:
        """One query's key weights (..., Nk) -> the layout's key space (a grid, or the key tokens)."""
        raise NotImplementedError

    def on_grid(self, keys: torch.Tensor) -> torch.Tensor:
        """``place``'s output -> (..., rows, cols): each key's weight painted on the token grid."""
        return keys

    def batched(self, probs: torch.Tensor) -> torch.Tensor:
        """Attention-call probabilities -> the per-image layout ``AttentionMap.probs`` documents."""
        return probs

    def unbatched(self, probs: torch.Tensor) -> torch.Tensor:
        """Inverse of ``batched``."""
        return probs


@dataclass(frozen=True)
class SelfLayout(Layout):
    """Self-attention over ``num_prefix_tokens`` prefix tokens then the grid: (B, heads, N, N)."""

    num_prefix_tokens: int = 0
    kind = "self"

    def locate(self, row: int, col: int) -> tuple[int, int]:
        return 0, self.num_prefix_tokens + row * self.grid[1] + col

    def place(self, keys: torch.Tensor, window: int) -> torch.Tensor:
        return keys[..., self.num_prefix_tokens :].reshape(*keys.shape[:-1], *self.grid)


@dataclass(frozen=True)
class WindowLayout(Layout):
    """Attention inside groups of ``size`` tokens; ``count`` groups per side tile the padded grid.

    Plain groups (``dilated=False``) are windows: group (a, b) holds tokens (a*size + i, b*size + j)
    (GPViT's stripes, HLG's windows). Dilated groups: group (r, s) holds tokens (r + i*count,
    s + j*count) (HLG's dilated groups). Per image: (B, heads, groups, L, L).
    """

    size: tuple[int, int] = (1, 1)
    count: tuple[int, int] = (1, 1)
    dilated: bool = False

    @property
    def kind(self) -> str:  # type: ignore[override]
        return "dilated" if self.dilated else "window"

    @property
    def per_sample(self) -> int:  # type: ignore[override]
        return self.count[0] * self.count[1]

    def locate(self, row: int, col: int) -> tuple[int, int]:
        (sr, sc), (cr, cc) = self.size, self.count
        if self.dilated:
            return (row % cr) * cc + col % cc, (row // cr) * sc + col // cc
        return (row // sr) * cc + col // sc, (row % sr) * sc + col % sc

    def place(self, keys: torch.Tensor, window: int) -> torch.Tensor:
        (sr, sc), (cr, cc) = self.size, self.count
        lead = keys.shape[:-1]
        full = keys.new_zeros(*lead, sr * cr, sc * cc)
        keys = keys.reshape(*lead, sr, sc)
        a, b = divmod(window, cc)
        if self.dilated:
            full[..., a::cr, b::cc] = keys
        else:
            full[..., a * sr : (a + 1) * sr, b * sc : (b + 1) * sc] = keys
        return full[..., : self.grid[0], : self.grid[1]]

    def window_of_tokens(self, device: torch.device | None = None) -> torch.Tensor:
        """(rows, cols): the group each token of the grid belongs to."""
        (sr, sc), (cr, cc) = self.size, self.count
        rows = torch.arange(self.grid[0], device=device)[:, None]
        cols = torch.arange(self.grid[1], device=device)[None, :]
        if self.dilated:
            return (rows % cr) * cc + cols % cc
        return (rows // sr) * cc + cols // sc

    def batched(self, probs: torch.Tensor) -> torch.Tensor:
        return probs.reshape(-1, self.per_sample, *probs.shape[1:]).transpose(1, 2)

    def unbatched(self, probs: torch.Tensor) -> torch.Tensor:
        return probs.transpose(1, 2).reshape(-1, *probs.shape[1:2], *probs.shape[3:])


@dataclass(frozen=True)
class CrossLayout(Layout):
    """Image tokens attend to other keys: HLG's window tokens (``key_shape`` = their grid, ``windows``
    the groups they summarise) or GPViT's group tokens on ungrouping (``key_shape`` = (G,)).
    Per image: (B, heads, N, keys)."""

    key_shape: tuple[int, ...] = ()
    windows: WindowLayout | None = None

    @property
    def kind(self) -> str:  # type: ignore[override]
        return "global" if len(self.key_shape) == 2 else "ungrouping"

    def locate(self, row: int, col: int) -> tuple[int, int]:
        return 0, row * self.grid[1] + col

    def place(self, keys: torch.Tensor, window: int) -> torch.Tensor:
        return keys.reshape(*keys.shape[:-1], *self.key_shape)

    def on_grid(self, keys: torch.Tensor) -> torch.Tensor:
        """Each window token's weight painted over the tokens of its window."""
        if self.windows is None:
            raise ValueError(
                f"{self.kind} attention goes to tokens that have no place on the grid (use group_maps)"
            )
        flat = keys.flatten(-len(self.key_shape))
        return flat[..., self.windows.window_of_tokens(keys.device)]


@dataclass(frozen=True)
class GroupingLayout(Layout):
    """Group tokens gather the image tokens (GPViT's grouping): (B, heads, G, N)."""

    kind = "grouping"


# --------------------------------------------------------------------------- the shared attention


def attention_logits(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """q k^T / sqrt(d) plus ``mask`` (float: added; bool: False is excluded), as SDPA reads it."""
    logits = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    if mask is None:
        return logits
    if mask.dtype == torch.bool:
        return logits.masked_fill(~mask, float("-inf"))
    return logits + mask


def attention_probs(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """softmax of ``attention_logits``, computed in fp32 whatever q, k and autocast hold: in bf16 the
    small weights round away and rows stop summing to one. (..., N_q, N_k) float32."""
    with torch.autocast(q.device.type, enabled=False):
        return attention_logits(q.float(), k.float(), mask).softmax(-1)


# probe(q, k, mask, layout) -> the probabilities to use, or None to keep the fast path
Probe = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None", Layout], "torch.Tensor | None"]


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    probe: Probe | None = None,
    layout: Callable[[], Layout] | None = None,
) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + mask) v for (batch', heads, N, d) tensors: SDPA, or through ``probe``.

    ``layout`` is called only when a probe is set (it says where the tokens lie).
    """
    if probe is not None:
        probs = probe(q, k, mask, layout())
        if probs is not None:
            return probs.to(v.dtype) @ v
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


@dataclass(eq=False)
class Probing:
    """One recording's state: the probe of each (module, slot), and the input size (H, W) of the
    forward pass under way. Active only in the context that opened it (``probing``)."""

    probes: dict[tuple[nn.Module, str], Probe] = field(default_factory=dict)
    image_size: tuple[int, int] = (0, 0)

    def active(self) -> bool:
        """Whether this recording is open in the current context (thread or task)."""
        return any(open_ is self for open_ in _PROBINGS.get())


# The recordings open in this context, innermost last. Each thread has its own context, so a forward of
# the shared model in another thread sees none of them.
_PROBINGS: contextvars.ContextVar[tuple[Probing, ...]] = contextvars.ContextVar(
    "workbench_probings", default=()
)


@contextmanager
def probing(state: Probing) -> Iterator[Probing]:
    """Make ``state``'s probes active for the forward passes of the current context inside the block."""
    token = _PROBINGS.set((*_PROBINGS.get(), state))
    try:
        yield state
    finally:
        _PROBINGS.reset(token)


def active_probe(module: nn.Module, slot: str = "attn") -> Probe | None:
    """The probe of ``module``'s ``slot`` in the innermost recording of this context that has one."""
    for state in reversed(_PROBINGS.get()):
        probe = state.probes.get((module, slot))
        if probe is not None:
            return probe
    return None


class Probed:
    """Mixin of attention modules: ``probe(slot)`` is the probe of each attention the module runs, as
    the recording open in the current context set it (None on the fast path)."""

    def probe(self, slot: str = "attn") -> Probe | None:
        return active_probe(self, slot)


@dataclass(frozen=True)
class AttentionSite:
    """A recordable attention: ``module.probe(slot)``, on tokens ``stride`` input pixels apart."""

    module: nn.Module
    stride: int
    slot: str = "attn"


# --------------------------------------------------------------------------- what a probe keeps


@dataclass
class AttentionMap:
    """Attention probabilities of one site in one forward pass.

    ``probs`` per ``layout.kind``: "self" (B, heads, N, N) over the prefix tokens then the grid,
    row-major; "window" / "dilated" (B, heads, groups, L, L); "global" (B, heads, N, windows);
    "ungrouping" (B, heads, N, G); "grouping" (B, heads, G, N). Padded keys get weight 0 where the
    model masks them. ``tokens`` places the grid on the model input; ``view`` says how the input was
    made from the image (None outside ``seen_as``).
    """

    probs: torch.Tensor
    layout: Layout
    tokens: TokenGrid
    view: View | None = None

    @property
    def kind(self) -> str:
        return self.layout.kind

    @property
    def grid(self) -> tuple[int, int]:
        return self.layout.grid

    @property
    def num_prefix_tokens(self) -> int:
        return getattr(self.layout, "num_prefix_tokens", 0)

    @property
    def grad(self) -> torch.Tensor | None:
        """d(what was back-propagated)/d(probs), after ``backward`` inside ``record(keep_grad=True)``."""
        return self.probs.grad

    def query_map(self, row: int, col: int) -> torch.Tensor:
        """Where the image token at (row, col) looks: (B, heads, *keys) — the token grid for self and
        window attention, the window-token grid for HLG's global attention, (G,) for ungrouping."""
        rows, cols = self.grid
        if not (0 <= row < rows and 0 <= col < cols):
            raise ValueError(f"token ({row}, {col}) is outside the {rows}x{cols} token grid")
        window, position = self.layout.locate(row, col)
        raw = self.layout.unbatched(self.probs)
        per = self.layout.per_sample
        keys = raw.reshape(-1, per, *raw.shape[1:])[:, window, :, position]  # (B, heads, Nk)
        return self.layout.place(keys, window)

    def group_maps(self) -> torch.Tensor:
        """Grouping / ungrouping attention on the grid: (B, heads, G, rows, cols)."""
        if self.kind == "grouping":
            per_group = self.probs
        elif self.kind == "ungrouping":
            per_group = self.probs.transpose(-1, -2)
        else:
            raise ValueError(f"group_maps is for grouping/ungrouping attention, not {self.kind!r}")
        return per_group.reshape(*per_group.shape[:3], *self.grid)


@dataclass
class CachedAttention:
    """q, k and mask of one attention call, kept to compute single query rows later."""

    q: torch.Tensor
    k: torch.Tensor
    mask: torch.Tensor | None
    layout: Layout
    tokens: TokenGrid

    def query_map(self, row: int, col: int, sample: int = 0) -> torch.Tensor:
        """The attention row of image token (row, col) of image ``sample``: (heads, *keys), computed
        from q and k alone in O(heads * keys) memory."""
        rows, cols = self.layout.grid
        if not (0 <= row < rows and 0 <= col < cols):
            raise ValueError(f"token ({row}, {col}) is outside the {rows}x{cols} token grid")
        window, position = self.layout.locate(row, col)
        index = sample * self.layout.per_sample + window
        query = self.q[index, :, position : position + 1]  # (heads, 1, d)
        mask = None
        if self.mask is not None:
            mask = self.mask[index if self.mask.shape[0] > 1 else 0]
            mask = mask[:, position : position + 1] if mask.shape[-2] > 1 else mask
        probs = attention_probs(query, self.k[index], mask)[:, 0]
        return self.layout.place(probs, window)

    def prefix_map(self, index: int = 0, sample: int = 0) -> torch.Tensor:
        """Where prefix token ``index`` (0: the class token, then registers) looks: (heads, rows, cols)
        on the token grid, its weights on the prefix tokens left out (the DINO figure's maps)."""
        prefix = getattr(self.layout, "num_prefix_tokens", 0)
        if self.layout.kind != "self" or not 0 <= index < prefix:
            raise ValueError(
                f"prefix token {index} does not exist here: {self.layout.kind} attention with {prefix} "
                "prefix tokens (a class token needs a ViT built with one)"
            )
        query = self.q[sample, :, index : index + 1]
        mask = None if self.mask is None else self.mask[sample if self.mask.shape[0] > 1 else 0]
        mask = mask[:, index : index + 1] if mask is not None and mask.shape[-2] > 1 else mask
        return self.layout.place(attention_probs(query, self.k[sample], mask)[:, 0], 0)


def record_probe(
    site: AttentionSite,
    image_size: Callable[[], tuple[int, int]],
    keep: Callable[[AttentionMap], None],
    keep_grad: bool,
) -> Probe:
    """A probe that computes the probabilities explicitly, keeps them, and returns them for use."""

    def probe(q, k, mask, layout):
        probs = attention_probs(q, k, mask)
        batched = layout.batched(probs)
        if keep_grad and batched.requires_grad:
            batched.retain_grad()
        kept = batched if keep_grad else batched.detach()
        keep(AttentionMap(kept, layout, TokenGrid(*layout.grid, site.stride, image_size()), current_view()))
        return layout.unbatched(batched)

    return probe


def _compact(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` detached, copied when it is a view into a larger storage: SETR's q and k are views of
    the fused qkv (v included), HLG's k of the fused kv; a cache must not keep those alive."""
    tensor = tensor.detach()
    if tensor.untyped_storage().nbytes() > tensor.numel() * tensor.element_size():
        return tensor.clone(memory_format=torch.contiguous_format)
    return tensor


def cache_probe(
    site: AttentionSite, image_size: Callable[[], tuple[int, int]], keep: Callable[[CachedAttention], None]
) -> Probe:
    """A probe that keeps q, k and the mask (detached, compact) and leaves the fast path running."""

    def probe(q, k, mask, layout):
        kept_mask = None if mask is None else _compact(mask)
        tokens = TokenGrid(*layout.grid, site.stride, image_size())
        keep(CachedAttention(_compact(q), _compact(k), kept_mask, layout, tokens))
        return None

    return probe


@dataclass
class Forward:
    """The maps of one forward pass, with the view it saw."""

    view: View | None
    attention: dict = field(default_factory=dict)
