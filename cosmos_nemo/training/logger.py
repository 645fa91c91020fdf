"""What a person sees during training: a progress bar, TensorBoard, and W&B when asked for.

Only rank 0 logs. Every logged value also goes, one JSON line per call, to `<run>/metrics.jsonl` (read
by the quickstart and by scripts). The bar shows loss, lr, grad-norm, tokens/s, achieved FLOP/s and (through tqdm) the
ETA. TensorBoard event files go to `<run>/tensorboard/`. W&B runs only when `wandb_mode` is "online" or
"offline" ("offline" writes under `<run>/wandb/` with no network); it needs the `wandb` package.

Rank 0's logger also holds the run folder while the run writes to it (`checkpoint.lock`: a second job on
a folder that a live job uses is refused, naming its host and pid; a lock left by a dead job is taken
over), and says where the last complete checkpoint is if the worker is stopped (`parallel.lifeline`).
A run that resumes at step N redoes the steps after N, so their entries in `metrics.jsonl` are dropped
(and TensorBoard's are purged) when it starts; a fresh start (N = 0) drops them all, its step-0
validation included.
"""

from __future__ import annotations

import json
from pathlib import Path

from tqdm import tqdm

from cosmos_nemo.checkpoint import lock as run_lock
from cosmos_nemo.io.atomic import atomic_write_text
from cosmos_nemo.parallel import lifeline
from cosmos_nemo.training.config import LogConfig

WANDB_MODES = ("disabled", "online", "offline")


class RunLogger:
    def __init__(self, run_dir: Path, cfg: LogConfig, enabled: bool, total: int, initial: int = 0):
        if cfg.wandb_mode not in WANDB_MODES:
            raise ValueError(f"log.wandb_mode must be one of {WANDB_MODES}, got {cfg.wandb_mode!r}")
        self.enabled = enabled
        self.bar = self.tb = self.wandb = self.lock = None
        if not enabled:
            return
        self.lock = run_lock.acquire(run_dir)  # before anything is written; RunFolderBusy if a live job has it
        lifeline.on_stop(lambda reason: print(stop_message(run_dir, reason), flush=True))
        dropped = drop_redone_metrics(run_dir / "metrics.jsonl", initial)
        self.metrics = open(run_dir / "metrics.jsonl", "a")
        if cfg.progress_bar:
            self.bar = tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True)
        if self.lock.took_over:
            self.note(f"took over the run folder from a job that is no longer running: {run_lock.describe(self.lock.took_over)}")
        if dropped:
            self.note(f"metrics.jsonl: dropped {dropped} entries of the steps after {initial}, which this run redoes")
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            tb_dir = run_dir / "tensorboard"
            # hide the events of the steps this run redoes (all of them on a fresh start in a used folder)
            purge = initial + 1 if initial > 0 else (0 if tb_dir.is_dir() else None)
            self.tb = SummaryWriter(log_dir=str(tb_dir), purge_step=purge)
        if cfg.wandb_mode != "disabled":
            try:
                import wandb
            except ImportError as e:
                raise RuntimeError(f"log.wandb_mode={cfg.wandb_mode!r} needs the wandb package: pip install wandb") from e
            self.wandb = wandb.init(project=cfg.wandb_project or "cosmos_nemo", name=run_dir.name,
                                    dir=str(run_dir), mode=cfg.wandb_mode, resume="allow")

    def note(self, text: str) -> None:
        if self.enabled:
            (self.bar.write if self.bar else print)(text)

    def step(self, step: int, values: dict) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix(
                loss=f"{values['loss']:.4f}", lr=f"{values['lr']:.2e}", gnorm=f"{values['grad_norm']:.3f}",
                tok_s=f"{values['tokens_per_s']:.0f}", tflops=f"{values['flops_per_s'] / 1e12:.3f}",
                mem=f"{values.get('memory_gb', 0.0):.1f}G",
            )
        else:
            print(f"step {step}: " + "  ".join(f"{k} {v:.4g}" for k, v in values.items()), flush=True)
        self.scalars(step, {f"train/{k}": v for k, v in values.items()})

    def scalars(self, step: int, values: dict) -> None:
        if not self.enabled:
            return
        values = {k: float(v) for k, v in values.items() if v is not None}
        self.metrics.write(json.dumps({"step": step, **values}) + "\n")
        self.metrics.flush()
        if self.tb is not None:
            for key, value in values.items():
                self.tb.add_scalar(key, value, step)
        if self.wandb is not None:
            self.wandb.log(values, step=step)
        if self.bar is not None and any(k.startswith("val/") for k in values):
            self.bar.write(f"step {step}: " + "  ".join(f"{k} {v:.4f}" for k, v in values.items()))

    def close(self) -> None:
        if self.enabled:
            self.metrics.close()
        if self.lock is not None:
            self.lock.release()
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def drop_redone_metrics(path: Path, resume_step: int) -> int:
    """Keep the entries of `metrics.jsonl` that a run starting at `resume_step` does not log again: the
    steps before it, and the resume step itself when it is a checkpoint's (> 0). Returns how many entries
    (and unreadable lines, such as one cut short by a kill) were dropped."""
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            step = int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            dropped += bool(line.strip())
            continue
        if step < resume_step or (step == resume_step and resume_step > 0):
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        atomic_write_text(path, "".join(f"{line}\n" for line in kept))
    return dropped


def stop_message(run_dir: Path, reason: str) -> str:
    """What a stopped run says: why, and the last complete checkpoint it resumes from."""
    from cosmos_nemo.checkpoint.run import latest_checkpoint

    latest = latest_checkpoint(run_dir / "checkpoints")
    where = (f"the last complete checkpoint is {latest}; run the same command to resume from it" if latest else
             f"no checkpoint was completed in {run_dir / 'checkpoints'}: the next run starts from the beginning")
    return f"training stopped ({reason}): {where}"
