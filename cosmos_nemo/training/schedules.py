"""Learning-rate schedules: the value at a step, as a pure function (so resume needs only the step)."""

from __future__ import annotations

import math

from cosmos_nemo.training.config import OptimizerConfig

SCHEDULES = ("cosine", "constant", "cycle")


def lr_at(step: int, cfg: OptimizerConfig, max_steps: int) -> float:
    """Learning rate for optimizer step `step` (0-based)."""
    if cfg.schedule not in SCHEDULES:
        raise ValueError(f"unknown lr schedule {cfg.schedule!r}; choose one of {SCHEDULES}")
    warmup = cfg.warmup_steps
    if cfg.schedule == "cycle":
        # LambdaLinear: factor f_start -> f_max linearly over the warm-up, then within each cycle of
        # `cycle_length` steps linearly from f_max down to f_min.
        if step < warmup:
            factor = cfg.f_start + (cfg.f_max - cfg.f_start) * step / warmup
        else:
            n = (step - warmup) % cfg.cycle_length
            factor = cfg.f_min + (cfg.f_max - cfg.f_min) * (cfg.cycle_length - n) / cfg.cycle_length
        return cfg.lr * factor
    if warmup and step < warmup:
        return cfg.lr * (step + 1) / warmup
    if cfg.schedule == "constant":
        return cfg.lr
    decay = max(1, (cfg.decay_steps or max_steps) - warmup)
    progress = min(1.0, (step - warmup) / decay)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * progress))
