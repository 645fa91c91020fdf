"""Typed configs of a training run, one per component; a recipe fills them and passes them to `train`.

`train(model, data, optim, trainer, checkpoint, parallel, log)` (training/trainer.py) takes exactly these,
plus a model family's model config (its `family` field names the family, e.g. `ARModelConfig`) and that
family's data config (e.g. `ARDataConfig`). Dtypes are strings ("fp32", "bf16") so configs serialise
through nemo-run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class LambdaLinearConfig:
    """The reference trainers' `LambdaLinearScheduler` (imaginaire `functional/lr_scheduler.py`), one entry per
    cycle in every list. Within cycle c, at step n counted from the cycle's start (a step on a cycle's last
    boundary still belongs to it): warm-up `f = f_start + (f_max - f_start) * n / warm_up_steps`, then
    `f = f_min + (f_max - f_min) * (cycle_lengths - n) / (cycle_lengths - warm_up_steps)`; `lr = optim.lr * f`.
    Past the last cycle the reference has no value, so a run longer than sum(cycle_lengths) is refused."""

    warm_up_steps: list[int] = field(default_factory=lambda: [0])
    cycle_lengths: list[int] = field(default_factory=lambda: [10_000_000_000_000])
    f_start: list[float] = field(default_factory=lambda: [1e-6])
    f_max: list[float] = field(default_factory=lambda: [1.0])
    f_min: list[float] = field(default_factory=lambda: [1.0])


@dataclass
class OptimizerConfig:
    """AdamW (decoupled weight decay), learning-rate schedule and gradient clipping.

    schedule: "cosine" (linear warm-up, then cosine from lr to min_lr at decay_steps or max_steps),
        "constant" (linear warm-up, then lr; the NeMo reference scripts use a constant 5e-5 with no
        warm-up), or "cycle" (LambdaLinear-like, cycles repeating after one warm-up: the factor ramps from
        f_start to f_max over warmup_steps, then falls linearly to f_min over each cycle_length steps; the
        reference decays over cycle_length - warm-up steps instead), or "lambda_linear" (the reference's
        LambdaLinearScheduler exactly, with its per-cycle lists: `lambda_linear`).
    zero_nonfinite_grads: replace NaN/Inf gradients by 0 before clipping, instead of skipping the step.
    keys_to_select: train only the parameters whose name contains one of these substrings (the reference's
        `optimizer.keys_to_select`; empty: every parameter); the others are frozen before DDP and the optimizer.
    lr_multipliers: {substring: factor}: a parameter whose name contains the substring trains at the scheduled lr
        times the factor (several matching: their product); the reference's `optimizer.lr_multipliers`.
    """

    lr: float = 1e-4
    min_lr: float = 0.0
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    clip_grad: float = 1.0
    schedule: str = "cosine"
    warmup_steps: int = 0
    decay_steps: Optional[int] = None
    cycle_length: int = 100_000
    f_start: float = 1e-6
    f_max: float = 1.0
    f_min: float = 1.0
    zero_nonfinite_grads: bool = False
    lambda_linear: Optional[LambdaLinearConfig] = None
    keys_to_select: list[str] = field(default_factory=list)
    lr_multipliers: dict[str, float] = field(default_factory=dict)


@dataclass
class TrainerConfig:
    """The loop: how long, how precise, what loss, how often to validate and log.

    precision: "fp32" or "bf16" (bf16 parameters and compute, fp32 main weights in the optimizer).
    z_loss: weight of the z-loss `mean(logsumexp(logits)^2)` (native cosmos-predict1: 1e-4; NeMo: 0).
    max_epochs: stop after this many passes over the training split (None: only max_steps counts).
    ema_decay: keep an exponential moving average of the weights with this decay (None: no EMA); it is
        saved with each checkpoint under `ema/`.
    ema_sigma_rel: instead, the EDM2 power EMA of the Cosmos diffusion references with this relative width
        (0.1 there); its weight grows with the step, counted from the start of this run (post-training
        restarts it). Also saved under `ema/`.
    cpu_accelerations: on a machine without CUDA, use the CPU adapter's speed-ups (parallel/cpu_adapter.py,
        `ACCELERATIONS`; each computes what megatron's own path computes). False runs megatron's plain
        path, as on a GPU. The environment variable COSMOS_NEMO_CPU_ACCELERATIONS=0/1 overrides it.
    """

    max_steps: int = 300
    max_epochs: Optional[int] = None
    precision: str = "fp32"
    seed: int = 1234
    z_loss: float = 0.0
    val_interval: int = 100
    val_batches: int = 4
    log_interval: int = 1
    ema_decay: Optional[float] = None
    ema_sigma_rel: Optional[float] = None
    cpu_accelerations: bool = True


@dataclass
class CheckpointConfig:
    """The run folder `<output_root>/<project>/<group>/<name>/` and what goes into it.

    mode: "finetune" starts from `pretrained` (a dist-ckpt `model/` folder, a run folder, or a released
        Cosmos checkpoint `.pt`/`.safetensors`); "pretrain" starts from random weights.
    resume: continue from the run folder's latest complete checkpoint when there is one.
    keep_last: keep this many newest complete checkpoints (0 keeps all).
    """

    output_root: str = "runs"
    project: str = "cosmos_nemo"
    group: str = "default"
    name: str = "run"
    save_interval: int = 100
    keep_last: int = 2
    resume: bool = True
    mode: str = "pretrain"
    pretrained: Optional[str] = None


@dataclass
class ParallelConfig:
    """Model-parallel sizes; data parallel is the world size divided by TP x PP x CP."""

    tensor: int = 1
    pipeline: int = 1
    context: int = 1


@dataclass
class LogConfig:
    """Where progress goes: the console bar always; TensorBoard when `tensorboard`; W&B when
    `wandb_mode` is "online" or "offline" ("offline" writes to the run folder without a network)."""

    tensorboard: bool = True
    wandb_mode: str = "disabled"
    wandb_project: Optional[str] = None
    progress_bar: bool = True
