"""The train loop: read top to bottom.

    train(model, data, optim, trainer, checkpoint, parallel, log)
      1. set up TP/PP/DP;  2. open the data and check it fits the model (before any model is built);
      3. build the model, DDP and optimizer;  4. resume from the run folder, or start from pretrained
      weights;  5. loop: lr -> one global batch through megatron's schedule -> log -> validate -> save.

The model-specific part is the step function (`models.ar.step.ARStep` for the AR family); everything
else is shared by every model family.
"""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import socket
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import yaml

from cosmos_nemo import parallel as parallel_mod
from cosmos_nemo.data import ARDataConfig, build_ar_dataloaders, validate_for_model
from cosmos_nemo.data.loader import resolve_dataset_paths
from cosmos_nemo.models.ar.config import ARModelConfig
from cosmos_nemo.models.ar.model import build_ar_model
from cosmos_nemo.models.ar.step import ARStep
from cosmos_nemo.training import checkpointing, harness
from cosmos_nemo.training.ema import EMA
from cosmos_nemo.training.config import (CheckpointConfig, LogConfig, OptimizerConfig, ParallelConfig,
                                         TrainerConfig)
from cosmos_nemo.training.logger import RunLogger
from cosmos_nemo.training.schedules import lr_at

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}


def train(
    model: ARModelConfig,
    data: ARDataConfig,
    optim: OptimizerConfig = OptimizerConfig(),
    trainer: TrainerConfig = TrainerConfig(),
    checkpoint: CheckpointConfig = CheckpointConfig(),
    parallel: ParallelConfig = ParallelConfig(),
    log: LogConfig = LogConfig(),
) -> dict:
    """Train (or fine-tune) an AR model; returns {"run_dir", "step", "train_loss", "val_loss", ...}."""
    if trainer.precision not in PRECISIONS:
        raise ValueError(f"trainer.precision must be one of {sorted(PRECISIONS)}, got {trainer.precision!r}")
    if checkpoint.mode not in ("pretrain", "finetune"):
        raise ValueError(f"checkpoint.mode must be 'pretrain' or 'finetune', got {checkpoint.mode!r}")
    if checkpoint.mode == "finetune" and not checkpoint.pretrained:
        raise ValueError("checkpoint.mode='finetune' needs checkpoint.pretrained (a Cosmos .pt, a dist-ckpt folder or a run folder)")
    state = parallel_mod.setup(parallel.tensor, parallel.pipeline, parallel.context, seed=trainer.seed)
    run_dir = checkpointing.run_dir(checkpoint.output_root, checkpoint.project, checkpoint.group, checkpoint.name)
    ckpt_dir = run_dir / "checkpoints"

    # 2. Data first: every data/model mismatch is reported before a model is built.
    train_data, valid_data, _ = build_ar_dataloaders(data, state.dp_rank, state.data_parallel)
    notes = validate_for_model(
        [str(p) for p in resolve_dataset_paths(data.paths)],
        model.output_vocab_size or model.vocab_size,
        max_seq_length=model.seq_length,
        split_string=data.split_string,
        model_task="video2world" if model.video2world else "base",
        model_embedding_rows=model.vocab_size,
    )

    # 3. Model, DDP, optimizer.
    dtype = PRECISIONS[trainer.precision]
    chunks = harness.wrap_model(lambda pre, post: build_ar_model(model, pre, post, dtype=dtype))
    optimizer = harness.build_optimizer(chunks, optim, bf16=dtype == torch.bfloat16)

    # 4. Resume from the last complete checkpoint, else start from pretrained weights (finetune).
    step, consumed = 0, 0
    latest = checkpointing.latest_checkpoint(ckpt_dir) if checkpoint.resume else None
    ema = None
    if latest is not None:
        ema = EMA(chunks, trainer.ema_decay) if trainer.ema_decay else None
        restored = checkpointing.load_checkpoint(latest, chunks, optimizer, ema=ema)
        step, consumed = restored["trainer"]["step"], restored["trainer"]["consumed_samples"]
        train_data.load_state_dict(restored["dataloader"])
        notes.append(f"resumed from {latest} at step {step}")
    elif checkpoint.mode == "finetune":
        notes.append(load_pretrained(chunks, model, checkpoint.pretrained))
    if trainer.ema_decay and ema is None:
        ema = EMA(chunks, trainer.ema_decay)  # starts from the initial (or pretrained) weights

    logger = RunLogger(run_dir, log, enabled=state.rank == 0, total=trainer.max_steps, initial=step)
    if state.rank == 0:
        write_run_files(run_dir, dict(model=model, data=data, optim=optim, trainer=trainer, checkpoint=checkpoint,
                                      parallel=parallel, log=log), state)
    for note in notes:
        logger.note(note)

    step_fn = ARStep(z_loss=trainer.z_loss, device=state.device)
    flops_per_token = _flops_per_token(chunks, model)
    val_first = validate(step_fn, valid_data, chunks, trainer, data) if valid_data is not None and step == 0 else None
    val_loss = val_first["loss"] if val_first else None
    if val_first:
        logger.scalars(step, {"val/loss": val_first["loss"], "val/accuracy": val_first["accuracy"]})
    out, history = {}, []

    # 5. The loop.
    while step < trainer.max_steps and not _epochs_done(train_data, trainer):
        lr = lr_at(step, optim, trainer.max_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        seq_length = train_data.seq_length()
        tokens = data.global_batch_size * seq_length
        start = time.perf_counter()
        out = harness.train_step(step_fn, train_data, chunks, optimizer, train_data.num_micro_batches, seq_length,
                                 data.micro_batch_size, metric_keys=("loss", "accuracy"),
                                 pre_step=_zero_nonfinite if optim.zero_nonfinite_grads else None)
        if ema is not None:
            ema.update()
        elapsed = time.perf_counter() - start
        step += 1
        consumed += data.global_batch_size
        history.append(out["loss"])
        if step % trainer.log_interval == 0 or step == trainer.max_steps:
            logger.step(step, {"loss": out["loss"], "lr": lr, "grad_norm": out["grad_norm"],
                               "tokens_per_s": tokens / elapsed, "flops_per_s": flops_per_token * tokens / elapsed,
                               "accuracy": out["accuracy"], "memory_gb": _memory_gb()})
        if valid_data is not None and trainer.val_interval and step % trainer.val_interval == 0:
            val = validate(step_fn, valid_data, chunks, trainer, data)
            val_loss = val["loss"]
            logger.scalars(step, {"val/loss": val["loss"], "val/accuracy": val["accuracy"]})
        if (checkpoint.save_interval and step % checkpoint.save_interval == 0) or step == trainer.max_steps:
            _save(ckpt_dir, step, consumed, chunks, optimizer, train_data, lr, checkpoint, ema)
    if step and not (ckpt_dir / checkpointing.iter_name(step)).is_dir():
        _save(ckpt_dir, step, consumed, chunks, optimizer, train_data, lr_at(step - 1, optim, trainer.max_steps), checkpoint, ema)
    logger.close()
    summary = {"run_dir": str(run_dir), "step": step, "train_loss": out.get("loss"), "val_loss": val_loss,
               "val_loss_first": val_first["loss"] if val_first else None,
               "checkpoint": str(ckpt_dir / checkpointing.iter_name(step)) if step else None,
               "losses": history}
    if state.rank == 0:
        print(f"run folder: {run_dir}", flush=True)
    parallel_mod.teardown()
    return summary


def validate(step_fn, valid_data, chunks, trainer: TrainerConfig, data: ARDataConfig) -> dict:
    """Mean validation loss and teacher-forcing accuracy over `trainer.val_batches` global batches."""
    totals = {"loss": 0.0, "accuracy": 0.0}
    for _ in range(max(1, trainer.val_batches)):
        out = harness.eval_step(step_fn, valid_data, chunks, valid_data.num_micro_batches, valid_data.seq_length(),
                                data.micro_batch_size, metric_keys=("loss", "accuracy"))
        for key in totals:
            totals[key] += out[key] / max(1, trainer.val_batches)
    return totals


def load_pretrained(chunks, model_cfg: ARModelConfig, source: str) -> str:
    """Fill the model from a dist-ckpt `model/` folder, a run folder, or a released Cosmos checkpoint."""
    path = Path(source)
    if path.is_dir() and (path / "checkpoints").is_dir():
        latest = checkpointing.latest_checkpoint(path / "checkpoints")
        if latest is None:
            raise FileNotFoundError(f"run folder {path} has no complete checkpoint under checkpoints/")
        path = latest / "model"
    elif path.is_dir() and (path / "model" / ".metadata").is_file():
        path = path / "model"
    if path.is_dir() and (path / ".metadata").is_file():
        if model_cfg.resize_vocab:
            raise ValueError(
                f"model.resize_vocab=true resizes a released Cosmos checkpoint's rows, but {path} is a dist-ckpt; "
                "export it first (cosmos-nemo convert ar-export) and pass the exported model.pt as checkpoint.pretrained"
            )
        harness.load_model(chunks, str(path))
        return f"initialised from dist-ckpt {path}"
    if path.is_file():
        from cosmos_nemo.checkpoint.cosmos_ar import load_cosmos_checkpoint

        report = load_cosmos_checkpoint(chunks[0].module, path, resize_vocab=model_cfg.resize_vocab)
        resized = f" ({report['resized']})" if isinstance(report, dict) and report.get("resized") else ""
        return f"initialised from Cosmos checkpoint {path}{resized}"
    raise FileNotFoundError(
        f"pretrained weights {source!r} not found: pass a Cosmos model.pt/.safetensors file, a dist-ckpt model/ "
        "folder, or a run folder with checkpoints/"
    )


def write_run_files(run_dir: Path, configs: dict, state) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    as_data = {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for k, v in configs.items()}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(_plain(as_data), sort_keys=False))
    launch = {"command": sys.argv, "host": socket.gethostname(), "python": platform.python_version(),
              "torch": str(torch.__version__), "world_size": state.world_size, "tensor_parallel": state.tensor_parallel,
              "pipeline_parallel": state.pipeline_parallel, "data_parallel": state.data_parallel,
              "device": str(state.device), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    (run_dir / "launch_info.yaml").write_text(yaml.safe_dump(_plain(launch), sort_keys=False))
    keep = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES")
    env = {k: v for k, v in sorted(os.environ.items()) if k in keep or k.startswith(("SLURM_", "TORCHELASTIC_"))}
    (run_dir / "job_env.yaml").write_text(yaml.safe_dump(env, sort_keys=False))


def _plain(value):
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    return str(value)


def _save(ckpt_dir, step, consumed, chunks, optimizer, train_data, lr, checkpoint: CheckpointConfig, ema=None) -> None:
    checkpointing.save_checkpoint(
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


def _flops_per_token(chunks, cfg: ARModelConfig) -> float:
    """Training FLOPs per token: 6 x (non-embedding parameters) + 12 x layers x hidden x seq (attention)."""
    from megatron.core import parallel_state

    local = sum(p.numel() for n, p in chunks[0].module.named_parameters() if "word_embeddings" not in n)
    total = torch.tensor([float(local)])
    dist.all_reduce(total, group=parallel_state.get_model_parallel_group())
    seq = math.prod(cfg.max_grid)
    return 6.0 * float(total) + 12.0 * cfg.num_layers * cfg.hidden_size * seq
