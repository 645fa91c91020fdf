"""Training-step throughput on the CPU: our Cosmos AR training step against `transformers`' LlamaForCausalLM.

Both models have the same dimensions (layers, hidden, heads / KV groups, head dim, SwiGLU width, a
64,000-row untied vocabulary), SDPA attention, the same batch, sequence length, dtype and thread count,
and are timed in the same process, alternating steps so that machine noise hits all alike (the best step
of each is reported, with the median). One step is forward + cross-entropy + backward + one AdamW step.

Our step is the trainer's real one (`training.harness`: megatron DDP with its persistent gradient
buffers, `get_forward_backward_func`, the trainer's `ARStep` loss, megatron's optimizer with gradient
clipping at 1.0, as the peer's by default: `--peer-clip`), in one or more *variants* of the CPU adapter's
accelerations (parallel/cpu_adapter.py, `ACCELERATIONS`), each a value of COSMOS_NEMO_CPU_ACCELERATIONS:

- `plain` (= "0"): megatron's own path, what a GPU runs: its embedding, output layer, vocab-parallel
  cross-entropy, gradient-buffer zeroing and optimizer step (megatron's torch AdamW fallback);
- `adapter` (= "1"): every CPU acceleration on (the default on a CPU);
- `-NAME`: every acceleration but NAME (`--variants adapter,-fused_loss` measures what fused_loss saves);
- `NAME+NAME...`: only those accelerations.

The peer is `LlamaForCausalLM(LlamaConfig(..., attn_implementation="sdpa", tie_word_embeddings=False))`
with `labels=`, gradient clipping at `--peer-clip` (1.0 by default: what `transformers`' Trainer does with
its default `max_grad_norm=1.0`, and the same work our step does; 0 = none) and torch's fused AdamW. Our
blocks also apply the QK RMSNorm of the Cosmos architecture (the peer has none) and 3D RoPE. Printed per
variant: tokens/s, the ratio to the peer (the target for the adapter path is >= 1.1), and the achieved model
FLOP/s (6 x non-embedding parameters x tokens + 12 x layers x hidden x sequence x tokens) as a fraction of
the matmul peak measured here, same dtype and threads.

    python benchmarks/train_throughput.py                       # ~136 M parameters, fp32, 2 threads
    python benchmarks/train_throughput.py --threads 1 --variants adapter,-fused_loss,fused_adamw
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def matmul_peak(dtype: torch.dtype, n: int = 1536, repeats: int = 6) -> float:
    """Best FLOP/s of an n x n x n matmul (2 n^3 FLOPs) in this dtype and thread count."""
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def cpu_capability() -> str:
    """The vector ISA torch's CPU kernels use here (AVX2, AVX512, ...): ratios differ between them (README)."""
    return torch.backends.cpu.get_cpu_capability()


def alternate(steps: dict, warmup: int, rounds: int, dtype: torch.dtype) -> tuple[dict, dict, float]:
    """Run each step function `warmup` times, then `rounds` rounds of one step each, rotating the order every
    round so that machine noise hits all alike. Returns wall times and CPU times per step name, and the best
    matmul peak sampled through the run (the load changes under us)."""
    for _ in range(warmup):
        for fn in steps.values():
            fn()
    times = {name: [] for name in steps}
    cpu = {name: [] for name in steps}
    peaks = [matmul_peak(dtype)]
    names = list(steps)
    for i in range(rounds):
        peaks.append(matmul_peak(dtype, repeats=2))
        for name in names[i % len(names):] + names[: i % len(names)]:
            start, start_cpu = time.perf_counter(), time.process_time()
            steps[name]()
            times[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return times, cpu, max(peaks)


def model_flops_per_step(args, tokens: int) -> float:
    """Training FLOPs of one step by the usual count (forward 2, backward 4 per weight per token), embedding
    lookups excluded, output head included, plus the attention score/value matmuls."""
    h, layers = args.hidden, args.layers
    q_out = args.heads * args.head_dim
    kv_out = 2 * args.groups * args.head_dim
    per_layer = h * q_out + h * kv_out + q_out * h + 3 * h * args.ffn
    weights = layers * per_layer + h * args.vocab
    attention = 12 * layers * q_out * args.seq  # 2 matmuls x 2 FLOPs x 3 (fwd + bwd) per token per position
    return (6 * weights + attention) * tokens


VARIANT_SPECS = {"plain": "0", "adapter": "1"}


def variant_spec(name: str) -> str:
    """The COSMOS_NEMO_CPU_ACCELERATIONS value of a variant name (plain, adapter, -NAME)."""
    from cosmos_nemo.parallel import cpu_adapter

    if name in VARIANT_SPECS:
        return VARIANT_SPECS[name]
    if name.startswith("-") and name[1:] in cpu_adapter.ACCELERATIONS:
        return name
    kept = name.split("+")
    if all(k in cpu_adapter.ACCELERATIONS for k in kept):
        return ",".join(kept)
    raise SystemExit(f"unknown variant {name!r}: plain, adapter, -NAME or NAME+NAME... with NAME in "
                     f"{sorted(cpu_adapter.ACCELERATIONS)}")


def ours_config(args):
    from cosmos_nemo.models.ar.config import ARModelConfig

    return ARModelConfig(
        name="bench", num_layers=args.layers, hidden_size=args.hidden, num_attention_heads=args.heads,
        num_query_groups=args.groups, kv_channels=args.head_dim, ffn_hidden_size=args.ffn, vocab_size=args.vocab,
        max_grid=tuple(args.grid), use_te=False,
    )


def build_peer(args, dtype: torch.dtype):
    from cosmos_nemo.compat import hide_unusable_torchvision

    hide_unusable_torchvision()  # this CPU torch has a torchvision built for CUDA, which transformers would import
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.ffn, num_hidden_layers=args.layers,
        num_attention_heads=args.heads, num_key_value_heads=args.groups, head_dim=args.head_dim,
        max_position_embeddings=args.seq, rms_norm_eps=1e-5, rope_theta=500_000.0, tie_word_embeddings=False,
        attention_bias=False, mlp_bias=False, attn_implementation="sdpa",
    )
    return LlamaForCausalLM(config).to(dtype)


