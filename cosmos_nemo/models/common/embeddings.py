"""Fixed sin/cos position embeddings over a latent grid.

`abs_pos_emb_3d` is the Cosmos Video2World absolute position embedding (`SinCosPosEmbAxisTE`): the hidden
width is split t/h/w as `dim_h = dim_w = dim // 6 * 2`, `dim_t = dim - 2 * dim_h`; each part is a 1-D
`[sin | cos]` embedding of the integer coordinate with `omega_i = 1 / 10000 ** (i / (D/2))`, evaluated in
float64; the parts are concatenated in order [t, h, w]. The reference stores the table in bfloat16 and adds
it to a float32 residual stream, so the default `table_dtype` rounds it the same way.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from cosmos_nemo.tokenizers.grid import GridLike, LatentGrid


def sincos_1d(dim: int, positions: np.ndarray) -> np.ndarray:
    """`[len(positions), dim]` float64 table `[sin(p * omega) | cos(p * omega)]`."""
    if dim % 2:
        raise ValueError(f"a sin/cos embedding needs an even width, got {dim}")
    omega = np.arange(dim // 2, dtype=np.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    angles = np.outer(np.asarray(positions, dtype=np.float64).reshape(-1), omega)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def abs_pos_split(dim: int) -> tuple[int, int, int]:
    """(dim_t, dim_h, dim_w); 4096 -> (1368, 1364, 1364), 5120 -> (1708, 1706, 1706)."""
    dim_h = dim // 6 * 2
    return dim - 2 * dim_h, dim_h, dim_h


def abs_pos_emb_3d(
    grid: GridLike,
    dim: int,
    num_prefix: int = 0,
    total_length: Optional[int] = None,
    table_dtype: torch.dtype = torch.bfloat16,
    device=None,
) -> torch.Tensor:
    """`[L, dim]` table in `table_dtype` for a grid in raster order, `num_prefix` zero rows first and zero
    rows padding to `total_length`."""
    g = LatentGrid.of(grid)
    dim_t, dim_h, dim_w = abs_pos_split(dim)
    emb_t = torch.from_numpy(sincos_1d(dim_t, np.arange(g.T))).to(table_dtype)
    emb_h = torch.from_numpy(sincos_1d(dim_h, np.arange(g.H))).to(table_dtype)
    emb_w = torch.from_numpy(sincos_1d(dim_w, np.arange(g.W))).to(table_dtype)
    table3d = torch.cat(
        [
            emb_t[:, None, None, :].expand(g.T, g.H, g.W, dim_t),
            emb_h[None, :, None, :].expand(g.T, g.H, g.W, dim_h),
            emb_w[None, None, :, :].expand(g.T, g.H, g.W, dim_w),
        ],
        dim=-1,
    ).reshape(g.num_tokens, dim)
    length = num_prefix + g.num_tokens if total_length is None else total_length
    if length < num_prefix + g.num_tokens:
        raise ValueError(f"table length {length} < {num_prefix} prefix + {g.num_tokens} grid tokens")
    out = torch.zeros(length, dim, dtype=table_dtype)
    out[num_prefix : num_prefix + g.num_tokens] = table3d
    return out.to(device) if device is not None else out
