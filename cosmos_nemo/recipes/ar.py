"""Recipes for the Cosmos autoregressive (AR) models: 4B/12B base, 5B/13B Video2World, and tiny CPU variants.

A recipe is a function with typed, defaulted arguments that returns
`nemo_run.Partial(train, model=..., data=..., optim=..., trainer=..., checkpoint=..., parallel=..., log=...)`.
Every component is a `run.Config` of its dataclass (nested dataclasses too), dtypes are strings, and
nothing is read or written while a recipe is built: the launcher validates data and sizes before a run.

Where the defaults come from:
- seed 003 (the NeMo tokenizer-swap tutorial, which drives NeMo's `general.py`): lr 1e-4, ~300 steps,
  global batch 32, micro batch 2, constant learning rate (NeMo's scripts have no scheduler), no
  validation split worth the name ("10,1,1"), bf16.
- the native cosmos-predict1 trainer (ar_models.md §5.4): AdamW with weight decay 0.05, linear warm-up
  then cosine, z-loss 1e-4, first latent frame excluded from the loss.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import nemo_run as run

from cosmos_nemo.data import ARDataConfig
from cosmos_nemo.models.ar.config import FSQ_VOCAB, NAMED_CONFIGS, ARModelConfig
from cosmos_nemo.models.common.rope import YarnConfig
from cosmos_nemo.tokenizers.grid import V2W_PAD_TO_MULTIPLE_OF, Compression, latent_grid, round_up
from cosmos_nemo.training.config import CheckpointConfig, LogConfig, OptimizerConfig, ParallelConfig, TrainerConfig
from cosmos_nemo.training.trainer import train

# The tokenizer each released AR model was trained with, and the clip it sees (ar_models.md §3).
REFERENCE_TOKENIZER = "Cosmos-1.0-Tokenizer-DV8x16x16"
REFERENCE_CLIP = (33, 640, 1024)  # frames, height, width -> 5x40x64 latent grid at 8x16x16

# Hub ids of the released checkpoints (the reference scripts' --model_path defaults).
HUB_IDS = {
    "4b": "nvidia/Cosmos-1.0-Autoregressive-4B",
    "12b": "nvidia/Cosmos-1.0-Autoregressive-12B",
    "5b_v2w": "nvidia/Cosmos-1.0-Autoregressive-5B-Video2World",
    "13b_v2w": "nvidia/Cosmos-1.0-Autoregressive-13B-Video2World",
}


class RecipeError(ValueError):
    """A recipe argument that cannot give a valid run (shown to the user as is)."""


# --------------------------------------------------------------------------------------------------
# building blocks


def model_config(name: str, **overrides) -> run.Config:
    """`run.Config(ARModelConfig)` of a named architecture (`models.ar.config.NAMED_CONFIGS`), with
    nested dataclasses (YaRN) as `run.Config` too so that every field is overridable and serialisable."""
    if name not in NAMED_CONFIGS:
        raise RecipeError(f"unknown AR model {name!r}; choose one of {sorted(NAMED_CONFIGS)}")
    fields = {**NAMED_CONFIGS[name], **overrides}
    yarn = fields.get("yarn")
    if isinstance(yarn, YarnConfig):
        fields["yarn"] = run.Config(
            YarnConfig, scale=yarn.scale, beta_fast=yarn.beta_fast, beta_slow=yarn.beta_slow,
            original_latent_shape=tuple(yarn.original_latent_shape),
        )
    return run.Config(ARModelConfig, **fields)


def _recipe(
    *,
    model: run.Config,
    run_name: str,
    data_paths: Optional[list[str]],
    output_root: str,
    pretrained: Optional[str],
    max_steps: int,
    global_batch_size: int,
    micro_batch_size: int,
    lr: float,
    tensor_parallel: int,
    pipeline_parallel: int,
    split_string: str,
    precision: str,
    schedule: str = "constant",
    warmup_steps: int = 0,
    weight_decay: float = 0.01,
    min_lr: float = 0.0,
    z_loss: float = 0.0,
    exclude_first_frame: bool = False,
    save_interval: int = 100,
    val_interval: int = 100,
    group: str = "autoregressive",
    task: str = "base",
    tensorboard: bool = True,
) -> run.Partial:
    """The one shape every AR recipe shares; each recipe sets its differences by keyword."""
    return run.Partial(
        train,
        model=model,
        data=run.Config(
            ARDataConfig,
            paths=list(data_paths or []),
            split_string=split_string,
            micro_batch_size=micro_batch_size,
            global_batch_size=global_batch_size,
            exclude_first_frame=exclude_first_frame,
            task=task,
        ),
        optim=run.Config(
            OptimizerConfig, lr=lr, min_lr=min_lr, weight_decay=weight_decay, schedule=schedule,
            warmup_steps=warmup_steps,
        ),
        trainer=run.Config(
            TrainerConfig, max_steps=max_steps, precision=precision, z_loss=z_loss, val_interval=val_interval,
        ),
        checkpoint=run.Config(
            CheckpointConfig,
            output_root=output_root,
            project="cosmos_nemo",
            group=group,
            name=run_name,
            save_interval=save_interval,
            mode="finetune" if pretrained else "pretrain",
            pretrained=pretrained,
        ),
        parallel=run.Config(ParallelConfig, tensor=tensor_parallel, pipeline=pipeline_parallel, context=1),
        log=run.Config(LogConfig, tensorboard=tensorboard),
    )


# --------------------------------------------------------------------------------------------------
# released sizes: fine-tuning with the seed-003 tutorial's hyper-parameters


def cosmos_ar_4b_finetune(
    data_paths: Optional[list[str]] = None,
    pretrained: Optional[str] = HUB_IDS["4b"],
    output_root: str = "runs",
    run_name: str = "cosmos_ar_4b_finetune",
    max_steps: int = 300,
    global_batch_size: int = 32,
    micro_batch_size: int = 2,
    lr: float = 1e-4,
    tensor_parallel: int = 2,
    split_string: str = "10,1,1",
    precision: str = "bf16",
    save_interval: int = 100,
) -> run.Partial:
    """Fine-tune Cosmos-1.0-Autoregressive-4B on a token dataset (`prepare ar-tokens` output).

    Defaults: the seed 003 tutorial (NeMo `general.py`): lr 1e-4 constant, ~300 steps (about one epoch
    of 10,000 clips = 128 M tokens), global batch 32, micro batch 2, split 10,1,1, bf16. TP=2 is the
    tutorial's 2-GPU support-matrix entry for the 4B model; DP is whatever the world size leaves.
    `pretrained`: a Cosmos `.pt`/`.safetensors`, a dist-ckpt `model/` folder, a run folder or a hub id
    (hub ids are downloaded by the launcher before the run starts).
    """
    return _recipe(
        model=model_config("4b"), run_name=run_name, data_paths=data_paths, output_root=output_root,
        pretrained=pretrained, max_steps=max_steps, global_batch_size=global_batch_size,
        micro_batch_size=micro_batch_size, lr=lr, tensor_parallel=tensor_parallel, pipeline_parallel=1,
        split_string=split_string, precision=precision, save_interval=save_interval,
    )


def cosmos_ar_12b_finetune(
    data_paths: Optional[list[str]] = None,
    pretrained: Optional[str] = HUB_IDS["12b"],
    output_root: str = "runs",
    run_name: str = "cosmos_ar_12b_finetune",
    max_steps: int = 300,
    global_batch_size: int = 32,
    micro_batch_size: int = 2,
    lr: float = 1e-4,
    tensor_parallel: int = 8,
    split_string: str = "10,1,1",
    precision: str = "bf16",
    save_interval: int = 100,
) -> run.Partial:
    """Fine-tune Cosmos-1.0-Autoregressive-12B (YaRN 3D RoPE) on a token dataset.

    Defaults: the seed 003 tutorial: lr 1e-4 constant, ~300 steps, global batch 32, micro batch 2,
    split 10,1,1, bf16; TP=8 (the tutorial's 8-GPU command and support-matrix entry for 12B).
    """
    return _recipe(
        model=model_config("12b"), run_name=run_name, data_paths=data_paths, output_root=output_root,
        pretrained=pretrained, max_steps=max_steps, global_batch_size=global_batch_size,
        micro_batch_size=micro_batch_size, lr=lr, tensor_parallel=tensor_parallel, pipeline_parallel=1,
        split_string=split_string, precision=precision, save_interval=save_interval,
    )


def cosmos_ar_5b_v2w_finetune(
    data_paths: Optional[list[str]] = None,
    pretrained: Optional[str] = HUB_IDS["5b_v2w"],
    output_root: str = "runs",
    run_name: str = "cosmos_ar_5b_v2w_finetune",
    max_steps: int = 300,
    global_batch_size: int = 32,
    micro_batch_size: int = 2,
    lr: float = 1e-4,
    tensor_parallel: int = 2,
    split_string: str = "10,1,1",
    precision: str = "bf16",
    save_interval: int = 100,
) -> run.Partial:
    """Fine-tune Cosmos-1.0-Autoregressive-5B-Video2World on a Video2World token dataset (clips framed
    as [BOV] + ids + PAD to a multiple of 64, with T5 prompt embeddings).

    Defaults: the seed 003 tutorial's hyper-parameters (lr 1e-4 constant, ~300 steps, global batch 32,
    micro batch 2, bf16), which it applies to the Video2World models too; TP=2 (2-GPU support-matrix
    entry for 5B).
    """
    return _recipe(
        model=model_config("5b_v2w"), run_name=run_name, data_paths=data_paths, output_root=output_root,
        pretrained=pretrained, max_steps=max_steps, global_batch_size=global_batch_size,
        micro_batch_size=micro_batch_size, lr=lr, tensor_parallel=tensor_parallel, pipeline_parallel=1,
        split_string=split_string, precision=precision, save_interval=save_interval, task="video2world",
        group="autoregressive_video2world",
    )


def cosmos_ar_13b_v2w_finetune(
    data_paths: Optional[list[str]] = None,
    pretrained: Optional[str] = HUB_IDS["13b_v2w"],
    output_root: str = "runs",
    run_name: str = "cosmos_ar_13b_v2w_finetune",
    max_steps: int = 300,
    global_batch_size: int = 32,
    micro_batch_size: int = 2,
    lr: float = 1e-4,
    tensor_parallel: int = 8,
    split_string: str = "10,1,1",
    precision: str = "bf16",
    save_interval: int = 100,
) -> run.Partial:
    """Fine-tune Cosmos-1.0-Autoregressive-13B-Video2World (YaRN + cross-attention) on a Video2World
    token dataset.

    Defaults: the seed 003 tutorial (lr 1e-4 constant, ~300 steps, global batch 32, micro batch 2,
    bf16); TP=8 (8-GPU support-matrix entry for 13B).
    """
    return _recipe(
        model=model_config("13b_v2w"), run_name=run_name, data_paths=data_paths, output_root=output_root,
        pretrained=pretrained, max_steps=max_steps, global_batch_size=global_batch_size,
        micro_batch_size=micro_batch_size, lr=lr, tensor_parallel=tensor_parallel, pipeline_parallel=1,
        split_string=split_string, precision=precision, save_interval=save_interval, task="video2world",
        group="autoregressive_video2world",
    )


# --------------------------------------------------------------------------------------------------
# tokenizer swap (DESIGN rule 3 and the vocabulary rule)


def swap_model_config(
    base: str,
    tokenizer: str,
    frames: int,
    height: int,
    width: int,
    tokenizer_vocab_size: int = FSQ_VOCAB,
    resize_vocab: bool = False,
) -> run.Config:
    """The model config of `base` after a tokenizer swap: the latent grid (hence the sequence length) is
    recomputed from frames/height/width and the new tokenizer's compression, and the vocabulary follows
    DESIGN's rule: the same vocabulary (every Cosmos DV tokenizer has the 64,000 FSQ codes) changes
    nothing; a different one needs `resize_vocab=True` (the trainer grows/shrinks the embedding and output
    rows, new rows starting from the mean of the old ones) and is refused otherwise."""
    if tokenizer.strip().upper().split("-")[-1].startswith("CV"):
        raise RecipeError(
            f"{tokenizer!r} is a continuous tokenizer: AR models need a discrete one (DV...), e.g. DV4x8x8"
        )
    compression = Compression.parse(tokenizer)
    grid = latent_grid(frames, height, width, compression)  # GridError shows the arithmetic
    changes: dict = {"max_grid": grid.as_tuple()}
    if tokenizer_vocab_size != FSQ_VOCAB:
        if not resize_vocab:
            raise RecipeError(
                f"tokenizer {tokenizer!r} has {tokenizer_vocab_size} codes but the {base} model was trained on "
                f"{FSQ_VOCAB}: pass resize_vocab=True (model rows are resized, new rows start from the mean of the "
                "old ones) or use a tokenizer with the same vocabulary"
            )
        if NAMED_CONFIGS[base].get("video2world"):
            # Special ids follow the codes (BOV = vocab, PAD = vocab + 2); the embedding is rounded up to 64.
            changes.update(
                vocab_size=round_up(tokenizer_vocab_size + 3, V2W_PAD_TO_MULTIPLE_OF),
                output_vocab_size=tokenizer_vocab_size,
                bov_token_id=tokenizer_vocab_size,
                pad_token_id=tokenizer_vocab_size + 2,
            )
        else:
            changes.update(vocab_size=tokenizer_vocab_size, output_vocab_size=tokenizer_vocab_size)
        if "resize_vocab" in {f.name for f in dataclasses.fields(ARModelConfig)}:
            changes["resize_vocab"] = True  # tells the trainer to resize the pretrained rows when it loads them
    return model_config(base, **changes)


def _swap_recipe(base_recipe, base: str, tokenizer: str, frames: int, height: int, width: int,
                 tokenizer_vocab_size: int, resize_vocab: bool, run_name: str, **kwargs) -> run.Partial:
    recipe = base_recipe(run_name=run_name, **kwargs)
    recipe.model = swap_model_config(base, tokenizer, frames, height, width, tokenizer_vocab_size, resize_vocab)
    return recipe


def cosmos_ar_4b_tokenizer_swap(
    data_paths: Optional[list[str]] = None,
    tokenizer: str = "Cosmos-0.1-Tokenizer-DV4x8x8",
    frames: int = 17,
    height: int = 320,
    width: int = 512,
    tokenizer_vocab_size: int = FSQ_VOCAB,
    resize_vocab: bool = False,
    pretrained: Optional[str] = HUB_IDS["4b"],
    output_root: str = "runs",
    run_name: str = "cosmos_ar_4b_tokenizer_swap",
    max_steps: int = 300,
    global_batch_size: int = 32,
    micro_batch_size: int = 2,
    lr: float = 1e-4,
    tensor_parallel: int = 2,
    precision: str = "bf16",
) -> run.Partial:
    """Post-train the 4B model (trained on DV8x16x16) on data from another tokenizer.

    Defaults: the seed 003 tutorial: DV4x8x8 at 17x320x512 (latent grid 5x40x64, the same 12,800-token
    sequence), lr 1e-4, ~300 steps, global batch 32, micro batch 2, split 10,1,1. The grid is recomputed
    from frames/height/width/tokenizer (an inconsistent combination is refused with the arithmetic).
    """
    return _swap_recipe(
        cosmos_ar_4b_finetune, "4b", tokenizer, frames, height, width, tokenizer_vocab_size, resize_vocab, run_name,
        data_paths=data_paths, pretrained=pretrained, output_root=output_root, max_steps=max_steps,
        global_batch_size=global_batch_size, micro_batch_size=micro_batch_size, lr=lr,
        tensor_parallel=tensor_parallel, precision=precision,
    )


def cosmos_ar_12b_tokenizer_swap(
    data_paths: Optional[list[str]] = None,
    tokenizer: str = "Cosmos-0.1-Tokenizer-DV4x8x8",
    frames: int = 17,
    height: int = 320,
    width: int = 512,
    tokenizer_vocab_size: int = FSQ_VOCAB,
    resize_vocab: bool = False,
    pretrained: Optional[str] = HUB_IDS["12b"],
    output_root: str = "runs",
    run_name: str = "cosmos_ar_12b_tokenizer_swap",
    max_steps: int = 300,
    global_batch_size: int = 32,
    micro_batch_size: int = 2,
    lr: float = 1e-4,
    tensor_parallel: int = 8,
    precision: str = "bf16",
) -> run.Partial:
    """Post-train the 12B model on data from another tokenizer (seed 003 defaults: DV4x8x8, 17x320x512,
    lr 1e-4, ~300 steps, global batch 32). YaRN keeps its original latent shape; the grid is recomputed."""
    return _swap_recipe(
        cosmos_ar_12b_finetune, "12b", tokenizer, frames, height, width, tokenizer_vocab_size, resize_vocab,
        run_name, data_paths=data_paths, pretrained=pretrained, output_root=output_root, max_steps=max_steps,
        global_batch_size=global_batch_size, micro_batch_size=micro_batch_size, lr=lr,
        tensor_parallel=tensor_parallel, precision=precision,
    )


def cosmos_ar_5b_v2w_tokenizer_swap(
    data_paths: Optional[list[str]] = None,
    tokenizer: str = "Cosmos-0.1-Tokenizer-DV4x8x8",
    frames: int = 17,
    height: int = 320,
    width: int = 512,
    tokenizer_vocab_size: int = FSQ_VOCAB,
    resize_vocab: bool = False,
    pretrained: Optional[str] = HUB_IDS["5b_v2w"],
    output_root: str = "runs",
    run_name: str = "cosmos_ar_5b_v2w_tokenizer_swap",
    max_steps: int = 300,
    global_batch_size: int = 32,
    micro_batch_size: int = 2,
    lr: float = 1e-4,
    tensor_parallel: int = 2,
    precision: str = "bf16",
) -> run.Partial:
    """Post-train the 5B Video2World model on data from another tokenizer (seed 003's Video2World
    section: DV4x8x8 at 17x320x512, lr 1e-4; ~300 steps and global batch 32 from its base-model recipe)."""
    return _swap_recipe(
        cosmos_ar_5b_v2w_finetune, "5b_v2w", tokenizer, frames, height, width, tokenizer_vocab_size, resize_vocab,
        run_name, data_paths=data_paths, pretrained=pretrained, output_root=output_root, max_steps=max_steps,
        global_batch_size=global_batch_size, micro_batch_size=micro_batch_size, lr=lr,
        tensor_parallel=tensor_parallel, precision=precision,
    )


def cosmos_ar_13b_v2w_tokenizer_swap(
    data_paths: Optional[list[str]] = None,
    tokenizer: str = "Cosmos-0.1-Tokenizer-DV4x8x8",
    frames: int = 17,
    height: int = 320,
    width: int = 512,
    tokenizer_vocab_size: int = FSQ_VOCAB,
    resize_vocab: bool = False,
    pretrained: Optional[str] = HUB_IDS["13b_v2w"],
    output_root: str = "runs",
    run_name: str = "cosmos_ar_13b_v2w_tokenizer_swap",
    max_steps: int = 300,
    global_batch_size: int = 32,
    micro_batch_size: int = 2,
    lr: float = 1e-4,
    tensor_parallel: int = 8,
    precision: str = "bf16",
) -> run.Partial:
    """Post-train the 13B Video2World model on data from another tokenizer (seed 003 defaults)."""
    return _swap_recipe(
        cosmos_ar_13b_v2w_finetune, "13b_v2w", tokenizer, frames, height, width, tokenizer_vocab_size, resize_vocab,
        run_name, data_paths=data_paths, pretrained=pretrained, output_root=output_root, max_steps=max_steps,
        global_batch_size=global_batch_size, micro_batch_size=micro_batch_size, lr=lr,
        tensor_parallel=tensor_parallel, precision=precision,
    )


# --------------------------------------------------------------------------------------------------
# tiny: the same code on a CPU in seconds


def cosmos_ar_tiny_finetune(
    data_paths: Optional[list[str]] = None,
    pretrained: Optional[str] = None,
    output_root: str = "runs",
    run_name: str = "cosmos_ar_tiny_finetune",
    max_steps: int = 20,
    global_batch_size: int = 4,
    micro_batch_size: int = 2,
    lr: float = 3e-3,
    tensor_parallel: int = 1,
    split_string: str = "8,1,1",
    precision: str = "fp32",
    save_interval: int = 10,
) -> run.Partial:
    """A 2-layer, 256-wide model of the real block structure (GQA, QK-norm, SwiGLU, 3D RoPE, FSQ 64,000
    vocabulary) that trains on a CPU in seconds: for smoke tests, TP/PP/DP checks and the quickstart.

    Defaults: the native cosmos-predict1 trainer's optimizer shape (AdamW, weight decay 0.05, linear
    warm-up then cosine), with the learning rate raised and the run shortened for a model this small.
    Starts from random weights unless `pretrained` is given. Its data must hold 64,000-code clips on grids
    no larger than 3x4x6 tokens (72), e.g. `data.synthetic.write_pattern_dataset(..., vocab_size=64000)`.
    """
    return _recipe(
        model=model_config("tiny"), run_name=run_name, data_paths=data_paths, output_root=output_root,
        pretrained=pretrained, max_steps=max_steps, global_batch_size=global_batch_size,
        micro_batch_size=micro_batch_size, lr=lr, tensor_parallel=tensor_parallel, pipeline_parallel=1,
        split_string=split_string, precision=precision, schedule="cosine", warmup_steps=2, weight_decay=0.05,
        min_lr=lr / 10, save_interval=save_interval, val_interval=save_interval, tensorboard=False,
    )


def cosmos_ar_tiny_v2w_finetune(
    data_paths: Optional[list[str]] = None,
    pretrained: Optional[str] = None,
    output_root: str = "runs",
    run_name: str = "cosmos_ar_tiny_v2w_finetune",
    max_steps: int = 20,
    global_batch_size: int = 4,
    micro_batch_size: int = 2,
    lr: float = 3e-3,
    tensor_parallel: int = 1,
    split_string: str = "8,1,1",
    precision: str = "fp32",
    save_interval: int = 10,
) -> run.Partial:
    """The tiny model with Video2World cross-attention (384-wide, 16-token text context), BOV/PAD framing
    and the absolute positional embedding; trains on a CPU in seconds.

    Defaults: as `cosmos_ar_tiny_finetune` (native trainer's optimizer shape, shortened). Its data must be
    a Video2World token dataset with 384-wide text embeddings (e.g. `write_pattern_dataset(...,
    task="video2world", vocab_size=64000, text_dim=384, text_length=16)`).
    """
    return _recipe(
        model=model_config("tiny_v2w"), run_name=run_name, data_paths=data_paths, output_root=output_root,
        pretrained=pretrained, max_steps=max_steps, global_batch_size=global_batch_size,
        micro_batch_size=micro_batch_size, lr=lr, tensor_parallel=tensor_parallel, pipeline_parallel=1,
        split_string=split_string, precision=precision, schedule="cosine", warmup_steps=2, weight_decay=0.05,
        min_lr=lr / 10, save_interval=save_interval, val_interval=save_interval, task="video2world",
        group="autoregressive_video2world", tensorboard=False,
    )


def cosmos_ar_tiny_tokenizer_swap(
    data_paths: Optional[list[str]] = None,
    tokenizer: str = "DV4x8x8",
    frames: int = 9,
    height: int = 32,
    width: int = 48,
    tokenizer_vocab_size: int = FSQ_VOCAB,
    resize_vocab: bool = False,
    pretrained: Optional[str] = None,
    output_root: str = "runs",
    run_name: str = "cosmos_ar_tiny_tokenizer_swap",
    max_steps: int = 20,
    global_batch_size: int = 4,
    micro_batch_size: int = 2,
    lr: float = 3e-3,
    tensor_parallel: int = 1,
    precision: str = "fp32",
) -> run.Partial:
    """The tokenizer-swap recipe at tiny size: DV4x8x8 at 9x32x48 gives a 3x4x6 grid (72 tokens), the
    tiny model's own grid; other frames/resolutions are recomputed or refused with the arithmetic."""
    return _swap_recipe(
        cosmos_ar_tiny_finetune, "tiny", tokenizer, frames, height, width, tokenizer_vocab_size, resize_vocab,
        run_name, data_paths=data_paths, pretrained=pretrained, output_root=output_root, max_steps=max_steps,
        global_batch_size=global_batch_size, micro_batch_size=micro_batch_size, lr=lr,
        tensor_parallel=tensor_parallel, precision=precision,
    )
