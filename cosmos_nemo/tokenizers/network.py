"""Encoder and decoder of the Cosmos causal video tokenizers (`EncoderFactorized` / `DecoderFactorized`).

`TokenizerEncoder` and `TokenizerDecoder` are the two halves NVIDIA ships as `encoder.jit` / `decoder.jit`:

- encoder: `encoder.*` (patcher, convs, levels, mid block) → `quant_conv.*` (1×1×1) → `quantizer.*` (DV: FSQ);
- decoder: `inv_quant.quantizer.*` (DV: indices → codes) → `post_quant_conv.*` → `decoder.*` (… unpatcher).

Their `state_dict()` keys are the released files' keys, so loading is a key-by-key match.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .configs import TokenizerConfig
from .fsq import FSQuantizer, InvQuantizer
from .layers import (
    CausalConv3d,
    CausalHybridDownsample3d,
    CausalHybridUpsample3d,
    CausalNormalize,
    CausalResnetBlockFactorized3d,
    Patcher3D,
    UnPatcher3D,
    silu,
    spatial_temporal_attention,
)


def _num_resamples(compression: int, patch_size: int, levels: int, what: str) -> int:
    n = int(math.log2(compression)) - int(math.log2(patch_size))
    if n < 0 or n > levels:
        raise ValueError(
            f"{what} compression {compression} with patch size {patch_size} needs {n} resampling steps; "
            f"a tokenizer with {levels} levels can do 0..{levels}"
        )
    return n


def _factorized_pair(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(
        CausalConv3d(in_ch, out_ch, kernel_size=(1, 3, 3), padding=1),
        CausalConv3d(out_ch, out_ch, kernel_size=(3, 1, 1), padding=0),
    )


class _Mid(nn.Module):
    def __init__(self, channels: int, dropout: float):
        super().__init__()
        self.block_1 = CausalResnetBlockFactorized3d(channels, channels, dropout=dropout)
        self.attn_1 = spatial_temporal_attention(channels)
        self.block_2 = CausalResnetBlockFactorized3d(channels, channels, dropout=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class _Level(nn.Module):
    """One resolution level: `block` (res blocks), `attn` (empty unless the level's resolution is listed in
    `attn_resolutions`), and optionally `downsample` / `upsample`."""

    def __init__(self):
        super().__init__()
        self.block = nn.ModuleList()
        self.attn = nn.ModuleList()


class EncoderFactorized(nn.Module):
    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        levels = len(cfg.channels_mult)
        self.num_resolutions = levels
        self.num_res_blocks = cfg.num_res_blocks
        self.num_spatial_downs = _num_resamples(cfg.spatial_compression, cfg.patch_size, levels, "spatial")
        self.num_temporal_downs = _num_resamples(cfg.temporal_compression, cfg.patch_size, levels, "temporal")

        self.patcher3d = Patcher3D(cfg.patch_size)
        in_ch = cfg.in_channels * cfg.patch_size**3
        self.conv_in = _factorized_pair(in_ch, cfg.channels)

        curr_res = cfg.resolution // cfg.patch_size
        in_mult = (1,) + tuple(cfg.channels_mult)
        self.down = nn.ModuleList()
        block_in = cfg.channels
        for i in range(levels):
            level = _Level()
            block_in = cfg.channels * in_mult[i]
            block_out = cfg.channels * cfg.channels_mult[i]
            for _ in range(cfg.num_res_blocks):
                level.block.append(CausalResnetBlockFactorized3d(block_in, block_out, dropout=cfg.dropout))
                block_in = block_out
                if curr_res in cfg.attn_resolutions:
                    level.attn.append(spatial_temporal_attention(block_in))
            if i != levels - 1:
                level.downsample = CausalHybridDownsample3d(
                    block_in, spatial_down=i < self.num_spatial_downs, temporal_down=i < self.num_temporal_downs
                )
                curr_res //= 2
            self.down.append(level)

        self.mid = _Mid(block_in, cfg.dropout)
        self.norm_out = CausalNormalize(block_in, num_groups=1)
        self.conv_out = _factorized_pair(block_in, cfg.z_factor * cfg.z_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(self.patcher3d(x))
        for i, level in enumerate(self.down):
            for j, block in enumerate(level.block):
                h = block(h)
                if len(level.attn) > 0:
                    h = level.attn[j](h)
            if i != self.num_resolutions - 1:
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(silu(self.norm_out(h)))


class DecoderFactorized(nn.Module):
    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        levels = len(cfg.channels_mult)
        self.num_resolutions = levels
        self.num_res_blocks = cfg.num_res_blocks
        self.num_spatial_ups = _num_resamples(cfg.spatial_compression, cfg.patch_size, levels, "spatial")
        self.num_temporal_ups = _num_resamples(cfg.temporal_compression, cfg.patch_size, levels, "temporal")

        self.unpatcher3d = UnPatcher3D(cfg.patch_size)
        out_ch = cfg.out_channels * cfg.patch_size**3
        block_in = cfg.channels * cfg.channels_mult[-1]
        curr_res = (cfg.resolution // cfg.patch_size) // 2 ** (levels - 1)
        self.conv_in = _factorized_pair(cfg.z_channels, block_in)
        self.mid = _Mid(block_in, cfg.dropout)

        ups: list[_Level] = []
        for i in reversed(range(levels)):
            level = _Level()
            block_out = cfg.channels * cfg.channels_mult[i]
            for _ in range(cfg.num_res_blocks + 1):
                level.block.append(CausalResnetBlockFactorized3d(block_in, block_out, dropout=cfg.dropout))
                block_in = block_out
                if curr_res in cfg.attn_resolutions:
                    level.attn.append(spatial_temporal_attention(block_in))
            if i != 0:
                # Level i in reverse order mirrors the encoder's downsampling at level L-1-i.
                r = levels - 1 - i
                if cfg.legacy_mode:
                    temporal_up = r < self.num_temporal_ups
                else:
                    temporal_up = 0 < r < self.num_temporal_ups + 1
                spatial_up = temporal_up or (r < self.num_spatial_ups and self.num_spatial_ups > self.num_temporal_ups)
                level.upsample = CausalHybridUpsample3d(block_in, spatial_up=spatial_up, temporal_up=temporal_up)
                curr_res *= 2
            ups.insert(0, level)
        self.up = nn.ModuleList(ups)

        self.norm_out = CausalNormalize(block_in, num_groups=1)
        self.conv_out = _factorized_pair(block_in, out_ch)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for i in reversed(range(self.num_resolutions)):
            level = self.up[i]
            for j, block in enumerate(level.block):
                h = block(h)
                if len(level.attn) > 0:
                    h = level.attn[j](h)
            if i != 0:
                h = level.upsample(h)
        h = self.conv_out(silu(self.norm_out(h)))
        return self.unpatcher3d(h)


class TokenizerEncoder(nn.Module):
    """What `encoder.jit` holds. DV: video → `(indices int32, codes, dummy)`; CV: video → `(latent, (0, 0))`.

    `pre_quant(video)` gives the `quant_conv` output (the latent FSQ quantizes), useful for tests and losses.
    """

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        self.discrete = cfg.discrete
        self.encoder = EncoderFactorized(cfg)
        out = cfg.embedding_dim if cfg.discrete else cfg.z_factor * cfg.latent_channels
        self.quant_conv = CausalConv3d(cfg.z_factor * cfg.z_channels, out, kernel_size=1, padding=0)
        if cfg.discrete:
            self.quantizer = FSQuantizer(cfg.levels)

    def pre_quant(self, video: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(video))

    def forward(self, video: torch.Tensor):
        z = self.pre_quant(video)
        if self.discrete:
            return self.quantizer(z)
        # The identity posterior of the AE formulation: the latent itself, plus the reference's placeholders.
        zeros = torch.zeros(1, dtype=z.dtype, device=z.device)
        return z, (zeros, zeros)


class TokenizerDecoder(nn.Module):
    """What `decoder.jit` holds. DV: indices `[B,t,h,w]` → video; CV: latent `[B,C,t,h,w]` → video.

    `decode_codes(codes)` decodes DV codes `[B,6,t,h,w]` (continuous relaxation, used in training)."""

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        self.discrete = cfg.discrete
        if cfg.discrete:
            self.inv_quant = InvQuantizer(FSQuantizer(cfg.levels))
            post_in = cfg.embedding_dim
        else:
            post_in = cfg.latent_channels
        self.post_quant_conv = CausalConv3d(post_in, cfg.z_channels, kernel_size=1, padding=0)
        self.decoder = DecoderFactorized(cfg)

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(codes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.discrete:
            x = self.inv_quant(x)
            x = x.to(self.post_quant_conv.conv3d.weight.dtype)
        return self.decode_codes(x)
