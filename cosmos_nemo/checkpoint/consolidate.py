"""`cosmos-nemo convert dcp-to-pt`: a training checkpoint's weights as the consolidated `.pt` files NVIDIA's
references write and read (diffusion_models.md §10), in the model's released key layout.

Predict2.5's `scripts/convert_distcp_to_pt.py $CKPT/model $CKPT` turns a DCP `model/` folder into:

- `model.pt`: the regular weights under `net.*` and the EMA weights under `net_ema.*` (one file, fp32);
- `model_ema_fp32.pt`: the EMA weights alone, renamed `net_ema.` -> `net.`, in fp32;
- `model_ema_bf16.pt`: the same in bf16 (what inference loads);

and stops when the checkpoint has no EMA. Here the source is a cosmos-nemo checkpoint (`iter_*/model/` and
`iter_*/ema/`, megatron dist-ckpt at any TP/PP) and the keys are whatever the model family's
`export_released` writes: the Cosmos 1.0 layout for Predict1 configs (`net.blocks.block0...`, `logvar.*`
beside `net.*`), the Cosmos 2.x layout for Predict2/2.5 (`net.blocks.0.self_attn...`). With
`predict1=True` (`--predict1-names`) the files are named as Predict1's FSDP trainer names them instead:
`iter_{N:09d}_reg_model.pt` (regular) and `iter_{N:09d}_ema_model.pt` (EMA), both `net.*` in fp32.

Notes on the DiT's log-variance head (Predict1): it sits beside the net as `logvar.*`. In `model.pt` it is the
regular one (the references keep no EMA of it); the EMA files carry the EMA run's own copy, as `convert
dit-export --ema` writes it.

AR runs (no EMA in their references): `model.pt` holds the regular weights in the released AR layout
(`model.layers.0...`); a run that kept an EMA (`ema/`) also gets `model_ema_fp32.pt` / `model_ema_bf16.pt`.

Every file is a flat tensor dict (`torch.load(..., weights_only=True)` reads it), written under a temporary
name and renamed only once all of them are complete.
"""

from __future__ import annotations

import argparse
import contextlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

MODEL_PT, EMA_FP32_PT, EMA_BF16_PT = "model.pt", "model_ema_fp32.pt", "model_ema_bf16.pt"
EMA_PREFIX = "net_ema."  # the EMA copy's prefix in a DiT model.pt (the regular net's is the family's "net.")
_ITER_RE = re.compile(r"^iter_(\d+)$")
_NO_EMA_HELP = ("train with trainer.ema_sigma_rel=0.1 (the references' power EMA) or trainer.ema_decay to keep one, "
                "or pass --no-ema to write only the regular weights as model.pt")


class ConsolidateError(ValueError):
    """The checkpoint cannot be consolidated as asked; the message says why and what to do."""


def predict1_names(step: int) -> tuple[str, str]:
    """Predict1's names of a checkpoint's regular and EMA weight files."""
    return f"iter_{step:09d}_reg_model.pt", f"iter_{step:09d}_ema_model.pt"


@dataclass
class CheckpointSource:
    """Where a checkpoint's weights are: its `model/` folder, its `ema/` folder (None: the run kept no EMA),
    the run folder holding its config.yaml (None for a checkpoint outside a run) and its step (from the
    `iter_<N>` folder name; None when the folder is not named so)."""

    model_dir: Path
    ema_dir: Optional[Path]
    run_dir: Optional[Path]
    step: Optional[int]


def locate(checkpoint) -> CheckpointSource:
    """The checkpoint `checkpoint` names: an `iter_*` folder, its `model/` (or `ema/`) subfolder, or a run
    folder / its `checkpoints/` folder (their latest complete checkpoint)."""
    from cosmos_nemo.checkpoint.run import resolve_model_folder

    path = Path(checkpoint)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if not path.is_dir():
        raise ConsolidateError(f"{path} is a file; give a training checkpoint folder: an iter_* folder, its model/ "
                               "folder, or a run folder (its latest checkpoint)")
    folder = resolve_model_folder(path)
    if folder is None:
        raise ConsolidateError(f"{path} is not a training checkpoint: expected an iter_* folder holding model/ "
                               "(a megatron dist-ckpt with .metadata), that model/ folder, or a run folder with "
                               "checkpoints/")
    folder = Path(folder)
    if folder.name == "ema" and (folder.parent / "model" / ".metadata").is_file():
        folder = folder.parent / "model"
    if not (folder / "metadata.json").is_file():
        raise ConsolidateError(
            f"{folder} is a torch DCP folder without megatron's metadata.json (NVIDIA's own Predict2.5 checkpoint), "
            "not a cosmos-nemo training checkpoint: NVIDIA's scripts/convert_distcp_to_pt.py converts it, or export "
            "its weights with `cosmos-nemo convert dit-export --checkpoint DIR --model NAME [--ema]`")
    iter_dir = folder.parent
    ema = iter_dir / "ema"
    ema_dir = ema if (ema / ".metadata").is_file() and (ema / "metadata.json").is_file() else None
    match = _ITER_RE.match(iter_dir.name)
    run = iter_dir.parent.parent  # <run>/checkpoints/iter_N
    run_dir = run if iter_dir.parent.name == "checkpoints" and (run / "config.yaml").is_file() else None
    return CheckpointSource(folder, ema_dir, run_dir, int(match.group(1)) if match else None)


