"""`cosmos-nemo convert {ar-import, ar-export}`: released Cosmos AR `model.pt` ⇄ megatron dist-ckpt."""

from __future__ import annotations

import argparse
import ast


def register(subparsers) -> None:
    convert = subparsers.add_parser(
        "convert",
        help="convert checkpoints between the released Cosmos layout and megatron dist-ckpt",
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
    convert.set_defaults(func=lambda args: (convert.print_help(), 2)[1])


def _model_flags(p) -> None:
    p.add_argument("--model", required=True,
                   help="named AR config: 4b, 12b, 5b_v2w, 13b_v2w, tiny, tiny_v2w (never guessed from the path)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a model config field, e.g. --set vocab_size=64064 --set context_dim=384 (repeatable)")


def _config(args):
    from cosmos_nemo.models.ar.config import ar_config

    overrides = {}
    for item in args.overrides:
        if "=" not in item:
            raise ValueError(f"--set expects FIELD=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        try:
            overrides[key.strip()] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            overrides[key.strip()] = value
    try:
        return ar_config(args.model, **overrides)
    except TypeError as err:
        raise ValueError(f"unknown model config field in --set: {err}") from err


def _run_import(args) -> int:
    from cosmos_nemo.checkpoint.ar_convert import import_to_dist_ckpt
    from cosmos_nemo.checkpoint.cosmos_ar import CheckpointMismatchError

    try:
        out = import_to_dist_ckpt(args.checkpoint_path, _config(args), args.output, overwrite=args.overwrite,
                                  resize_vocab=args.resize_vocab)
    except (CheckpointMismatchError, ValueError, FileNotFoundError, FileExistsError, KeyError) as err:
        print(f"error: {err}")
        return 2
    print(f"wrote dist-ckpt model folder {out}")
    return 0


def _run_export(args) -> int:
    import torch

    from cosmos_nemo.checkpoint.ar_convert import export_from_dist_ckpt
    from cosmos_nemo.checkpoint.cosmos_ar import PREFIX, CheckpointMismatchError

    try:
        out = export_from_dist_ckpt(
            args.checkpoint, _config(args), args.output, prefix="" if args.no_prefix else PREFIX,
            dtype=getattr(torch, args.dtype) if args.dtype else None, overwrite=args.overwrite,
        )
    except (CheckpointMismatchError, ValueError, FileNotFoundError, FileExistsError, KeyError) as err:
        print(f"error: {err}")
        return 2
    print(f"wrote {out}")
    return 0
