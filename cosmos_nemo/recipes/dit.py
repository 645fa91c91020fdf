"""Diffusion (Cosmos DiT) recipes: `nemo_run.Partial(train, model=DiTModelConfig, data=DiTDataConfig, ...)`, the
same trainer, run folders and launchers as the AR recipes.

- Predict1 7B/14B Video2World (and Text2World) full fine-tune (seed 002, `video2world_7b_example_cosmos_nemo_assets`): EDM with the
  Kendall log-variance, sigma x sqrt(T), 0-2 conditional latent frames; AdamW lr 2^-14.3, weight decay 0.1,
  betas (0.9, 0.99), eps 1e-10, linear warm-up from 1e-6 then constant, 2000 steps, a checkpoint every 200,
  bf16, gradient clipping 1.0, one clip per GPU on 8 GPUs. The reference warms up over 2500 steps, longer than
  its 2000-step run, so its lr never reaches the base value (diffusion_models.md §13); here the warm-up is 500
  steps (a quarter of the run).
- Predict2.5 2B/14B post-training (seed 004's full-model half, `predict2_video2world_training_2b_cosmos_nemo_assets`):
  rectified flow (logit-normal, shift 5), 0/1/2 conditional frames (T2W/I2W/V2W in one checkpoint); AdamW lr
  2^-14.5, weight decay 1e-3, LambdaLinear to f_max 0.5 then down to f_min 0.2 over 100,000 steps, 1000 steps, a
  checkpoint every 200, bf16. The reference's 2000-step warm-up exceeds its 1000-step run (the lr peaks near a
  quarter of f_max, §13); here it is 250 steps.
- Tiny variants of both for CPU runs in seconds (fp32, random init unless `checkpoint.pretrained` is given).
- LoRA (seed 002's Predict1 LoRA, seed 004's Predict2.5 LoRA): the same recipes with `peft` set
  (`predict1_v2w_lora`, `predict25_lora`), and `peft=lora` on any recipe (r = alpha = 32 on the six reference
  targets; `peft.rank=8` etc. after it).

Data are precomputed latent datasets (data/dit_dataset.py): `data.paths=[DIR,...]`. Weights: the Predict1
recipes start from NVIDIA's released `model.pt` (hub id; any Cosmos `.pt`, DCP or diffusers folder works as
`checkpoint.pretrained=PATH`); the Predict2.5 ones need `checkpoint.pretrained=PATH` to the released
`*_ema_bf16.pt` (or a diffusers folder), since that file sits under a run-specific name in the hub repository.
The released-size recipes keep the references' power EMA (sigma_rel 0.1, restarted for post-training) in fp32,
saved as `ema/` beside `model/` in every checkpoint (`convert dit-export --ema` writes it).
"""

from __future__ import annotations

import nemo_run as run

from cosmos_nemo.data.dit_dataset import DiTDataConfig
from cosmos_nemo.models.dit.config import NAMED_CONFIGS, DiTModelConfig
from cosmos_nemo.models.dit.objectives import DiffusionObjective
from cosmos_nemo.peft.lora import LoRAConfig
from cosmos_nemo.recipes.ar import RecipeError
from cosmos_nemo.training.config import CheckpointConfig, LogConfig, OptimizerConfig, ParallelConfig, TrainerConfig
from cosmos_nemo.training.trainer import train

HUB_IDS = {"predict1_7b_v2w": "nvidia/Cosmos-Predict1-7B-Video2World",
           "predict1_14b_v2w": "nvidia/Cosmos-Predict1-14B-Video2World",
           "predict1_7b_t2w": "nvidia/Cosmos-Predict1-7B-Text2World",
           "predict1_14b_t2w": "nvidia/Cosmos-Predict1-14B-Text2World"}


