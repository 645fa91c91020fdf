"""Position and time embeddings of the Cosmos DiT (diffusion_models.md §1.2-1.3), computed from each batch's
latent token grid at run time (any resolution or frame count up to the learnable tables' sizes).

- `rope_angles`: the 3D RoPE angle table `[T*H*W, 1, 1, head_dim]` (float32), megatron's `freqs` layout.
  Head split `dim_h = dim_w = head_dim // 6 * 2`, `dim_t = head_dim - 2 * dim_h`; per axis an NTK-scaled
  base `theta_axis = theta * ratio_axis ** (dim_axis / (dim_axis - 2))` and inverse frequencies
  `theta_axis ** -(arange(0, dim, 2) / dim)`; h and w positions are patch indices, t positions frame
  indices, multiplied by `base_fps / fps` when fps modulation is on (Predict1); layout
  `cat([t, h, w] * 2)` for rotate-half, tokens in raster order `t*H*W + h*W + w`.
- `timestep_sinusoid`: `[cos | sin]` of `t * exp(-ln(1e4) * k / (D/2))`, k < D/2.
- `LearnablePosEmb`: Predict1's extra per-block position embedding, `pos_emb_t[t] + pos_emb_h[h] +
  pos_emb_w[w]` divided by `(||.||_2 * sqrt(1/D) + 1e-6)` (its RMS, computed in float32).
- `FourierFeatures`: Predict1's log-variance head input, `sqrt(2) * cos(x * freqs + phases)` with random
  (persistent, checkpointed) `freqs`, `phases`.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
from torch import nn

from cosmos_nemo.models.common.rope import rope_split


def _inv_freq(dim: int, theta: float, device=None) -> torch.Tensor:
    exponent = torch.arange(0, dim, 2, dtype=torch.float32, device=device)[: dim // 2] / dim
    return 1.0 / (theta**exponent)


def rope_angles(
    grid: Sequence[int],
    head_dim: int,
    rope_scale: Sequence[float],
    fps: Optional[Union[float, torch.Tensor]] = None,
    base_fps: float = 24.0,
    theta: float = 10_000.0,
    device=None,
) -> torch.Tensor:
    """RoPE angles `[T*H*W, 1, 1, head_dim]` (float32) of a (T, H, W) token grid; `rope_scale` is (t, h, w)."""
    T, H, W = (int(v) for v in grid)
    dim_t, dim_h, dim_w = rope_split(head_dim)
    ratio_t, ratio_h, ratio_w = (float(r) for r in rope_scale)
    freqs_h = _inv_freq(dim_h, theta * ratio_h ** (dim_h / (dim_h - 2)), device)
    freqs_w = _inv_freq(dim_w, theta * ratio_w ** (dim_w / (dim_w - 2)), device)
    freqs_t = _inv_freq(dim_t, theta * ratio_t ** (dim_t / (dim_t - 2)), device)
    t = torch.arange(T, dtype=torch.float32, device=device)
    if fps is not None:
        fps_t = torch.as_tensor(fps, dtype=torch.float32, device=device).reshape(-1)[:1]
        t = t / fps_t * base_fps
    ang_t = torch.outer(t, freqs_t)[:, None, None, :].expand(T, H, W, -1)
    ang_h = torch.outer(torch.arange(H, dtype=torch.float32, device=device), freqs_h)[None, :, None, :].expand(T, H, W, -1)
    ang_w = torch.outer(torch.arange(W, dtype=torch.float32, device=device), freqs_w)[None, None, :, :].expand(T, H, W, -1)
    table = torch.cat([ang_t, ang_h, ang_w] * 2, dim=-1)
    return table.reshape(T * H * W, 1, 1, head_dim)


def timestep_sinusoid(timesteps: torch.Tensor, dim: int) -> torch.Tensor:
    """`[..., dim]` float32 `[cos | sin]` embedding of `timesteps` (any shape)."""
    half = dim // 2
    exponent = -math.log(10_000) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    angles = timesteps.to(torch.float32)[..., None] * exponent.exp()
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


def rms_normalize(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """`x / (||x||_2 * sqrt(1/D) + eps)` over the last dim, the norm in float32 (the reference's `normalize`)."""
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=torch.float32)
    norm = torch.add(eps, norm, alpha=math.sqrt(1.0 / x.shape[-1]))
    return x / norm.to(x.dtype)


class LearnablePosEmb(nn.Module):
    """Predict1's learnable extra position embedding (`extra_pos_embedder.pos_emb_{t,h,w}`)."""

    def __init__(self, hidden_size: int, max_size: Sequence[int], dtype: torch.dtype = torch.float32):
        super().__init__()
        len_t, len_h, len_w = (int(s) for s in max_size)
        self.pos_emb_t = nn.Parameter(torch.zeros(len_t, hidden_size, dtype=dtype))
        self.pos_emb_h = nn.Parameter(torch.zeros(len_h, hidden_size, dtype=dtype))
        self.pos_emb_w = nn.Parameter(torch.zeros(len_w, hidden_size, dtype=dtype))

    def forward(self, grid: Sequence[int]) -> torch.Tensor:
        """`[T*H*W, 1, D]` for a (T, H, W) token grid (raster order)."""
        T, H, W = (int(v) for v in grid)
        limits = (self.pos_emb_t.shape[0], self.pos_emb_h.shape[0], self.pos_emb_w.shape[0])
        if T > limits[0] or H > limits[1] or W > limits[2]:
            raise ValueError(f"a token grid (T, H, W) = {(T, H, W)} exceeds the learnable position embedding's "
                             f"{limits}: use fewer frames or a lower resolution")
        emb = (self.pos_emb_t[:T, None, None, :] + self.pos_emb_h[None, :H, None, :]
               + self.pos_emb_w[None, None, :W, :])
        return rms_normalize(emb).reshape(T * H * W, 1, -1)


class FourierFeatures(nn.Module):
    """`sqrt(2) * cos(x * freqs + phases)`; freqs ~ 2*pi*N(0,1), phases ~ 2*pi*U(0,1) (persistent buffers)."""

    def __init__(self, channels: int, bandwidth: float = 1.0):
        super().__init__()
        self.register_buffer("freqs", 2 * math.pi * bandwidth * torch.randn(channels))
        self.register_buffer("phases", 2 * math.pi * torch.rand(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        angles = torch.outer(x.to(torch.float32).reshape(-1), self.freqs.to(torch.float32)) + self.phases.to(torch.float32)
        return (torch.cos(angles) * math.sqrt(2.0)).to(x.dtype)
