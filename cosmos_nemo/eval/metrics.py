"""PSNR and SSIM exactly as TokenBench defines them, computed from uint8 frames without float videos.

TokenBench (`token_bench/metrics_cli.py`, and the NeMo `token_bench.py`) scores a pair of videos as:

* PSNR per video from one global MSE over all frames, pixels and channels:
  ``20 * log10(255 / (sqrt(MSE) + eps_f32))`` with ``eps_f32 = np.finfo(np.float32).eps``.
  It is *not* the mean of per-frame PSNRs.
* SSIM per frame with scikit-image's defaults (``structural_similarity(a, b, data_range=255,
  channel_axis=-1)``): a 7x7 uniform window, sample covariance (``49/48``), ``C1 = (0.01*255)^2``,
  ``C2 = (0.03*255)^2``, the SSIM map cropped by 3 px on each side (so it equals a *valid* 7x7 box
  filter), averaged per channel and then over the three channels; the video's SSIM is the mean over
  frames.

How this stays exact and fast:

* Frames are uint8, so every window sum (of x, y, x^2 + y^2 and x*y) is an integer that int16 (x, y)
  or int32 holds exactly, and so are the cancellation-prone variance numerators ``49*Sxx - Sx^2``. Only
  the final ratio is taken in floating point (float64), so there is no catastrophic cancellation anywhere:
  the result is the exact SSIM up to ~1e-15, and skimage's own float32 arithmetic is ~1e-7 from it.
* PSNR accumulates an exact int64 sum of squared errors across chunks; with SSIM it comes for free from
  the per-pixel x^2 + y^2 and x*y that SSIM needs anyway (sum (x-y)^2 = sum (x^2+y^2) - 2 sum xy).
* Frames are processed in horizontal strips of a few dozen rows, so the temporaries stay in cache;
  whole videos are never materialised, not even one frame as float.
* On CPU (the default) everything is NumPy on the interleaved `[H, W, 3]` frames as decoded, so scoring
  imports no torch (`evaluate tokenbench` starts in a fraction of a second). Another `device` (e.g. cuda)
  runs the same integer formulation in torch on planar strips, whole frames at a time.
"""

from __future__ import annotations

import math
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np
from numpy.lib.stride_tricks import as_strided

# np.finfo(np.float32).eps, the constant the reference adds to sqrt(MSE).
FLOAT32_EPS = float(np.finfo(np.float32).eps)
DATA_RANGE = 255.0
SSIM_WIN = 7
_NP = SSIM_WIN * SSIM_WIN  # 49 samples per window
_C1 = (0.01 * DATA_RANGE) ** 2
_C2 = (0.03 * DATA_RANGE) ** 2
# SSIM written over integer window sums S (means are S/49, sample covariances (49*Sab - Sa*Sb)/(49*48)):
#   ((2 Sx Sy + C1*49^2) (2 (49 Sxy - Sx Sy) + C2*49*48)) / ((Sx^2 + Sy^2 + C1*49^2) (49 Sq - Sx^2 - Sy^2 + C2*49*48))
# with Sq = S(x^2 + y^2). Numerator and denominator are scaled by the same 49^2 * 49*48.
_C1S = _C1 * _NP * _NP
_C2S = _C2 * _NP * (_NP - 1)


class FrameTooSmallError(ValueError):
    """A frame is smaller than the 7x7 SSIM window."""


def psnr_from_sse(sse: int, count: int) -> float:
    """TokenBench PSNR from an exact sum of squared uint8 errors over `count` values."""
    if count <= 0:
        raise ValueError("PSNR needs at least one value")
    mse = sse / count
    return 20.0 * math.log10(DATA_RANGE / (math.sqrt(mse) + FLOAT32_EPS))


def _is_cpu(device) -> bool:
    """Whether `device` (a string such as "cpu"/"cuda:0", or a torch.device) is the CPU, without importing torch."""
    kind = getattr(device, "type", None)
    return (kind if kind is not None else str(device).split(":", 1)[0]) == "cpu"


def _is_float32(dtype) -> bool:
    """`float_dtype` given as a NumPy or torch dtype (or None for float64)."""
    return dtype is not None and str(dtype).rsplit(".", 1)[-1] == "float32"


# ------------------------------------------------------------------------------------------------------
# CPU: NumPy on interleaved [rows, W, 3] strips


