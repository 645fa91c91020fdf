"""A PNG contact sheet of the worst pairs: reference | generated | amplified difference, one row each.

Each pair keeps a thumbnail of its worst frame (largest squared error) while it streams, so the sheet costs
no second decode and no full-size frames are held.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cosmos_nemo.io.atomic import atomic_path

THUMB_HEIGHT = 144
DIFF_GAIN = 4  # |reference - generated| is small; scale it to be visible


@dataclass
class WorstFrame:
    index: int
    sse: int
    reference: np.ndarray  # uint8 thumbnail [h, w, 3]
    generated: np.ndarray
    difference: np.ndarray


def thumbnail(frame: np.ndarray, height: int = THUMB_HEIGHT) -> np.ndarray:
    from PIL import Image

    h, w = frame.shape[:2]
    if h <= height:
        return frame.copy()
    width = max(1, round(w * height / h))
    return np.asarray(Image.fromarray(frame).resize((width, height), resample=Image.Resampling.BILINEAR))


def worst_frame(reference: np.ndarray, generated: np.ndarray, index: int, sse: int) -> WorstFrame:
    diff = np.abs(reference.astype(np.int16) - generated.astype(np.int16)) * DIFF_GAIN
    diff = np.clip(diff, 0, 255).astype(np.uint8)
    return WorstFrame(index, sse, thumbnail(reference), thumbnail(generated), thumbnail(diff))


def write_contact_sheet(path: Path, rows: list[tuple[str, WorstFrame]]) -> Path:
    """Write the rows (label, worst frame) as one PNG, under a temporary name renamed when complete."""
    from PIL import Image, ImageDraw

    pad, label_h = 4, 14
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    widths = [max(3 * r.reference.shape[1] + 4 * pad, int(measure.textlength(label)) + 2 * pad) for label, r in rows]
    heights = [r.reference.shape[0] + label_h + 2 * pad for _, r in rows]
    sheet = Image.new("RGB", (max(widths), sum(heights)), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    y = 0
    for (label, r), h in zip(rows, heights):
        draw.text((pad, y + 1), label, fill=(235, 235, 235))
        x = pad
        for img in (r.reference, r.generated, r.difference):
            sheet.paste(Image.fromarray(img), (x, y + label_h + pad))
            x += img.shape[1] + pad
        y += h
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
    return path
