"""Train a plain megatron GPT on a learnable synthetic task: the harness, end to end.

Each sequence is an arithmetic progression modulo the vocabulary (`x_t = a + b*t mod V`, with random a
and b per sample), which a causal transformer learns to continue from the two previous tokens. Sample i
of the stream is a function of (seed, i) only, so every TP/PP/DP layout sees the same global batches:
that is what the equivalence tests compare.

Run it with torchrun (`cosmos-nemo harness-demo --nproc 2 --tensor-parallel 2` does this for you).
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, field

import torch

from cosmos_nemo import parallel
from cosmos_nemo.models.common.gpt import PlainGPTConfig, build_plain_gpt
from cosmos_nemo.training import harness
from cosmos_nemo.training.config import OptimizerConfig


def progression_sample(index: int, seq_length: int, vocab_size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + index)
    start = int(torch.randint(0, vocab_size, (1,), generator=g))
    step = int(torch.randint(1, 4, (1,), generator=g))
    return (start + step * torch.arange(seq_length + 1)) % vocab_size


def micro_batches(step: int, global_batch: int, micro_batch: int, dp_rank: int, dp_size: int, seq_length: int,
                  vocab_size: int, seed: int):
    """This DP rank's micro-batches of global batch `step`: rank r takes samples [r*n, (r+1)*n)."""
    per_rank = global_batch // dp_size
    first = step * global_batch + dp_rank * per_rank
    for m in range(per_rank // micro_batch):
        idx = range(first + m * micro_batch, first + (m + 1) * micro_batch)
        yield torch.stack([progression_sample(i, seq_length, vocab_size, seed) for i in idx])


def gpt_forward_step(data_iterator, model):
    """Next-token cross-entropy over every position (the plain GPT's step function)."""
    batch = next(data_iterator).to(parallel.get_device())
    tokens, labels = batch[:, :-1].contiguous(), batch[:, 1:].contiguous()
    per_token = model(tokens, None, None, labels=labels)

    def loss_fn(output):
        loss = output.float().mean()
        # megatron divides the returned loss in place by the micro-batch count: report a copy.
        return loss, {"loss": loss.detach().clone()}

    return per_token, loss_fn


@dataclass
class DemoConfig:
    tensor_parallel: int = 1
    pipeline_parallel: int = 1
    steps: int = 10
    global_batch: int = 8
    micro_batch: int = 2
    seq_length: int = 32
    lr: float = 3e-3
    adam_eps: float = 1e-8
    seed: int = 0
    start_step: int = 0  # index of the first global batch (to continue a run from a checkpoint)
    model: PlainGPTConfig = field(default_factory=PlainGPTConfig)
    init_from: str | None = None  # dist-ckpt folder of weights to start from
    save_to: str | None = None  # dist-ckpt folder to write the final weights to


def run(cfg: DemoConfig) -> list[float]:
    """Train for `cfg.steps` steps; returns the per-step global-batch loss (on every rank)."""
    state = parallel.setup(cfg.tensor_parallel, cfg.pipeline_parallel, seed=cfg.seed)
    if cfg.global_batch % (cfg.micro_batch * state.data_parallel):
        raise ValueError(
            f"global batch {cfg.global_batch} is not divisible by micro batch x DP = "
            f"{cfg.micro_batch} x {state.data_parallel}"
        )
    model = harness.wrap_model(
        lambda pre, post: build_plain_gpt(cfg.model, cfg.tensor_parallel, cfg.pipeline_parallel, pre, post)
    )
    if cfg.init_from:
        harness.load_model(model, cfg.init_from)
    optimizer = harness.build_optimizer(model, OptimizerConfig(lr=cfg.lr, weight_decay=0.0, eps=cfg.adam_eps))
    num_micro = cfg.global_batch // (cfg.micro_batch * state.data_parallel)
    losses = []
    for step in range(cfg.start_step, cfg.start_step + cfg.steps):
        data = micro_batches(step, cfg.global_batch, cfg.micro_batch, state.dp_rank, state.data_parallel,
                             cfg.seq_length, cfg.model.vocab_size, cfg.seed)
        out = harness.train_step(gpt_forward_step, data, model, optimizer, num_micro, cfg.seq_length, cfg.micro_batch)
        losses.append(out["loss"])
        if state.rank == 0 and os.environ.get("COSMOS_NEMO_DEMO_VERBOSE", "1") == "1":
            print(f"step {step + 1:3d}/{cfg.start_step + cfg.steps}  loss {out['loss']:.4f}  grad-norm {out['grad_norm']:.3f}", flush=True)
    if cfg.save_to:
        harness.save_model(model, cfg.save_to)
    parallel.teardown()
    return losses


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Train a tiny megatron GPT on synthetic progressions (run under torchrun).")
    p.add_argument("--tensor-parallel", "--tensor_parallel", type=int, default=1)
    p.add_argument("--pipeline-parallel", "--pipeline_parallel", type=int, default=1)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--global-batch", "--global_batch", type=int, default=8)
    p.add_argument("--micro-batch", "--micro_batch", type=int, default=2)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--losses-json", "--losses_json", default=None, help="write the per-step losses here (rank 0)")
    a = p.parse_args(argv)
    losses = run(DemoConfig(a.tensor_parallel, a.pipeline_parallel, a.steps, a.global_batch, a.micro_batch, lr=a.lr, seed=a.seed))
    if a.losses_json and int(os.environ.get("RANK", 0)) == 0:
        with open(a.losses_json, "w") as f:
            json.dump(losses, f)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
