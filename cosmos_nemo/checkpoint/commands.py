"""`cosmos-nemo convert`: released Cosmos AR `model.pt` ⇄ megatron dist-ckpt (`ar-import`, `ar-export`), the
DiT's Cosmos / diffusers checkpoints ⇄ dist-ckpt (`dit-import`, `dit-export`, checkpoint/dit_commands.py), and
tensor-parallel shard/merge of released checkpoints (`shard-tp`, `merge-tp`, the equivalents of
cosmos-predict1's `shard_autoregressive_base_checkpoints.py` / `merge_autoregressive_tp_checkpoints.py`).

The conversions themselves are family-generic (checkpoint/convert.py); these commands reach the AR family
through its provider (`get_family("ar")`), whose declarative key map decides every key name and split."""

from __future__ import annotations

import argparse
import ast


def register(subparsers) -> None:
    convert = subparsers.add_parser(
        "convert",
        help="convert checkpoints: released Cosmos layout ⇄ megatron dist-ckpt, tensor-parallel shard/merge",
        description="Checkpoint conversions. Every conversion is strict: each source key is used and each "
        "target parameter filled, or the command stops with the list of mismatched keys and shapes.",
    )
    sub = convert.add_subparsers(dest="convert_command", metavar="CONVERSION")

    p = sub.add_parser(
        "ar-import",
        help="released Cosmos AR model.pt/.safetensors -> dist-ckpt model folder (loads at any TP/PP)",
        description="Read a released Cosmos AR checkpoint (NVIDIA's model.pt, with or without the 'model.' key "
        "prefix, or a .safetensors with the same keys; .pt files load with weights_only=True) and write a "
        "megatron dist-ckpt model folder that training starts from at any tensor/pipeline parallel size. "
        "QKV is fused per KV group and gate/up kept separately shardable, as megatron expects.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--checkpoint_path", "--checkpoint-path", dest="checkpoint_path", required=True,
                   help="released model.pt / .safetensors file, or a folder holding model.pt or model.safetensors")
    _model_flags(p)
    p.add_argument("--output", required=True, help="dist-ckpt folder to write (written to a temporary name, renamed when complete)")
    p.add_argument("--resize-vocab", "--resize_vocab", dest="resize_vocab", action="store_true",
                   help="when the checkpoint's vocabulary differs from the model's (tokenizer swap), resize the "
                        "embedding/output rows: new rows = mean of the old ones, surplus rows dropped (logged)")
    p.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    p.set_defaults(func=_run_import)

    e = sub.add_parser(
        "ar-export",
        help="dist-ckpt model folder (or run / iter_* folder) -> released Cosmos AR layout",
        description="Read the model weights of a training run (a run folder, its checkpoints/ folder — both follow "
        "latest_checkpoint.txt —, an iter_* folder or its model/ folder) and write them with the released Cosmos AR "
        "key names (layers.{i}.attention.wq, feed_forward.w1, ...), usable by NVIDIA's inference code. The "
        "equivalent of the reference's convert_distcp_to_pt.py for AR models.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    e.add_argument("--checkpoint", required=True, help="run folder, checkpoints/ folder, iter_* folder or dist-ckpt model/ folder")
    _model_flags(e)
    e.add_argument("--output", required=True, help="file to write: .pt (torch.save of a flat tensor dict) or .safetensors")
    e.add_argument("--no-prefix", "--no_prefix", dest="no_prefix", action="store_true",
                   help="write keys without the 'model.' prefix that released model.pt files carry")
    e.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                   help="cast the written tensors (default: as stored in the checkpoint)")
    e.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    e.set_defaults(func=_run_export)
    from cosmos_nemo.checkpoint import dit_commands

    dit_commands.register(sub)
    from cosmos_nemo.checkpoint import hf_commands

    hf_commands.register(sub)  # to-dcp / export-hf: the reference's convert_model_to_dcp / export_model
    _register_tp(sub)
    convert.set_defaults(func=lambda args: (convert.print_help(), 2)[1])


