"""megatron dist-ckpt I/O: any sharded state dict to and from a folder, at any TP/PP.

`dist_checkpointing` stores every tensor as a global `ShardedTensor`, so a folder written by 2 TP ranks
loads into 1, or 4, by re-sharding on read. Every function here is a collective over the ranks that
hold the state (every rank of the run). Loading is strict: a key the folder lacks is an error.

Model chunks may be megatron-wrapped (DDP, Float16Module) or bare modules (inference); the state dict
is always the bare model's, so the keys are the same either way.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing

from cosmos_nemo.models.family import unwrap as bare_model


def model_sharded_state_dict(model_chunks) -> dict:
    """Sharded state dict of the (unwrapped) model chunks, keyed like megatron's own checkpoints."""
    if len(model_chunks) != 1:
        raise NotImplementedError("virtual pipeline stages (several model chunks per rank) are not supported")
    return bare_model(model_chunks[0]).sharded_state_dict()


def save_sharded(sharded_state_dict: dict, directory) -> None:
    """Write a dist-ckpt folder (collective: every rank calls it). The folder must be new or empty."""
    if not dist.is_initialized() or dist.get_rank() == 0:
        os.makedirs(directory, exist_ok=True)
    if dist.is_initialized():
        dist.barrier()
    dist_checkpointing.save(sharded_state_dict, str(directory))


def load_sharded(sharded_state_dict: dict, directory) -> dict:
    """Read a dist-ckpt folder into the given sharded layout (collective). Missing keys are an error."""
    if not (os.path.isdir(directory) and os.path.isfile(os.path.join(directory, ".metadata"))):
        raise FileNotFoundError(f"{directory} is not a megatron dist-ckpt folder (no .metadata file)")
    return dist_checkpointing.load(sharded_state_dict, str(directory), strict="raise_all")


def save_model(model_chunks, directory) -> None:
    save_sharded(model_sharded_state_dict(model_chunks), directory)


def load_model(model_chunks, directory) -> None:
    """Load weights saved by `save_model` (or the `model/` or `ema/` folder of a training checkpoint), at
    any TP/PP, into these chunks; every parameter must be in the folder."""
    state = load_sharded(model_sharded_state_dict(model_chunks), directory)
    bare_model(model_chunks[0]).load_state_dict(state, strict=True)
