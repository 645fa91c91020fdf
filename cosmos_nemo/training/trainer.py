"""The train loop, for every model family: read top to bottom.

    train(model, data, optim, trainer, checkpoint, parallel, log, peft)
      1. set up TP/PP/DP;  2. the family opens its data and checks it fits the model (before any model is
      built);  3. build the family's model chunk and fill it with the pretrained weights (finetune), then
      with `peft`, freeze it and add LoRA adapters; wrap it in DDP and build the optimizer (over the
      trainable parameters only);  4. resume from the run folder;  5. loop: lr -> one global batch through
      megatron's schedule -> log -> validate -> save.

The pretrained weights are loaded before the optimizer exists, so its fp32 main copies (bf16 runs) start
from them. A LoRA run's checkpoints hold its adapters (and their optimizer state and EMA) only; the base
comes from `checkpoint.pretrained` again on resume, and must load completely.

`model` is a family's model config; its `family` field names the provider (models/family.py) that builds
the model, the step function and the data. Nothing here knows which family it trains.
"""

from __future__ import annotations

import platform
import socket
import sys
import time
from typing import Optional

import torch

from cosmos_nemo import parallel as parallel_mod
from cosmos_nemo.checkpoint import run as run_folder
from cosmos_nemo.checkpoint.ema import EMA
from cosmos_nemo.models.family import family_of
from cosmos_nemo.parallel import cpu_adapter
from cosmos_nemo.peft.lora import LoRAConfig, apply_lora
from cosmos_nemo.training import harness
from cosmos_nemo.training.config import (CheckpointConfig, LogConfig, OptimizerConfig, ParallelConfig,
                                         TrainerConfig)
from cosmos_nemo.training.logger import RunLogger
from cosmos_nemo.training.schedules import check_lambda_linear, lr_at

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}



