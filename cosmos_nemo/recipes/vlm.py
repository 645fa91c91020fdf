"""Reasoner (VLM) alignment SFT recipes: `nemo_run.Partial(train, model=VLMModelConfig, data=VLMDataConfig, ...)`, the
same trainer, run folders, resume and launchers as the generator recipes (seed 000's "Reasoner Alignment SFT").

- `reasoner_8b_sft_videophy2`: Qwen3-VL-8B-Instruct fine-tuned to score VideoPhy-2's physical commonsense (1-5)
  (the reference's `launch_sft_videophy2_nano.sh`). Data: `data.paths=[$VIDEOPHYSICS_ROOT]`, the folder `cosmos-nemo
  prepare videophy2` writes. Weights: `checkpoint.pretrained` = a local Qwen3-VL snapshot (the reference's
  `VLM_SAFETENSORS_PATH`, e.g. a merged Cosmos3-Nano reasoner) or the hub id, downloaded by the launcher.
- `reasoner_8b_sft_llava_ov`: the same backbone on LLaVA-OneVision-style conversations (`launch_sft_llava_ov.sh`):
  local record files (`data.paths=[...]`) or, where the hub can be reached, `data.hub_dataset` streamed.
- `reasoner_tiny_sft`: the same `transformers` class at tiny size with an offline tokenizer (random init), for a CPU.

Data parallel only (every process holds the whole model): `--nproc N` gives N data-parallel ranks. The reference
values: AdamW lr 1e-5, betas (0.9, 0.95), weight decay 0.01, gradient clipping 1.0, bf16, full activation
checkpointing, 500 steps, a checkpoint every 100.
"""

from __future__ import annotations

import nemo_run as run

from cosmos_nemo.data.vlm_dataset import VLMDataConfig
from cosmos_nemo.models.vlm.config import QWEN3_VL_8B, VLMModelConfig
from cosmos_nemo.training.config import CheckpointConfig, LogConfig, OptimizerConfig, ParallelConfig, TrainerConfig
from cosmos_nemo.training.trainer import train


def _common(name: str, model: run.Config, data: run.Config) -> run.Partial:
    return run.Partial(
        train,
        model=model,
        data=data,
        optim=run.Config(OptimizerConfig, lr=1e-5, beta1=0.9, beta2=0.95, weight_decay=0.01, clip_grad=1.0,
                         warmup_steps=0, schedule="cosine", min_lr=1e-6),
        trainer=run.Config(TrainerConfig, max_steps=500, precision="bf16", val_interval=100, val_batches=4,
                           log_interval=10),
        checkpoint=run.Config(CheckpointConfig, output_root="runs", project="cosmos_nemo", group="reasoner_sft",
                              name=name, save_interval=100, mode="finetune", pretrained=QWEN3_VL_8B),
        parallel=run.Config(ParallelConfig, tensor=1, pipeline=1, context=1),
        log=run.Config(LogConfig, tensorboard=True),
    )


def reasoner_8b_sft_videophy2() -> run.Partial:
    """Qwen3-VL-8B Reasoner alignment SFT on VideoPhy-2 physical-commonsense scores (seed 000's VideoPhy-2 recipe).

    Data: `data.paths=[ROOT]` with ROOT/videophy2_train (and videophy2_val for validation), from `cosmos-nemo prepare
    videophy2`. Weights: `checkpoint.pretrained=DIR` (a Qwen3-VL snapshot, e.g. the reference's VLM_SAFETENSORS_PATH),
    the hub id by default."""
    model = run.Config(VLMModelConfig, name="qwen3_vl", model_name=QWEN3_VL_8B, gradient_checkpointing=True,
                       num_frames=16, max_pixels=448 * 448, max_tokens=16384)
    data = run.Config(VLMDataConfig, paths=[], kind="videophy2", micro_batch_size=1, global_batch_size=8)
    return _common("videophy2_sft", model, data)


def reasoner_8b_sft_llava_ov() -> run.Partial:
    """Qwen3-VL-8B Reasoner alignment SFT on LLaVA-OneVision-style conversations (seed 000's LLaVA-OV recipe).

    Data: `data.paths=[FILE_OR_DIR]` (.json/.jsonl records) or `data.hub_dataset=lmms-lab/LLaVA-OneVision-Data
    data.hub_subset=NAME` (streamed; needs the hub and `pip install datasets`)."""
    model = run.Config(VLMModelConfig, name="qwen3_vl", model_name=QWEN3_VL_8B, gradient_checkpointing=True,
                       num_frames=16, max_pixels=448 * 448, max_tokens=16384)
    data = run.Config(VLMDataConfig, paths=[], kind="llava_ov", micro_batch_size=1, global_batch_size=8)
    return _common("llava_ov_sft", model, data)


def reasoner_tiny_sft() -> run.Partial:
    """A tiny Qwen3-VL (same transformers class, offline tokenizer, random init) on VideoPhy-2-layout data, for a CPU.

    Data: `data.paths=[ROOT]` as for reasoner_8b_sft_videophy2."""
    recipe = _common("reasoner_tiny_sft", run.Config(VLMModelConfig, name="tiny", num_frames=4, max_pixels=64 * 64),
                     run.Config(VLMDataConfig, paths=[], kind="videophy2", micro_batch_size=1, global_batch_size=2))
    recipe.optim.lr, recipe.optim.min_lr = 3e-3, 0.0
    recipe.trainer.precision, recipe.trainer.max_steps = "fp32", 40
    recipe.trainer.val_interval, recipe.trainer.val_batches, recipe.trainer.log_interval = 20, 1, 5
    recipe.checkpoint.mode, recipe.checkpoint.pretrained, recipe.checkpoint.save_interval = "pretrain", None, 20
    return recipe


RECIPES = (reasoner_8b_sft_videophy2, reasoner_8b_sft_llava_ov, reasoner_tiny_sft)
