"""megatron dist-ckpt I/O: any sharded state dict to and from a folder, at any TP/PP.

`dist_checkpointing` stores every tensor as a global `ShardedTensor`, so a folder written by 2 TP ranks
loads into 1, or 4, by re-sharding on read. Every function here is a collective over the ranks that
hold the state (every rank of the run). Loading is strict: a key the folder lacks is an error.

Model chunks may be megatron-wrapped (DDP, Float16Module) or bare modules (inference); the state dict
is always the bare model's, so the keys are the same either way.

LoRA models (peft/lora.py) save their adapters only, with a `lora.json` beside them naming the base
weights, the model config and the adapter's settings. Loading such a folder into a LoRA model loads the
adapters strictly after checking that they fit (same blocks, linears, rank); loading it into a plain
model materialises the fine-tuned model: the recorded base (strict), the adapters, merged into the weights.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing

from cosmos_nemo.models.family import unwrap as bare_model
from cosmos_nemo.parallel import lifeline
from cosmos_nemo.peft import lora

LORA_INFO = "lora.json"


def model_sharded_state_dict(model_chunks) -> dict:
    """Sharded state dict of the (unwrapped) model chunks, keyed like megatron's own checkpoints; a LoRA
    model's holds its adapters only."""
    if len(model_chunks) != 1:
        raise NotImplementedError("virtual pipeline stages (several model chunks per rank) are not supported")
    model = bare_model(model_chunks[0])
    state = model.sharded_state_dict()
    if lora.is_lora_model(model):
        state = {k: v for k, v in state.items() if lora.is_adapter_key(k)}
    return state


def save_sharded(sharded_state_dict: dict, directory) -> None:
    """Write a dist-ckpt folder (collective: every rank calls it). The folder must be new or empty."""
    if not dist.is_initialized() or dist.get_rank() == 0:
        os.makedirs(directory, exist_ok=True)
    if dist.is_initialized():
        dist.barrier()
    lifeline.checkpoint_writers_die_with_us()
    dist_checkpointing.save(sharded_state_dict, str(directory))


def load_sharded(sharded_state_dict: dict, directory) -> dict:
    """Read a dist-ckpt folder into the given sharded layout (collective). Missing keys are an error."""
    if not (os.path.isdir(directory) and os.path.isfile(os.path.join(directory, ".metadata"))):
        raise FileNotFoundError(f"{directory} is not a megatron dist-ckpt folder (no .metadata file)")
    return dist_checkpointing.load(sharded_state_dict, str(directory), strict="raise_all")


def save_model(model_chunks, directory) -> None:
    save_sharded(model_sharded_state_dict(model_chunks), directory)
    write_lora_info(model_chunks, directory)


def write_lora_info(model_chunks, directory) -> None:
    """Beside a LoRA model's adapter checkpoint: `lora.json` (what the adapters fit, and the base)."""
    info = getattr(bare_model(model_chunks[0]), "lora_info", None)
    if info is not None and (not dist.is_initialized() or dist.get_rank() == 0):
        from cosmos_nemo.io.atomic import atomic_write_text

        atomic_write_text(Path(directory) / LORA_INFO, json.dumps(info, indent=1) + "\n")


def read_lora_info(directory) -> dict | None:
    path = Path(directory) / LORA_INFO
    return json.loads(path.read_text()) if path.is_file() else None


def load_model(model_chunks, directory) -> None:
    """Load weights saved by `save_model` (or the `model/` or `ema/` folder of a training checkpoint), at
    any TP/PP, into these chunks; every parameter must be in the folder. A LoRA folder loads into a LoRA
    model (adapters only, checked to fit) or, into a plain model, as its base plus merged adapters."""
    model = bare_model(model_chunks[0])
    info = read_lora_info(directory)
    if info is not None and not lora.is_lora_model(model):
        return _materialise_lora(model_chunks, directory, info)
    if lora.is_lora_model(model):
        if info is None:
            raise lora.LoRAError(f"{directory} holds no LoRA adapter (no {LORA_INFO}), but the model has adapters: "
                                 "pass the run folder of a LoRA run")
        lora.check_fits(model, info["adapter"], str(directory))
    state = load_sharded(model_sharded_state_dict(model_chunks), directory)
    if lora.is_lora_model(model):
        result = model.load_state_dict(state, strict=False)
        base_missing = [k for k in result.missing_keys if lora.is_adapter_key(k)]
        if base_missing or result.unexpected_keys:
            raise lora.LoRAError(f"{directory}: adapter keys missing {base_missing[:5]}, unexpected "
                                 f"{result.unexpected_keys[:5]}")
    else:
        model.load_state_dict(state, strict=True)


def _materialise_lora(model_chunks, directory, info: dict) -> None:
    """A plain model from a LoRA checkpoint: the recorded base weights (strict), the adapters on top,
    merged into the weights, and the adapters removed again."""
    from cosmos_nemo.checkpoint import run as run_folder
    from cosmos_nemo.models.family import get_family

    model = bare_model(model_chunks[0])
    family = get_family(info["family"])
    cfg = family.config_from_dict(dict(info["model"]))
    base = info.get("base")
    if not base or not Path(base).exists():
        raise FileNotFoundError(f"{directory} is a LoRA adapter on the base weights {base!r}, which are not there: "
                                "put them back at that path (the run's checkpoint.pretrained)")
    run_folder.load_pretrained([model], family, cfg, base)
    lora.apply_lora(model, lora.LoRAConfig(**info["config"]), seed=0)
    model.lora_info = info
    load_model([model], directory)
    lora.merge_lora(model)
    lora.remove_lora(model)