def model_config(source: CheckpointSource, model: Optional[str] = None, overrides: Sequence[str] = ()):
    """(family, model config): the run's config.yaml (`read_model_config`), or, for a checkpoint outside a run,
    the named DiT config `model` with `--set` overrides. Returns also a note for the user (or None)."""
    from cosmos_nemo.checkpoint.run import read_model_config
    from cosmos_nemo.models.family import family_of

    if source.run_dir is not None:
        family, cfg = read_model_config(source.run_dir)
        note = f"note: --model {model} ignored: {source.run_dir / 'config.yaml'} defines the model" if model else None
        return family, cfg, note
    if not model:
        raise ConsolidateError(f"no run config.yaml above {source.model_dir} (checkpoints written by `cosmos-nemo "
                               "train` have one): name the DiT architecture with --model")
    from cosmos_nemo.checkpoint.dit_commands import _config

    cfg = _config(model, list(overrides))
    return family_of(cfg), cfg, None


def _released(family, cfg, folder: Path) -> dict:
    """The weights of a dist-ckpt folder in the family's released layout (a fresh model per folder: exported
    tensors may share the model's memory)."""
    import torch
    from megatron.core.dist_checkpointing.core import CheckpointingException

    from cosmos_nemo.checkpoint import dist as dist_ckpt

    model = family.build_model(cfg, True, True, torch.float32)
    try:
        dist_ckpt.load_model([model], folder)
    except CheckpointingException as err:
        raise ConsolidateError(f"{folder} does not hold the weights of the configured {family.name} model "
                               f"({getattr(cfg, 'name', type(cfg).__name__)}): {err}") from None
    return family.export_released(model, cfg)


def _cast(state: dict, dtype) -> dict:
    return {k: v.detach().to(device="cpu", dtype=dtype).contiguous() for k, v in state.items()}


