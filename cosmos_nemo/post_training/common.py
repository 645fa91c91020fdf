"""What the kept reference commands share: their flags, the model-size rule, and the run under torchrun.

Each command builds a recipe (recipes/ar.py), sets the recipe field each reference flag names (one flag,
one field), and calls the recipe's train entry in every torchrun rank, exactly as `cosmos-nemo train` would
after launching.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import Callable, Optional

import yaml


def add_reference_flags(p: argparse.ArgumentParser, defaults: dict, sizes: tuple[str, ...]) -> None:
    """The flags of NeMo's post-training scripts (exact spellings plus kebab-case aliases)."""
    p.add_argument("--data_path", "--data-path", required=True,
                   help="token dataset folder (`cosmos-nemo prepare ...` output), or a folder whose sub-folders are "
                   "datasets (all are used, like the reference). Maps to data.paths")
    p.add_argument("--model_path", "--model-path", default=defaults["model_path"],
                   help="weights to start from: a Cosmos model.pt/.safetensors, a dist-ckpt model/ folder, a run folder "
                   "(its latest checkpoint), a Hugging Face hub id (downloaded; offline you get the local path to pass "
                   "instead), or 'none' for random weights. Maps to checkpoint.pretrained "
                   f"(default {defaults['model_path']})")
    p.add_argument("--model_size", "--model-size", choices=sizes, default=None,
                   help="architecture; default: read from --model_path ('4B'/'12B'/'5B'/'13B' in the name, or a run "
                   "folder's config.yaml). Picks the recipe")
    p.add_argument("--log_dir", "--log-dir", default="./log_dir",
                   help="output root: the run folder is <log_dir>/cosmos_nemo/<group>/<experiment name>/ and is printed "
                   "at start. Maps to checkpoint.output_root (default ./log_dir)")
    p.add_argument("--experiment_name", "--experiment-name", default=None,
                   help="run folder name (default <script>_<model size>). Maps to checkpoint.name")
    p.add_argument("--tensor_model_parallel_size", "--tensor-model-parallel-size", type=int,
                   default=defaults["tensor_model_parallel_size"],
                   help="tensor-parallel size. Maps to parallel.tensor; data parallel = torchrun world size / TP "
                   f"(the reference fixed DP at 1) (default {defaults['tensor_model_parallel_size']})")
    p.add_argument("--max_steps", "--max-steps", type=int, default=defaults["max_steps"],
                   help=f"optimizer steps. Maps to trainer.max_steps (default {defaults['max_steps']})")
    p.add_argument("--max_epochs", "--max-epochs", type=int, default=defaults["max_epochs"],
                   help="stop after this many passes over the training split, whichever of the two limits comes "
                   f"first. Maps to trainer.max_epochs (default {defaults['max_epochs']})")
    p.add_argument("--save_every_n_steps", "--save-every-n-steps", type=int, default=defaults["save_every_n_steps"],
                   help="checkpoint every N steps (and at the end) to <run folder>/checkpoints/iter_<step>/. Maps to "
                   f"checkpoint.save_interval (default {defaults['save_every_n_steps']})")
    p.add_argument("--global_batch_size", "--global-batch-size", type=int, default=defaults["global_batch_size"],
                   help="sequences per optimizer step (= micro batch x DP x accumulation). Maps to "
                   f"data.global_batch_size (default {defaults['global_batch_size']})")
    p.add_argument("--micro_batch_size", "--micro-batch-size", type=int, default=defaults["micro_batch_size"],
                   help=f"sequences per forward pass. Maps to data.micro_batch_size (default {defaults['micro_batch_size']})")
    p.add_argument("--lr", type=float, default=defaults["lr"],
                   help="learning rate, constant as in the reference (no scheduler). Maps to optim.lr with "
                   f"optim.schedule=constant (default {defaults['lr']})")
    p.add_argument("--split_string", "--split-string", default=defaults["split_string"],
                   help="train,valid,test weights over the dataset's documents. Maps to data.split_string "
                   f"(default {defaults['split_string']})")
    p.add_argument("--precision", choices=("bf16", "fp32"), default=None,
                   help="bf16 (the reference's bf16-mixed) or fp32. Maps to trainer.precision (default: the recipe's, "
                   "bf16 for the released sizes, fp32 for tiny)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="further dotted overrides of the recipe (e.g. trainer.z_loss=1e-4), as `cosmos-nemo train`")


_SIZE_IN_NAME = re.compile(r"(?<![0-9.])(4|5|12|13)b(?![a-z0-9])", re.IGNORECASE)


def infer_size(model_path: Optional[str], sizes: tuple[str, ...]) -> Optional[str]:
    """The architecture named by a path or hub id ('...-4B', '...-13B-Video2World'), or by a run folder's
    config.yaml (`model.name`); None when nothing says."""
    if not model_path:
        return None
    path = Path(model_path)
    for candidate in (path, path.parent, path.parent.parent, path.parent.parent.parent):
        config = candidate / "config.yaml"
        if config.is_file():
            name = ((yaml.safe_load(config.read_text()) or {}).get("model") or {}).get("name")
            if name in sizes:
                return name
    match = _SIZE_IN_NAME.search(model_path)
    if match:
        key = match.group(1)
        by_digits = {s.split("b")[0]: s for s in sizes if s[0].isdigit()}
        return by_digits.get(key)
    return None


def _rank0() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def reference_recipe(args: argparse.Namespace, script: str, recipes: dict[str, Callable], sizes: tuple[str, ...]):
    """The recipe the reference flags describe: the size's recipe, each flag set on the field its --help
    names, then the dotted overrides. Errors (no size, bad override) are raised, nothing is checked yet."""
    from cosmos_nemo.recipes.launch import LaunchError
    from cosmos_nemo.recipes.overrides import apply_overrides

    model_path = None if (args.model_path or "").lower() in ("", "none") else args.model_path
    size = args.model_size or infer_size(model_path, sizes)
    if size is None:
        raise LaunchError(
            f"cannot tell the model size from --model_path {model_path!r}; pass --model_size ({', '.join(sizes)})"
        )
    recipe = recipes[size]()
    recipe.data.paths = [args.data_path]
    recipe.data.split_string = args.split_string
    recipe.data.global_batch_size = args.global_batch_size
    recipe.data.micro_batch_size = args.micro_batch_size
    recipe.checkpoint.pretrained = model_path
    recipe.checkpoint.mode = "finetune" if model_path else "pretrain"  # --model_path none: random weights
    recipe.checkpoint.output_root = args.log_dir
    recipe.checkpoint.name = args.experiment_name or f"{script}_{size}"
    recipe.checkpoint.save_interval = args.save_every_n_steps
    recipe.parallel.tensor = args.tensor_model_parallel_size
    recipe.trainer.max_steps = args.max_steps
    recipe.trainer.max_epochs = args.max_epochs
    if args.precision:  # otherwise the recipe's own
        recipe.trainer.precision = args.precision
    recipe.optim.lr = args.lr
    recipe.optim.schedule = "constant"  # the reference has no scheduler (so optim.min_lr has no effect)
    recipe.optim.warmup_steps = 0
    return apply_overrides(recipe, args.overrides)


def run_reference(args: argparse.Namespace, script: str, recipes: dict[str, Callable], sizes: tuple[str, ...]) -> int:
    """Build the recipe from the reference flags, check it, and train in this torchrun rank."""
    import fiddle as fdl

    from cosmos_nemo.recipes import launch as L
    from cosmos_nemo.recipes.overrides import OverrideError

    try:
        recipe = reference_recipe(args, script, recipes, sizes)
        notes = L.preflight(recipe, int(os.environ.get("WORLD_SIZE", "1")))
        recipe.checkpoint.pretrained = L.resolve_pretrained(recipe.checkpoint.pretrained)
    except (OverrideError, L.LaunchError, ValueError) as err:
        if _rank0():
            print(f"error: {err}", file=sys.stderr)
        return 2
    if _rank0():
        for note in notes:
            print(f"note: {note}")
        print(f"run folder: {L.run_dir_of(recipe)}", flush=True)
        # refuse a run folder that a live job uses now, before the model is built; the trainer's logger then
        # finds the folder held for it (the lock's token in its environment) and the lock goes at exit
        from cosmos_nemo.checkpoint import lock as run_lock

        try:
            held = run_lock.acquire(L.run_dir_of(recipe))
        except run_lock.RunFolderBusy as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        if held.owned:
            os.environ[run_lock.TOKEN_ENV] = held.token
    summary = fdl.build(recipe)()
    if _rank0():
        print(f"finished: step {summary['step']}, train loss {summary['train_loss']}, run folder {summary['run_dir']}")
    return 0
