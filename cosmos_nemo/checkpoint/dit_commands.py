"""`cosmos-nemo convert dit-import / dit-export`: the Cosmos DiT's released checkpoints ⇄ megatron dist-ckpt,
and between the Cosmos and diffusers layouts.

Sources read by both commands (models/dit/convert.py): a Cosmos `model.pt` / consolidated `.pt` /
`.safetensors` (Predict1 `net.*` + `logvar.*`, `net_ema.*`; Predict2/2.5 `net.*`), a Predict2.5 DCP
folder (`iter_*/model/` with `.metadata`), or a diffusers `CosmosTransformer3DModel` folder. Every
conversion is strict: a missing, unexpected or mis-shaped key stops it with the list (and, for a
checkpoint of another size, the named config it looks like)."""

from __future__ import annotations

import argparse

_MODELS = ("predict1_7b_t2w, predict1_7b_v2w, predict1_14b_t2w, predict1_14b_v2w, predict2_2b, predict2_14b, "
           "predict25_2b, predict25_14b, tiny_predict1_v2w, tiny_predict1_t2w, tiny_predict2, tiny_predict25")


def register(sub) -> None:
    common = dict(formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p = sub.add_parser(
        "dit-import",
        help="released Cosmos DiT (model.pt, DCP folder) or diffusers folder -> dist-ckpt model folder",
        description="Read a released Cosmos diffusion transformer and write a megatron dist-ckpt model folder that "
        "training starts from at any tensor/context/data parallel size. Sources: a Cosmos model.pt / .pt / "
        ".safetensors (weights_only loads; keys under net., net_ema. or bare, Predict1's logvar.* beside them), a "
        "Predict2.5 DCP folder (iter_*/model with .metadata) or a diffusers CosmosTransformer3DModel folder "
        "(config.json + diffusion_pytorch_model.safetensors). A diffusers folder has no Predict1 log-variance "
        "head: it keeps its initialisation, and the command says so.",
        **common,
    )
    p.add_argument("--checkpoint_path", "--checkpoint-path", dest="checkpoint_path", required=True,
                   help="released checkpoint file or folder (see above)")
    _model_flags(p, required=False)
    p.add_argument("--ema", action="store_true",
                   help="load the EMA weights (net_ema.*) of a Cosmos file that carries both net.* and net_ema.*")
    p.add_argument("--output", required=True, help="dist-ckpt folder to write (temporary name, renamed when complete)")
    p.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    p.set_defaults(func=_run_import)

    e = sub.add_parser(
        "dit-export",
        help="dist-ckpt (or run folder, or a released file) -> Cosmos model.pt or diffusers folder",
        description="Write a DiT's weights in NVIDIA's Cosmos layout (a model.pt with net.* and, for Predict1, "
        "logvar.*, as their inference scripts read it) or as a diffusers CosmosTransformer3DModel folder "
        "(loads with CosmosTransformer3DModel.from_pretrained). --checkpoint is a training run (run folder, "
        "checkpoints/, iter_* or model/ folder; the first two follow latest_checkpoint.txt) or any released "
        "source dit-import reads, which converts between the Cosmos and diffusers layouts directly. A LoRA run gives "
        "its recorded base with the adapter merged (lora-merge does the same, with the model from lora.json).",
        **common,
    )
    e.add_argument("--checkpoint", required=True, help="run / iter_* / dist-ckpt folder, or a released checkpoint")
    _model_flags(e, required=False)
    e.add_argument("--layout", choices=["cosmos", "diffusers"], default="cosmos",
                   help="cosmos: one file (.pt via torch.save, or .safetensors); diffusers: a folder")
    e.add_argument("--output", required=True, help="file (cosmos layout) or folder (diffusers layout) to write")
    e.add_argument("--ema", action="store_true",
                   help="export the EMA weights: a training run's ema/ checkpoint (trainer.ema_sigma_rel / ema_decay), "
                        "or a released --checkpoint's net_ema.* weights; written under net.* as the references' "
                        "model_ema_*.pt consolidations are")
    e.add_argument("--no-prefix", "--no_prefix", dest="no_prefix", action="store_true",
                   help="cosmos layout: write bare keys (no net. prefix), as the net's own state_dict has them")
    e.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                   help="cast the written tensors (default: float32, as the model holds them)")
    e.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    e.set_defaults(func=_run_export)
    from cosmos_nemo.checkpoint import consolidate

    consolidate.register(sub)  # dcp-to-pt: a run's checkpoint -> model.pt, model_ema_fp32.pt, model_ema_bf16.pt
    from cosmos_nemo.peft import lora_commands as lora_export

    lora_export.register(sub)  # lora-export (diffusers LoRA file), lora-merge (dit-export of a LoRA run)