def model_config(name: str, **overrides) -> run.Config:
    """`run.Config(DiTModelConfig)` of a named architecture, its objective a `run.Config` too (every field is
    overridable: `model.objective.shift=3`)."""
    if name not in NAMED_CONFIGS:
        raise RecipeError(f"unknown DiT model {name!r}; choose one of {sorted(NAMED_CONFIGS)}")
    fields = {**NAMED_CONFIGS[name], **overrides}
    objective = DiffusionObjective(**fields.pop("objective", {}))
    obj = {f: getattr(objective, f) for f in DiffusionObjective.__dataclass_fields__}
    obj["conditional_frames_probs"] = {int(k): float(v) for k, v in objective.conditional_frames_probs.items()}
    fields["objective"] = run.Config(DiffusionObjective, **obj)
    for key in ("rope_scale", "max_size"):
        if key in fields:
            fields[key] = tuple(fields[key])
    return run.Config(DiTModelConfig, **fields)


def _common(model: str, name: str, group: str) -> run.Partial:
    return run.Partial(
        train,
        model=model_config(model),
        data=run.Config(DiTDataConfig, paths=[], split_string="98,1,1", micro_batch_size=1, global_batch_size=8),
        optim=run.Config(OptimizerConfig),
        trainer=run.Config(TrainerConfig, precision="bf16", val_interval=200, ema_sigma_rel=0.1),
        checkpoint=run.Config(CheckpointConfig, output_root="runs", project="cosmos_nemo", group=group, name=name,
                              save_interval=200, mode="finetune", pretrained=HUB_IDS.get(model)),
        parallel=run.Config(ParallelConfig, tensor=1, pipeline=1, context=1),
        log=run.Config(LogConfig, tensorboard=True),
    )


def predict1_v2w_common(model: str, name: str) -> run.Partial:
    """Predict1 full fine-tune, seed 002's `video2world_7b_example_cosmos_nemo_assets` values (Text2World models
    write their runs under their own group)."""
    video2world = bool(NAMED_CONFIGS[model].get("video2world"))
    recipe = _common(model, name, "diffusion_video2world" if video2world else "diffusion_text2world")
    recipe.optim = run.Config(OptimizerConfig, lr=2**-14.3, weight_decay=0.1, beta1=0.9, beta2=0.99, eps=1e-10,
                              clip_grad=1.0, schedule="cycle", warmup_steps=500, f_start=1e-6, f_max=1.0, f_min=1.0,
                              cycle_length=100_000)
    recipe.trainer.max_steps = 2000
    return recipe


def predict25_common(model: str, name: str) -> run.Partial:
    """Predict2.5 post-training, seed 004's full-model `predict2_video2world_training_2b_cosmos_nemo_assets` values."""
    recipe = _common(model, name, "diffusion_predict25")
    recipe.optim = run.Config(OptimizerConfig, lr=2**-14.5, weight_decay=1e-3, beta1=0.9, beta2=0.999, eps=1e-8,
                              clip_grad=1.0, schedule="cycle", warmup_steps=250, f_start=1e-6, f_max=0.5, f_min=0.2,
                              cycle_length=100_000)
    recipe.trainer.max_steps = 1000
    return recipe


def _tiny(recipe: run.Partial) -> run.Partial:
    """CPU-sized: fp32, 20 steps, global batch 4 of micro 2, lr 2e-3 with a 2-step warm-up, a checkpoint and a
    validation every 10 steps, random init, no EMA, no TensorBoard."""
    recipe.checkpoint.mode, recipe.checkpoint.pretrained, recipe.checkpoint.save_interval = "pretrain", None, 10
    recipe.trainer.max_steps, recipe.trainer.precision, recipe.trainer.val_interval = 20, "fp32", 10
    recipe.trainer.ema_sigma_rel = None
    recipe.data.global_batch_size, recipe.data.micro_batch_size, recipe.data.split_string = 4, 2, "8,1,1"
    recipe.optim = run.Config(OptimizerConfig, lr=2e-3, min_lr=2e-4, weight_decay=0.0, schedule="cosine",
                              warmup_steps=2)
    recipe.log.tensorboard = False
    return recipe


def cosmos_predict1_7b_v2w_finetune() -> run.Partial:
    """Fine-tune Cosmos-Predict1-7B-Video2World (EDM) on a latent dataset, as seed 002's full post-training.

    Starts from NVIDIA's released model.pt (hub id, or checkpoint.pretrained=PATH). Data: a CV8x8x8 latent
    dataset with 1024-d T5 embeddings (data.paths=[DIR]).
    """
    return predict1_v2w_common("predict1_7b_v2w", "cosmos_predict1_7b_v2w_finetune")


