"""Sequence layouts of the AR token dataset, on top of `cosmos_nemo.tokenizers.grid` (the one owner of the
grid arithmetic).

Two layouts exist (reference: ar_models.md §3):

- ``base``: the stored document is the clip's raw FSQ ids in raster order ``t·H·W + h·W + w``; the model
  input is those N = T·H·W ids (RoPE positions 0..N-1).
- ``video2world``: the stored document is ``[BOV] + clip ids + [PAD] * k`` so that the model input
  ``stored[:-1]`` is a multiple of ``pad_to_multiple_of`` (64 in the reference) and ``labels = stored[1:]``.
  For 5×40×64: 1 + 12800 + 64 = 12865 stored, 12864 input, exactly NVIDIA's V2W data.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from cosmos_nemo.tokenizers.grid import (
    BOV_TOKEN_ID,
    EOV_TOKEN_ID,
    PAD_TOKEN_ID,
    V2W_PAD_TO_MULTIPLE_OF,
    GridError,
    SequenceLayout,
    base_layout,
    latent_grid,
    v2w_layout,
)

__all__ = [
    "TASK_BASE",
    "TASK_VIDEO2WORLD",
    "TASKS",
    "BOV_TOKEN_ID",
    "EOV_TOKEN_ID",
    "PAD_TOKEN_ID",
    "V2W_PAD_TO_MULTIPLE_OF",
    "GridError",
    "layout_for",
    "latent_grid_tuple",
    "stored_length",
    "sequence_length",
    "frame_document",
]

TASK_BASE = "base"
TASK_VIDEO2WORLD = "video2world"
TASKS = (TASK_BASE, TASK_VIDEO2WORLD)


def check_task(task: str) -> str:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    return task


def layout_for(grid: Sequence[int], task: str, pad_to_multiple_of: int = V2W_PAD_TO_MULTIPLE_OF) -> SequenceLayout:
    """The grid module's layout for one document of `grid` under `task`."""
    if check_task(task) == TASK_BASE:
        return base_layout(tuple(int(g) for g in grid))
    return v2w_layout(tuple(int(g) for g in grid), pad_to_multiple_of)


def latent_grid_tuple(frames: int, height: int, width: int, compression: Sequence[int]) -> tuple[int, int, int]:
    """(T, H, W) of a clip; GridError with the arithmetic when it does not divide evenly."""
    return latent_grid(int(frames), int(height), int(width), tuple(int(c) for c in compression)).as_tuple()


def stored_length(grid: Sequence[int], task: str, pad_to_multiple_of: int = V2W_PAD_TO_MULTIPLE_OF) -> int:
    """Number of ids stored in tokens.bin for one document of `grid`."""
    return layout_for(grid, task, pad_to_multiple_of).stored_length


def sequence_length(grid: Sequence[int], task: str, pad_to_multiple_of: int = V2W_PAD_TO_MULTIPLE_OF) -> int:
    """Model input length L for one document of `grid` (tokens/labels/loss_mask are [B, L])."""
    return layout_for(grid, task, pad_to_multiple_of).input_length


def frame_document(
    clip_ids: np.ndarray,
    grid: Sequence[int],
    task: str,
    bov_id: int | None,
    pad_id: int | None,
    pad_to_multiple_of: int = V2W_PAD_TO_MULTIPLE_OF,
) -> np.ndarray:
    """The stored document for one clip's raw ids: the ids themselves (base) or
    ``[BOV] + ids + [PAD] * k`` (video2world), as int64."""
    layout = layout_for(grid, task, pad_to_multiple_of)
    n = int(clip_ids.shape[0])
    if n != layout.num_video_tokens:
        raise GridError(f"a {layout.grid} grid holds {layout.num_video_tokens} tokens, got {n} ids")
    if not layout.num_prefix:
        return clip_ids.astype(np.int64, copy=False)
    out = np.full(layout.stored_length, pad_id, dtype=np.int64)
    out[0] = bov_id
    out[1 : 1 + n] = clip_ids
    return out
