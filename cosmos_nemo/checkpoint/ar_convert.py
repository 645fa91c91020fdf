"""Whole-file AR conversions: a released Cosmos `model.pt` ⇄ a megatron dist-ckpt `model/` folder.

The dist-ckpt side is what training writes under `checkpoints/iter_*/model/` and reads to start or
resume, at any TP/PP. Conversion runs in one process (TP=PP=1): dist-ckpt re-shards on load, so the
folder serves every parallel layout. Both directions write to a temporary name and rename when complete.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Optional

import torch

from cosmos_nemo.checkpoint.cosmos_ar import PREFIX, export_cosmos_state_dict, load_cosmos_checkpoint
from cosmos_nemo.models.ar.config import ARModelConfig


def resolve_model_checkpoint(path: str | os.PathLike) -> Path:
    """The dist-ckpt model folder for a path that is one, an `iter_*` folder, a run's `checkpoints/`
    folder or a run folder (the last two follow `latest_checkpoint.txt`)."""
    p = Path(path)
    candidates = [p, p / "model"]
    for root in (p, p / "checkpoints"):
        latest = root / "latest_checkpoint.txt"
        if latest.is_file():
            name = latest.read_text().strip()
            candidates += [root / name / "model", root / name]
    for c in candidates:
        if (c / ".metadata").is_file():
            return c
    raise FileNotFoundError(
        f"no megatron dist-ckpt model folder (with a .metadata file) at {p}; give a run folder, its "
        "checkpoints/ folder, an iter_* folder or the model/ folder inside it"
    )


def _single_process():
    from megatron.core import parallel_state

    from cosmos_nemo import parallel

    if parallel_state.model_parallel_is_initialized():
        if parallel_state.get_tensor_model_parallel_world_size() * parallel_state.get_pipeline_model_parallel_world_size() != 1:
            raise RuntimeError("run checkpoint conversion in one process (TP = PP = 1)")
        return False
    parallel.setup()
    return True


def _atomic_dir(final: Path, overwrite: bool) -> Path:
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} exists; pass overwrite=True (--overwrite) to replace it")
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    return tmp


def import_to_dist_ckpt(source: str | os.PathLike, cfg: ARModelConfig, output: str | os.PathLike,
                        dtype: torch.dtype = torch.float32, overwrite: bool = False, resize_vocab: bool = False) -> Path:
    """Released checkpoint -> dist-ckpt model folder (strict key accounting; optional vocab resize)."""
    from megatron.core import dist_checkpointing

    from cosmos_nemo import parallel
    from cosmos_nemo.models.ar.model import build_ar_model

    out = Path(output)
    tmp = _atomic_dir(out, overwrite)
    own = _single_process()
    try:
        model = build_ar_model(cfg, dtype=dtype, perform_initialization=False)
        load_cosmos_checkpoint(model, source, resize_vocab=resize_vocab)
        tmp.mkdir(parents=True)
        dist_checkpointing.save(model.sharded_state_dict(), str(tmp))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if own:
            parallel.teardown()
    return out


def export_from_dist_ckpt(checkpoint: str | os.PathLike, cfg: ARModelConfig, output: str | os.PathLike,
                          prefix: str = PREFIX, dtype: Optional[torch.dtype] = None, overwrite: bool = False) -> Path:
    """dist-ckpt model folder (or run/iter folder) -> released layout, `.safetensors` or `.pt` by suffix."""
    from megatron.core import dist_checkpointing

    from cosmos_nemo import parallel
    from cosmos_nemo.models.ar.model import build_ar_model

    src = resolve_model_checkpoint(checkpoint)
    out = Path(output)
    if out.suffix not in (".pt", ".pth", ".safetensors"):
        raise ValueError(f"output {out} must end in .pt, .pth or .safetensors")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
    own = _single_process()
    try:
        model = build_ar_model(cfg, perform_initialization=False)
        state = dist_checkpointing.load(model.sharded_state_dict(), str(src), strict="raise_all")
        model.load_state_dict(state, strict=True)
        exported = export_cosmos_state_dict(model, prefix=prefix)
    finally:
        if own:
            parallel.teardown()
    if dtype is not None:
        exported = {k: v.to(dtype) for k, v in exported.items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        if out.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in exported.items()}, str(tmp))
        else:
            torch.save(exported, tmp)
        tmp.replace(out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out
