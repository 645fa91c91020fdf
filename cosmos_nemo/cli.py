"""The `cosmos-nemo` command (also `python -m cosmos_nemo`).

Each room that offers commands has a `commands.py` with `register(subparsers)`, which adds its
subcommands, each with its own `--help` and a `func(args) -> int` default. This module only collects
them from the explicit list below: every listed module is imported, and one that is missing or fails to
import raises (a misspelled or broken room is an error, never a silently absent command).
"""

from __future__ import annotations

import argparse
import importlib
import sys

# The modules that contribute subcommands, in the order they are listed in `--help`. A room that adds a
# `commands.py` adds it here (tests/test_cli.py checks that none is left out).
_COMMAND_ROOMS = (
    "cosmos_nemo.quickstart",
    "cosmos_nemo.data_prep.commands",
    "cosmos_nemo.tokenizers.commands",
    "cosmos_nemo.recipes.commands",
    "cosmos_nemo.checkpoint.commands",
    "cosmos_nemo.inference.commands",
    "cosmos_nemo.eval.commands",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cosmos-nemo",
        description="Post-train NVIDIA Cosmos world foundation models on megatron-core: "
        "prepare data, train with recipes, evaluate with TokenBench.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_ROOMS:
        importlib.import_module(name).register(sub)  # an import error surfaces: the command list is fixed
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:  # Ctrl-C: one line, no traceback (`train` handles its own, parallel/lifeline.py)
        print(f"\ninterrupted: cosmos-nemo {args.command} stopped; the same command resumes or redoes what was "
              "not finished", file=sys.stderr)
        return 130
    except Exception as e:
        # A weight file that is missing, empty, truncated or not what it claims: its message names the file and
        # the problem (io/tensors.py). The module is looked up, not imported: the CLI stays free of torch.
        tensors = sys.modules.get("cosmos_nemo.io.tensors")
        if tensors is not None and isinstance(e, tensors.TensorFileError):
            print(f"error: {e}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
