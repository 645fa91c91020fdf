"""The AR step function: next-token cross-entropy (optionally with z-loss) on a batch of one grid.

The model returns the per-token loss itself (`forward(labels=, loss_stats=True)`): megatron's path is the
output layer's vocab-parallel logits and megatron's cross-entropy across the TP ranks' vocabulary slices
(TP never gathers the [B, L, 64000] logits; `logits_token_loss` below); on the CPU at TP=1 the fused
output projection + cross-entropy (models/common/linear_ce.py) replaces it, a CPU-adapter acceleration. Teacher-forcing accuracy (the label has the largest
logit over the whole vocabulary) is reported with the loss; it is the reference's cheap validation signal.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from megatron.core import parallel_state, tensor_parallel

from cosmos_nemo.models.common.linear_ce import TokenLoss
from cosmos_nemo.models.family import unwrap


def logits_token_loss(logits: torch.Tensor, labels: torch.Tensor, with_lse: bool = False,
                      cross_entropy=None) -> TokenLoss:
    """TokenLoss (ce, lse, hit) from this rank's vocabulary slice of the logits `[..., V_local]`, megatron's
    way: `cross_entropy(logits, labels)` defaults to megatron's vocab-parallel cross-entropy (the model
    passes its `compute_language_model_loss`, which takes the fused kernels when configured). megatron's
    cross-entropy works in place on the logits, so the accuracy is taken first and, with `with_lse` (the
    z-loss), it gets a copy. Without `with_lse` the lse field is an empty tensor."""
    hit = vocab_parallel_hit(logits.detach(), labels)
    lse = vocab_parallel_logsumexp(logits.float()) if with_lse else logits.new_empty(0)
    cross_entropy = cross_entropy or tensor_parallel.vocab_parallel_cross_entropy
    ce = cross_entropy(logits.clone() if with_lse else logits, labels.contiguous())
    return TokenLoss(ce, lse, hit)


def vocab_parallel_logsumexp(logits: torch.Tensor) -> torch.Tensor:
    """logsumexp over the full vocabulary from this rank's vocabulary slice (differentiable)."""
    if parallel_state.get_tensor_model_parallel_world_size() == 1:
        return torch.logsumexp(logits, dim=-1)
    global_max = logits.detach().amax(dim=-1)
    dist.all_reduce(global_max, op=dist.ReduceOp.MAX, group=parallel_state.get_tensor_model_parallel_group())
    sum_exp = torch.exp(logits - global_max.unsqueeze(-1)).sum(-1)
    # Forward: sum over the TP ranks; backward: identity. The loss is replicated on every TP rank, so each
    # rank's slice gets the gradient of that one loss (an autograd all-reduce would sum it TP times).
    sum_exp = tensor_parallel.reduce_from_tensor_model_parallel_region(sum_exp)
    return torch.log(sum_exp) + global_max


def vocab_parallel_hit(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Whether each label's logit is the largest over the whole vocabulary (ties count as hits), from
    this rank's vocabulary slice: teacher-forcing accuracy without an argmax."""
    with torch.no_grad():
        vocab_local = logits.shape[-1]
        top = logits.amax(dim=-1)
        local = labels - parallel_state.get_tensor_model_parallel_rank() * vocab_local
        inside = (local >= 0) & (local < vocab_local)
        picked = logits.gather(-1, local.clamp(0, vocab_local - 1).unsqueeze(-1)).squeeze(-1)
        if parallel_state.get_tensor_model_parallel_world_size() == 1:
            return picked >= top
        group = parallel_state.get_tensor_model_parallel_group()
        dist.all_reduce(top, op=dist.ReduceOp.MAX, group=group)
        picked = torch.where(inside, picked, torch.zeros_like(picked))
        dist.all_reduce(picked, op=dist.ReduceOp.SUM, group=group)
        return picked >= top


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
        safe_labels = clamp_labels(labels, mask, unwrap(model).ar_config.output_vocab_size)
        output = model(tokens, grid=tuple(batch["grid"]), labels=safe_labels, loss_stats=True,
                       with_lse=self.z_loss > 0, **kwargs)
        return output, lambda out: self.loss(out, safe_labels, mask)

    def loss(self, out, labels: torch.Tensor, mask: torch.Tensor):
        """Masked mean loss (+ z-loss) of the model's per-token (ce, lse, hit), and the logged values."""
        ce, lse, hit = out  # a plain tuple after megatron's Float16Module
        denom = mask.sum().clamp(min=1.0)
        loss = (ce * mask).sum() / denom
        if self.z_loss > 0:
            loss = loss + self.z_loss * ((lse.float() ** 2) * mask).sum() / denom
        accuracy = (hit.float() * mask).sum() / denom
        # megatron divides the returned loss in place by the micro-batch count: report copies.
        return loss, {"loss": (ce * mask).sum().detach() / denom, "accuracy": accuracy.detach()}


def clamp_labels(labels: torch.Tensor, mask: torch.Tensor, vocab: int) -> torch.Tensor:
    """Labels outside the output vocabulary (the V2W PAD id 64002) are masked; set masked positions to 0
    and clamp, so the cross-entropy stays in range."""
    return torch.where(mask > 0, labels, torch.zeros_like(labels)).clamp_(0, vocab - 1)