def cosmos_predict1_14b_v2w_finetune() -> run.Partial:
    """Fine-tune Cosmos-Predict1-14B-Video2World (EDM) with the 7B recipe's values (seed 002)."""
    return predict1_v2w_common("predict1_14b_v2w", "cosmos_predict1_14b_v2w_finetune")


def cosmos_predict1_7b_t2w_finetune() -> run.Partial:
    """Fine-tune Cosmos-Predict1-7B-Text2World (EDM, no conditional frames, sigma not scaled by sqrt(T) as in the
    reference's 7B T2W recipes) with the Video2World recipe's optimiser values."""
    return predict1_v2w_common("predict1_7b_t2w", "cosmos_predict1_7b_t2w_finetune")


def cosmos_predict1_14b_t2w_finetune() -> run.Partial:
    """Fine-tune Cosmos-Predict1-14B-Text2World (EDM, sigma x sqrt(T) as the reference's 14B T2W recipe)."""
    return predict1_v2w_common("predict1_14b_t2w", "cosmos_predict1_14b_t2w_finetune")


def cosmos_predict25_2b_finetune() -> run.Partial:
    """Post-train Cosmos-Predict2.5-2B (rectified flow; one checkpoint for Text/Image/Video2World), seed 004.

    Needs checkpoint.pretrained=PATH (the released *_ema_bf16.pt or a diffusers folder) and a Wan2.1 latent
    dataset with 100352-d Reason1 text embeddings.
    """
    return predict25_common("predict25_2b", "cosmos_predict25_2b_finetune")


def cosmos_predict25_14b_finetune() -> run.Partial:
    """Post-train Cosmos-Predict2.5-14B with the 2B recipe's values (seed 004)."""
    return predict25_common("predict25_14b", "cosmos_predict25_14b_finetune")


def cosmos_predict1_tiny_v2w_finetune() -> run.Partial:
    """A 2-block, 256-wide Predict1 Video2World DiT (EDM, conditional frames) that trains on a CPU in seconds.

    The real block structure (adaLN-LoRA, 3D RoPE with fps modulation, learnable position embedding,
    log-variance head) at the width of the golden reference net. Data: 16-channel latents with 1024-d text
    embeddings and grids up to 128 x 120 x 120 tokens.
    """
    return _tiny(predict1_v2w_common("tiny_predict1_v2w", "cosmos_predict1_tiny_v2w_finetune"))


def cosmos_predict25_tiny_finetune() -> run.Partial:
    """A 2-block, 256-wide Predict2.5-style DiT (rectified flow, per-frame timesteps, text projection from
    512-d embeddings) that trains on a CPU in seconds."""
    return _tiny(predict25_common("tiny_predict25", "cosmos_predict25_tiny_finetune"))


# --------------------------------------------------------------------------------------------------
# LoRA: adapters on the frozen released model (peft/lora.py); checkpoints hold the adapters only


def predict1_v2w_lora(model: str, name: str) -> run.Partial:
    """Predict1 LoRA, seed 002's `video2world_7b_lora_example_cosmos_nemo_assets`: q and v of self- and
    cross-attention in the first 28 blocks, rank 8 with scale 1 (alpha = rank; A ~ N(0, 1/rank) as the
    reference draws it), AdamW lr 1e-4, weight decay 0.1, betas (0.9, 0.99), eps 1e-10, no warm-up, 5000 steps,
    a checkpoint every 1000, EMA off (as the reference), bf16."""
    recipe = predict1_v2w_common(model, name)
    recipe.checkpoint.group = "diffusion_video2world_lora"
    recipe.peft = run.Config(LoRAConfig, targets=["FA[to_q, to_v]", "CA[to_q, to_v]"], rank=8, alpha=8.0,
                             first_n_blocks=min(28, NAMED_CONFIGS[model]["num_layers"]), init="gaussian")
    recipe.optim = run.Config(OptimizerConfig, lr=1e-4, weight_decay=0.1, beta1=0.9, beta2=0.99, eps=1e-10,
                              clip_grad=1.0, schedule="constant", warmup_steps=0)
    recipe.trainer.max_steps, recipe.trainer.ema_sigma_rel = 5000, None
    recipe.checkpoint.save_interval = 1000
    return recipe


