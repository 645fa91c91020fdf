"""What a person sees during training: a progress bar, TensorBoard, and W&B when asked for.

Only rank 0 logs. Every logged value also goes, one JSON line per call, to `<run>/metrics.jsonl` (read
by the quickstart and by scripts). The bar shows loss, lr, grad-norm, tokens/s, achieved FLOP/s and (through tqdm) the
ETA. TensorBoard event files go to `<run>/tensorboard/`. W&B runs only when `wandb_mode` is "online" or
"offline" ("offline" writes under `<run>/wandb/` with no network); it needs the `wandb` package.
"""

from __future__ import annotations

import json
from pathlib import Path

from tqdm import tqdm

from cosmos_nemo.training.config import LogConfig

WANDB_MODES = ("disabled", "online", "offline")


class RunLogger:
    def __init__(self, run_dir: Path, cfg: LogConfig, enabled: bool, total: int, initial: int = 0):
        if cfg.wandb_mode not in WANDB_MODES:
            raise ValueError(f"log.wandb_mode must be one of {WANDB_MODES}, got {cfg.wandb_mode!r}")
        self.enabled = enabled
        self.bar = self.tb = self.wandb = None
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics = open(run_dir / "metrics.jsonl", "a")
        if cfg.progress_bar:
            self.bar = tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True)
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
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
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
