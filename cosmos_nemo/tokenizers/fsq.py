"""Finite scalar quantization (FSQ, Mentzer et al. 2023, arXiv 2309.15505) as the Cosmos DV tokenizers use it.

Levels `[8, 8, 8, 5, 5, 5]` give 8·8·8·5·5·5 = 64,000 codes. For a 6-d latent `z`:

- `bound(z) = tanh(z + atanh(offset / half_l)) · half_l − offset` with `half_l = (L−1)(1+1e-3)/2` and
  `offset = 0.5` for even L (so the rounded values are the L integers `−L//2 … L−1−L//2`);
- `q = round(bound(z))` (straight-through gradient when training), code `= q / (L//2)`;
- `index = Σ_i (q_i + L_i//2) · basis_i`, `basis = cumprod([1, L_0, …, L_{n−2}]) = [1, 8, 64, 512, 2560, 12800]`.

The buffers `_levels`, `_basis` and `implicit_codebook` are persistent because NVIDIA's released TorchScript
state dicts carry them under `quantizer.*` (encoder) and `inv_quant.quantizer.*` (decoder); loaders compare
them with these computed values instead of trusting the file.
"""

from __future__ import annotations

import math

import torch
from torch import nn

DEFAULT_LEVELS = (8, 8, 8, 5, 5, 5)


def _basis_of(levels: list[int]) -> torch.Tensor:
    return torch.cumprod(torch.tensor([1] + list(levels[:-1]), dtype=torch.int64), dim=0).to(torch.int32)


class FSQuantizer(nn.Module):
    """Quantizes a channel-first latent `[B, d, ...]` into indices `[B, ...]` and codes `[B, d, ...]`."""

    def __init__(self, levels: list[int] | tuple[int, ...] = DEFAULT_LEVELS, dtype: torch.dtype = torch.float32):
        super().__init__()
        levels = [int(v) for v in levels]
        if not levels or min(levels) < 2:
            raise ValueError(f"FSQ levels must all be >= 2, got {levels}")
        self.levels = levels
        self.codebook_dim = len(levels)
        self.codebook_size = int(math.prod(levels))
        # The dtype codes are returned in (the reference's `quantizer.dtype`); indices are exact either way.
        self.dtype = dtype
        self.register_buffer("_levels", torch.tensor(levels, dtype=torch.int32))
        self.register_buffer("_basis", _basis_of(levels))
        self.register_buffer("implicit_codebook", self._compute_codebook())

    def _compute_codebook(self) -> torch.Tensor:
        idx = torch.arange(self.codebook_size, dtype=torch.int64)[:, None]
        levels = torch.tensor(self.levels, dtype=torch.int64)
        half = levels // 2
        q = (idx // _basis_of(self.levels).to(torch.int64)) % levels
        return ((q - half) / half).to(torch.float32)

    # --- the reference arithmetic, channel-last (`[..., d]`) ---------------------------------------------

    def bound(self, z: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
        # The int32 `_levels` buffer promotes to float32, so this runs in fp32 even for bf16 input (as upstream).
        half_l = (self._levels - 1) * (1 + eps) / 2
        offset = torch.where(self._levels % 2 == 0, 0.5, 0.0)
        shift = (offset / half_l).atanh()
        return (z + shift).tanh() * half_l - offset

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        """Channel-last `z` to normalized codes in [-1, 1] with a straight-through rounding gradient."""
        bounded = self.bound(z)
        # round-to-nearest-even, like torch.round upstream; z + (round(z) - z) is exactly round(z) in fp32.
        rounded = bounded + (bounded.round() - bounded).detach()
        return rounded / (self._levels // 2)

    def codes_to_indices(self, codes: torch.Tensor) -> torch.Tensor:
        """Channel-last normalized codes `[..., d]` to int32 indices `[...]`."""
        if codes.shape[-1] != self.codebook_dim:
            raise ValueError(f"codes must end in {self.codebook_dim} channels, got shape {tuple(codes.shape)}")
        half = self._levels // 2
        shifted = (codes * half + half).float()
        return (shifted * self._basis).sum(dim=-1).to(torch.int32)

    def indices_to_codes_last(self, indices: torch.Tensor) -> torch.Tensor:
        """Indices `[...]` to channel-last normalized codes `[..., d]` (float32)."""
        idx = indices[..., None]
        non_centered = (idx // self._basis) % self._levels
        half = self._levels // 2
        return (non_centered - half) / half

    # --- channel-first video/image API --------------------------------------------------------------------

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """Indices `[B, ...]` to channel-first codes `[B, d, ...]` in `self.dtype`."""
        if indices.dtype.is_floating_point:
            raise TypeError(f"FSQ indices must be an integer tensor, got {indices.dtype}")
        codes = self.indices_to_codes_last(indices)
        return torch.movedim(codes, -1, 1).to(self.dtype)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`z [B, d, ...]` → `(indices int32 [B, ...], codes [B, d, ...], dummy_loss)` as the reference returns."""
        if z.shape[1] != self.codebook_dim:
            raise ValueError(f"FSQ expects {self.codebook_dim} channels, got shape {tuple(z.shape)}")
        z_last = torch.movedim(z, 1, -1)
        codes_last = self.quantize(z_last)
        indices = self.codes_to_indices(codes_last)
        codes = torch.movedim(codes_last, -1, 1)
        dummy_loss = torch.zeros_like(codes.mean(dim=list(range(1, codes.ndim - 1)), keepdim=True))
        return indices, codes.to(self.dtype), dummy_loss


class InvQuantizer(nn.Module):
    """Indices to codes, the first stage of the released DV decoder (its state-dict prefix is `inv_quant.`)."""

    def __init__(self, quantizer: FSQuantizer):
        super().__init__()
        self.quantizer = quantizer

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        return self.quantizer.indices_to_codes(indices)
