"""Building blocks of the Cosmos causal video tokenizers (factorized 3D).

Every module keeps the attribute names of NVIDIA's definition, so `state_dict()` keys equal the keys in the
released TorchScript files (`<name>.conv3d.weight`, `<name>.norm.weight`, …). The arithmetic follows the
reference operation by operation (same op order, `x·sigmoid(x)` for SiLU, the same Haar filter construction),
which is what makes golden outputs match to float32 round-off.

Shapes are `[B, C, T, H, W]` throughout. "Causal" means output frame t depends only on input frames ≤ t:
temporal padding is always the first frame repeated in front, never frames from the future.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def silu(x: torch.Tensor) -> torch.Tensor:
    # Written as x·sigmoid(x), as in the reference, rather than F.silu: the two can differ by one ulp.
    return x * torch.sigmoid(x)


def repeat_first_frame(x: torch.Tensor, count: int = 1) -> torch.Tensor:
    """Prepend `count` copies of frame 0 (the causal "replication" pad along T)."""
    if count <= 0:
        return x
    return torch.cat([x[:, :, :1].expand(-1, -1, count, -1, -1), x], dim=2)


def frames_to_batch(x: torch.Tensor) -> torch.Tensor:
    b, c, t, h, w = x.shape
    return x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)


def batch_to_frames(x: torch.Tensor, batch: int) -> torch.Tensor:
    bt, c, h, w = x.shape
    return x.reshape(batch, bt // batch, c, h, w).permute(0, 2, 1, 3, 4)


class CausalConv3d(nn.Module):
    """`nn.Conv3d` after causal temporal padding (frame 0 repeated) and symmetric zero spatial padding.

    `time_pad = time_dilation·(k_t − 1) + (1 − time_stride)`, so a stride-1 conv keeps T and a stride-2 conv
    with k_t = 3 maps T → ⌊(T−1)/2⌋+1 after its one-frame pad.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int, int] = 3,
        stride: int = 1,
        time_stride: int = 1,
        padding: int = 1,
        time_dilation: int = 1,
    ):
        super().__init__()
        if isinstance(kernel_size, int):
            kernel_size = (kernel_size, kernel_size, kernel_size)
        kt, kh, kw = kernel_size
        if kh % 2 == 0 or kw % 2 == 0:
            raise ValueError(f"spatial kernel sizes must be odd, got {kernel_size}")
        self.time_pad = time_dilation * (kt - 1) + (1 - time_stride)
        self.spatial_pad = (padding, padding, padding, padding, 0, 0)
        self.conv3d = nn.Conv3d(
            in_channels,
            out_channels,
            kernel_size,
            stride=(time_stride, stride, stride),
            dilation=(time_dilation, 1, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = repeat_first_frame(x, self.time_pad)
        x = F.pad(x, self.spatial_pad, mode="constant", value=0.0)
        return self.conv3d(x)


class CausalNormalize(nn.Module):
    """GroupNorm (eps 1e-6, affine). With one group it runs per frame: a LayerNorm over (C, H, W) of each frame,
    so statistics never mix frames (causality). With more groups it normalizes the whole clip, as upstream."""

    def __init__(self, channels: int, num_groups: int = 1):
        super().__init__()
        self.num_groups = num_groups
        self.norm = nn.GroupNorm(num_groups=num_groups, num_channels=channels, eps=1e-6, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.num_groups == 1:
            return batch_to_frames(self.norm(frames_to_batch(x)), x.shape[0])
        return self.norm(x)


def _factorized_conv(in_ch: int, out_ch: int) -> nn.Sequential:
    """A 1×3×3 spatial conv followed by a 3×1×1 causal temporal conv (keys `.0.conv3d`, `.1.conv3d`)."""
    return nn.Sequential(
        CausalConv3d(in_ch, out_ch, kernel_size=(1, 3, 3), padding=1),
        CausalConv3d(out_ch, out_ch, kernel_size=(3, 1, 1), padding=0),
    )


class CausalResnetBlockFactorized3d(nn.Module):
    """norm1 → SiLU → conv1 → norm2 → SiLU → dropout → conv2, plus a 1×1×1 shortcut when channels change."""

    def __init__(self, in_channels: int, out_channels: int | None = None, dropout: float = 0.0, num_groups: int = 1):
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        self.norm1 = CausalNormalize(in_channels, num_groups=1)
        self.conv1 = _factorized_conv(in_channels, out_channels)
        self.norm2 = CausalNormalize(out_channels, num_groups=num_groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _factorized_conv(out_channels, out_channels)
        self.nin_shortcut = (
            CausalConv3d(in_channels, out_channels, kernel_size=1, padding=0)
            if in_channels != out_channels
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(silu(self.norm1(x)))
        h = self.conv2(self.dropout(silu(self.norm2(h))))
        return self.nin_shortcut(x) + h


class _AttnProjections(nn.Module):
    def __init__(self, channels: int, num_groups: int = 1):
        super().__init__()
        self.norm = CausalNormalize(channels, num_groups=num_groups)
        self.q = CausalConv3d(channels, channels, kernel_size=1, padding=0)
        self.k = CausalConv3d(channels, channels, kernel_size=1, padding=0)
        self.v = CausalConv3d(channels, channels, kernel_size=1, padding=0)
        self.proj_out = CausalConv3d(channels, channels, kernel_size=1, padding=0)

    def _qkv(self, x: torch.Tensor):
        h = self.norm(x)
        return self.q(h), self.k(h), self.v(h)


class CausalAttnBlock(_AttnProjections):
    """Single-head spatial self-attention within each frame over its H·W positions (scale C^-1/2)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        q, k, v = self._qkv(x)
        q = frames_to_batch(q).reshape(b * t, c, h * w).permute(0, 2, 1)  # (bt, hw, c)
        k = frames_to_batch(k).reshape(b * t, c, h * w)  # (bt, c, hw)
        v = frames_to_batch(v).reshape(b * t, c, h * w)
        weights = torch.bmm(q, k) * (int(c) ** (-0.5))
        weights = F.softmax(weights, dim=2)
        out = torch.bmm(v, weights.permute(0, 2, 1)).reshape(b * t, c, h, w)
        return x + self.proj_out(batch_to_frames(out, b))


class CausalTemporalAttnBlock(_AttnProjections):
    """Single-head temporal self-attention per pixel over T with a lower-triangular (causal) mask."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        q, k, v = self._qkv(x)

        def to_seq(y: torch.Tensor) -> torch.Tensor:  # (b h w, t, c)
            return y.permute(0, 3, 4, 2, 1).reshape(b * h * w, t, c)

        q, k, v = to_seq(q), to_seq(k), to_seq(v)
        weights = torch.bmm(q, k.permute(0, 2, 1)) * (int(c) ** (-0.5))
        mask = torch.tril(torch.ones(t, t, dtype=torch.bool, device=x.device))
        weights = weights.masked_fill(~mask, float("-inf"))
        weights = F.softmax(weights, dim=2)
        out = torch.bmm(weights, v)  # (bhw, t, c)
        # Same memory layout as upstream ((bhw, c, t) contiguous, then a view): conv kernels pick their
        # algorithm by input strides, and a different layout changes float round-off.
        out = out.permute(0, 2, 1).reshape(b * h * w, c, t).reshape(b, h, w, c, t).permute(0, 3, 4, 1, 2)
        return x + self.proj_out(out)


def spatial_temporal_attention(channels: int) -> nn.Sequential:
    """The mid-block attention: spatial then temporal (keys `attn_1.0.*`, `attn_1.1.*`)."""
    return nn.Sequential(CausalAttnBlock(channels), CausalTemporalAttnBlock(channels))


def _avg_pool(x: torch.Tensor, kernel: tuple[int, int, int]) -> torch.Tensor:
    if x.device.type == "cpu" and x.dtype in (torch.bfloat16, torch.float16):
        # CPU has no half-precision avg_pool3d; averaging in fp32 and rounding once is what GPU kernels do.
        return F.avg_pool3d(x.float(), kernel_size=kernel, stride=kernel).to(x.dtype)
    return F.avg_pool3d(x, kernel_size=kernel, stride=kernel)


class CausalHybridDownsample3d(nn.Module):
    """Halve H, W (spatial) and/or T (temporal): a learned strided conv plus average pooling, then 1×1×1.

    Convs for a disabled direction are `nn.Identity` (no keys), as in the reference; with both directions
    disabled the module is the identity.
    """

    def __init__(self, channels: int, spatial_down: bool = True, temporal_down: bool = True):
        super().__init__()
        self.spatial_down = spatial_down
        self.temporal_down = temporal_down
        self.conv1 = (
            CausalConv3d(channels, channels, kernel_size=(1, 3, 3), stride=2, time_stride=1, padding=0)
            if spatial_down
            else nn.Identity()
        )
        self.conv2 = (
            CausalConv3d(channels, channels, kernel_size=(3, 1, 1), stride=1, time_stride=2, padding=0)
            if temporal_down
            else nn.Identity()
        )
        self.conv3 = (
            CausalConv3d(channels, channels, kernel_size=1, padding=0) if spatial_down or temporal_down else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.spatial_down and not self.temporal_down:
            return x
        if self.spatial_down:
            x = F.pad(x, (0, 1, 0, 1, 0, 0), mode="constant", value=0)
            x = self.conv1(x) + _avg_pool(x, (1, 2, 2))
        if self.temporal_down:
            x = repeat_first_frame(x, 1)
            x = self.conv2(x) + _avg_pool(x, (2, 1, 1))
        return self.conv3(x)


class CausalHybridUpsample3d(nn.Module):
    """Double T (2T−1: frame 0 stays single, causal) and/or H, W by repetition, each refined by a residual conv."""

    def __init__(self, channels: int, spatial_up: bool = True, temporal_up: bool = True):
        super().__init__()
        self.spatial_up = spatial_up
        self.temporal_up = temporal_up
        self.conv1 = (
            CausalConv3d(channels, channels, kernel_size=(3, 1, 1), padding=0) if temporal_up else nn.Identity()
        )
        self.conv2 = CausalConv3d(channels, channels, kernel_size=(1, 3, 3), padding=1) if spatial_up else nn.Identity()
        self.conv3 = (
            CausalConv3d(channels, channels, kernel_size=1, padding=0) if spatial_up or temporal_up else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.spatial_up and not self.temporal_up:
            return x
        if self.temporal_up:
            if x.shape[2] > 1:
                x = x.repeat_interleave(2, dim=2)[:, :, 1:]
            x = self.conv1(x) + x
        if self.spatial_up:
            x = x.repeat_interleave(2, dim=3).repeat_interleave(2, dim=4)
            x = self.conv2(x) + x
        return self.conv3(x)


_HAAR = (0.7071067811865476, 0.7071067811865476)


class _HaarBase(nn.Module):
    """Holds the wavelet buffers the released files carry (`wavelets`, `_arange`) and builds the two filters."""

    def __init__(self, patch_size: int):
        super().__init__()
        if patch_size < 1 or patch_size & (patch_size - 1):
            raise ValueError(f"haar patch_size must be a power of two, got {patch_size}")
        self.patch_size = patch_size
        self.levels = int(math.log2(patch_size))
        # False (the reference, and how weights are stored): each round divides (patcher) or multiplies
        # (unpatcher) by 2·√2. True: the orthonormal transform, which `tokenizers.train` uses while training.
        self.orthonormal = False
        self.register_buffer("wavelets", torch.tensor(_HAAR, dtype=torch.float32))
        self.register_buffer("_arange", torch.arange(2))

    def _filters(self, groups: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.wavelets
        low = h.flip(0).reshape(1, 1, -1).repeat(groups, 1, 1).to(dtype)
        high = (h * ((-1) ** self._arange)).reshape(1, 1, -1).repeat(groups, 1, 1).to(dtype)
        return low, high

    @staticmethod
    def _scale() -> torch.Tensor:
        # 2·√2 computed as a float32 tensor, exactly as upstream.
        return 2 * torch.sqrt(torch.tensor(2.0))


def _along(f: torch.Tensor, axis: int) -> torch.Tensor:
    """A `[g, 1, 2]` 1-D filter as a 3-D kernel along `axis` (2 = T, 3 = H, 4 = W)."""
    shape = [f.shape[0], 1, 1, 1, 1]
    shape[axis] = f.shape[-1]
    return f.reshape(shape)


class Patcher3D(_HaarBase):
    """Haar wavelet patcher: frame 0 is repeated `patch_size` times, then log2(patch) rounds of a 3D DWT.

    Each round reflect-pads one sample at the end of T, H and W, filters along T, then H, then W with stride 2,
    and stacks the 8 sub-bands `[lll, llh, lhl, lhh, hll, hlh, hhl, hhh]` on channels, divided by 2√2.
    `[B, 3, 1+k·p, H, W]` → `[B, 3·p³, 1+k, H/p, W/p]`.
    """

    def __init__(self, patch_size: int = 4):
        super().__init__(patch_size)
        self.register_buffer("patch_size_buffer", patch_size * torch.ones([1], dtype=torch.int32))

    def _dwt(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        g = x.shape[1]
        low, high = self._filters(g, dtype)
        x = F.pad(x, pad=(0, 1, 0, 1, 0, 1), mode="reflect").to(dtype)
        lo_t = F.conv3d(x, _along(low, 2), groups=g, stride=(2, 1, 1))
        hi_t = F.conv3d(x, _along(high, 2), groups=g, stride=(2, 1, 1))
        bands_h = []
        for y in (lo_t, hi_t):
            bands_h.append(F.conv3d(y, _along(low, 3), groups=g, stride=(1, 2, 1)))
            bands_h.append(F.conv3d(y, _along(high, 3), groups=g, stride=(1, 2, 1)))
        bands = []
        for y in bands_h:
            bands.append(F.conv3d(y, _along(low, 4), groups=g, stride=(1, 1, 2)))
            bands.append(F.conv3d(y, _along(high, 4), groups=g, stride=(1, 1, 2)))
        out = torch.cat(bands, dim=1)
        return out if self.orthonormal else out / self._scale()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([x[:, :, :1].repeat_interleave(self.patch_size, dim=2), x[:, :, 1:]], dim=2)
        for _ in range(self.levels):
            x = self._dwt(x)
        return x


class UnPatcher3D(_HaarBase):
    """Inverse of `Patcher3D`: transposed Haar filters along W, then H, then T (×2√2 per round), then the
    first `patch_size − 1` frames (the repeats of frame 0) are dropped."""

    def _idwt(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        g = x.shape[1] // 8
        low, high = self._filters(g, dtype)
        b = torch.chunk(x, 8, dim=1)

        def up(lo_in: torch.Tensor, hi_in: torch.Tensor, axis: int) -> torch.Tensor:
            stride = [1, 1, 1]
            stride[axis - 2] = 2
            y = F.conv_transpose3d(lo_in, _along(low, axis), groups=g, stride=tuple(stride))
            y += F.conv_transpose3d(hi_in, _along(high, axis), groups=g, stride=tuple(stride))
            return y

        ll, lh, hl, hh = up(b[0], b[1], 4), up(b[2], b[3], 4), up(b[4], b[5], 4), up(b[6], b[7], 4)
        lo, hi = up(ll, lh, 3), up(hl, hh, 3)
        out = up(lo, hi, 2)
        return out if self.orthonormal else out * self._scale()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.levels):
            x = self._idwt(x)
        return x[:, :, self.patch_size - 1 :]