def predict25_lora(model: str, name: str) -> run.Partial:
    """Predict2.5 LoRA, seed 004's `predict2_lora_training_2b_cosmos_nemo_assets`: rank = alpha = 32 on the six
    targets (q, k, v, output of self- and cross-attention, both MLP layers), T2W/I2W/V2W drawn with probabilities
    1/3 each (0, 1, 2 conditional frames), the full recipe's optimiser (lr 2^-14.5, LambdaLinear), 1000 steps, a
    checkpoint every 200, the power EMA (sigma_rel 0.1) of the adapters, bf16."""
    recipe = predict25_common(model, name)
    recipe.checkpoint.group = "diffusion_predict25_lora"
    recipe.peft = run.Config(LoRAConfig, targets=["q_proj", "k_proj", "v_proj", "output_proj", "mlp.layer1",
                                                  "mlp.layer2"], rank=32, alpha=32.0)
    recipe.model.objective.conditional_frames_probs = {0: 0.333, 1: 0.333, 2: 0.334}
    return recipe


def cosmos_predict1_7b_v2w_lora() -> run.Partial:
    """LoRA post-training of Cosmos-Predict1-7B-Video2World (seed 002's LoRA recipe: q,v of self- and cross-attention,
    rank 8, the first 28 blocks). Starts from the released model.pt; checkpoints hold the adapters only."""
    return predict1_v2w_lora("predict1_7b_v2w", "cosmos_predict1_7b_v2w_lora")


def cosmos_predict25_2b_lora() -> run.Partial:
    """LoRA post-training of Cosmos-Predict2.5-2B (seed 004: r = alpha = 32 on six targets, T2W/I2W/V2W in one run).

    Needs checkpoint.pretrained=PATH (the released *_ema_bf16.pt or a diffusers folder); 45,875,200 trainable.
    """
    return predict25_lora("predict25_2b", "cosmos_predict25_2b_lora")


def cosmos_predict25_14b_lora() -> run.Partial:
    """LoRA post-training of Cosmos-Predict2.5-14B with the 2B LoRA recipe's values (seed 004)."""
    return predict25_lora("predict25_14b", "cosmos_predict25_14b_lora")


def _tiny_lora(recipe: run.Partial) -> run.Partial:
    """A tiny LoRA recipe on a CPU: the tiny recipe's values with a higher learning rate (adapters start at zero);
    it needs checkpoint.pretrained (e.g. a tiny full fine-tune's run folder): LoRA never starts from random."""
    peft = recipe.peft
    recipe = _tiny(recipe)
    recipe.checkpoint.mode, recipe.peft = "finetune", peft
    recipe.optim.lr, recipe.optim.min_lr = 1e-2, 1e-3
    return recipe


def cosmos_predict1_tiny_v2w_lora() -> run.Partial:
    """The Predict1 LoRA recipe on the tiny Predict1 Video2World DiT, for a CPU (checkpoint.pretrained=RUN_OR_FILE)."""
    return _tiny_lora(predict1_v2w_lora("tiny_predict1_v2w", "cosmos_predict1_tiny_v2w_lora"))


def cosmos_predict25_tiny_lora() -> run.Partial:
    """The Predict2.5 LoRA recipe on the tiny Predict2.5 DiT, for a CPU (checkpoint.pretrained=RUN_OR_FILE)."""
    return _tiny_lora(predict25_lora("tiny_predict25", "cosmos_predict25_tiny_lora"))


RECIPES = (cosmos_predict1_7b_v2w_finetune, cosmos_predict1_14b_v2w_finetune, cosmos_predict1_7b_t2w_finetune,
           cosmos_predict1_14b_t2w_finetune, cosmos_predict25_2b_finetune,
           cosmos_predict25_14b_finetune, cosmos_predict1_tiny_v2w_finetune, cosmos_predict25_tiny_finetune,
           cosmos_predict1_7b_v2w_lora, cosmos_predict25_2b_lora, cosmos_predict25_14b_lora,
           cosmos_predict1_tiny_v2w_lora, cosmos_predict25_tiny_lora)
