"""What generation shows a person: mp4s and a contact sheet PNG of frames side by side."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from cosmos_nemo.io.atomic import atomic_path


def contact_sheet(rows: dict[str, np.ndarray], path: str | os.PathLike, max_frames: int = 9) -> Path:
    """One row per named clip (uint8 [T, H, W, 3]), up to `max_frames` evenly spaced frames each, with a
    4-pixel gap; written atomically as PNG."""
    if not rows:
        raise ValueError("contact_sheet needs at least one clip")
    clips = list(rows.values())
    h, w = clips[0].shape[1:3]
    n = min(max_frames, max(c.shape[0] for c in clips))
    gap = 4
    sheet = np.full((len(clips) * (h + gap) - gap, n * (w + gap) - gap, 3), 255, np.uint8)
    for r, clip in enumerate(clips):
        if clip.shape[1:3] != (h, w):
            raise ValueError(f"clip {list(rows)[r]!r} is {clip.shape[1:3]}, expected {(h, w)}")
        idx = np.linspace(0, clip.shape[0] - 1, n).round().astype(int)
        for c, i in enumerate(idx):
            sheet[r * (h + gap): r * (h + gap) + h, c * (w + gap): c * (w + gap) + w] = clip[i]
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:  # PIL picks the format from the suffix
        Image.fromarray(sheet).save(tmp)
    return path
