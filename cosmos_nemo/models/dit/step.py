"""The DiT's step function for megatron's schedules: `forward_step(data_iterator, model) -> (output, loss_fn)`.

A micro-batch (data/dit_dataset.py) holds clean latents `latents` [B, C, T, H, W], text embeddings `context`
[B, L, D] and `fps` [B]. The objective (models/dit/objectives.py) noises them, the model predicts, and
`loss_fn` returns the loss with its metrics.

Noise is drawn from a generator seeded, at every micro-batch, from torch's global RNG (restored exactly on
resume by the run folder's per-rank RNG state) and this rank's data-parallel index: data-parallel ranks draw
different noise, while tensor- (and context-) parallel ranks of one replica draw the same.
"""

from __future__ import annotations

import torch

from cosmos_nemo.models.dit.objectives import DiffusionObjective, prepare


def _data_parallel_rank() -> int:
    from megatron.core import parallel_state

    if not parallel_state.model_parallel_is_initialized():
        return 0
    return parallel_state.get_data_parallel_rank(with_context_parallel=False)


class DiTStep:
    metric_keys = ("loss",)

    def __init__(self, objective: DiffusionObjective, video2world: bool, device: torch.device):
        self.objective = objective
        self.video2world = video2world
        self.device = device
        self.dp_rank = _data_parallel_rank()

    def __call__(self, data_iterator, model):
        from cosmos_nemo.models.family import unwrap

        batch = next(data_iterator)
        seed = int(torch.randint(0, 2**62, (1,)).item())
        generator = torch.Generator().manual_seed(seed + 1_000_003 * self.dp_rank)
        x0 = batch["latents"].to(self.device, torch.float32)
        net = unwrap(model)
        step = prepare(self.objective, net, x0, self.video2world, generator)
        dtype = net.config.params_dtype
        out = model(step.net_input.to(dtype), step.timesteps.to(self.device), batch["context"].to(self.device, dtype),
                    fps=batch.get("fps"), padding_mask=batch.get("padding_mask"),
                    condition_mask=step.condition_mask.to(dtype) if step.condition_mask is not None else None)
        return out, step.loss
