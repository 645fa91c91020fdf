"""Recipes for the Cosmos autoregressive (AR) models: 4B/12B base, 5B/13B Video2World, and tiny CPU variants.

A recipe returns `nemo_run.Partial(train, model=..., data=..., optim=..., trainer=..., checkpoint=...,
parallel=..., log=...)`. Every component is a `run.Config` of its dataclass (nested dataclasses too), dtypes
are strings, and nothing is read or written while a recipe is built: the launcher validates data and sizes
before a run.

The shape is Megatron-Bridge's: one common base, `ar_finetune_common`, writes the shared defaults once;
`ar_tiny_common` sets the CPU deltas on top of it; each named recipe sets only what differs, one field per
line. Anything else is changed at launch by dotted overrides (`data.paths=[...]`, `trainer.max_steps=100`,
`checkpoint.output_root=...`) or a TOML file. Recipe arguments exist only where one value derives several
fields: the tokenizer-swap recipes' tokenizer and clip shape, which give the latent grid and vocabulary.

Where the defaults come from:
- seed 003 (the NeMo tokenizer-swap tutorial, which drives NeMo's `general.py`): lr 1e-4, ~300 steps,
  global batch 32, micro batch 2, constant learning rate (NeMo's scripts have no scheduler), no
  validation split worth the name ("10,1,1"), bf16.
- the native cosmos-predict1 trainer (ar_models.md §5.4): AdamW with weight decay 0.05, linear warm-up
  then cosine, z-loss 1e-4, first latent frame excluded from the loss.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import nemo_run as run

from cosmos_nemo.data import ARDataConfig
from cosmos_nemo.models.ar.config import FSQ_VOCAB, NAMED_CONFIGS, ARModelConfig
from cosmos_nemo.models.common.rope import YarnConfig
from cosmos_nemo.peft.lora import LoRAConfig
from cosmos_nemo.tokenizers.grid import V2W_PAD_TO_MULTIPLE_OF, Compression, latent_grid, round_up
from cosmos_nemo.training.config import CheckpointConfig, LogConfig, OptimizerConfig, ParallelConfig, TrainerConfig
from cosmos_nemo.training.trainer import train

# The tokenizer each released AR model was trained with, and the clip it sees (ar_models.md §3).
REFERENCE_TOKENIZER = "Cosmos-1.0-Tokenizer-DV8x16x16"
REFERENCE_CLIP = (33, 640, 1024)  # frames, height, width -> 5x40x64 latent grid at 8x16x16

# The seed 003 tutorial's swap: DV4x8x8 at 17x320x512 gives the same 5x40x64 grid (12,800 tokens).
SWAP_TOKENIZER = "Cosmos-0.1-Tokenizer-DV4x8x8"
SWAP_CLIP = (17, 320, 512)  # frames, height, width
# The tiny models' swap: DV4x8x8 at 9x32x48 gives their own 3x4x6 grid (72 tokens).
TINY_SWAP_TOKENIZER = "DV4x8x8"
TINY_SWAP_CLIP = (9, 32, 48)

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


# --------------------------------------------------------------------------------------------------
# the common bases


def ar_finetune_common(model: str, name: str) -> run.Partial:
    """Every AR recipe starts here: the named architecture `model` (`models.ar.config.NAMED_CONFIGS`)
    with the seed 003 tutorial's hyper-parameters, written once: lr 1e-4 constant (NeMo's scripts have no
    scheduler), 300 steps, global batch 32, micro batch 2, split 10,1,1, bf16, a checkpoint and a
    validation every 100 steps. `name` is the run folder's name.

    A Video2World model reads Video2World data (BOV/PAD framing, prompt embeddings) and writes its runs
    under its own group, so both follow the model. No weights are named here (`checkpoint.pretrained` is
    None with mode "finetune", which the launcher refuses): each named recipe says which weights it starts
    from. Data paths are left empty for the command line (`data.paths=[...]`).
    """
    if model not in NAMED_CONFIGS:
        raise RecipeError(f"unknown AR model {model!r}; choose one of {sorted(NAMED_CONFIGS)}")
    video2world = bool(NAMED_CONFIGS[model].get("video2world"))
    return run.Partial(
        train,
        model=model_config(model),
        data=run.Config(
            ARDataConfig,
            paths=[],
            split_string="10,1,1",
            micro_batch_size=2,
            global_batch_size=32,
            exclude_first_frame=False,
            task="video2world" if video2world else "base",
        ),
        optim=run.Config(
            OptimizerConfig,
            lr=1e-4,
            min_lr=0.0,
            weight_decay=0.01,
            schedule="constant",
            warmup_steps=0,
        ),
        trainer=run.Config(
            TrainerConfig,
            max_steps=300,
            precision="bf16",
            z_loss=0.0,
            val_interval=100,
        ),
        checkpoint=run.Config(
            CheckpointConfig,
            output_root="runs",
            project="cosmos_nemo",
            group="autoregressive_video2world" if video2world else "autoregressive",
            name=name,
            save_interval=100,
            mode="finetune",
            pretrained=None,
        ),
        parallel=run.Config(ParallelConfig, tensor=1, pipeline=1, context=1),
        log=run.Config(LogConfig, tensorboard=True),
    )


def ar_tiny_common(model: str, name: str) -> run.Partial:
    """The tiny variants' base: `ar_finetune_common` with what a CPU run in seconds needs instead.

    The optimizer takes the native cosmos-predict1 trainer's shape (AdamW, weight decay 0.05, linear
    warm-up then cosine), with the learning rate raised (3e-3, decaying to a tenth of it) and the run
    shortened (20 steps, global batch 4, a checkpoint and a validation every 10 steps) for a model this
    small; fp32, split 8,1,1, no TensorBoard. It starts from random weights: `checkpoint.pretrained=PATH`
    on the command line switches it to fine-tuning. An `optim.lr` override leaves `optim.min_lr` at 3e-4;
    set both to keep the ratio.
    """
    recipe = ar_finetune_common(model, name)
    recipe.checkpoint.mode = "pretrain"
    recipe.checkpoint.save_interval = 10
    recipe.trainer.max_steps = 20
    recipe.trainer.precision = "fp32"
    recipe.trainer.val_interval = 10
    recipe.data.global_batch_size = 4
    recipe.data.split_string = "8,1,1"
    recipe.optim.lr = 3e-3
    recipe.optim.min_lr = recipe.optim.lr / 10
    recipe.optim.schedule = "cosine"
    recipe.optim.warmup_steps = 2
    recipe.optim.weight_decay = 0.05
    recipe.log.tensorboard = False
    return recipe


# --------------------------------------------------------------------------------------------------
# released sizes: fine-tuning with the seed-003 tutorial's hyper-parameters


def cosmos_ar_4b_finetune() -> run.Partial:
    """Fine-tune Cosmos-1.0-Autoregressive-4B on a token dataset (`prepare ar-tokens` output).

    Defaults: the seed 003 tutorial (NeMo `general.py`), from `ar_finetune_common`: lr 1e-4 constant, ~300
    steps (about one epoch of 10,000 clips = 128 M tokens), global batch 32, micro batch 2, split 10,1,1,
    bf16. TP=2 is the tutorial's 2-GPU support-matrix entry for the 4B model; DP is whatever the world size
    leaves. `checkpoint.pretrained` may be a Cosmos `.pt`/`.safetensors`, a dist-ckpt `model/` folder, a
    run folder or a hub id (hub ids are downloaded by the launcher before the run starts).
    """
    recipe = ar_finetune_common("4b", "cosmos_ar_4b_finetune")
    recipe.checkpoint.pretrained = HUB_IDS["4b"]
    recipe.parallel.tensor = 2
    return recipe


def cosmos_ar_4b_lora() -> run.Partial:
    """LoRA fine-tuning of Cosmos-1.0-Autoregressive-4B: the 4B recipe with adapters of rank 32, alpha 32 on
    every attention and MLP linear (q, k, v, output, fc1, fc2), the base frozen; lr 1e-4 constant as the full
    recipe. Checkpoints hold the adapters only (a few MB instead of 16 GB)."""
    recipe = cosmos_ar_4b_finetune()
    recipe.checkpoint.name = "cosmos_ar_4b_lora"
    recipe.peft = run.Config(LoRAConfig, targets=["linear_qkv", "linear_proj", "linear_fc1", "linear_fc2"], rank=32,
                             alpha=32.0)
    return recipe


def cosmos_ar_12b_finetune() -> run.Partial:
    """Fine-tune Cosmos-1.0-Autoregressive-12B (YaRN 3D RoPE) on a token dataset.

    Defaults: the seed 003 tutorial, from `ar_finetune_common`: lr 1e-4 constant, ~300 steps, global batch
    32, micro batch 2, split 10,1,1, bf16; TP=8 (the tutorial's 8-GPU command and support-matrix entry for
    12B).
    """
    recipe = ar_finetune_common("12b", "cosmos_ar_12b_finetune")
    recipe.checkpoint.pretrained = HUB_IDS["12b"]
    recipe.parallel.tensor = 8
    return recipe


def cosmos_ar_5b_v2w_finetune() -> run.Partial:
    """Fine-tune Cosmos-1.0-Autoregressive-5B-Video2World on a Video2World token dataset.

    Clips are framed as [BOV] + ids + PAD to a multiple of 64, with T5 prompt embeddings.

    Defaults: the seed 003 tutorial's hyper-parameters (lr 1e-4 constant, ~300 steps, global batch 32,
    micro batch 2, bf16), which it applies to the Video2World models too, from `ar_finetune_common`; TP=2
    (2-GPU support-matrix entry for 5B).
    """
    recipe = ar_finetune_common("5b_v2w", "cosmos_ar_5b_v2w_finetune")
    recipe.checkpoint.pretrained = HUB_IDS["5b_v2w"]
    recipe.parallel.tensor = 2
    return recipe


def cosmos_ar_13b_v2w_finetune() -> run.Partial:
    """Fine-tune Cosmos-1.0-Autoregressive-13B-Video2World (YaRN + cross-attention) on a Video2World
    token dataset.

    Defaults: the seed 003 tutorial (lr 1e-4 constant, ~300 steps, global batch 32, micro batch 2, bf16),
    from `ar_finetune_common`; TP=8 (8-GPU support-matrix entry for 13B).
    """
    recipe = ar_finetune_common("13b_v2w", "cosmos_ar_13b_v2w_finetune")
    recipe.checkpoint.pretrained = HUB_IDS["13b_v2w"]
    recipe.parallel.tensor = 8
    return recipe


# --------------------------------------------------------------------------------------------------
# tokenizer swap (DESIGN rule 3 and the vocabulary rule)


def _tokenizer_config_of(tokenizer: str):
    """(Compression, codebook size) of a tokenizer folder (its `tokenizer_config.json`) or of a registered
    tokenizer name such as `tiny`; None for a compression spelled out (DV4x8x8, 4,8,8)."""
    import json

    from cosmos_nemo.tokenizers.configs import TokenizerConfig, resolve_name

    path = Path(tokenizer) / "tokenizer_config.json"
    if path.is_file():
        try:
            cfg = TokenizerConfig.from_dict(json.loads(path.read_text()))
        except (ValueError, TypeError) as e:
            raise RecipeError(f"{path} is not a readable tokenizer config ({type(e).__name__}: {e})") from None
    elif Path(tokenizer).is_dir():
        raise RecipeError(f"{tokenizer} is a folder without tokenizer_config.json: pass a tokenizer folder "
                          "(train-tokenizer's output), a registered name (tiny) or a compression such as DV4x8x8")
    else:
        cfg = resolve_name(tokenizer.strip())
        if cfg is None:
            return None
    if not cfg.discrete:
        raise RecipeError(f"the tokenizer {tokenizer!r} is continuous: AR models need a discrete one (FSQ levels)")
    return Compression(*cfg.compression), int(cfg.vocab_size)


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
    known = _tokenizer_config_of(tokenizer)
    if known is not None:
        # A tokenizer folder (`train-tokenizer`'s output) or a registered name: its own compression and codebook
        # size, so `--recipe-arg tokenizer=DIR` needs no separate compression or vocabulary.
        compression, codes = known
        if tokenizer_vocab_size == FSQ_VOCAB:
            tokenizer_vocab_size = codes
        elif tokenizer_vocab_size != codes and Path(tokenizer).is_dir():  # a name may stand for a retrained one
            raise RecipeError(f"tokenizer_vocab_size={tokenizer_vocab_size} but the tokenizer in {tokenizer} has "
                              f"{codes} codes (the product of its FSQ levels); drop tokenizer_vocab_size")
    elif tokenizer.strip().upper().split("-")[-1].startswith("CV"):
        raise RecipeError(
            f"{tokenizer!r} is a continuous tokenizer: AR models need a discrete one (DV...), e.g. DV4x8x8"
        )
    else:
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


def cosmos_ar_4b_tokenizer_swap(
    tokenizer: str = SWAP_TOKENIZER,
    frames: int = SWAP_CLIP[0],
    height: int = SWAP_CLIP[1],
    width: int = SWAP_CLIP[2],
    tokenizer_vocab_size: int = FSQ_VOCAB,
    resize_vocab: bool = False,
) -> run.Partial:
    """Post-train the 4B model (trained on DV8x16x16) on data from another tokenizer.

    Defaults: the seed 003 tutorial: DV4x8x8 at 17x320x512 (latent grid 5x40x64, the same 12,800-token
    sequence), and `cosmos_ar_4b_finetune`'s lr 1e-4, ~300 steps, global batch 32, micro batch 2, split
    10,1,1, TP=2. The grid is recomputed from frames/height/width/tokenizer (an inconsistent combination is
    refused with the arithmetic); the arguments are given as `--recipe-arg frames=17`.
    """
    recipe = cosmos_ar_4b_finetune()
    recipe.model = swap_model_config("4b", tokenizer, frames, height, width, tokenizer_vocab_size, resize_vocab)
    recipe.checkpoint.name = "cosmos_ar_4b_tokenizer_swap"
    return recipe


def cosmos_ar_12b_tokenizer_swap(
    tokenizer: str = SWAP_TOKENIZER,
    frames: int = SWAP_CLIP[0],
    height: int = SWAP_CLIP[1],
    width: int = SWAP_CLIP[2],
    tokenizer_vocab_size: int = FSQ_VOCAB,
    resize_vocab: bool = False,
) -> run.Partial:
    """Post-train the 12B model on data from another tokenizer.

    Defaults: seed 003: DV4x8x8, 17x320x512; lr 1e-4, ~300 steps, global batch 32, TP=8 from
    `cosmos_ar_12b_finetune`. YaRN keeps its original latent shape; the grid is recomputed.
    """
    recipe = cosmos_ar_12b_finetune()
    recipe.model = swap_model_config("12b", tokenizer, frames, height, width, tokenizer_vocab_size, resize_vocab)
    recipe.checkpoint.name = "cosmos_ar_12b_tokenizer_swap"
    return recipe


def cosmos_ar_5b_v2w_tokenizer_swap(
    tokenizer: str = SWAP_TOKENIZER,
    frames: int = SWAP_CLIP[0],
    height: int = SWAP_CLIP[1],
    width: int = SWAP_CLIP[2],
    tokenizer_vocab_size: int = FSQ_VOCAB,
    resize_vocab: bool = False,
) -> run.Partial:
    """Post-train the 5B Video2World model on data from another tokenizer.

    Defaults: seed 003's Video2World section: DV4x8x8 at 17x320x512, lr 1e-4; ~300 steps and global batch
    32 from its base-model recipe, TP=2 from `cosmos_ar_5b_v2w_finetune`.
    """
    recipe = cosmos_ar_5b_v2w_finetune()
    recipe.model = swap_model_config("5b_v2w", tokenizer, frames, height, width, tokenizer_vocab_size, resize_vocab)
    recipe.checkpoint.name = "cosmos_ar_5b_v2w_tokenizer_swap"
    return recipe


def cosmos_ar_13b_v2w_tokenizer_swap(
    tokenizer: str = SWAP_TOKENIZER,
    frames: int = SWAP_CLIP[0],
    height: int = SWAP_CLIP[1],
    width: int = SWAP_CLIP[2],
    tokenizer_vocab_size: int = FSQ_VOCAB,
    resize_vocab: bool = False,
) -> run.Partial:
    """Post-train the 13B Video2World model on data from another tokenizer.

    Defaults: seed 003: DV4x8x8 at 17x320x512; the rest from `cosmos_ar_13b_v2w_finetune`.
    """
    recipe = cosmos_ar_13b_v2w_finetune()
    recipe.model = swap_model_config("13b_v2w", tokenizer, frames, height, width, tokenizer_vocab_size, resize_vocab)
    recipe.checkpoint.name = "cosmos_ar_13b_v2w_tokenizer_swap"
    return recipe


# --------------------------------------------------------------------------------------------------
# tiny: the same code on a CPU in seconds


def cosmos_ar_tiny_finetune() -> run.Partial:
    """A 2-layer, 256-wide AR model of the real block structure that trains on a CPU in seconds.

    GQA, QK-norm, SwiGLU, 3D RoPE, FSQ 64,000 vocabulary: for smoke tests, TP/PP/DP checks and the
    quickstart.

    Defaults: `ar_tiny_common`, i.e. the native cosmos-predict1 trainer's optimizer shape (AdamW, weight
    decay 0.05, linear warm-up then cosine), with the learning rate raised and the run shortened for a
    model this small. Starts from random weights unless `checkpoint.pretrained` is given. Its data must
    hold 64,000-code clips on grids no larger than 3x4x6 tokens (72), e.g.
    `data.synthetic.write_pattern_dataset(..., vocab_size=64000)`.
    """
    return ar_tiny_common("tiny", "cosmos_ar_tiny_finetune")


def cosmos_ar_tiny_lora() -> run.Partial:
    """LoRA on the tiny AR model for a CPU: `cosmos_ar_4b_lora`'s adapters (rank 8 here) on a tiny base; it needs
    checkpoint.pretrained (e.g. a `cosmos_ar_tiny_finetune` run folder): LoRA never starts from random weights."""
    recipe = cosmos_ar_tiny_finetune()
    recipe.checkpoint.name, recipe.checkpoint.mode = "cosmos_ar_tiny_lora", "finetune"
    recipe.peft = run.Config(LoRAConfig, targets=["linear_qkv", "linear_proj", "linear_fc1", "linear_fc2"], rank=8,
                             alpha=16.0)
    recipe.optim.lr = 1e-2
    return recipe


def cosmos_ar_tiny_v2w_finetune() -> run.Partial:
    """The tiny model with Video2World cross-attention; trains on a CPU in seconds.

    384-wide, 16-token text context, BOV/PAD framing and the absolute positional embedding.

    Defaults: `ar_tiny_common`, as `cosmos_ar_tiny_finetune` (native trainer's optimizer shape,
    shortened). Its data must be a Video2World token dataset with 384-wide text embeddings (e.g.
    `write_pattern_dataset(..., task="video2world", vocab_size=64000, text_dim=384, text_length=16)`).
    """
    return ar_tiny_common("tiny_v2w", "cosmos_ar_tiny_v2w_finetune")


def cosmos_ar_tiny_tokenizer_swap(
    tokenizer: str = TINY_SWAP_TOKENIZER,
    frames: int = TINY_SWAP_CLIP[0],
    height: int = TINY_SWAP_CLIP[1],
    width: int = TINY_SWAP_CLIP[2],
    tokenizer_vocab_size: int = FSQ_VOCAB,
    resize_vocab: bool = False,
) -> run.Partial:
    """The tokenizer-swap recipe at tiny size, on a CPU in seconds.

    Defaults: DV4x8x8 at 9x32x48 gives a 3x4x6 grid (72 tokens), the tiny model's own grid; other
    frames/resolutions are recomputed or refused with the arithmetic. The rest is
    `cosmos_ar_tiny_finetune`'s.
    """
    recipe = cosmos_ar_tiny_finetune()
    recipe.model = swap_model_config("tiny", tokenizer, frames, height, width, tokenizer_vocab_size, resize_vocab)
    recipe.checkpoint.name = "cosmos_ar_tiny_tokenizer_swap"
    return recipe