def _np_vbox7(x: np.ndarray) -> np.ndarray:
    """Sums of 7 consecutive rows of `[h, ...]` (valid positions: `[h-6, ...]`), via 2-wide partial sums."""
    n = x.shape[0] - (SSIM_WIN - 1)
    s2 = x[: n + 5] + x[1 : n + 6]
    out = s2[:n] + s2[2 : n + 2]
    out += s2[4 : n + 4]
    out += x[6 : n + 6]
    return out


def _np_hbox7_flat(v: np.ndarray) -> np.ndarray:
    """Sums of 7 consecutive columns of a contiguous `[r, W, C]`, computed on the flattened array: a 1-D
    result of `r*W*C - 6*C` values, where index `(i*W + j)*C + c` is the window starting at column j for
    j < W-6, and the last 6*C values of each row but the last are windows that wrap into the next row
    (`_sum_valid` leaves them out). NumPy runs a 1-D operation ~2.5x faster than the same one over rows."""
    c = v.shape[2]
    f = v.reshape(-1)
    n = f.size - (SSIM_WIN - 1) * c
    s2 = f[: n + 5 * c] + f[c : n + 6 * c]
    out = s2[:n] + s2[2 * c : n + 2 * c]
    out += s2[4 * c : n + 4 * c]
    out += f[6 * c : n + 6 * c]
    return out


def _np_window_sums(q: np.ndarray) -> np.ndarray:
    """7x7 window sums of contiguous `[h, W, C]`, flat as `_np_hbox7_flat` lays them out."""
    return _np_hbox7_flat(_np_vbox7(q))


def _sum_valid(flat: np.ndarray, rows: int, width: int, channels: int) -> float:
    """Sum of a `_np_hbox7_flat`-layout array over its valid positions (the wrapped ones subtracted)."""
    total = float(flat.sum(dtype=np.float64))
    if rows > 1:
        wrap = as_strided(flat[(width - 6) * channels :], shape=(rows - 1, 6 * channels),
                          strides=(width * channels * flat.itemsize, flat.itemsize), writeable=False)
        total -= float(wrap.sum(dtype=np.float64))
    return total


def _np_strip(x8: np.ndarray, y8: np.ndarray, own: int, ratio_dtype) -> tuple[float, int]:
    """(sum of the valid SSIM map over all channels, squared-error sum of the first `own` rows) of uint8
    strips `[h, W, C]` (h >= 7)."""
    h, width, channels = x8.shape
    # Window sums of x and y stay below 49*255 = 12495, so int16 holds them (half the memory traffic);
    # the second moments need int32 (49 * 2 * 255^2 < 2^31).
    x16 = x8.astype(np.int16)
    y16 = y8.astype(np.int16)
    sx = _np_window_sums(x16).astype(np.int32)
    sy = _np_window_sums(y16).astype(np.int32)
    x = x16.astype(np.int32)
    y = y16.astype(np.int32)
    q = x * x
    q += np.multiply(y, y, out=y)  # x^2 + y^2
    xy = np.multiply(x, y16, out=x)
    # Squared errors of the rows this strip owns, exactly: sum (x-y)^2 = sum (x^2 + y^2) - 2 sum xy.
    sse = int(q[:own].sum(dtype=np.int64)) - 2 * int(xy[:own].sum(dtype=np.int64))
    sq = _np_window_sums(q)
    sxy = _np_window_sums(xy)
    p = sx * sy  # Sx*Sy
    sx *= sx
    sx += np.multiply(sy, sy, out=sy)  # b1 = Sx^2 + Sy^2
    sxy *= _NP
    sxy -= p  # 49 Sxy - Sx Sy
    sq *= _NP
    sq -= sx  # 49 Sq - Sx^2 - Sy^2
    # The ratio with the numerator's two factors of 2 taken out (the caller multiplies the sum by 4, exactly):
    # (Sx Sy + C1/2) (49 Sxy - Sx Sy + C2/2) / ((b1 + C1) (49 Sq - b1 + C2)). Each int -> float step is one
    # pass (the cast happens inside the add). The wrapped positions are windows of real pixels too, so
    # they are finite (the variance terms are >= 0 for any 49 values) and simply left out of the sum.
    num = np.add(p, _C1S / 2, dtype=ratio_dtype)
    num *= np.add(sxy, _C2S / 2, dtype=ratio_dtype)
    den = np.add(sx, _C1S, dtype=ratio_dtype)
    den *= np.add(sq, _C2S, dtype=ratio_dtype)
    num /= den
    # The channels have equally many valid positions, so the mean of the per-channel means is the mean
    # over everything: one contiguous reduction (a per-channel one over the interleaved layout is slow).
    return 4.0 * _sum_valid(num, h - 6, width, channels), sse


