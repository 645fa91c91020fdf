"""3D rotary position embedding over a latent video grid (T, H, W), with optional YaRN.

The math follows the Cosmos AR reference (`RotaryPositionEmbeddingPytorchV2`, equal to the TE/megatron
rotate-half convention) so that released checkpoints reproduce bit for bit in float32:

- head split: `dim_h = dim_w = head_dim // 6 * 2`, `dim_t = head_dim - 2 * dim_h` (128 -> 44/42/42);
- inverse frequencies `theta ** -(2k / dim_axis)`, computed in float32 exactly as the reference does,
  with H and W sharing the spatial frequencies;
- angle vector of a token at grid coordinates (t, h, w): `cat([t*f_t, h*f_s, w*f_s] * 2)`, applied with
  rotate-half (dims i and i + head_dim/2 pair), tokens in raster order `t*H*W + h*W + w`;
- YaRN (12B/13B): each frequency f is multiplied by `(1 - m)/scale + m`,
  `m = clamp((f - 2*pi*beta_slow/L) / (2*pi*beta_fast/L - 2*pi*beta_slow/L), 0, 1)`, with L the original
  latent size of the axis (H for the spatial frequencies, T for the temporal ones). The reference
  computes an `mscale` but never applies it; neither do we.

The table is built from each batch's grid at run time, never fixed at construction: this is what lets any
resolution/frame count work. Rows for prefix tokens (the Video2World BOV) and padding are zero angles,
i.e. the identity rotation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from cosmos_nemo.tokenizers.grid import GridLike, LatentGrid


@dataclass(frozen=True)
class YarnConfig:
    """YaRN frequency rescaling as Cosmos 12B/13B apply it (`mscale` deliberately unused)."""

    scale: float = 2.0
    beta_fast: float = 4.0
    beta_slow: float = 1.0
    original_latent_shape: tuple[int, int, int] = (3, 40, 64)


def rope_split(head_dim: int) -> tuple[int, int, int]:
    """(dim_t, dim_h, dim_w) of the head dimension; e.g. 128 -> (44, 42, 42), 64 -> (24, 20, 20)."""
    dim_h = head_dim // 6 * 2
    dim_t = head_dim - 2 * dim_h
    if dim_h < 2 or dim_t < 2 or dim_t % 2 or head_dim % 2:
        raise ValueError(f"head_dim {head_dim} is too small or odd for a 3D RoPE split (t {dim_t}, h/w {dim_h})")
    return dim_t, dim_h, dim_h


def _axis_inv_freq(dim: int, theta: float, device=None) -> torch.Tensor:
    # Same float32 operations as the reference: arange(0, dim, 2)[:dim//2] / dim, then 1 / theta**x.
    exponent = torch.arange(0, dim, 2, device=device)[: dim // 2].float() / dim
    return 1.0 / (theta**exponent)


def _yarn_factors(inv_freq: torch.Tensor, original_len: int, yarn: YarnConfig) -> torch.Tensor:
    high_cutoff = 2 * math.pi * yarn.beta_fast / original_len
    low_cutoff = 2 * math.pi * yarn.beta_slow / original_len
    ramp = torch.clamp((inv_freq - low_cutoff) / (high_cutoff - low_cutoff), min=0, max=1)
    return (1 - ramp) / yarn.scale + ramp


def rope_inv_freqs(
    head_dim: int, theta: float = 500_000.0, yarn: Optional[YarnConfig] = None, device=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(temporal, spatial) inverse frequencies, float32, with YaRN applied when given."""
    dim_t, dim_h, _ = rope_split(head_dim)
    spatial = _axis_inv_freq(dim_h, theta, device)
    temporal = _axis_inv_freq(dim_t, theta, device)
    if yarn is not None:
        spatial = spatial * _yarn_factors(spatial, yarn.original_latent_shape[1], yarn)
        temporal = temporal * _yarn_factors(temporal, yarn.original_latent_shape[0], yarn)
    return temporal, spatial


def rope_3d_angles(
    grid: GridLike,
    head_dim: int,
    theta: float = 500_000.0,
    yarn: Optional[YarnConfig] = None,
    num_prefix: int = 0,
    total_length: Optional[int] = None,
    device=None,
) -> torch.Tensor:
    """Rotation angles `[L, 1, 1, head_dim]` (float32) for a grid in raster order, megatron's `freqs` layout.

    `num_prefix` zero rows come first (the V2W BOV token); zero rows pad the table to `total_length`."""
    g = LatentGrid.of(grid)
    temporal, spatial = rope_inv_freqs(head_dim, theta, yarn, device)
    t = torch.arange(g.T, dtype=torch.float32, device=device)
    h = torch.arange(g.H, dtype=torch.float32, device=device)
    w = torch.arange(g.W, dtype=torch.float32, device=device)
    ang_t = torch.outer(t, temporal)[:, None, None, :].expand(g.T, g.H, g.W, -1)
    ang_h = torch.outer(h, spatial)[None, :, None, :].expand(g.T, g.H, g.W, -1)
    ang_w = torch.outer(w, spatial)[None, None, :, :].expand(g.T, g.H, g.W, -1)
    half = torch.cat([ang_t, ang_h, ang_w], dim=-1).reshape(g.num_tokens, head_dim // 2)
    angles = torch.cat([half, half], dim=-1)
    length = num_prefix + g.num_tokens if total_length is None else total_length
    if length < num_prefix + g.num_tokens:
        raise ValueError(f"table length {length} < {num_prefix} prefix + {g.num_tokens} grid tokens")
    table = angles.new_zeros(length, head_dim)
    table[num_prefix : num_prefix + g.num_tokens] = angles
    return table[:, None, None, :]


def apply_rotate_half(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """`x * cos + rotate_half(x) * sin` with rotate_half(x) = cat(-x2, x1); a plain formula for tests and
    for code outside megatron attention (megatron's own `apply_rotary_pos_emb` does the same)."""
    cos, sin = torch.cos(angles).to(x.dtype), torch.sin(angles).to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin
