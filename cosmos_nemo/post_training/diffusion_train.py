"""The diffusion references' training command, kept: `-m cosmos_predict1.diffusion.training.train` (seed 002) and
Predict2.5's `scripts/train.py` (seed 004) take `--config=... -- experiment=NAME key=value ...`; so does this.

    torchrun --nproc_per_node=8 -m cosmos_nemo.post_training.diffusion_train \\
        --config=cosmos_predict1/diffusion/training/config/config.py -- \\
        experiment=video2world_7b_example_cosmos_nemo_assets data.paths=[latents/cosmos_nemo_assets]

The experiment name picks our recipe (`EXPERIMENTS`); the reference's override keys that have a meaning here
map onto one recipe field each (`REFERENCE_KEYS`), and our own dotted overrides (`data.paths=[...]`,
`model.objective.shift=3`, ...) work as in `cosmos-nemo train`. A reference key with no counterpart is an
error that names it, never ignored. `--config` is accepted and not read (the experiment name selects
everything). The run folder is `$IMAGINAIRE_OUTPUT_ROOT` (or `$OUTPUT_ROOT`, else `checkpoints`)
`/cosmos_nemo/<group>/<name>/`, printed at start.

Differences, on purpose: training reads a precomputed latent dataset (`cosmos-nemo prepare latents`, given
with `data.paths=[...]`) instead of encoding videos at every step. The LoRA experiments run our LoRA recipes (the
reference's targets, rank and alpha); like every LoRA run they need `checkpoint.load_path=` (the base weights).
"""

from __future__ import annotations

import argparse
import os
import sys

from cosmos_nemo.recipes import dit

EXPERIMENTS = {
    "video2world_7b_example_cosmos_nemo_assets": dit.cosmos_predict1_7b_v2w_finetune,
    "video2world_14b_example_cosmos_nemo_assets": dit.cosmos_predict1_14b_v2w_finetune,
    "text2world_7b_example_cosmos_nemo_assets": dit.cosmos_predict1_7b_t2w_finetune,
    "text2world_14b_example_cosmos_nemo_assets": dit.cosmos_predict1_14b_t2w_finetune,
    "predict2_video2world_training_2b_cosmos_nemo_assets": dit.cosmos_predict25_2b_finetune,
    "predict2_video2world_training_14b_cosmos_nemo_assets": dit.cosmos_predict25_14b_finetune,
    "video2world_7b_lora_example_cosmos_nemo_assets": dit.cosmos_predict1_7b_v2w_lora,
    "predict2_lora_training_2b_cosmos_nemo_assets": dit.cosmos_predict25_2b_lora,
    "predict2_lora_training_14b_cosmos_nemo_assets": dit.cosmos_predict25_14b_lora,
    # tiny CPU counterparts (no reference experiment has these names)
    "video2world_tiny_example": dit.cosmos_predict1_tiny_v2w_finetune,
    "predict2_video2world_training_tiny": dit.cosmos_predict25_tiny_finetune,
}

# reference key -> our field (one each)
REFERENCE_KEYS = {
    "trainer.max_iter": "trainer.max_steps",
    "checkpoint.save_iter": "checkpoint.save_interval",
    "checkpoint.load_path": "checkpoint.pretrained",
    "optimizer.lr": "optim.lr",
    "optimizer.weight_decay": "optim.weight_decay",
    "job.name": "checkpoint.name",
    "job.group": "checkpoint.group",
    "job.project": "checkpoint.project",
    "model.config.ema.rate": "trainer.ema_sigma_rel",
    "model_parallel.context_parallel_size": "parallel.context",
    "model_parallel.tensor_model_parallel_size": "parallel.tensor",
    "dataloader_train.batch_size": "data.micro_batch_size",
    "trainer.seed": "trainer.seed",
}
_REFERENCE_ROOTS = ("trainer.", "checkpoint.", "optimizer.", "scheduler.", "job.", "model.config.", "model_parallel.",
                    "dataloader_train.", "dataloader_val.", "upload_reproducible_setup")