def _np_score_one(fa: np.ndarray, fb: np.ndarray, float32: bool, with_ssim: bool) -> tuple[float, int]:
    """(SSIM, squared-error sum) of one uint8 `[H, W, C]` frame pair, on CPU."""
    if not with_ssim:
        d = fa.astype(np.int32)
        d -= fb
        d *= d
        return math.nan, int(d.sum(dtype=np.int64))
    height, width, channels = fa.shape
    rows = strip_rows_for_width(width, "cpu")
    ratio_dtype = np.float32 if float32 else np.float64
    total, err = 0.0, 0
    for r in range(0, height - 6, rows):
        stop = min(r + rows + 6, height)
        # Strips overlap by 6 rows for the window; squared errors count each row once.
        own = stop - r if stop == height else rows
        s, e = _np_strip(fa[r:stop], fb[r:stop], own, ratio_dtype)
        total += s
        err += e
    valid = (height - 6) * (width - 6) * channels
    return total / valid, err


# ------------------------------------------------------------------------------------------------------
# Other devices: torch on planar [C, rows, W] strips


def _box7(x, dim: int):
    """Sum of 7 consecutive elements along `dim` (valid positions only), via 2- and 4-wide partial sums."""
    n = x.shape[dim] - (SSIM_WIN - 1)
    s2 = x.narrow(dim, 0, n + 5) + x.narrow(dim, 1, n + 5)
    s4 = s2.narrow(dim, 0, n + 3) + s2.narrow(dim, 2, n + 3)
    out = s4.narrow(dim, 0, n) + s2.narrow(dim, 4, n)
    out += x.narrow(dim, 6, n)
    return out


def _window_sums(q):
    """Valid 7x7 window sums of `[C, h, W]` -> `[C, h-6, W-6]`."""
    return _box7(_box7(q, 2), 1)


def _ssim_map_sum(x16, y16, dtype):
    """Per-channel sum of the valid SSIM map of int16 planar strips `[C, h, W]` (h >= 7)."""
    import torch

    sx = _window_sums(x16).to(torch.int32)
    sy = _window_sums(y16).to(torch.int32)
    x = x16.to(torch.int32)
    y = y16.to(torch.int32)
    q = x * x
    q += y * y
    sq = _window_sums(q)
    sxy = _window_sums(x.mul_(y))
    p = sx * sy  # Sx*Sy
    b1 = sx.mul_(sx)
    b1 += sy.mul_(sy)  # Sx^2 + Sy^2
    num = (2 * p).to(dtype).add_(_C1S)
    sxy.mul_(_NP).sub_(p).mul_(2)  # 2 (49 Sxy - Sx Sy)
    num.mul_(sxy.to(dtype).add_(_C2S))
    sq.mul_(_NP).sub_(b1)  # 49 Sq - Sx^2 - Sy^2
    den = b1.to(dtype).add_(_C1S)
    den.mul_(sq.to(dtype).add_(_C2S))
    return num.div_(den).sum(dim=(1, 2), dtype=torch.float64)


def strip_rows_for_width(width: int, device="cpu") -> int:
    """Rows per strip: ~40k pixels per channel keeps CPU temporaries in cache; GPUs take whole frames."""
    if not _is_cpu(device):
        return 1 << 30
    return max(16, 40960 // max(width, 1))


def check_frame_size(height: int, width: int) -> None:
    if height < SSIM_WIN or width < SSIM_WIN:
        raise FrameTooSmallError(
            f"frames are {width}x{height} pixels, smaller than the 7x7 SSIM window "
            "(scikit-image's default, which TokenBench uses); SSIM is undefined for them"
        )


@dataclass
class FrameScores:
    """Per-frame SSIM and per-frame sums of squared errors of one chunk."""

    ssim: np.ndarray  # float64 [n]
    sse: np.ndarray  # int64 [n]


def _score_one(fa, fb, device, float_dtype, with_ssim: bool) -> tuple[float, int]:
    """(SSIM, squared-error sum) of one uint8 `[H, W, C]` frame pair, on a torch device."""
    import torch

    fa = fa.to(device, non_blocking=True)
    fb = fb.to(device, non_blocking=True)
    if not with_ssim:
        d = fa.to(torch.int32) - fb.to(torch.int32)
        return math.nan, int(d.mul_(d).sum(dtype=torch.int64).item())
    height, width, channels = fa.shape
    rows = strip_rows_for_width(width, device)
    per_channel = torch.zeros(channels, dtype=torch.float64, device=device)
    err = torch.zeros((), dtype=torch.int64, device=device)
    for r in range(0, height - 6, rows):
        stop = min(r + rows + 6, height)
        x = fa[r:stop].permute(2, 0, 1).to(torch.int16)
        y = fb[r:stop].permute(2, 0, 1).to(torch.int16)
        # Strips overlap by 6 rows for the window; squared errors count each row once.
        own = stop - r if stop == height else rows
        d = (x[:, :own] - y[:, :own]).to(torch.int32)
        err += d.mul_(d).sum(dtype=torch.int64)
        per_channel += _ssim_map_sum(x, y, float_dtype)
    valid = (height - 6) * (width - 6)
    return (per_channel / valid).mean().item(), int(err.item())


def _as_numpy(x) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "detach"):  # a torch tensor
        return x.detach().cpu().numpy()
    return np.asarray(x)


