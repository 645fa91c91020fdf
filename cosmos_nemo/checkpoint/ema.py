"""Exponential moving average of the weights, saved with each checkpoint as its own dist-ckpt (`ema/`).

`shadow = beta * shadow + (1 - beta) * weights` after every optimizer step, kept in fp32 on each rank for its
own parameter shards, with either a constant `beta = decay`, or the EDM2 power EMA of the Cosmos diffusion
references (diffusion_models.md §6): `beta_i = (1 - 1/(i+1)) ** (gamma + 1)` at optimizer step i (0 at the
first step, so the average starts from the weights), gamma the largest real root of
`gamma^3 + 7 gamma^2 + (16 - sigma_rel^-2) gamma + (12 - sigma_rel^-2)` (sigma_rel 0.1: gamma = 6.94). The `ema/` folder has the same keys and sharding as `model/`, so it loads
at any TP/PP and converters can read it as a model checkpoint (EMA extraction).
"""

from __future__ import annotations

import torch
from megatron.core.dist_checkpointing.dict_utils import dict_list_map_inplace
from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory

from cosmos_nemo.checkpoint import dist as dist_ckpt


def power_ema_gamma(sigma_rel: float) -> float:
    """The power-EMA exponent gamma of a relative standard deviation sigma_rel (EDM2)."""
    import numpy as np

    if not 0.0 < sigma_rel < 0.28:  # gamma > 0 needs sigma_rel^-2 > 12
        raise ValueError(f"power EMA sigma_rel must lie in (0, 0.28), got {sigma_rel}")
    roots = np.roots([1.0, 7.0, 16.0 - sigma_rel**-2, 12.0 - sigma_rel**-2])
    return float(max(r.real for r in roots if abs(r.imag) < 1e-9))


class EMA:
    def __init__(self, model_chunks, decay: float | None = None, sigma_rel: float | None = None):
        if (decay is None) == (sigma_rel is None):
            raise ValueError("give an EMA either a constant decay or a power-EMA sigma_rel (not both)")
        if decay is not None and not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must lie in (0, 1), got {decay}")
        self.decay = decay
        self.gamma = power_ema_gamma(sigma_rel) if sigma_rel is not None else None
        self.module = dist_ckpt.bare_model(model_chunks[0])
        # trainable parameters only (a frozen base under LoRA is its own average); the ema/ checkpoint holds the
        # model's values for the others
        self.shadow = {name: p.detach().float().clone() for name, p in self.module.named_parameters() if p.requires_grad}

    def beta(self, step: int) -> float:
        """The averaging weight of the shadow at optimizer step `step` (0-based)."""
        if self.gamma is None:
            return self.decay
        return (1.0 - 1.0 / (step + 1)) ** (self.gamma + 1)

    @torch.no_grad()
    def update(self, step: int = 0) -> None:
        beta = self.beta(step)
        for name, p in self.module.named_parameters():
            if name in self.shadow:
                self.shadow[name].mul_(beta).add_(p.detach().float(), alpha=1.0 - beta)

    def sharded_state_dict(self, model_chunks) -> dict:
        """The model's sharded state dict with every parameter's data replaced by its EMA."""
        by_id = {id(p): self.shadow[name] for name, p in self.module.named_parameters() if name in self.shadow}
        state = dist_ckpt.model_sharded_state_dict(model_chunks)

        def swap(item):
            if isinstance(item, (ShardedTensor, ShardedTensorFactory)) and id(item.data) in by_id:
                item.data = by_id[id(item.data)].to(item.data.dtype)
            return item

        dict_list_map_inplace(swap, state)
        return state

    def save(self, model_chunks, directory) -> None:
        dist_ckpt.save_sharded(self.sharded_state_dict(model_chunks), directory)
        dist_ckpt.write_lora_info(model_chunks, directory)  # a LoRA model's EMA is its adapters'

    def load(self, model_chunks, directory) -> None:
        loaded = dist_ckpt.load_sharded(dist_ckpt.model_sharded_state_dict(model_chunks), directory)
        for name in self.shadow:
            self.shadow[name].copy_(loaded[name].float())