def _AR():
    """The AR family's provider: these commands convert its released files (the `ar-` commands)."""
    from cosmos_nemo.models.family import get_family

    return get_family("ar")


def _model_flags(p) -> None:
    p.add_argument("--model", required=True,
                   help="named AR config: 4b, 12b, 5b_v2w, 13b_v2w, tiny, tiny_v2w (never guessed from the path)")
    _set_flag(p)


def parse_set_flags(items) -> dict:
    """`--set FIELD=VALUE` items as config fields (values as Python literals where they parse, else strings)."""
    overrides = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set expects FIELD=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        try:
            overrides[key.strip()] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            overrides[key.strip()] = value
    return overrides


def _config(args):
    overrides = parse_set_flags(args.overrides)
    try:
        return _AR().named_config(args.model, **overrides)
    except TypeError as err:
        raise ValueError(f"unknown model config field in --set: {err}") from err


def _run_import(args) -> int:
    from cosmos_nemo.checkpoint.convert import import_released

    try:
        out = import_released(_config(args), args.checkpoint_path, args.output, overwrite=args.overwrite,
                              resize_vocab=args.resize_vocab)
    except (ValueError, FileNotFoundError, FileExistsError, KeyError) as err:  # incl. CheckpointMismatchError
        print(f"error: {err}")
        return 2
    print(f"wrote dist-ckpt model folder {out}")
    return 0


def _run_export(args) -> int:
    import torch

    from cosmos_nemo.checkpoint.convert import export_released

    try:
        out = export_released(
            args.checkpoint, _config(args), args.output, prefix="" if args.no_prefix else None,
            dtype=getattr(torch, args.dtype) if args.dtype else None, overwrite=args.overwrite,
        )
    except (ValueError, FileNotFoundError, FileExistsError, KeyError) as err:
        print(f"error: {err}")
        return 2
    print(f"wrote {out}")
    return 0


# ---------------------------------------------------------------------------------------------------
# Tensor-parallel shard / merge of released checkpoints (cosmos-predict1's scripts)

_SIZES = "4b, 12b, 5b_v2w, 13b_v2w, tiny, tiny_v2w"


