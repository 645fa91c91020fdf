"""The megatron-core training harness: model wrapping, optimizer, one train step.

These few functions are all the trainer needs from megatron-core, and they run the same code on a
2-core CPU (gloo, with `parallel.cpu_adapter` installed) as on GPUs (NCCL):

- `wrap_model`: build the model chunk for this pipeline stage and wrap it in megatron
  `DistributedDataParallel` (gradient buckets reduced over the data-parallel group).
- `build_optimizer`: megatron's optimizer (`get_megatron_optimizer`, AdamW with decoupled weight decay,
  gradient clipping by the global norm across TP/PP/DP).
- `train_step` / `eval_step`: one global batch through megatron's `get_forward_backward_func` (no
  pipelining, or the 1F1B pipeline schedule when PP > 1), gradient accumulation over micro-batches,
  then one optimizer step. The model-specific part is the `forward_step` function the caller passes.
  With the CPU adapter's `fused_adamw` acceleration, `optimizer_step` folds the clipping into torch's
  fused AdamW (one pass over the gradients less).

Checkpoint I/O (megatron dist-ckpt) lives in the checkpoint room (`checkpoint/dist.py`).
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.pipeline_parallel import get_forward_backward_func

from cosmos_nemo.models.family import ForwardStep
from cosmos_nemo.parallel import cpu_adapter
from cosmos_nemo.training.config import OptimizerConfig as TrainOptimizerConfig


def wrap_model(model_provider: Callable[[bool, bool], torch.nn.Module], overlap_grad_reduce: bool = False):
    """Build this rank's model chunk with `model_provider(pre_process, post_process)` and wrap it in DDP.

    Returns a one-element list (megatron's schedules take a list of chunks).
    """
    pre = parallel_state.is_pipeline_first_stage()
    post = parallel_state.is_pipeline_last_stage()
    model = cpu_adapter.accelerate_model(model_provider(pre, post))
    if torch.cuda.is_available():
        model.cuda(torch.cuda.current_device())
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        overlap_grad_reduce=overlap_grad_reduce,
        use_distributed_optimizer=False,
        check_for_nan_in_grad=False,
    )
    ddp = DistributedDataParallel(model.config, ddp_config, model)
    # The schedules call these hooks: finalize_model_grads finishes DDP's gradient all-reduce over DP and
    # all-reduces the gradients of TP-replicated parameters that see different heads on each rank
    # (QK-layernorm weights), and no_sync defers DP reduction to the last micro-batch.
    model.config.finalize_model_grads_func = finalize_model_grads
    model.config.no_sync_func = ddp.no_sync
    return [ddp]


def build_optimizer(model_chunks, cfg: TrainOptimizerConfig, bf16: bool = False):
    """megatron's AdamW over the chunks' trainable parameters; the learning rate is set per step by the caller.

    With `bf16`, megatron's mixed-precision optimizer (fp32 main copies) is used when some trainable parameter
    is bf16; when every trainable parameter is already fp32 (LoRA adapters on a frozen bf16 base) the plain fp32
    optimizer is (megatron's mixed-precision one cannot checkpoint fp32 parameters it holds beside bf16 ones)."""
    bf16 = bf16 and any(p.requires_grad and p.dtype in (torch.bfloat16, torch.float16)
                        for chunk in model_chunks for p in chunk.parameters())
    config = OptimizerConfig(
        optimizer="adam",
        lr=cfg.lr,
        min_lr=cfg.min_lr,
        weight_decay=cfg.weight_decay,
        adam_beta1=cfg.beta1,
        adam_beta2=cfg.beta2,
        adam_eps=cfg.eps,
        clip_grad=cfg.clip_grad,
        # bf16 parameters get fp32 main copies inside the optimizer (on the CPU too, see cpu_adapter).
        bf16=bf16,
        params_dtype=torch.bfloat16 if bf16 else torch.float32,
        use_distributed_optimizer=False,
    )
    overrides = _lr_multiplier_overrides(model_chunks, config, dict(getattr(cfg, "lr_multipliers", None) or {}))
    optimizer = get_megatron_optimizer(config, model_chunks, config_overrides=overrides) if overrides \
        else get_megatron_optimizer(config, model_chunks)
    _prefer_fused_adamw(optimizer)
    return optimizer


def lr_multiplier_of(name: str, multipliers: dict) -> float:
    """The learning-rate multiplier of parameter `name`: the product of the multipliers of every substring it
    contains (the reference's `optimizer.lr_multipliers`), 1 when none."""
    factor = 1.0
    for key, value in multipliers.items():
        if key in name:
            factor *= float(value)
    return factor


def _lr_multiplier_overrides(model_chunks, config, multipliers: dict):
    """megatron param-group overrides giving each parameter its `lr_mult` (the trainer sets a group's lr to the
    scheduled lr times it), on top of megatron's standard ones; None without multipliers."""
    if not multipliers:
        return None
    from megatron.core.optimizer import get_standard_config_overrides
    from megatron.core.optimizer.optimizer_config import ParamKey, ParamWithNamePredicate

    names = [name for chunk in model_chunks for name, p in chunk.named_parameters() if p.requires_grad]
    unmatched = [k for k in multipliers if not any(k in name for name in names)]
    if unmatched:
        raise ValueError(f"optim.lr_multipliers: {unmatched} match no trainable parameter name (e.g. {names[0]!r})")
    overrides = dict(get_standard_config_overrides(config))
    for factor in sorted({lr_multiplier_of(n, multipliers) for n in names} - {1.0}):
        predicate = ParamWithNamePredicate(name=f"lr_mult={factor!r}",
                                           fn=lambda p, n, f=factor: lr_multiplier_of(n, multipliers) == f)
        overrides[ParamKey(with_name_predicate=predicate)] = {"lr_mult": factor}
    return overrides


def _prefer_fused_adamw(optimizer) -> None:
    """Without Transformer Engine or Apex, megatron falls back to `torch.optim.AdamW` with its defaults,
    which on a CPU is the per-parameter loop (no foreach, no fused kernel). torch's fused AdamW computes the
    same update in one kernel over all parameters; with the CPU adapter's `fused_adamw` acceleration it is
    turned on where every parameter is a float tensor it supports. TE/Apex optimizers are left alone."""
    if not cpu_adapter.acceleration("fused_adamw"):
        return
    for inner in getattr(optimizer, "chained_optimizers", [optimizer]):
        torch_opt = getattr(inner, "optimizer", None)
        if type(torch_opt) is not torch.optim.AdamW:
            continue
        params = [p for group in torch_opt.param_groups for p in group["params"]]
        if all(p.dtype in (torch.float32, torch.bfloat16, torch.float16) for p in params) and \
                len({p.device.type for p in params}) <= 1:
            for group in torch_opt.param_groups:
                group["fused"], group["foreach"] = True, False
            torch_opt.defaults["fused"], torch_opt.defaults["foreach"] = True, False


def _fused_torch_adamws(optimizer) -> list | None:
    """The torch optimizers inside megatron's `optimizer` when every one is torch's fused AdamW under a
    megatron FP32/mixed-precision optimizer clipping by the global norm; otherwise None."""
    inner = getattr(optimizer, "chained_optimizers", [optimizer])
    torch_opts = []
    for opt in inner:
        torch_opt = getattr(opt, "optimizer", None)
        if getattr(opt, "is_stub_optimizer", False) or type(torch_opt) is not torch.optim.AdamW:
            return None
        if not all(group.get("fused") for group in torch_opt.param_groups):
            return None
        if opt.config.clip_grad <= 0 or opt.config.use_precision_aware_optimizer_no_fp8_or_ds_fp8:
            return None
        torch_opts.append(torch_opt)
    if len({opt.config.clip_grad for opt in inner}) != 1:
        return None
    return torch_opts


def optimizer_step(optimizer) -> tuple[bool, float | None, float | None]:
    """megatron's `optimizer.step()`; with the CPU adapter's `fused_adamw` acceleration, the clipping is
    folded into torch's fused AdamW.

    megatron computes the global gradient norm, scales every gradient in place by
    `clip_grad / (norm + 1e-6)` when that is below 1 (a pass over all gradients), then steps AdamW. torch's
    fused AdamW takes a `grad_scale` that divides each gradient as the kernel reads it (and stores the
    result, so the gradients afterwards are the clipped ones, as in megatron): the same update with one pass
    less. Anything else (TE/Apex optimizers, no clipping, decoupled gradients) takes megatron's step.
    Returns (updated, grad_norm, num_zeros_in_grad) like megatron's."""
    torch_opts = _fused_torch_adamws(optimizer) if cpu_adapter.acceleration("fused_adamw") else None
    if torch_opts is None:
        return optimizer.step()
    config = getattr(optimizer, "chained_optimizers", [optimizer])[0].config
    if optimizer.prepare_grads():  # inf/nan found (fp16 loss scaling)
        return False, None, None
    grad_norm = optimizer.get_grad_norm()
    clip_coeff = config.clip_grad / (grad_norm + 1.0e-6)
    num_zeros = optimizer.count_zeros() if config.log_num_zeros_in_grad else None
    scale = None
    if clip_coeff < 1.0:  # an infinite norm gives 0: megatron multiplies by 0, here each gradient / inf
        scale = torch.tensor(1.0 / clip_coeff if clip_coeff > 0 else float("inf"), dtype=torch.float32)
    try:
        for torch_opt in torch_opts:
            torch_opt.grad_scale = scale  # torch moves it to each parameter device
        updated = optimizer.step_with_ready_grads()
    finally:
        for torch_opt in torch_opts:
            torch_opt.grad_scale = None
    return updated, grad_norm, num_zeros


def _schedule(forward_step, data_iterator, model_chunks, num_microbatches, seq_length, micro_batch_size, forward_only):
    """megatron's schedule for this layout: no pipelining, or 1F1B over the pipeline stages."""
    return get_forward_backward_func()(
        forward_step_func=forward_step, data_iterator=data_iterator, model=model_chunks,
        num_microbatches=num_microbatches, seq_length=seq_length, micro_batch_size=micro_batch_size,
        forward_only=forward_only,
    )


def _reduce_losses(losses: list[dict], key: str = "loss") -> float | None:
    """Mean of a metric over micro-batches and data-parallel ranks, known on every rank."""
    value = torch.zeros(2, dtype=torch.float64)
    if parallel_state.is_pipeline_last_stage() and losses:
        value[0] = sum(float(m[key]) for m in losses)
        value[1] = len(losses)
    # Sum over the DP group, then share the last stage's value with the whole pipeline.
    dist.all_reduce(value, group=parallel_state.get_data_parallel_group())
    if parallel_state.get_pipeline_model_parallel_world_size() > 1:
        dist.all_reduce(value, group=parallel_state.get_pipeline_model_parallel_group())
    return float(value[0] / value[1]) if value[1] > 0 else None


def train_step(
    forward_step: ForwardStep,
    data_iterator: Iterator,
    model_chunks,
    optimizer,
    num_microbatches: int,
    seq_length: int,
    micro_batch_size: int,
    metric_keys: tuple[str, ...] = ("loss",),
    pre_step: Callable | None = None,
) -> dict:
    """One optimizer step over `num_microbatches` micro-batches on this data-parallel rank.

    Returns `grad_norm`, `skipped` and the mean over micro-batches and DP ranks of each metric in
    `metric_keys` (from the metrics dicts the forward step's loss function returns), on every rank.
    `pre_step(model_chunks)`, if given, runs on the reduced gradients just before the optimizer step.
    """
    for chunk in model_chunks:
        chunk.zero_grad_buffer()
    optimizer.zero_grad()
    metrics = _schedule(forward_step, data_iterator, model_chunks, num_microbatches, seq_length, micro_batch_size, False)
    if pre_step is not None:
        pre_step(model_chunks)
    updated, grad_norm, _ = optimizer_step(optimizer)
    out = {"grad_norm": grad_norm, "skipped": not updated}
    out.update({key: _reduce_losses(metrics, key) for key in metric_keys})
    return out


@torch.no_grad()
def eval_step(
    forward_step: ForwardStep,
    data_iterator,
    model_chunks,
    num_microbatches: int,
    seq_length: int,
    micro_batch_size: int,
    metric_keys: tuple[str, ...] = ("loss",),
) -> dict:
    """Forward-only pass over `num_microbatches` micro-batches; returns the mean of every metric."""
    for chunk in model_chunks:
        chunk.eval()
    metrics = _schedule(forward_step, data_iterator, model_chunks, num_microbatches, seq_length, micro_batch_size, True)
    for chunk in model_chunks:
        chunk.train()
    return {key: _reduce_losses(metrics, key) for key in metric_keys}
