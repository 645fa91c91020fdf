"""Models for inference, for every family: a run folder's bare model in eval mode."""

from __future__ import annotations

from pathlib import Path

import torch


def load_trained_model(run_dir: str | Path, weights: str = "model", dtype: torch.dtype | None = None):
    """The bare model of a run folder, for inference: its family and config from `config.yaml`, the
    weights of its latest complete checkpoint (`weights="ema"` for the EMA copy), no DDP wrapper and no
    gradient buffers, in `dtype` when given (e.g. torch.bfloat16). Parallel state must be set up (TP=PP=1).
    Returns (model in eval mode, model config, checkpoint folder)."""
    from cosmos_nemo.checkpoint import dist as dist_ckpt
    from cosmos_nemo.checkpoint import run as run_folder

    if weights not in ("model", "ema"):
        raise ValueError(f"weights must be 'model' or 'ema', got {weights!r}")
    family, cfg = run_folder.read_model_config(run_dir)
    latest = run_folder.latest_checkpoint(Path(run_dir) / "checkpoints")
    if latest is None:
        raise FileNotFoundError(f"{run_dir} has no complete checkpoint under checkpoints/")
    if not (latest / weights / ".metadata").is_file():
        raise FileNotFoundError(f"{latest / weights} is not a checkpoint (this run saved no {weights!r} weights)")
    model = family.build_model(cfg, True, True, dtype or torch.float32)
    if torch.cuda.is_available():
        model.cuda(torch.cuda.current_device())
    dist_ckpt.load_model([model], latest / weights)
    return model.eval(), cfg, latest
