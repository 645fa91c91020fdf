"""From a decoded video to fixed-size clip windows: resize + center-crop/pad, sliding windows by frame index.

Geometry (`--resize-mode`):
- `crop` (the reference): scale by `s = max(W/w, H/h)` so both sides cover the target, rounding the new
  size up (`ceil`), then cut the centre `H x W` (`top = (h' - H) // 2`, `left = (w' - W) // 2`).
- `pad`: scale by `s = min(W/w, H/h)` so the whole picture fits (rounded to nearest, at most the target),
  then centre it on black (`top = (H - h') // 2`).
- `stretch`: resize each axis to the target (`W/w` and `H/h`; the aspect ratio changes), as the Cosmos
  diffusion datasets' `Resize_Preprocess(video_size)` does. `s` is the larger of the two factors.
A source already at `H x W` is used as decoded (no resampling). Resampling is bilinear with antialiasing
(torch `interpolate(..., antialias=True)`, the behaviour of torchvision's tensor `resize`), rounded back
to uint8 so a clip has one exact pixel representation. `s > 1` is an upscale, refused unless allowed.

Windows are cut by frame index (VFR files: the i-th decoded frame), starting at 0, every `stride`
frames, each `window` frames long; a tail shorter than a window is not used. With `frame_step` k > 1 a
window takes every k-th frame (`sequence_interval` of the Cosmos diffusion datasets), so it spans
`(window - 1) * k + 1` decoded frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from cosmos_nemo.io.video import VideoDecodeError, iter_frames

# Decoded full-resolution frames held at once before resizing: about this many bytes (4K: 2 frames).
_DECODE_CHUNK_BYTES = 64 << 20

RESIZE_MODES = ("crop", "pad")  # the token commands' choices
DIFFUSION_RESIZE_MODES = RESIZE_MODES + ("stretch",)  # `prepare latents` also offers the reference's stretch


@dataclass(frozen=True)
class Geometry:
    """How a `src_h x src_w` picture becomes `height x width`."""

    src_h: int
    src_w: int
    height: int
    width: int
    mode: str
    scale: float
    resized_h: int
    resized_w: int
    top: int  # crop: rows dropped above; pad: rows of black above
    left: int

    @property
    def upscale(self) -> bool:
        return self.scale > 1.0 + 1e-9

    @property
    def identity(self) -> bool:
        return (self.src_h, self.src_w) == (self.height, self.width)


def geometry(src_h: int, src_w: int, height: int, width: int, mode: str = "crop") -> Geometry:
    if mode not in DIFFUSION_RESIZE_MODES:
        raise ValueError(f"resize mode must be one of {DIFFUSION_RESIZE_MODES}, got {mode!r}")
    if min(src_h, src_w, height, width) < 1:
        raise ValueError(f"sizes must be positive: source {src_h}x{src_w}, target {height}x{width}")
    if (src_h, src_w) == (height, width):
        return Geometry(src_h, src_w, height, width, mode, 1.0, height, width, 0, 0)
    if mode == "crop":
        scale = max(width / src_w, height / src_h)
        # ceil, but never let float noise push an exact size one pixel over (e.g. 1080 * (640/1080)).
        rh = max(height, math.ceil(src_h * scale - 1e-6))
        rw = max(width, math.ceil(src_w * scale - 1e-6))
        return Geometry(src_h, src_w, height, width, mode, scale, rh, rw, (rh - height) // 2, (rw - width) // 2)
    if mode == "stretch":
        return Geometry(src_h, src_w, height, width, mode, max(width / src_w, height / src_h), height, width, 0, 0)
    scale = min(width / src_w, height / src_h)
    rh = min(height, max(1, round(src_h * scale)))
    rw = min(width, max(1, round(src_w * scale)))
    return Geometry(src_h, src_w, height, width, mode, scale, rh, rw, (height - rh) // 2, (width - rw) // 2)


def apply_geometry(frames: np.ndarray, geo: Geometry) -> np.ndarray:
    """uint8 `[n, src_h, src_w, 3]` -> uint8 `[n, height, width, 3]`."""
    if frames.shape[1:3] != (geo.src_h, geo.src_w):
        raise ValueError(f"frames are {frames.shape[1:3]}, geometry expects {(geo.src_h, geo.src_w)}")
    if geo.identity:
        return frames
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    if (geo.resized_h, geo.resized_w) != (geo.src_h, geo.src_w):
        x = F.interpolate(x, size=(geo.resized_h, geo.resized_w), mode="bilinear", antialias=True, align_corners=False)
        x = x.round_().clamp_(0, 255)
    if geo.mode in ("crop", "stretch"):
        x = x[:, :, geo.top : geo.top + geo.height, geo.left : geo.left + geo.width]
    else:
        canvas = torch.zeros(x.shape[0], 3, geo.height, geo.width)
        canvas[:, :, geo.top : geo.top + geo.resized_h, geo.left : geo.left + geo.resized_w] = x
        x = canvas
    return x.to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def window_starts(num_frames: int, window: int, stride: int) -> list[int]:
    """Start indices of the full windows in a `num_frames`-frame video."""
    if window < 1 or stride < 1:
        raise ValueError(f"window and stride must be >= 1, got {window}, {stride}")
    return list(range(0, num_frames - window + 1, stride)) if num_frames >= window else []


def iter_windows(
    path,
    geo: Geometry,
    window: int,
    stride: int,
    decode_threads: int = 0,
    chunk_size: int | None = None,
    frame_step: int = 1,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield `(start_frame, frames uint8 [window, H, W, 3])` for each full window, streaming.

    Only the frames of windows still open are kept, so memory is bounded by `window + chunk_size` output
    frames plus one chunk of decoded frames (about 64 MB by default) whatever the video's length.
    Decode errors propagate (`VideoDecodeError`) after the windows before them were yielded: callers
    that must not keep a partial file's clips discard them. `frame_step` k: each window holds frames
    `start, start + k, ..., start + (window - 1) k`.
    """
    if frame_step < 1:
        raise ValueError(f"frame_step must be >= 1, got {frame_step}")
    span = (window - 1) * frame_step + 1
    if chunk_size is None:
        chunk_size = int(max(1, min(16, _DECODE_CHUNK_BYTES // (geo.src_h * geo.src_w * 3))))
    buf: list[np.ndarray] = []  # frames from index `buf_start` on
    buf_start = 0
    next_start = 0
    for chunk in iter_frames(path, chunk_size=chunk_size, threads=decode_threads):
        if chunk.shape[1:3] != (geo.src_h, geo.src_w):
            raise VideoDecodeError(
                f"{path}: frame size changed mid-stream from {geo.src_h}x{geo.src_w} to {chunk.shape[1]}x{chunk.shape[2]}"
            )
        buf.extend(apply_geometry(chunk, geo))
        while next_start + span <= buf_start + len(buf):
            a = next_start - buf_start
            yield next_start, np.stack(buf[a : a + span : frame_step])
            next_start += stride
        # Drop frames no future window needs.
        drop = min(len(buf), max(0, next_start - buf_start))
        if drop:
            del buf[:drop]
            buf_start += drop


def frames_to_tokenizer_input(clips: np.ndarray | list[np.ndarray], dtype=torch.float32, device="cpu") -> torch.Tensor:
    """uint8 `[B, T, H, W, 3]` -> `[B, 3, T, H, W]` in [-1, 1] (`x / 255 * 2 - 1`, the reference's scaling)."""
    arr = np.stack(clips) if isinstance(clips, list) else clips
    x = torch.from_numpy(np.ascontiguousarray(arr)).to(device)
    x = x.permute(0, 4, 1, 2, 3).float().div_(255.0).mul_(2.0).sub_(1.0)
    return x.to(dtype)
