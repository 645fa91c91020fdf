"""NeMo's `post_training/video2world_finetuning.py` (Cosmos AR 5B/13B Video2World), kept.

    torchrun --nproc-per-node 8 -m cosmos_nemo.post_training.video2world_finetuning \
        --model_path nvidia/Cosmos-1.0-Autoregressive-5B-Video2World --data_path ./my_v2w_tokens \
        --save_every_n_steps 50 --tensor_model_parallel_size 8 --global_batch_size 1 --micro_batch_size 1 \
        --lr 1e-4 --max_steps 100 --max_epochs 10 --log_dir ./experiments/example_log_dir_v2w

Every flag maps onto a field of the `cosmos_ar_<size>_v2w_finetune` recipe (see --help); the reference's
defaults are kept. The data is a Video2World token dataset (`cosmos-nemo prepare` with prompts), whose
train/valid/test split is taken at read time (--split_string, new here; the reference split at prepare time).
"""

from __future__ import annotations

import argparse
import sys

from cosmos_nemo.post_training.common import add_reference_flags, run_reference
from cosmos_nemo.recipes import ar

RECIPES = {"5b_v2w": ar.cosmos_ar_5b_v2w_finetune, "13b_v2w": ar.cosmos_ar_13b_v2w_finetune,
           "tiny_v2w": ar.cosmos_ar_tiny_v2w_finetune}
# NeMo video2world_finetuning.py's own defaults (ar_models.md §5.2); the split is the reference prepare default.
DEFAULTS = dict(model_path="nvidia/Cosmos-1.0-Autoregressive-5B-Video2World", tensor_model_parallel_size=4,
                max_steps=10, max_epochs=10, save_every_n_steps=5, global_batch_size=1, micro_batch_size=1, lr=5e-5,
                split_string="4,1,1")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="torchrun --nproc-per-node N -m cosmos_nemo.post_training.video2world_finetuning",
        description="Post-train a Cosmos AR Video2World model (5B/13B, or tiny_v2w on a CPU) on a Video2World token "
        "dataset, with the flags of NVIDIA's NeMo video2world_finetuning.py. Each flag says which recipe field it sets.",
    )
    add_reference_flags(p, DEFAULTS, tuple(RECIPES))
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_intermixed_args(argv)  # overrides may sit between flags
    return run_reference(args, "video2world", RECIPES, tuple(RECIPES))


if __name__ == "__main__":
    sys.exit(main())
