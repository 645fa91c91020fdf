"""`convert lora-export` and `convert lora-merge` (registered by checkpoint/dit_commands.py).

Only the arguments live here; the work is in `peft/export.py`, imported when a command runs, so building
the `cosmos-nemo` parser imports no torch.
"""

from __future__ import annotations

# peft.export.DEFAULT_NAME (diffusers' LORA_WEIGHT_NAME_SAFE); repeated here so that --help needs no torch.
DEFAULT_NAME = "pytorch_lora_weights.safetensors"


def register(sub) -> None:
    import argparse

    common = dict(formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    source_help = ("a LoRA training run: its run folder or checkpoints/ folder (the latest complete checkpoint), an "
                   "iter_* folder, or its model/ folder; the model and LoRA settings come from the lora.json beside "
                   "the adapter")
    p = sub.add_parser(
        "lora-export",
        help="a DiT LoRA run's adapter -> diffusers/PEFT LoRA .safetensors (pipe.load_lora_weights)",
        description="Write the adapter of a DiT LoRA run as the LoRA file diffusers' Cosmos2_5_PredictBasePipeline."
        "save_lora_weights writes: keys transformer.transformer_blocks.{i}.attn1.to_q.lora_A.weight / .lora_B.weight "
        "(attn1 = self-attention, attn2 = cross-attention; to_q, to_k, to_v, to_out.0; ff.net.0.proj and ff.net.2 "
        "for the MLP), full matrices (gathered over TP), with the PEFT config (r, lora_alpha, target_modules) in the "
        "file's lora_adapter_metadata, so pipe.load_lora_weights(OUT) / transformer.load_lora_adapter(OUT, "
        "prefix='transformer') applies the same (alpha/rank) B A as the run. Only the adapter is read: the base "
        "model is not needed (load it in diffusers from the released or exported weights the run started from). "
        "A run without LoRA is an error (use dit-export).",
        **common,
    )
    p.add_argument("source", metavar="RUN_OR_ITER_FOLDER", help=source_help)
    p.add_argument("output", metavar="OUT",
                   help="the .safetensors file to write, or a folder that gets diffusers' default file name "
                        f"{DEFAULT_NAME}; written under a temporary name and renamed when complete")
    p.add_argument("--ema", action="store_true",
                   help="export the EMA adapter (the checkpoint's ema/ folder: trainer.ema_sigma_rel / ema_decay)")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32",
                   help="tensor type in the file; the adapters train in fp32, bf16/fp16 halve the file")
    p.add_argument("--bake-scale", "--bake_scale", dest="bake_scale", action="store_true",
                   help="multiply B by alpha/rank and record lora_alpha = rank, for readers that ignore the "
                        "lora_adapter_metadata entry (they assume scale 1); diffusers reads the metadata either way")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=_run_export)

    m = sub.add_parser(
        "lora-merge",
        help="a DiT LoRA run -> the merged full model (base + alpha/rank B A) in the Cosmos or diffusers layout",
        description="Write the fine-tuned model of a DiT LoRA run as released weights: the base the run recorded "
        "(lora.json's base path, read strictly) with the adapter merged into its linears, exactly as `convert "
        "dit-export` writes a full run (this is dit-export on a LoRA run, with the model config taken from "
        "lora.json). --layout cosmos: one model.pt-style file (net.* keys; .pt or .safetensors by OUT's suffix); "
        "--layout diffusers: a CosmosTransformer3DModel folder (config.json + diffusion_pytorch_model.safetensors).",
        **common,
    )
    m.add_argument("source", metavar="RUN_OR_ITER_FOLDER", help=source_help)
    m.add_argument("output", metavar="OUT", help="file (cosmos layout: .pt, .pth or .safetensors) or folder "
                                                  "(diffusers layout) to write")
    m.add_argument("--layout", choices=["cosmos", "diffusers"], default="cosmos",
                   help="cosmos: NVIDIA's layout for the model's generation (Predict1 or 2.x keys), as their "
                        "inference reads it; diffusers: a CosmosTransformer3DModel folder")
    m.add_argument("--ema", action="store_true",
                   help="merge the EMA adapter (the checkpoint's ema/ folder) instead of the regular one")
    m.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default=None,
                   help="cast the written tensors (default: float32, as the merged model holds them)")
    m.add_argument("--no-prefix", "--no_prefix", dest="no_prefix", action="store_true",
                   help="cosmos layout: write bare keys (no net. prefix), as the net's own state_dict has them")
    m.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    m.set_defaults(func=_run_merge)


def _run_export(args) -> int:
    from cosmos_nemo.peft.export import _DTYPES, export_lora_run

    try:
        out = export_lora_run(args.source, args.output, ema=args.ema, dtype=_DTYPES[args.dtype],
                              bake_scale=args.bake_scale, overwrite=args.overwrite)
    except (ValueError, FileNotFoundError, FileExistsError, KeyError) as err:  # incl. LoRAError
        print(f"error: {err}")
        return 2
    print(f"wrote {out}")
    return 0


def _run_merge(args) -> int:
    from cosmos_nemo.peft.export import _DTYPES, merge_lora_run

    try:
        out = merge_lora_run(args.source, args.output, layout=args.layout, ema=args.ema,
                             dtype=_DTYPES[args.dtype] if args.dtype else None, no_prefix=args.no_prefix,
                             overwrite=args.overwrite)
    except (ValueError, FileNotFoundError, FileExistsError, KeyError) as err:
        print(f"error: {err}")
        return 2
    print(f"wrote {out}")
    return 0