def apply_schedule(optimizer, lr: float, weight_decay: float) -> None:
    """Set each parameter group's learning rate and weight decay for the next step, as megatron's
    `OptimizerParamScheduler` does (this trainer schedules the lr itself): `lr_mult` comes from
    `optim.lr_multipliers`, `wd_mult` from megatron's standard groups (0 for biases and 1-D parameters such as
    norm weights, 1 otherwise)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)
        group["weight_decay"] = weight_decay * group.get("wd_mult", 1.0)

def train(
    model,
    data,
    optim: OptimizerConfig = OptimizerConfig(),
    trainer: TrainerConfig = TrainerConfig(),
    checkpoint: CheckpointConfig = CheckpointConfig(),
    parallel: ParallelConfig = ParallelConfig(),
    log: LogConfig = LogConfig(),
    peft: Optional[LoRAConfig] = None,
) -> dict:
    """Train (or fine-tune) a model of any family; returns {"run_dir", "step", "train_loss", "val_loss", ...}.
    With `peft` (a `LoRAConfig`), only LoRA adapters on the pretrained base are trained."""
    _check_configs(trainer, checkpoint, peft)
    if optim.schedule == "lambda_linear":
        check_lambda_linear(optim.lambda_linear, trainer.max_steps)
    family = family_of(model)
    cpu_adapter.configure_accelerations(trainer.cpu_accelerations)
    state = parallel_mod.setup(parallel.tensor, parallel.pipeline, parallel.context, seed=trainer.seed)
    folder = run_folder.run_dir(checkpoint.output_root, checkpoint.project, checkpoint.group, checkpoint.name)
    ckpt_dir = folder / "checkpoints"

    # 2. Data first: every data/model mismatch is reported before a model is built.
    loaders = family.build_data(model, data, state.dp_rank, state.data_parallel)
    train_data, valid_data, notes = loaders.train, loaders.valid, list(loaders.notes)

    # 3. Model (pretrained weights, LoRA adapters), DDP, optimizer.
    dtype = PRECISIONS[trainer.precision]
    latest = run_folder.latest_checkpoint(ckpt_dir) if checkpoint.resume else None

    def provide(pre: bool, post: bool):
        chunk = family.build_model(model, pre, post, dtype)
        if checkpoint.mode == "finetune" and (latest is None or peft is not None):
            notes.append(run_folder.load_pretrained([chunk], family, model, checkpoint.pretrained))
        if peft is not None:
            report = apply_lora(chunk, peft, seed=trainer.seed)
            chunk.lora_info = _lora_info(family, model, peft, report, checkpoint.pretrained)
            notes.append(report.summary())
        if optim.keys_to_select:
            notes.append(select_trainable(chunk, optim.keys_to_select, every_key_matches=parallel.pipeline == 1))
        return chunk

    chunks = harness.wrap_model(provide)
    optimizer = harness.build_optimizer(chunks, optim, bf16=dtype == torch.bfloat16)

    # 4. Resume from the last complete checkpoint.
    step, consumed = 0, 0
    ema = None
    if latest is not None:
        ema = _make_ema(chunks, trainer)
        restored = run_folder.load_checkpoint(latest, chunks, optimizer, ema=ema)
        step, consumed = restored["trainer"]["step"], restored["trainer"]["consumed_samples"]
        train_data.load_state_dict(restored["dataloader"])
        notes.append(f"resumed from {latest} at step {step}")
    if ema is None:
        ema = _make_ema(chunks, trainer)  # starts from the initial (or pretrained) weights

    logger = RunLogger(folder, log, enabled=state.rank == 0, total=trainer.max_steps, initial=step)
    if state.rank == 0:
        run_folder.write_run_files(
            folder, dict(model=model, data=data, optim=optim, trainer=trainer, checkpoint=checkpoint,
                         parallel=parallel, log=log, peft=peft), _launch_info(state))
    for note in notes:
        logger.note(note)

    step_fn = family.forward_step(model, trainer)
    keys = tuple(family.metric_keys)
    flops_per_token = family.flops_per_token(model)
    val_first = None
    if valid_data is not None and step == 0:
        val_first = validate(step_fn, valid_data, chunks, trainer, data, keys)
        logger.scalars(step, {f"val/{k}": v for k, v in val_first.items()})
    val_loss = val_first["loss"] if val_first else None
    out, history = {}, []

    # 5. The loop.
    while step < trainer.max_steps and not _epochs_done(train_data, trainer):
        lr = lr_at(step, optim, trainer.max_steps)
        apply_schedule(optimizer, lr, optim.weight_decay)
        seq_length = train_data.seq_length()
        tokens = data.global_batch_size * seq_length
        start = time.perf_counter()
        out = harness.train_step(step_fn, train_data, chunks, optimizer, train_data.num_micro_batches, seq_length,
                                 data.micro_batch_size, metric_keys=keys,
                                 pre_step=_zero_nonfinite if optim.zero_nonfinite_grads else None)
        if ema is not None:
            ema.update(step)
        elapsed = time.perf_counter() - start
        step += 1
        consumed += data.global_batch_size
        history.append(out["loss"])
        if step % trainer.log_interval == 0 or step == trainer.max_steps:
            logger.step(step, {"loss": out["loss"], "lr": lr, "grad_norm": out["grad_norm"],
                               "tokens_per_s": tokens / elapsed, "flops_per_s": flops_per_token * tokens / elapsed,
                               **{k: out[k] for k in keys if k != "loss"}, "memory_gb": _memory_gb()})
        if valid_data is not None and trainer.val_interval and step % trainer.val_interval == 0:
            val = validate(step_fn, valid_data, chunks, trainer, data, keys)
            val_loss = val["loss"]
            logger.scalars(step, {f"val/{k}": v for k, v in val.items()})
        if (checkpoint.save_interval and step % checkpoint.save_interval == 0) or step == trainer.max_steps:
            _save(ckpt_dir, step, consumed, chunks, optimizer, train_data, lr, checkpoint, ema)
    if step and not (ckpt_dir / run_folder.iter_name(step)).is_dir():
        _save(ckpt_dir, step, consumed, chunks, optimizer, train_data, lr_at(step - 1, optim, trainer.max_steps),
              checkpoint, ema)
    logger.close()
    summary = {"run_dir": str(folder), "step": step, "train_loss": out.get("loss"), "val_loss": val_loss,
               "val_loss_first": val_first["loss"] if val_first else None,
               "checkpoint": str(ckpt_dir / run_folder.iter_name(step)) if step else None,
               "losses": history}
    if state.rank == 0:
        print(f"run folder: {folder}", flush=True)
    parallel_mod.teardown()
    return summary


def validate(step_fn, valid_data, chunks, trainer: TrainerConfig, data, keys=("loss",)) -> dict:
    """Mean of each metric over `trainer.val_batches` global batches of the validation split."""
    totals = dict.fromkeys(keys, 0.0)
    batches = max(1, trainer.val_batches)
    for _ in range(batches):
        out = harness.eval_step(step_fn, valid_data, chunks, valid_data.num_micro_batches, valid_data.seq_length(),
                                data.micro_batch_size, metric_keys=keys)
        for key in totals:
            totals[key] += out[key] / batches
    return totals


def select_trainable(chunk, keys, every_key_matches: bool = True) -> str:
    """Freeze every parameter of `chunk` whose name contains none of `keys` (the reference's
    `optimizer.keys_to_select`); returns a note for the run log. A key that matches no parameter (with
    `every_key_matches`) or a selection that leaves nothing to train is an error."""
    keys = list(keys)
    names = [name for name, _ in chunk.named_parameters()]
    unmatched = [k for k in keys if not any(k in name for name in names)]
    if unmatched and every_key_matches:
        import difflib

        parts = sorted({part for name in names for part in name.split(".")})
        hints = {k: difflib.get_close_matches(k.strip("."), parts, n=1, cutoff=0.5) for k in unmatched}
        shown = ", ".join(f"{k!r}" + (f" (closest name part: {hints[k][0]!r})" if hints[k] else "") for k in unmatched)
        raise ValueError(f"optim.keys_to_select: {shown} match no parameter name of the model "
                         f"(e.g. {names[0]!r}, {names[-1]!r})")
    kept, total = 0, 0
    for name, p in chunk.named_parameters():
        if not any(k in name for k in keys):
            p.requires_grad_(False)
        elif p.requires_grad:
            kept += p.numel()
        total += p.numel()
    if kept == 0:
        raise ValueError(f"optim.keys_to_select={keys} leaves no trainable parameter")
    return f"keys_to_select {keys}: training {kept:,} of {total:,} parameters, the rest frozen"


def _make_ema(chunks, trainer: TrainerConfig):
    if trainer.ema_decay is None and trainer.ema_sigma_rel is None:
        return None
    return EMA(chunks, decay=trainer.ema_decay, sigma_rel=trainer.ema_sigma_rel)


def _lora_info(family, model, peft: LoRAConfig, report, pretrained: str) -> dict:
    """What a LoRA run's adapter checkpoints record (checkpoint/dist.py `lora.json`)."""
    import dataclasses
    import os

    return {"family": family.name, "model": run_folder.plain_data(dataclasses.asdict(model)),
            "base": os.path.abspath(pretrained), "config": dataclasses.asdict(peft), "adapter": report.describe()}


