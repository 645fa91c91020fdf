"""The Reasoner's step function: next-token cross-entropy on the assistant tokens only (labels are -100 elsewhere),
averaged over the micro-batch's assistant tokens; token accuracy as a second metric."""

from __future__ import annotations

import torch

from cosmos_nemo.models.vlm.processor import IGNORE


def token_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean cross-entropy, accuracy, count) of the next-token predictions at labelled positions: logits at t
    predict labels at t + 1."""
    pred = logits[:, :-1].float()
    target = labels[:, 1:]
    keep = target != IGNORE
    count = keep.sum()
    ce = torch.nn.functional.cross_entropy(pred.reshape(-1, pred.shape[-1]), target.reshape(-1),
                                           ignore_index=IGNORE, reduction="sum")
    denom = count.clamp(min=1)
    hits = ((pred.argmax(-1) == target) & keep).sum()
    return ce / denom, hits.float() / denom, count


class VLMStep:
    def __init__(self, device: torch.device):
        self.device = device

    def __call__(self, data_iterator, model):
        batch = {k: v.to(self.device) for k, v in next(data_iterator).items()}
        labels = batch.pop("labels")
        logits = model(**batch)

        def loss_fn(out):
            loss, accuracy, _ = token_loss(out, labels)
            # megatron divides the returned loss in place by the micro-batch count: report copies
            return loss, {"loss": loss.detach().clone(), "accuracy": accuracy.detach()}

        return logits, loss_fn
