"""Output projection fused with the token cross-entropy (one tensor-parallel rank).

The usual loss path materialises four `[N, V]` tensors: the logits, their log-softmax, a dense one-hot
gradient from the NLL backward and the log-softmax backward; for a 64,000-row vocabulary these are the
largest arrays of the step. Here one autograd function computes

    logits = hidden @ weight.T         (one matmul, into a reusable fp32 workspace)
    logp   = log_softmax(logits)       (in place: torch's row-wise kernel, one pass from memory)
    ce = -logp[label];  lse = logits[label] - logp[label];  hit = logp[label] == max(logp)  (optional)

and its backward turns the workspace in place (in row blocks that stay in cache) into

    dlogits = exp(logp) * (dce + dlse) - onehot(label) * dce

before the two matmuls `dhidden = dlogits @ weight` and `dweight = dlogits.T @ hidden`. `lse` is an output
with its own gradient, so a z-loss on it needs no second pass. The numbers equal `F.cross_entropy` on the
logits (fp32 for any parameter dtype; tests compare both, values and gradients). `hit` (the label has the
largest logit: teacher-forcing accuracy) replaces an argmax, which on the CPU costs three times the max.

On the CPU the workspace is kept in a small pool between steps: a fresh `[N, V]` allocation each step costs
page faults of the same order as the softmax passes. On CUDA the caching allocator already reuses memory,
so no pool is kept there. `clear_workspace()` frees the pool.

Restrictions (the caller falls back to the logits path otherwise): the whole vocabulary on this rank
(tensor parallel size 1), no bias, one backward per forward (no `retain_graph` re-use, no double backward).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from cosmos_nemo.parallel.main_grad import accumulate_weight_grad

_POOL: dict[tuple, list[torch.Tensor]] = {}
_POOL_MAX = 2


class TokenLoss(NamedTuple):
    """Per-token outputs of the loss: cross-entropy, logsumexp of the logits (both differentiable) and
    whether the label is the top-1 prediction (bool, no gradient; empty when not asked for)."""

    ce: torch.Tensor
    lse: torch.Tensor
    hit: torch.Tensor


def clear_workspace() -> None:
    """Free the pooled CPU workspaces."""
    _POOL.clear()


def _take(rows: int, cols: int, device: torch.device) -> torch.Tensor:
    if device.type == "cpu":
        free = _POOL.get((rows, cols, device))
        if free:
            return free.pop()
    return torch.empty(rows, cols, dtype=torch.float32, device=device)


def _give_back(buf: torch.Tensor) -> None:
    """Keep `buf` for the next step; at most `_POOL_MAX` buffers in all, of the most recently used shapes (a
    run whose batches change grid does not accumulate one workspace per grid)."""
    if buf.device.type != "cpu":
        return
    key = (buf.shape[0], buf.shape[1], buf.device)
    free = _POOL.pop(key, [])  # re-inserted last: dicts keep insertion order, so the first key is the oldest
    if len(free) < _POOL_MAX:
        free.append(buf)
    _POOL[key] = free
    while sum(len(v) for v in _POOL.values()) > _POOL_MAX:
        oldest = next(iter(_POOL))
        _POOL[oldest].pop(0)
        if not _POOL[oldest]:
            del _POOL[oldest]


def _forward(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, want_hit: bool):
    """(workspace holding log_softmax(logits), ce, lse, hit) for hidden [N, h], labels [N]."""
    rows, vocab = hidden.shape[0], weight.shape[0]
    work = _take(rows, vocab, hidden.device)
    if hidden.dtype == torch.float32 and weight.dtype == torch.float32:
        torch.mm(hidden, weight.t(), out=work)
    else:
        work.copy_(torch.mm(hidden, weight.t()))
    index = labels.unsqueeze(1)
    label_logit = work.gather(1, index).squeeze(1)
    if work.device.type == "cpu":
        torch._log_softmax(work, 1, False, out=work)  # the CPU kernel works row by row: safe in place
    else:  # not verified in place on other devices' kernels
        work = torch.log_softmax(work, dim=1)
    label_logp = work.gather(1, index).squeeze(1)
    hit = label_logp >= work.amax(dim=1) if want_hit else label_logp.new_empty(0, dtype=torch.bool)
    return work, -label_logp, label_logit - label_logp, hit


_BLOCK_ROWS = 8  # rows of a [N, V] fp32 block kept in L2 between exp and scale (8 x 64,000 x 4 B = 2 MB)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, want_hit):
        work, ce, lse, hit = _forward(hidden, weight, labels, want_hit)
        ctx.save_for_backward(hidden, weight, labels)
        ctx.work = work
        ctx.mark_non_differentiable(hit)
        return ce, lse, hit

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_ce, d_lse, _d_hit):
        hidden, weight, labels = ctx.saved_tensors
        work = ctx.work
        if work is None:
            raise RuntimeError("linear_cross_entropy: backward ran twice through one forward (retain_graph); "
                               "run the forward again for a second backward")
        ctx.work = None
        rows = hidden.shape[0]
        d_ce = torch.zeros(rows, device=hidden.device) if d_ce is None else d_ce.float()
        scale = (d_ce if d_lse is None else d_ce + d_lse.float()).unsqueeze(1)
        if work.device.type == "cpu":
            for start in range(0, rows, _BLOCK_ROWS):
                work[start:start + _BLOCK_ROWS].exp_().mul_(scale[start:start + _BLOCK_ROWS])
        else:
            work.exp_().mul_(scale)
        grad = work  # softmax * (dce + dlse)
        grad[torch.arange(rows, device=grad.device), labels] -= d_ce
        g = grad if hidden.dtype == torch.float32 else grad.to(hidden.dtype)
        d_hidden = g @ weight if ctx.needs_input_grad[0] else None
        d_weight = None
        if ctx.needs_input_grad[1]:
            def add_into(main):
                if main.dtype == g.dtype:
                    main.addmm_(g.t(), hidden)
                else:  # e.g. bf16 activations into an fp32 buffer: as the unfused path, matmul then add
                    main.add_(g.t() @ hidden)

            d_weight = accumulate_weight_grad(weight, add_into, lambda: g.t() @ hidden)
        del g, grad
        _give_back(work)
        return d_hidden, d_weight, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                         want_hit: bool = False) -> TokenLoss:
    """Per-token cross-entropy of `hidden [N, h] @ weight[V, h].T` against `labels [N]` (ids in [0, V)),
    without keeping the logits: returns `TokenLoss(ce [N], lse [N], hit [N] or empty)` (ce and lse fp32,
    differentiable; hit only with `want_hit`; see the module docstring)."""
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"hidden [N, h] and weight [V, h] expected, got {tuple(hidden.shape)} and {tuple(weight.shape)}")
    if labels.shape != hidden.shape[:1]:
        raise ValueError(f"labels {tuple(labels.shape)} do not match {hidden.shape[0]} rows of hidden")
    labels = labels.long()
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return TokenLoss(*_LinearCrossEntropy.apply(hidden, weight, labels, want_hit))
    work, ce, lse, hit = _forward(hidden, weight, labels, want_hit)
    _give_back(work)
    return TokenLoss(ce, lse, hit)
