"""`torchrun --nproc_per_node=N -m cosmos_nemo.train --sft-toml=FILE.toml [key.path=value ...]`: the reference's
`torchrun -m cosmos_framework.scripts.train --sft-toml=...` (seed 000, Option B), run in each torchrun rank.

Every rank reads and validates the TOML (recipes/sft_toml.py) against the world size torchrun gives
(WORLD_SIZE), runs the launch checks (parallel sizes, batch sizes, data against the model) and trains. The
same file through `cosmos-nemo train --sft-toml FILE --nproc N` starts torchrun itself (and adds Slurm, the run
lock and log reporting). Trailing overrides may follow a `--`, as the reference's launchers pass them.
"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cosmos_nemo.train",
        description="Train from NVIDIA's structured SFT TOML in this torchrun rank (see `cosmos-nemo train --help`).")
    parser.add_argument("--sft-toml", "--sft_toml", dest="sft_toml", required=True, metavar="FILE",
                        help="the SFT TOML ([job] task/experiment, [model], [optimizer], [scheduler], [trainer], "
                             "[checkpoint], [dataloader_train])")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="a TOML key (trainer.max_iter=4) or a recipe field (data.paths=[...]), after the file")
    argv = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--"]
    args = parser.parse_args(argv)

    from cosmos_nemo.recipes.sft_toml import load_sft_toml

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    try:
        # the file is checked before the launcher (nemo-run, ~3 s) is imported: a mistake in it shows at once
        recipe, _, notes = load_sft_toml(args.sft_toml, args.overrides, world_size=world)
        from cosmos_nemo.recipes import launch as L

        notes += L.preflight(recipe, world)
        vlm = getattr(recipe.model, "family", None) == "vlm"
        if vlm and recipe.checkpoint.pretrained and L.is_hub_id(recipe.checkpoint.pretrained):
            # the Reasoner starts from a transformers snapshot, fetched at startup as the reference does
            recipe.checkpoint.pretrained = L.resolve_pretrained(recipe.checkpoint.pretrained)
        elif recipe.checkpoint.pretrained and L.is_hub_id(recipe.checkpoint.pretrained):
            raise L.LaunchError(f"checkpoint.load_path {recipe.checkpoint.pretrained!r} is a hub id: convert it first "
                                "(`cosmos-nemo convert to-dcp --checkpoint-path ID -o DIR`) and point load_path at DIR")
        L.resolve_pretrained(recipe.checkpoint.pretrained)  # a local path that does not exist is refused
    except (KeyError, ValueError) as err:  # SFTConfigError, OverrideError and LaunchError included
        print(f"error: {err.args[0] if isinstance(err, KeyError) and err.args else err}", file=sys.stderr)
        return 2
    if rank == 0:
        for note in notes:
            print(f"note: {note}", flush=True)
    import fiddle as fdl

    from cosmos_nemo.checkpoint.lock import RunFolderBusy

    try:
        summary = fdl.build(recipe)()
    except RunFolderBusy as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if rank == 0:
        print(f"done: step {summary['step']}, train loss {summary['train_loss']}", flush=True)  # (the trainer printed the run folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
