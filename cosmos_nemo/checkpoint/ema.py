"""Exponential moving average of the weights, saved with each checkpoint as its own dist-ckpt (`ema/`).

`shadow = decay * shadow + (1 - decay) * weights` after every optimizer step, kept in fp32 on each rank
for its own parameter shards. The `ema/` folder has the same keys and sharding as `model/`, so it loads
at any TP/PP and converters can read it as a model checkpoint (EMA extraction).
"""

from __future__ import annotations

import torch
from megatron.core.dist_checkpointing.dict_utils import dict_list_map_inplace
from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory

from cosmos_nemo.checkpoint import dist as dist_ckpt


class EMA:
    def __init__(self, model_chunks, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must lie in (0, 1), got {decay}")
        self.decay = decay
        self.module = dist_ckpt.bare_model(model_chunks[0])
        self.shadow = {name: p.detach().float().clone() for name, p in self.module.named_parameters()}

    @torch.no_grad()
    def update(self) -> None:
        for name, p in self.module.named_parameters():
            self.shadow[name].mul_(self.decay).add_(p.detach().float(), alpha=1.0 - self.decay)

    def sharded_state_dict(self, model_chunks) -> dict:
        """The model's sharded state dict with every parameter's data replaced by its EMA."""
        by_id = {id(p): self.shadow[name] for name, p in self.module.named_parameters()}
        state = dist_ckpt.model_sharded_state_dict(model_chunks)

        def swap(item):
            if isinstance(item, (ShardedTensor, ShardedTensorFactory)) and id(item.data) in by_id:
                item.data = by_id[id(item.data)].to(item.data.dtype)
            return item

        dict_list_map_inplace(swap, state)
        return state

    def save(self, model_chunks, directory) -> None:
        dist_ckpt.save_sharded(self.sharded_state_dict(model_chunks), directory)

    def load(self, model_chunks, directory) -> None:
        loaded = dist_ckpt.load_sharded(dist_ckpt.model_sharded_state_dict(model_chunks), directory)
        for name in self.shadow:
            self.shadow[name].copy_(loaded[name].float())