_OURS = ("trainer.", "checkpoint.", "optim.", "data.", "parallel.", "log.", "model.")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="torchrun --nproc_per_node N -m cosmos_nemo.post_training.diffusion_train",
        description="Post-train a Cosmos diffusion model with the command line of NVIDIA's training scripts "
        "(--config=... -- experiment=NAME key=value ...). Experiments: " + ", ".join(sorted(EXPERIMENTS)) + ".",
    )
    p.add_argument("--config", default=None, help="the reference's config file: accepted and not read (the experiment "
                   "name selects the recipe)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="experiment=NAME (required), the reference keys " + ", ".join(
                       f"{k} (-> {v})" for k, v in REFERENCE_KEYS.items())
                   + ", and any dotted override of the recipe as in `cosmos-nemo train` (data.paths=[DIR] is required)")
    return p


def reference_recipe(items: list[str], world_size: int = 1):
    """The recipe an experiment name and override list describe (raises LaunchError / OverrideError)."""
    from cosmos_nemo.recipes.launch import LaunchError
    from cosmos_nemo.recipes.overrides import OverrideError, apply_overrides, split_override

    experiment, ours, micro = None, [], None
    for item in items:
        key, value = split_override(item)
        if key == "experiment":
            experiment = value
        elif key in REFERENCE_KEYS:
            target = REFERENCE_KEYS[key]
            ours.append(f"{target}={value}")
            if target == "data.micro_batch_size":
                micro = int(value)
        elif key.startswith(_REFERENCE_ROOTS) and not key.startswith(_OURS):
            raise LaunchError(f"reference key {key!r} has no counterpart here; the mapped ones are "
                              f"{', '.join(REFERENCE_KEYS)}, and any recipe field can be set by its own name")
        elif key.startswith(_OURS):
            ours.append(item)
        else:
            raise LaunchError(f"unknown override {key!r}: give experiment=NAME, a reference key, or a recipe field")
    if experiment is None:
        raise LaunchError("experiment=NAME is required; experiments: " + ", ".join(sorted(EXPERIMENTS)))
    if experiment not in EXPERIMENTS:
        import difflib

        close = difflib.get_close_matches(experiment, list(EXPERIMENTS), n=1)
        raise LaunchError(f"unknown experiment {experiment!r}" + (f"; did you mean {close[0]!r}?" if close else "")
                          + f" Experiments: {', '.join(sorted(EXPERIMENTS))}")
    recipe = EXPERIMENTS[experiment]()
    recipe.checkpoint.output_root = os.environ.get("IMAGINAIRE_OUTPUT_ROOT") or os.environ.get("OUTPUT_ROOT") or "checkpoints"
    try:
        recipe = apply_overrides(recipe, ours)
    except OverrideError as err:
        raise LaunchError(f"{err}. Reference keys mapped here: {', '.join(REFERENCE_KEYS)}") from None
    if any(k.startswith("checkpoint.load_path=") for k in items):
        recipe.checkpoint.mode = "finetune"
    if micro is not None:  # the reference's batch_size is per GPU: global = per GPU x data-parallel ranks
        dp = max(1, world_size // (recipe.parallel.tensor * recipe.parallel.context))
        recipe.data.global_batch_size = micro * dp
    if not recipe.data.paths:
        raise LaunchError("no training data: run `cosmos-nemo prepare latents --dataset_path datasets/<name> "
                          "--output_dir DIR` (the reference's videos/ + metas/ layout) and add data.paths=[DIR]")
    return recipe


def main(argv=None) -> int:
    import fiddle as fdl

    from cosmos_nemo.recipes import launch as L
    from cosmos_nemo.recipes.overrides import OverrideError

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args([a for a in argv if a != "--"])
    rank0 = int(os.environ.get("RANK", "0")) == 0
    world = int(os.environ.get("WORLD_SIZE", "1"))
    try:
        recipe = reference_recipe(args.overrides, world)
        notes = L.preflight(recipe, world)
        recipe.checkpoint.pretrained = L.resolve_pretrained(recipe.checkpoint.pretrained)
    except (OverrideError, L.LaunchError, ValueError) as err:
        if rank0:
            print(f"error: {err}", file=sys.stderr)
        return 2
    if rank0:
        for note in notes:
            print(f"note: {note}")
        print(f"run folder: {L.run_dir_of(recipe)}", flush=True)
    summary = fdl.build(recipe)()
    if rank0:
        print(f"finished: step {summary['step']}, train loss {summary['train_loss']}, run folder {summary['run_dir']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