def _check_configs(trainer: TrainerConfig, checkpoint: CheckpointConfig, peft=None) -> None:
    if peft is not None:
        peft.validate()
        if checkpoint.mode != "finetune" or not checkpoint.pretrained:
            raise ValueError("LoRA (peft) trains adapters on a pretrained base model: set checkpoint.mode=finetune and "
                             "checkpoint.pretrained (a released checkpoint, a dist-ckpt folder or a run folder); a "
                             "LoRA run never starts from random weights")
    if trainer.ema_decay is not None and trainer.ema_sigma_rel is not None:
        raise ValueError("set trainer.ema_decay (constant EMA) or trainer.ema_sigma_rel (power EMA), not both")
    if trainer.precision not in PRECISIONS:
        raise ValueError(f"trainer.precision must be one of {sorted(PRECISIONS)}, got {trainer.precision!r}")
    if checkpoint.mode not in ("pretrain", "finetune"):
        raise ValueError(f"checkpoint.mode must be 'pretrain' or 'finetune', got {checkpoint.mode!r}")
    if checkpoint.mode == "finetune" and not checkpoint.pretrained:
        raise ValueError("checkpoint.mode='finetune' needs checkpoint.pretrained (a released checkpoint file, a "
                         "dist-ckpt folder or a run folder)")


def _launch_info(state) -> dict:
    return {"command": sys.argv, "host": socket.gethostname(), "python": platform.python_version(),
            "torch": str(torch.__version__), "world_size": state.world_size, "tensor_parallel": state.tensor_parallel,
            "pipeline_parallel": state.pipeline_parallel, "data_parallel": state.data_parallel,
            "device": str(state.device), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def _save(ckpt_dir, step, consumed, chunks, optimizer, train_data, lr, checkpoint: CheckpointConfig, ema=None) -> None:
    run_folder.save_checkpoint(
        ckpt_dir, step, chunks, optimizer, scheduler_state={"step": step, "lr": lr},
        trainer_state={"step": step, "consumed_samples": consumed}, dataloader_state=train_data.state_dict(),
        keep_last=checkpoint.keep_last, ema=ema,
    )


def _memory_gb() -> float:
    """Peak GPU memory of this rank, or the process's resident memory on the CPU."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    import psutil

    return psutil.Process().memory_info().rss / 2**30


def _epochs_done(train_data, trainer: TrainerConfig) -> bool:
    return trainer.max_epochs is not None and train_data.state_dict().get("epoch", 0) >= trainer.max_epochs


def _zero_nonfinite(chunks) -> None:
    for chunk in chunks:
        for p in chunk.parameters():
            grad = getattr(p, "main_grad", None)
            if grad is not None:
                torch.nan_to_num_(grad, nan=0.0, posinf=0.0, neginf=0.0)