def score_frames(
    a,
    b,
    device="cpu",
    float_dtype=None,
    with_ssim: bool = True,
    pool: Executor | None = None,
) -> FrameScores:
    """SSIM (skimage defaults) and exact squared-error sums for each frame pair of uint8 `[n, H, W, 3]`.

    `a` and `b` are NumPy arrays or torch tensors. On CPU (the default) the work is NumPy and imports no
    torch; any other `device` (e.g. "cuda") runs it in torch there. `float_dtype` (NumPy or torch
    float32/float64; default float64) is only used for the final ratio of exact integers; both agree with
    skimage to ~1e-7. With `with_ssim=False` only the squared errors are computed (SSIM is NaN), and
    frames of any size are accepted. With a thread `pool`, frames are scored in parallel (NumPy and torch
    release the GIL).
    """
    cpu = _is_cpu(device)
    if cpu:
        a, b = _as_numpy(a), _as_numpy(b)
    else:
        import torch

        a, b = torch.as_tensor(a), torch.as_tensor(b)
    if str(a.dtype).rsplit(".", 1)[-1] != "uint8" or str(b.dtype).rsplit(".", 1)[-1] != "uint8":
        raise TypeError(f"frames must be uint8, got {a.dtype} and {b.dtype}")
    if a.ndim == 3:
        a, b = a[None], b[None]
    if a.shape != b.shape:
        raise ValueError(f"frame shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    if with_ssim:
        check_frame_size(a.shape[1], a.shape[2])
    float32 = _is_float32(float_dtype)
    if cpu:
        def one(i: int) -> tuple[float, int]:
            return _np_score_one(a[i], b[i], float32, with_ssim)
    else:
        import torch

        dev = torch.device(device)
        dtype = torch.float32 if float32 else torch.float64

        def one(i: int) -> tuple[float, int]:
            return _score_one(a[i], b[i], dev, dtype, with_ssim)

    results = list(pool.map(one, range(len(a)))) if pool is not None else [one(i) for i in range(len(a))]
    return FrameScores(ssim=np.array([r[0] for r in results], dtype=np.float64),
                       sse=np.array([r[1] for r in results], dtype=np.int64))


@dataclass
class PairAccumulator:
    """Streams chunks of a video pair and yields TokenBench PSNR and SSIM at the end."""

    device: str = "cpu"
    with_ssim: bool = True
    pool: Executor | None = None
    frames: int = 0
    values_per_frame: int = 0
    sse: int = 0
    ssim_frames: list[float] = field(default_factory=list)

    def update(self, a: np.ndarray, b: np.ndarray) -> FrameScores:
        scores = score_frames(a, b, device=self.device, with_ssim=self.with_ssim, pool=self.pool)
        self.frames += len(scores.ssim)
        self.values_per_frame = int(np.prod(a.shape[1:]))
        self.sse += int(scores.sse.sum())
        if self.with_ssim:
            self.ssim_frames.extend(float(v) for v in scores.ssim)
        return scores

    @property
    def psnr(self) -> float:
        return psnr_from_sse(self.sse, self.frames * self.values_per_frame)

    @property
    def ssim(self) -> float:
        if not self.ssim_frames:
            raise ValueError("SSIM needs at least one frame")
        return float(np.mean(self.ssim_frames))