def _register_tp(sub) -> None:
    common = dict(formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    s = sub.add_parser(
        "shard-tp",
        help="split a released Cosmos AR model.pt into tensor-parallel shards X_model_mp_{rank}.pt",
        description="The equivalent of cosmos-predict1's scripts/shard_autoregressive_base_checkpoints.py, for every "
        "named AR size. Reads --checkpoint_path X.pt (weights-only) and writes X_model_mp_{rank}.pt beside it for rank "
        "0..N-1: flat tensor dicts (torch.save) with the released key names, the 'model.' prefix kept as found. The "
        "split rules are the reference's: wq by attention head, wk/wv by KV head, w1/w3 along dim 0, wo/w2 along dim 1, "
        "tok_embeddings/output along dim 0, norms replicated. The checkpoint must match the named architecture "
        "exactly (every key used, every shape right), and N must divide the heads, KV groups, FFN width and "
        "vocabulary rows.",
        **common,
    )
    s.add_argument("--checkpoint_path", "--checkpoint-path", dest="checkpoint_path", required=True,
                   help="released model.pt / .pth / .safetensors to shard; shards are written beside it")
    _tp_flags(s)
    s.add_argument("--target_backend", "--target-backend", dest="target_backend", choices=["pytorch"], default="pytorch",
                   help="the reference's flag: only the PyTorch (unfused q/k/v, w1/w3) layout is written; Transformer "
                        "Engine layouts are megatron's, reached through ar-import")
    s.add_argument("--overwrite", action="store_true", help="replace shard files that exist")
    s.set_defaults(func=_run_shard)

    m = sub.add_parser(
        "merge-tp",
        help="merge tensor-parallel shards X_model_mp_{rank}.pt into one released model.pt",
        description="The equivalent of cosmos-predict1's scripts/merge_autoregressive_tp_checkpoints.py, for every named "
        "AR size. Reads X_model_mp_{rank}.pt for rank 0..N-1 next to --checkpoint_path X.pt (the file X.pt itself is "
        "not read; weights-only loads; a shard nested under 'model' or 'state_dict' is accepted) and writes "
        "--output_path. The inverse of shard-tp: split tensors are concatenated; replicated norms must be identical "
        "on every shard (the reference averages them; here a difference is an error naming the tensors).",
        **common,
    )
    m.add_argument("--checkpoint_path", "--checkpoint-path", dest="checkpoint_path", required=True,
                   help="X.pt whose shards X_model_mp_{rank}.pt are merged (e.g. a reference training run's "
                        "checkpoints/iter_000001000.pt)")
    _tp_flags(m)
    m.add_argument("--output_path", "--output-path", dest="output_path", required=True,
                   help="merged checkpoint to write: .pt/.pth (torch.save of a flat tensor dict) or .safetensors")
    m.add_argument("--overwrite", action="store_true", help="replace --output_path if it exists")
    m.set_defaults(func=_run_merge)


def _set_flag(p) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a model config field, e.g. --set vocab_size=64064 --set context_dim=384 (repeatable)")


def _tp_flags(p) -> None:
    p.add_argument("--model_size", "--model-size", dest="model_size", required=True,
                   help=f"named AR config whose key map drives the split: {_SIZES} (the reference accepts only 4b)")
    p.add_argument("--tensor_parallel_size", "--tensor-parallel-size", dest="tensor_parallel_size", type=int, required=True,
                   help="number of shards N (the reference's TP degree; 1, 2, 4 or 8 for the released models)")
    _set_flag(p)


def shard_paths(checkpoint_path, tp: int) -> list:
    """`X_model_mp_{rank}.pt` beside `X.pt` for every rank, as the reference scripts name them."""
    from pathlib import Path

    p = Path(checkpoint_path)
    return [p.with_name(f"{p.stem}_model_mp_{rank}.pt") for rank in range(tp)]


def _run_shard(args) -> int:
    import contextlib

    import torch

    from cosmos_nemo.io.atomic import atomic_path
    from cosmos_nemo.io.tensors import read_state_dict
    args.model = args.model_size
    try:
        if args.tensor_parallel_size < 1:
            raise ValueError(f"--tensor_parallel_size must be >= 1, got {args.tensor_parallel_size}")
        state = read_state_dict(args.checkpoint_path)
        parts = _AR().shard_released(state, _config(args), args.tensor_parallel_size)
        paths = shard_paths(args.checkpoint_path, args.tensor_parallel_size)
        existing = [str(p) for p in paths if p.exists()]
        if existing and not args.overwrite:
            raise FileExistsError(f"{', '.join(existing)} exist; pass --overwrite to replace them")
        with contextlib.ExitStack() as stack:  # every shard renamed into place only once all are written
            for path, part in zip(paths, parts):
                torch.save(part, stack.enter_context(atomic_path(path, suffix=".pt")))
    except (ValueError, FileNotFoundError, FileExistsError, KeyError) as err:
        print(f"error: {err}")
        return 2
    for path in shard_paths(args.checkpoint_path, args.tensor_parallel_size):
        print(f"wrote {path}")
    return 0


def _run_merge(args) -> int:
    from cosmos_nemo.checkpoint.convert import save_released
    from cosmos_nemo.io.tensors import read_state_dict
    args.model = args.model_size
    try:
        if args.tensor_parallel_size < 1:
            raise ValueError(f"--tensor_parallel_size must be >= 1, got {args.tensor_parallel_size}")
        paths = shard_paths(args.checkpoint_path, args.tensor_parallel_size)
        absent = [str(p) for p in paths if not p.is_file()]
        if absent:
            raise FileNotFoundError(f"shard files not found: {', '.join(absent)}")
        merged = _AR().merge_released([read_state_dict(p) for p in paths], _config(args))
        out = save_released(merged, args.output_path, overwrite=args.overwrite)
    except (ValueError, FileNotFoundError, FileExistsError, KeyError) as err:
        print(f"error: {err}")
        return 2
    print(f"wrote {out}")
    return 0