def consolidate(checkpoint, out_dir, no_ema: bool = False, predict1: bool = False, model: Optional[str] = None,
                overrides: Sequence[str] = (), overwrite: bool = False, log=print) -> list[Path]:
    """The work of `convert dcp-to-pt` (see its --help); returns the written files."""
    import torch

    from cosmos_nemo.checkpoint.convert import _single_process, _teardown
    from cosmos_nemo.io.atomic import atomic_path

    source = locate(checkpoint)
    family, cfg, note = model_config(source, model, overrides)
    if note:
        log(note)
    dit = family.name == "dit"
    ema_dir = None if no_ema else source.ema_dir
    if dit and not no_ema and ema_dir is None:
        raise ConsolidateError(f"{source.model_dir.parent} has no ema/ checkpoint: the run kept no EMA weights; "
                               + _NO_EMA_HELP)
    if predict1 and not dit:
        raise ConsolidateError(f"--predict1-names gives Predict1's diffusion file names; {source.model_dir.parent} is "
                               f"a {family.name!r} run, whose weights are written as {MODEL_PT}")
    if predict1 and source.step is None:
        raise ConsolidateError(f"--predict1-names takes the step N of iter_N_*_model.pt from the checkpoint folder's "
                               f"name, but {source.model_dir.parent.name!r} is not an iter_<N> folder")

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConsolidateError(f"{out} is a file; OUT_DIR is the folder the .pt files are written to")
    if predict1:
        reg_name, ema_name = predict1_names(source.step)
        names = [reg_name] + ([ema_name] if ema_dir is not None else [])
    else:
        names = [MODEL_PT] + ([EMA_FP32_PT, EMA_BF16_PT] if ema_dir is not None else [])
    existing = [str(out / n) for n in names if (out / n).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{', '.join(existing)} exist; pass --overwrite to replace them")

    own = _single_process()
    try:
        regular = _released(family, cfg, source.model_dir)
        averaged = _released(family, cfg, ema_dir) if ema_dir is not None else None
    finally:
        _teardown(own)

    prefix = getattr(family, "released_prefix", "")
    # (name, state maker): each file's tensors are made just before it is written (bf16 copies one at a time)
    files: list = []
    if predict1:
        files.append((names[0], lambda: _cast(regular, torch.float32)))
        if averaged is not None:
            files.append((names[1], lambda: _cast(averaged, torch.float32)))
    else:
        combined = dict(regular)
        if dit and averaged is not None:  # net_ema.* beside net.*; the EMA's logvar.* is not a net weight
            combined.update({EMA_PREFIX + k[len(prefix):]: v for k, v in averaged.items() if k.startswith(prefix)})
        files.append((MODEL_PT, lambda: combined))
        if averaged is not None:
            files.append((EMA_FP32_PT, lambda: _cast(averaged, torch.float32)))
            files.append((EMA_BF16_PT, lambda: _cast(averaged, torch.bfloat16)))

    written = []
    with contextlib.ExitStack() as stack:  # every file renamed into place only once all are written
        for name, make in files:
            tmp = stack.enter_context(atomic_path(out / name, suffix=".pt", overwrite=overwrite))
            torch.save(make(), tmp)
            written.append(out / name)
    return written


def register(sub) -> None:
    p = sub.add_parser(
        "dcp-to-pt",
        help="training checkpoint (dist-ckpt) -> model.pt, model_ema_fp32.pt, model_ema_bf16.pt as NVIDIA's "
             "convert_distcp_to_pt.py writes them",
        description="Consolidate a training checkpoint into the .pt files NVIDIA's references write and their "
        "inference reads, in the model's released key layout (Cosmos 1.0 keys for Predict1 configs, Cosmos 2.x for "
        "Predict2/2.5, the released AR layout for AR runs). For a DiT, as Predict2.5's "
        f"scripts/convert_distcp_to_pt.py: {MODEL_PT} (regular weights under net.*, EMA weights under net_ema.*, "
        f"fp32), {EMA_FP32_PT} (the EMA weights renamed net_ema. -> net., fp32) and {EMA_BF16_PT} (the same in bf16, "
        "for inference: generate diffusion --checkpoint-path OUT_DIR/model_ema_bf16.pt --model NAME, or NVIDIA's "
        "examples/inference.py --checkpoint-path). A DiT checkpoint without EMA weights is an error, as in the "
        "reference: " + _NO_EMA_HELP + ". An AR run gets "
        f"{MODEL_PT} (regular weights) and, when it kept an EMA, {EMA_FP32_PT} / {EMA_BF16_PT}. Files load with "
        "torch.load(weights_only=True) and are written under temporary names, renamed once all are complete.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("checkpoint_dir", metavar="CHECKPOINT_DIR",
                   help="an iter_* checkpoint folder, its model/ subfolder (as the reference takes $CKPT/model), or a "
                        "run folder / its checkpoints/ folder (the latest complete checkpoint); its EMA is the iter_* "
                        "folder's ema/, the model config the run's config.yaml")
    p.add_argument("out_dir", metavar="OUT_DIR", help="folder to write the .pt files to (created if missing)")
    p.add_argument("--no-ema", "--no_ema", dest="no_ema", action="store_true",
                   help=f"write only the regular weights, as {MODEL_PT} with net.* keys (or only "
                        "iter_N_reg_model.pt with --predict1-names), even when the checkpoint has an ema/ folder")
    p.add_argument("--predict1-names", "--predict1_names", dest="predict1", action="store_true",
                   help="DiT: name the files as Predict1's trainer does, instead of the Predict2.5 names: "
                        "iter_{N:09d}_reg_model.pt (regular weights) and iter_{N:09d}_ema_model.pt (EMA weights), "
                        "both net.* in fp32, N from the iter_<N> folder name (copy one to "
                        "checkpoints/<Cosmos-Predict1-model>_post-trained/model.pt for Predict1's inference)")
    p.add_argument("--model", default=None,
                   help="named DiT config, only for a checkpoint outside a run folder (no config.yaml to read the "
                        "model from), e.g. tiny_predict25 or predict25_2b; a run's config.yaml takes precedence")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="with --model: override a DiT config field, e.g. --set logvar_head=False (repeatable)")
    p.add_argument("--overwrite", action="store_true", help="replace output files that exist")
    p.set_defaults(func=_run)


def _run(args) -> int:
    try:
        written = consolidate(args.checkpoint_dir, args.out_dir, no_ema=args.no_ema, predict1=args.predict1,
                              model=args.model, overrides=args.overrides, overwrite=args.overwrite)
    except (ValueError, KeyError, OSError) as err:  # incl. ConsolidateError, missing/existing files, a full disk
        print(f"error: {err}")
        return 2
    for path in written:
        print(f"wrote {path}")
    return 0
