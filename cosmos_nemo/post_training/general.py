"""NeMo's `post_training/general.py` (Cosmos AR 4B/12B), kept: same flags, same meaning, our recipes.

    torchrun --nproc-per-node 8 -m cosmos_nemo.post_training.general --data_path ./my_tokens \
        --split_string 10,1,1 --log_dir ./experiments --global_batch_size 32 --micro_batch_size 2 --lr 1e-4 \
        --max_steps 300 --save_every_n_steps 100 --max_epochs 1 --tensor_model_parallel_size 8 \
        --model_path nvidia/Cosmos-1.0-Autoregressive-4B

Every flag maps onto a field of the `cosmos_ar_<size>_finetune` recipe (see --help); the reference's
defaults are kept. Differences, on purpose: data parallel is the world size / TP (the reference fixed it at
1), the run folder is <log_dir>/cosmos_nemo/autoregressive/<name>/ (printed at start), and the model size
may be given with --model_size instead of being parsed from the path.
"""

from __future__ import annotations

import argparse
import sys

from cosmos_nemo.post_training.common import add_reference_flags, run_reference
from cosmos_nemo.recipes import ar

RECIPES = {"4b": ar.cosmos_ar_4b_finetune, "12b": ar.cosmos_ar_12b_finetune, "tiny": ar.cosmos_ar_tiny_finetune}
# NeMo general.py's own defaults (ar_models.md §5.1).
DEFAULTS = dict(model_path="nvidia/Cosmos-1.0-Autoregressive-4B", tensor_model_parallel_size=2, max_steps=100,
                max_epochs=10, save_every_n_steps=100, global_batch_size=2, micro_batch_size=1, lr=5e-5,
                split_string="98,1,1")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="torchrun --nproc-per-node N -m cosmos_nemo.post_training.general",
        description="Post-train a Cosmos AR base model (4B/12B, or tiny on a CPU) on a token dataset, with the flags "
        "of NVIDIA's NeMo post_training/general.py. Each flag says which recipe field it sets.",
    )
    add_reference_flags(p, DEFAULTS, tuple(RECIPES))
    p.add_argument("--index_mapping_dir", "--index-mapping-dir", default=None,
                   help="accepted for compatibility and not used: the reader splits and samples documents without "
                   "index-cache files")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_intermixed_args(argv)  # overrides may sit between flags
    return run_reference(args, "general", RECIPES, tuple(RECIPES))


if __name__ == "__main__":
    sys.exit(main())
