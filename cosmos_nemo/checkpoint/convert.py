"""Whole-file conversions for any model family: a released checkpoint ⇄ a megatron dist-ckpt `model/` folder.

The dist-ckpt side is what training writes under `checkpoints/iter_*/model/` and reads to start or
resume, at any TP/PP. Conversion runs in one process (TP = PP = 1): dist-ckpt re-shards on load, so one
folder serves every parallel layout. The family's provider (models/family.py, found from the config's
`family` field) builds the model and maps the released keys; nothing here knows a family's key names.
Every file and folder is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Optional

import torch

from cosmos_nemo.io.atomic import atomic_dir, atomic_path
from cosmos_nemo.checkpoint.run import resolve_model_folder
from cosmos_nemo.models.family import family_of

RELEASED_SUFFIXES = (".pt", ".pth", ".safetensors")


def resolve_model_checkpoint(path: str | os.PathLike) -> Path:
    """The dist-ckpt model folder for a path that is one, an `iter_*` folder, a run's `checkpoints/`
    folder or a run folder (the last two follow `latest_checkpoint.txt`)."""
    folder = resolve_model_folder(path)
    if folder is None:
        raise FileNotFoundError(
            f"no megatron dist-ckpt model folder (with a .metadata file) at {path}; give a run folder, its "
            "checkpoints/ folder, an iter_* folder or the model/ folder inside it")
    return folder


def _single_process() -> bool:
    """Set up one-process parallel state unless it exists; True when this call set it up."""
    from megatron.core import parallel_state

    from cosmos_nemo import parallel

    if parallel_state.model_parallel_is_initialized():
        if parallel_state.get_tensor_model_parallel_world_size() * parallel_state.get_pipeline_model_parallel_world_size() != 1:
            raise RuntimeError("run checkpoint conversion in one process (TP = PP = 1)")
        return False
    parallel.setup()
    return True


def _teardown(own: bool) -> None:
    if own:
        from cosmos_nemo import parallel

        parallel.teardown()


def import_released(cfg, source: str | os.PathLike, output: str | os.PathLike, dtype: torch.dtype = torch.float32,
                    overwrite: bool = False, resize_vocab: bool = False, **load_options) -> Path:
    """Released checkpoint -> dist-ckpt model folder, strictly (every released key used, every parameter
    filled). `resize_vocab` lets a family resize vocabulary rows to the config (its `resize_vocab` field);
    `load_options` go to the family's `load_released` (e.g. the DiT's `ema=True`)."""
    from cosmos_nemo.checkpoint.dist import save_sharded

    family = family_of(cfg)
    if resize_vocab:
        if not (dataclasses.is_dataclass(cfg) and any(f.name == "resize_vocab" for f in dataclasses.fields(cfg))):
            raise ValueError(f"the {family.name!r} family's config has no resize_vocab field: its vocabulary cannot be resized")
        cfg = dataclasses.replace(cfg, resize_vocab=True)
    out = Path(output)
    if out.exists() and not overwrite:  # before building a model that may take minutes
        raise FileExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
    own = _single_process()
    try:
        model = family.build_model(cfg, True, True, dtype)
        family.load_released(model, cfg, str(source), **load_options)
        with atomic_dir(out, overwrite=overwrite) as tmp:
            save_sharded(model.sharded_state_dict(), tmp)
    finally:
        _teardown(own)
    return out


def _released_prefix(family) -> str:
    """The key prefix a family's released files carry (its provider's `released_prefix`, e.g. "model.")."""
    return getattr(family, "released_prefix", "")


def export_released(checkpoint: str | os.PathLike, cfg, output: str | os.PathLike, prefix: Optional[str] = None,
                    dtype: Optional[torch.dtype] = None, overwrite: bool = False) -> Path:
    """dist-ckpt model folder (or run / `iter_*` folder) -> the family's released layout, written as
    `.safetensors` or a torch `.pt`/`.pth` (a flat tensor dict) by the output's suffix.

    `prefix`: None keeps the family's released key names; a string replaces their shared prefix (""
    writes keys without Cosmos' `model.`). `dtype` casts every tensor (default: as the model holds them)."""
    from megatron.core import dist_checkpointing

    family = family_of(cfg)
    src = resolve_model_checkpoint(checkpoint)
    out = Path(output)
    if out.suffix not in RELEASED_SUFFIXES:
        raise ValueError(f"output {out} must end in {', '.join(RELEASED_SUFFIXES)}")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
    own = _single_process()
    try:
        model = family.build_model(cfg, True, True, torch.float32)
        state = dist_checkpointing.load(model.sharded_state_dict(), str(src), strict="raise_all")
        model.load_state_dict(state, strict=True)
        exported = family.export_released(model, cfg)
    finally:
        _teardown(own)
    if prefix is not None:
        old = _released_prefix(family)
        exported = {(prefix + k[len(old):] if k.startswith(old) else k): v for k, v in exported.items()}
    if dtype is not None:
        exported = {k: v.to(dtype) for k, v in exported.items()}
    save_released(exported, out, overwrite=overwrite)
    return out


def save_released(state: dict[str, torch.Tensor], output: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write a flat tensor dict atomically: safetensors for `.safetensors`, else `torch.save` (the format
    NVIDIA's scripts read)."""
    out = Path(output)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    with atomic_path(out, suffix=out.suffix, overwrite=overwrite) as tmp:
        if out.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(tensors, str(tmp))
        else:
            torch.save(tensors, tmp)
    return out
