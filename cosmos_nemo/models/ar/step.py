"""The AR step function: next-token cross-entropy (optionally with z-loss) on a batch of one grid.

It computes vocab-parallel logits (each TP rank holds a slice of the vocabulary) and the loss across the
slices, so TP never gathers the [B, L, 64000] logits. Teacher-forcing accuracy (argmax over the whole
vocabulary) is reported with the loss; it is the reference's cheap validation signal.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from megatron.core import parallel_state, tensor_parallel


def token_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token cross-entropy `[...]` of logits `[..., V_local]` against labels `[...]` (ids in [0, V)).

    With TP > 1 this is megatron's vocab-parallel cross-entropy over the ranks' vocabulary slices. With one
    TP rank the slice is the whole vocabulary and torch's fused `cross_entropy` computes the same value in
    fewer passes over the `[tokens, 64000]` logits (no max/subtract/exp/sum round trip, no transposed
    copies); at the output layer's share of the FLOPs this is a measurable part of a CPU step."""
    if parallel_state.get_tensor_model_parallel_world_size() == 1:
        vocab = logits.shape[-1]
        return F.cross_entropy(logits.reshape(-1, vocab), labels.reshape(-1), reduction="none").view(labels.shape)
    # megatron's function shifts and exponentiates its input in place: give it a copy, the caller's logits
    # are still needed (argmax, z-loss).
    return tensor_parallel.vocab_parallel_cross_entropy(logits.clone(memory_format=torch.contiguous_format),
                                                       labels.contiguous())


def _vocab_parallel_logsumexp_and_argmax(logits: torch.Tensor):
    """logsumexp over the full vocabulary and the global argmax, from this rank's vocabulary slice."""
    argmax = _vocab_parallel_argmax(logits)
    if parallel_state.get_tensor_model_parallel_world_size() == 1:
        return torch.logsumexp(logits, dim=-1), argmax
    global_max = logits.detach().max(dim=-1).values
    dist.all_reduce(global_max, op=dist.ReduceOp.MAX, group=parallel_state.get_tensor_model_parallel_group())
    sum_exp = torch.exp(logits - global_max.unsqueeze(-1)).sum(-1)
    # Forward: sum over the TP ranks; backward: identity. The loss is replicated on every TP rank, so each
    # rank's slice gets the gradient of that one loss (an autograd all-reduce would sum it TP times).
    sum_exp = tensor_parallel.reduce_from_tensor_model_parallel_region(sum_exp)
    return torch.log(sum_exp) + global_max, argmax


def _vocab_parallel_argmax(logits: torch.Tensor) -> torch.Tensor:
    """The global argmax over the ranks' vocabulary slices (no logsumexp pass)."""
    with torch.no_grad():
        local_max, local_arg = logits.max(dim=-1)
        if parallel_state.get_tensor_model_parallel_world_size() == 1:
            return local_arg
        group = parallel_state.get_tensor_model_parallel_group()
        global_max = local_max.clone()
        dist.all_reduce(global_max, op=dist.ReduceOp.MAX, group=group)
        rank = parallel_state.get_tensor_model_parallel_rank()
        candidate = torch.where(local_max == global_max, local_arg + rank * logits.shape[-1], torch.full_like(local_arg, -1))
        dist.all_reduce(candidate, op=dist.ReduceOp.MAX, group=group)
        return candidate


@dataclass
class ARStep:
    """forward_step(data_iterator, model) for megatron's schedules, for base and Video2World models."""

    z_loss: float = 0.0
    device: torch.device = torch.device("cpu")

    def __call__(self, data_iterator, model):
        batch = next(data_iterator)
        tokens = batch["tokens"].to(self.device)
        labels = batch["labels"].to(self.device)
        mask = batch["loss_mask"].to(self.device).float()
        kwargs = {}
        if "context" in batch:
            kwargs["context"] = batch["context"].to(self.device)
            if "context_mask" in batch:
                kwargs["context_mask"] = batch["context_mask"].to(self.device)
        output = model(tokens, grid=tuple(batch["grid"]), gather_output=False, **kwargs)
        return output, lambda out: self.loss(out, labels, mask)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor):
        logits = logits.float()
        vocab_local = logits.shape[-1]
        vocab = vocab_local * parallel_state.get_tensor_model_parallel_world_size()
        # Labels outside the output vocabulary (the V2W PAD id 64002) are masked; clamp them so the
        # vocab-parallel cross-entropy stays in range.
        safe_labels = torch.where(mask > 0, labels, torch.zeros_like(labels)).clamp_(0, vocab - 1)
        ce = token_cross_entropy(logits, safe_labels)
        denom = mask.sum().clamp(min=1.0)
        loss = (ce * mask).sum() / denom
        if self.z_loss > 0:
            lse, argmax = _vocab_parallel_logsumexp_and_argmax(logits)
            loss = loss + self.z_loss * ((lse.float() ** 2) * mask).sum() / denom
        else:
            argmax = _vocab_parallel_argmax(logits)
        accuracy = ((argmax == safe_labels).float() * mask).sum() / denom
        # megatron divides the returned loss in place by the micro-batch count: report copies.
        return loss, {"loss": (ce * mask).sum().detach() / denom, "accuracy": accuracy.detach()}