def peer_update(peer, optimizer, loss: torch.Tensor, clip: float) -> float:
    """The rest of a peer's step as a PyTorch training loop runs it: backward, gradient clipping at `clip`
    (0 = none), the optimizer step, gradients freed (`set_to_none`). Returns the loss."""
    loss.backward()
    if clip > 0:
        torch.nn.utils.clip_grad_norm_(peer.parameters(), clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def peer_step(peer, optimizer, tokens: torch.Tensor, clip: float):
    """The peer's training step as a `transformers` loop runs it: loss from `labels=`, then `peer_update` with
    the clipping of transformers' Trainer (`max_grad_norm`, 1.0 by default)."""

    def step():
        return peer_update(peer, optimizer, peer(input_ids=tokens, labels=tokens).loss, clip)

    return step


def harness_step(args, dtype: torch.dtype, tokens: torch.Tensor, labels: torch.Tensor, spec: str):
    """Our training step as the trainer runs it, with the CPU accelerations `spec` allows: a fresh model
    wrapped by `training.harness`, one global batch of one micro-batch through megatron's schedule, the
    megatron optimizer step. The variable is set around building and around every step (some accelerations
    are chosen at build time, others at each step)."""
    import itertools

    from cosmos_nemo.models.ar.model import build_ar_model
    from cosmos_nemo.models.ar.step import ARStep
    from cosmos_nemo.parallel import cpu_adapter
    from cosmos_nemo.training import harness
    from cosmos_nemo.training.config import OptimizerConfig

    cfg = ours_config(args)
    os.environ[cpu_adapter.ENV_VAR] = spec
    chunks = harness.wrap_model(lambda pre, post: build_ar_model(cfg, pre, post, dtype=dtype))
    optimizer = harness.build_optimizer(chunks, OptimizerConfig(lr=1e-4), bf16=dtype == torch.bfloat16)
    batch = {"tokens": tokens, "labels": labels, "loss_mask": torch.ones(tokens.shape), "grid": tuple(args.grid)}
    batches = itertools.repeat(batch)
    step_fn = ARStep()

    def step():
        os.environ[cpu_adapter.ENV_VAR] = spec
        out = harness.train_step(step_fn, batches, chunks, optimizer, 1, args.seq, args.batch)
        return out["loss"]

    step.params = sum(p.numel() for p in chunks[0].parameters())
    return step


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2, help="torch threads for both models (default 2)")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="fp32", help="parameter and compute dtype (default fp32)")
    p.add_argument("--layers", type=int, default=6, help="transformer layers (default 6)")
    p.add_argument("--hidden", type=int, default=768, help="hidden size (default 768)")
    p.add_argument("--heads", type=int, default=12, help="attention heads (default 12)")
    p.add_argument("--groups", type=int, default=4, help="KV groups (default 4)")
    p.add_argument("--head-dim", "--head_dim", type=int, default=64, help="head dimension (default 64)")
    p.add_argument("--ffn", type=int, default=2048, help="SwiGLU width (default 2048)")
    p.add_argument("--vocab", type=int, default=64000, help="vocabulary, untied input/output (default 64000)")
    p.add_argument("--grid", type=int, nargs=3, default=(2, 8, 16), metavar=("T", "H", "W"),
                   help="latent grid of each sequence; sequence length = T*H*W (default 2 8 16 = 256)")
    p.add_argument("--batch", type=int, default=2, help="sequences per step (default 2)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per model (default 2)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per model (default 5)")
    p.add_argument("--variants", default="plain,adapter",
                   help="comma-separated variants of our step: plain (megatron's own path, as on a GPU), adapter "
                   "(every CPU acceleration), -NAME (every acceleration but NAME), NAME+NAME (only those); default plain,adapter")
    p.add_argument("--peer-clip", "--peer_clip", type=float, default=1.0,
                   help="the peer's gradient clipping max norm, as transformers' Trainer max_grad_norm (default 1.0, "
                   "like our step's clipping); 0 = no clipping")
    p.add_argument("--json", help="also write the results to this JSON file")
    args = p.parse_args(argv)
    args.seq = args.grid[0] * args.grid[1] * args.grid[2]

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dtype = DTYPES[args.dtype]
    from cosmos_nemo import parallel

    parallel.setup()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    tokens = torch.randint(0, args.vocab, (args.batch, args.seq))
    labels = torch.roll(tokens, -1, dims=1)
    steps = {f"ours[{v}]": harness_step(args, dtype, tokens, labels, variant_spec(v)) for v in variants}
    peer = build_peer(args, dtype)
    steps["peer"] = peer_step(peer, torch.optim.AdamW(peer.parameters(), lr=1e-4, fused=True), tokens,
                              args.peer_clip)
    n_ours = next(iter(steps.values())).params
    n_peer = sum(p.numel() for p in peer.parameters())
    print(f"threads {args.threads}, dtype {args.dtype}, batch {args.batch} x seq {args.seq}; params ours "
          f"{n_ours / 1e6:.1f} M, transformers Llama {n_peer / 1e6:.1f} M; gradient clipping: ours 1.0, the peer "
          f"{args.peer_clip if args.peer_clip > 0 else 'none'}", flush=True)
    times, cpu, peak = alternate(steps, args.warmup, args.steps, dtype)

    n_tok = args.batch * args.seq
    flops = model_flops_per_step(args, n_tok)
    result = {"threads": args.threads, "dtype": args.dtype, "batch": args.batch, "seq": args.seq,
              "peer_clip": args.peer_clip,
              "params_ours": n_ours, "params_peer": n_peer, "matmul_peak_flops": peak, "flops_per_step": flops,
              "variants": variants, "load_average": os.getloadavg(), "cpu_capability": cpu_capability()}
    # On a shared machine the fastest step is the least disturbed one; the median is printed beside it.
    for name in steps:
        t = min(times[name])
        result[name] = {"step_s": t, "median_step_s": statistics.median(times[name]), "tokens_per_s": n_tok / t,
                        "flops_per_s": flops / t, "peak_fraction": flops / t / peak, "all_step_s": times[name],
                        "cpu_s_per_step": statistics.median(cpu[name])}
    for name in steps:
        if name != "peer":
            result[name]["ratio"] = result[name]["tokens_per_s"] / result["peer"]["tokens_per_s"]
            result[name]["ratio_median"] = result["peer"]["median_step_s"] / result[name]["median_step_s"]
            # tokens/s over all the timed steps: what a run of such steps gets
            result[name]["ratio_mean"] = statistics.mean(times["peer"]) / statistics.mean(times[name])
    print(f"matmul peak ({args.dtype}, {args.threads} threads): {peak / 1e9:.1f} GFLOP/s; model FLOPs per step "
          f"{flops / 1e9:.1f} G; load average {result['load_average'][0]:.1f} on {os.cpu_count()} CPUs "
          f"({result['cpu_capability']})")
    for name in steps:
        r = result[name]
        label = "transformers LlamaForCausalLM" if name == "peer" else f"cosmos_nemo AR {name[5:-1]}"
        ratio = "" if name == "peer" else (f"  ratio {r['ratio']:.2f}x best, {r['ratio_median']:.2f}x median, "
                                           f"{r['ratio_mean']:.2f}x over all steps")
        print(f"{label:32s} best {r['step_s']:.3f} s/step (median {r['median_step_s']:.3f}, CPU "
              f"{r['cpu_s_per_step']:.2f} s)  {r['tokens_per_s']:8.1f} tokens/s  "
              f"{r['flops_per_s'] / 1e9:6.1f} GFLOP/s = {r['peak_fraction']:.1%} of peak{ratio}")
    print("ratios are ours / transformers (target for the adapter path: >= 1.1x)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    parallel.teardown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
