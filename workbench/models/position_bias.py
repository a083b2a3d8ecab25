"""CrossFormer's dynamic position bias (DPB), as HLG uses it: an MLP from a 2-d relative offset to one
attention bias per head, evaluated once per distinct offset and gathered into (heads, Nq, Nk).

Inference keeps the biases it computed (they depend on the token positions and the weights, never on
the image): ``DynamicPositionBias.bias`` says when, and what makes it compute them again.
"""

from __future__ import annotations

import torch
from torch import nn

BIAS_CACHE_BYTES = 256 * 2**20  # the largest position bias one module keeps between forwards
BIASES_KEPT = 2  # biases one module keeps: the HLG-UP head's serves its local and global attention


def _grid_coords(rows: int, cols: int, device: torch.device) -> torch.Tensor:
    """(rows * cols, 2) integer (row, col) positions, row-major."""
    grid = torch.meshgrid(torch.arange(rows, device=device), torch.arange(cols, device=device), indexing="ij")
    return torch.stack(grid, dim=-1).reshape(-1, 2)


class DynamicPositionBias(nn.Module):
    """DPB (CrossFormer): an MLP from a 2-d relative offset to one attention bias per head."""

    def __init__(self, hidden: int, num_heads: int) -> None:
        super().__init__()
        self.pos_proj = nn.Linear(2, hidden)
        self.pos1 = nn.Sequential(nn.LayerNorm(hidden), nn.ReLU(inplace=True), nn.Linear(hidden, hidden))
        self.pos2 = nn.Sequential(nn.LayerNorm(hidden), nn.ReLU(inplace=True), nn.Linear(hidden, hidden))
        self.pos3 = nn.Sequential(nn.LayerNorm(hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_heads))
        self._kept: dict[tuple, torch.Tensor] = {}  # the last inference biases by grid, dtype, weights

    def forward(self, offsets: torch.Tensor) -> torch.Tensor:
        """(..., 2) offsets -> (..., heads) biases."""
        return self.pos3(self.pos2(self.pos1(self.pos_proj(offsets))))

    def bias(
        self,
        query_grid: tuple[int, int],
        key_rows: torch.Tensor,
        key_cols: torch.Tensor,
        key_bounds: tuple[int, int],
        unit: int = 1,
        dtype: torch.dtype | None = None,
        positions: tuple | None = None,
    ) -> torch.Tensor:
        """Bias (heads, Nq, Nk) from every token of ``query_grid`` to every key of the product grid
        ``key_rows`` x ``key_cols`` (integer positions below ``key_bounds``), offsets divided by ``unit``,
        in ``dtype`` (None: the MLP's).

        The bias depends on the grid and the weights only, not on the image. Given ``positions`` (a
        hashable that determines ``key_rows`` and ``key_cols``), where no gradient is recorded and no
        compiler traces, it is kept (the last ``BIASES_KEPT``, each up to ``BIAS_CACHE_BYTES``) and
        given again while the positions, grid, dtype, device and weights (their identity, storage and
        version counters) are the same: the same tensor, so the same outputs, without the table gather each
        forward (HLG-S at 512²: ~0.3 s of ~3.5).
        """
        key = None
        tracing = torch.compiler.is_compiling() or torch.compiler.is_exporting()
        if positions is not None and not torch.is_grad_enabled() and not tracing:
            key = (positions, query_grid, key_bounds, unit, dtype, key_rows.device)
            key += tuple((id(p), p.data_ptr(), p._version) for p in self.parameters())
            if key in self._kept:
                return self._kept[key]
        bias = self._bias(query_grid, key_rows, key_cols, key_bounds, unit)
        # Contiguous, as SDPA reads its mask (it would copy a strided one each call: 0.16 s for the
        # HLG-UP head's 16 x 16384 x 361 bias at 512²).
        bias = (bias if dtype is None else bias.to(dtype)).contiguous()
        if key is not None and bias.numel() * bias.element_size() <= BIAS_CACHE_BYTES:
            if len(self._kept) >= BIASES_KEPT:  # the oldest goes (a grid or weights no longer used)
                del self._kept[next(iter(self._kept))]
            self._kept[key] = bias
        return bias

    def _bias(
        self,
        query_grid: tuple[int, int],
        key_rows: torch.Tensor,
        key_cols: torch.Tensor,
        key_bounds: tuple[int, int],
        unit: int,
    ) -> torch.Tensor:
        """The bias of ``bias``, computed. The MLP runs once per distinct offset (a table) and the table
        is gathered by row and by column offset separately, so no (Nq, Nk) index is ever built."""
        device = key_rows.device
        rows, cols = query_grid[0] + key_bounds[0] - 1, query_grid[1] + key_bounds[1] - 1
        offsets = _grid_coords(rows, cols, device) - torch.tensor(
            [key_bounds[0] - 1, key_bounds[1] - 1], device=device
        )
        table = self(offsets.to(self.pos_proj.weight.dtype) / unit).reshape(rows, cols, -1)
        row_index = torch.arange(query_grid[0], device=device)[:, None] - key_rows[None] + key_bounds[0] - 1
        col_index = torch.arange(query_grid[1], device=device)[:, None] - key_cols[None] + key_bounds[1] - 1
        bias = table[row_index[:, None, :, None], col_index[None, :, None, :]]  # (Hq, Wq, Hk, Wk, heads)
        return bias.reshape(query_grid[0] * query_grid[1], key_rows.numel() * key_cols.numel(), -1).permute(
            2, 0, 1
        )
