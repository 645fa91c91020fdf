"""Small synthetic AR token datasets with a learnable pattern, written through `write_ar_dataset` in the
contract's format. Tests use them to show that a model learns (the loss of a learnable pattern must fall
far below ``ln(vocab_size)``) and that the data path round-trips.

Patterns (every document is a function of a random per-document phase, so the first token is random
and every later one is determined by the previous tokens):

- ``"ramp"``: ``id[i] = (phase + i) mod vocab_size``; each token is the previous one plus 1.
- ``"motif"``: a fixed random motif of ``period`` ids (drawn once from `seed`) repeated from a random
  phase; the next token depends on the previous one as long as the motif has no repeated id.
- ``"frame_copy"``: latent frame 0 is random and every later latent frame repeats it, a video-like
  pattern (prediction needs attention H·W positions back, not just the previous token).

For Video2World (``task="video2world"``) every document gets a prompt (``prompt_id = doc % num_prompts``)
whose random text embedding decides the document's phase: a model can only predict the first clip
token after BOV by reading the cross-attention context.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from cosmos_nemo.data.ar_dataset import ARDatasetMeta, write_ar_dataset
from cosmos_nemo.data.layout import TASK_BASE, TASK_VIDEO2WORLD, check_task

PATTERNS = ("ramp", "motif", "frame_copy")


def pattern_tokens(pattern: str, grid: Sequence[int], vocab_size: int, phase: int, motif: np.ndarray | None = None) -> np.ndarray:
    """The raster-order ids of one synthetic clip of `grid` (see the module docstring)."""
    t, h, w = (int(g) for g in grid)
    n = t * h * w
    i = np.arange(n, dtype=np.int64)
    if pattern == "ramp":
        return (phase + i) % vocab_size
    if pattern == "motif":
        if motif is None:
            raise ValueError("pattern 'motif' needs the motif ids")
        return motif[(phase + i) % motif.shape[0]]
    if pattern == "frame_copy":
        frame = (phase + np.arange(h * w, dtype=np.int64) * 7919) % vocab_size
        return np.tile(frame, t)
    raise ValueError(f"unknown pattern {pattern!r}; expected one of {', '.join(PATTERNS)}")


def write_pattern_dataset(
    out_dir: str | os.PathLike,
    num_docs: int,
    grid: Sequence[int] | Sequence[Sequence[int]] = (2, 4, 4),
    vocab_size: int = 64,
    seed: int = 0,
    pattern: str = "ramp",
    task: str = TASK_BASE,
    compression: Sequence[int] = (8, 16, 16),
    period: int = 7,
    num_prompts: int = 4,
    text_length: int = 8,
    text_dim: int = 16,
    overwrite: bool = True,
) -> Path:
    """Write `num_docs` synthetic documents to `out_dir` and return the path.

    `grid` is one (T, H, W) or a list of grids used in turn (document k gets ``grids[k % len(grids)]``) to
    make a multi-grid dataset. Records are consistent with `compression` (frames = 1 + (T-1)·t, height
    = H·h, width = W·w), sources are ``video_{k // 2:04d}.mp4`` with two windows per video. For
    Video2World the text embeddings are written too (``[num_prompts, text_length, text_dim]``; the
    mask marks a prompt-dependent number of valid positions).
    """
    check_task(task)
    if num_docs < 1:
        raise ValueError(f"num_docs must be >= 1, got {num_docs}")
    grids = [tuple(int(g) for g in grid)] if np.ndim(grid) == 1 else [tuple(int(x) for x in g) for g in grid]
    rng = np.random.default_rng(seed)
    motif = rng.permutation(vocab_size)[: min(period, vocab_size)].astype(np.int64)
    ct, ch, cw = (int(c) for c in compression)

    embeddings = mask = None
    if task == TASK_VIDEO2WORLD:
        embeddings = rng.standard_normal((num_prompts, text_length, text_dim)).astype(np.float32)
        valid = 1 + (np.arange(num_prompts) % text_length)
        mask = np.arange(text_length)[None, :] < valid[:, None]
        embeddings = embeddings * mask[:, :, None]  # like T5: positions past the prompt are zero
        prompt_phase = rng.integers(0, vocab_size, size=num_prompts)

    def documents():
        for k in range(num_docs):
            g = grids[k % len(grids)]
            record = {
                "source": f"video_{k // 2:04d}.mp4",
                "start_frame": (k % 2) * (1 + (g[0] - 1) * ct),
                "num_frames": 1 + (g[0] - 1) * ct,
                "fps": 24.0,
                "height": g[1] * ch,
                "width": g[2] * cw,
                "grid": list(g),
                "caption": f"synthetic clip {k}",
            }
            if task == TASK_VIDEO2WORLD:
                pid = k % num_prompts
                record["prompt_id"] = pid
                phase = int(prompt_phase[pid])
            else:
                phase = int(rng.integers(0, vocab_size))
            yield pattern_tokens(pattern, g, vocab_size, phase, motif), record

    g0 = grids[0]
    meta = ARDatasetMeta(
        tokenizer=f"synthetic-{pattern}",
        compression=(ct, ch, cw),
        vocab_size=vocab_size,
        frames=1 + (g0[0] - 1) * ct,
        height=g0[1] * ch,
        width=g0[2] * cw,
        task=task,
    )
    text = None if embeddings is None else (embeddings, mask)
    return write_ar_dataset(out_dir, documents(), meta, overwrite=overwrite, text_embeddings=text)
