"""The AR step function: next-token cross-entropy (optionally with z-loss) on a batch of one grid.

It computes vocab-parallel logits (each TP rank holds a slice of the vocabulary) and the loss across the
slices, so TP never gathers the [B, L, 64000] logits. Teacher-forcing accuracy (argmax over the whole
vocabulary) is reported with the loss; it is the reference's cheap validation signal.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from megatron.core import parallel_state, tensor_parallel


def _vocab_parallel_logsumexp_and_argmax(logits: torch.Tensor):
    """logsumexp over the full vocabulary and the global argmax, from this rank's vocabulary slice."""
    group = parallel_state.get_tensor_model_parallel_group()
    tp = parallel_state.get_tensor_model_parallel_world_size()
    local_max, local_arg = logits.detach().max(dim=-1)
    if tp == 1:
        return torch.logsumexp(logits, dim=-1), local_arg
    global_max = local_max.clone()
    dist.all_reduce(global_max, op=dist.ReduceOp.MAX, group=group)
    sum_exp = torch.exp(logits - global_max.unsqueeze(-1)).sum(-1)
    # Forward: sum over the TP ranks; backward: identity. The loss is replicated on every TP rank, so each
    # rank's slice gets the gradient of that one loss (an autograd all-reduce would sum it TP times).
    sum_exp = tensor_parallel.reduce_from_tensor_model_parallel_region(sum_exp)
    lse = torch.log(sum_exp) + global_max
    # Global argmax: the rank whose slice holds the maximum reports its index offset by its slice start.
    rank = parallel_state.get_tensor_model_parallel_rank()
    candidate = torch.where(local_max == global_max, local_arg + rank * logits.shape[-1], torch.full_like(local_arg, -1))
    dist.all_reduce(candidate, op=dist.ReduceOp.MAX, group=group)
    return lse, candidate


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
        ce = tensor_parallel.vocab_parallel_cross_entropy(logits.transpose(0, 1).contiguous(), safe_labels.transpose(0, 1).contiguous())
        ce = ce.transpose(0, 1)
        denom = mask.sum().clamp(min=1.0)
        loss = (ce * mask).sum() / denom
        lse, argmax = _vocab_parallel_logsumexp_and_argmax(logits)
        if self.z_loss > 0:
            loss = loss + self.z_loss * ((lse.float() ** 2) * mask).sum() / denom
        accuracy = ((argmax == safe_labels).float() * mask).sum() / denom
        # megatron divides the returned loss in place by the micro-batch count: report copies.
        return loss, {"loss": (ce * mask).sum().detach() / denom, "accuracy": accuracy.detach()}
