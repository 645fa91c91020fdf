"""Learning-rate schedules: the value at a step, as a pure function (so resume needs only the step)."""

from __future__ import annotations

import math

from cosmos_nemo.training.config import OptimizerConfig

SCHEDULES = ("cosine", "constant", "cycle", "lambda_linear")


def lr_at(step: int, cfg: OptimizerConfig, max_steps: int) -> float:
    """Learning rate for optimizer step `step` (0-based)."""
    if cfg.schedule not in SCHEDULES:
        raise ValueError(f"unknown lr schedule {cfg.schedule!r}; choose one of {SCHEDULES}")
    if cfg.schedule == "lambda_linear":
        return cfg.lr * lambda_linear_factor(step, cfg.lambda_linear)
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


def check_lambda_linear(ll, max_steps: int | None = None) -> None:
    """Refuse a LambdaLinear configuration the reference could not run (lists of unequal length, a warm-up as
    long as its cycle, a run longer than its cycles)."""
    if ll is None:
        raise ValueError("optim.schedule='lambda_linear' needs optim.lambda_linear (warm_up_steps, cycle_lengths, "
                         "f_start, f_max, f_min: one entry per cycle)")
    lists = {k: list(getattr(ll, k)) for k in ("warm_up_steps", "cycle_lengths", "f_start", "f_max", "f_min")}
    lengths = {k: len(v) for k, v in lists.items()}
    if len(set(lengths.values())) != 1 or not lengths["cycle_lengths"]:
        raise ValueError(f"the LambdaLinear lists need one entry per cycle, the same number in each: {lengths}")
    for w, c in zip(lists["warm_up_steps"], lists["cycle_lengths"]):
        if c <= 0 or w < 0 or w >= c:
            raise ValueError(f"each LambdaLinear cycle needs 0 <= warm_up_steps < cycle_lengths, got warm-up {w}, "
                             f"cycle {c}")
    if max_steps is not None and max_steps - 1 > sum(lists["cycle_lengths"]):
        raise ValueError(f"the LambdaLinear cycles cover {sum(lists['cycle_lengths'])} steps but the run has {max_steps}: "
                         "the reference scheduler has no value past its last cycle; lengthen cycle_lengths")


def lambda_linear_factor(step: int, ll) -> float:
    """The LambdaLinearScheduler multiplier at optimizer step `step` (0-based), as imaginaire computes it."""
    check_lambda_linear(ll)
    start = 0
    for cycle, length in enumerate(ll.cycle_lengths):
        if step <= start + length:
            break
        start += length
    else:
        raise ValueError(f"step {step} lies past the last LambdaLinear cycle (they cover {start} steps)")
    n = step - start
    warm, f_start, f_max, f_min = ll.warm_up_steps[cycle], ll.f_start[cycle], ll.f_max[cycle], ll.f_min[cycle]
    length = ll.cycle_lengths[cycle]
    if n < warm:
        return (f_max - f_start) / warm * n + f_start
    return f_min + (f_max - f_min) * (length - n) / (length - warm)