def _model_flags(p, required: bool) -> None:
    p.add_argument("--model", required=required, default=None,
                   help=f"named DiT config: {_MODELS} (NVIDIA names such as Cosmos-Predict2.5-2B work too). Required "
                        "except for diffusers folders, whose config.json defines the architecture")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a DiT config field, e.g. --set logvar_head=False (repeatable)")


def _config(model, overrides, source=None):
    """The named config, or (without --model) the diffusers folder's config.json."""
    from pathlib import Path

    from cosmos_nemo.models.dit.config import dit_config
    from cosmos_nemo.models.dit.convert import config_from_diffusers

    from cosmos_nemo.checkpoint.commands import parse_set_flags

    fields = parse_set_flags(overrides)
    try:
        if model:
            return dit_config(model, **fields)
        if source is not None:
            root = Path(source)
            for folder in (root, root / "transformer"):
                if (folder / "config.json").is_file():
                    import json

                    return config_from_diffusers(json.loads((folder / "config.json").read_text()), **fields)
    except TypeError as err:
        raise ValueError(f"unknown DiT config field in --set: {err}") from err
    raise ValueError("--model is required (a named DiT config) unless the source is a diffusers folder with config.json")


def _run_import(args) -> int:
    from cosmos_nemo.checkpoint.convert import import_released

    try:
        cfg = _config(args.model, args.overrides, args.checkpoint_path)
        out = import_released(cfg, args.checkpoint_path, args.output, overwrite=args.overwrite, ema=args.ema)
    except (ValueError, FileNotFoundError, FileExistsError, KeyError) as err:  # incl. CheckpointMismatchError
        print(f"error: {err}")
        return 2
    print(f"wrote dist-ckpt model folder {out}")
    return 0


def export_dit(checkpoint, cfg, output, layout: str = "cosmos", ema: bool = False, no_prefix: bool = False,
               dtype=None, overwrite: bool = False):
    """The work of `dit-export` (see its --help); returns the written path."""
    from pathlib import Path

    from cosmos_nemo.checkpoint import dist as dist_ckpt
    from cosmos_nemo.checkpoint.convert import _single_process, _teardown, save_released
    from cosmos_nemo.checkpoint.run import resolve_model_folder
    from cosmos_nemo.models.dit import convert
    from cosmos_nemo.models.dit.model import build_dit_model

    out = Path(output)
    if layout == "cosmos" and out.suffix not in (".pt", ".pth", ".safetensors"):
        raise ValueError(f"a cosmos-layout output is one file ending in .pt, .pth or .safetensors, got {out}")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
    folder = resolve_model_folder(checkpoint) if Path(checkpoint).is_dir() else None
    if folder is not None and not (Path(folder) / "metadata.json").is_file():
        folder = None  # a DCP folder of NVIDIA's, not a megatron dist-ckpt: read as a released source
    if folder is not None and ema:
        if not (Path(folder).parent / "ema" / "metadata.json").is_file():
            raise FileNotFoundError(f"{Path(folder).parent} has no ema/ checkpoint: the run kept no EMA "
                                    "(trainer.ema_sigma_rel / trainer.ema_decay); drop --ema")
        folder = Path(folder).parent / "ema"
    own = _single_process()
    try:
        model = build_dit_model(cfg)
        if folder is not None:  # strict; a LoRA run's folder gives its recorded base + the merged adapter
            dist_ckpt.load_model([model], folder)
        else:
            convert.load_released(model, cfg, checkpoint, ema=ema)
        if layout == "diffusers":
            exported = convert.export_released(model, cfg, "diffusers")
        else:
            exported = convert.export_released(model, cfg)
            if not no_prefix:
                exported = convert.with_cosmos_prefix(exported)
    finally:
        _teardown(own)
    if dtype is not None:
        exported = {k: v.to(dtype) for k, v in exported.items()}
    if layout == "diffusers":
        return convert.save_diffusers(exported, cfg, out, overwrite=overwrite)
    return save_released(exported, out, overwrite=overwrite)


def _run_export(args) -> int:
    import torch

    try:
        cfg = _config(args.model, args.overrides, args.checkpoint)
        out = export_dit(args.checkpoint, cfg, args.output, layout=args.layout, ema=args.ema, no_prefix=args.no_prefix,
                         dtype=getattr(torch, args.dtype) if args.dtype else None, overwrite=args.overwrite)
    except (ValueError, FileNotFoundError, FileExistsError, KeyError) as err:
        print(f"error: {err}")
        return 2
    print(f"wrote {out}")
    return 0
