"""Natural-looking synthetic clips for the TokenBench tests and benchmark.

Smooth colour gradients, a moving textured disc and sensor-like noise give an encoder something to lose at
each quality, so PSNR and SSIM land in realistic ranges (25-50 dB, 0.6-0.99) rather than at the
extremes that pure noise or flat colour produce.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np


def synthetic_frames(num_frames: int, height: int, width: int, seed: int = 0, start: int = 0) -> np.ndarray:
    """uint8 RGB `[num_frames, height, width, 3]`; frame `start + i` is the same whatever `start` is."""
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 2 * np.pi, size=3)
    speed = rng.uniform(0.5, 2.0, size=2)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    yn, xn = yy / max(height - 1, 1), xx / max(width - 1, 1)
    texture = np.sin(xx * 0.9) * np.cos(yy * 0.7)
    out = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    for i in range(num_frames):
        t = start + i
        frame = np.empty((height, width, 3), dtype=np.float32)
        for c in range(3):
            frame[..., c] = 128 + 90 * np.sin(2 * np.pi * (xn * (c + 1) * 0.7 + yn * 0.5) + phase[c] + 0.05 * t)
        cy = height * (0.5 + 0.3 * np.sin(0.07 * t * speed[0]))
        cx = width * (0.5 + 0.3 * np.cos(0.05 * t * speed[1]))
        r = 0.25 * min(height, width)
        disc = ((yy - cy) ** 2 + (xx - cx) ** 2) < r * r
        frame[disc] = (200 + 40 * texture[disc])[:, None] * np.array([0.9, 0.6, 0.3], dtype=np.float32)
        frame += np.random.default_rng(seed * 100003 + t).normal(0, 4, size=frame.shape).astype(np.float32)
        out[i] = np.clip(np.rint(frame), 0, 255).astype(np.uint8)
    return out


def synthetic_chunks(num_frames: int, height: int, width: int, seed: int = 0, chunk: int = 16) -> Iterator[np.ndarray]:
    """The same frames as `synthetic_frames`, generated chunk by chunk (for long clips)."""
    for s in range(0, num_frames, chunk):
        yield synthetic_frames(min(chunk, num_frames - s), height, width, seed, start=s)
