"""Backward passes that accumulate weight gradients straight into megatron's gradient buffers.

megatron's DDP keeps each parameter's gradient in a persistent buffer (`param.main_grad`); autograd
produces a fresh `param.grad` that a hook adds into the buffer and drops. megatron's own linear layers can
skip that round trip (gradient-accumulation fusion, a CUDA kernel); these are the same idea, in plain torch
for the two largest weights of a video-token model: the `[64000, hidden]` input embedding (here) and output
layer (`models/common/linear_ce.py` uses `accumulate_weight_grad`). For each, the round trip is a gradient
the size of the weight, allocated every step, plus a pass adding it into the buffer.

Without megatron's DDP (no `main_grad`) they return ordinary gradients. Both are CPU-adapter
accelerations (`cpu_adapter.accelerate_model` swaps the embedding class before DDP wraps a model): with
CUDA, or with the switch off, megatron's own embedding and output layer run.
"""

from __future__ import annotations

import torch
from megatron.core.tensor_parallel.layers import VocabParallelEmbedding



def accumulate_weight_grad(weight: torch.Tensor, add_into, compute):
    """The weight gradient of a custom backward, following megatron's gradient-accumulation fusion.

    Under megatron's DDP (the parameter has `main_grad`, its persistent gradient buffer, and the
    `grad_added_to_main_grad` flag) `add_into(main_grad)` accumulates straight into the buffer, the flag
    tells DDP's hook not to add again, and an unfilled placeholder is returned for autograd (a zero one
    when megatron asks for `zero_out_wgrad`), as megatron's own linear layers do. This skips a fresh
    gradient the size of the weight and a pass adding it into the buffer. Elsewhere `compute()` is the
    gradient, returned as usual."""
    main = getattr(weight, "main_grad", None)
    if main is None or not hasattr(weight, "grad_added_to_main_grad"):
        return compute()
    add_into(main)
    weight.grad_added_to_main_grad = True
    if getattr(weight, "zero_out_wgrad", False):
        return torch.zeros_like(weight)
    return torch.empty_like(weight)


class _EmbeddingLookup(torch.autograd.Function):
    """`F.embedding(ids, weight)` whose weight gradient is a scatter-add of the output gradient rows."""

    @staticmethod
    def forward(ctx, ids, weight):
        ctx.save_for_backward(ids)
        ctx.weight = weight
        return torch.nn.functional.embedding(ids, weight)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (ids,) = ctx.saved_tensors
        weight = ctx.weight
        ctx.weight = None
        if not ctx.needs_input_grad[1]:
            return None, None
        index, rows = ids.reshape(-1), grad.reshape(-1, grad.shape[-1])

        def dense():
            return torch.zeros_like(weight, dtype=grad.dtype).index_add_(0, index, rows)

        def add_into(main):
            main.index_add_(0, index, rows.to(main.dtype))

        return None, accumulate_weight_grad(weight, add_into, dense)


class MainGradVocabEmbedding(VocabParallelEmbedding):
    """megatron's `VocabParallelEmbedding` whose lookup, on one tensor-parallel rank without sequence
    parallelism, accumulates its weight gradient into `main_grad` (see the module docstring). With TP > 1 it
    is megatron's forward unchanged. Same parameters, same state dict."""

    def forward(self, input_):
        if self.tp_group.size() > 1 or self.reduce_scatter_embeddings:
            return super().forward(input_)
        return _EmbeddingLookup.apply(input_, self.weight)
