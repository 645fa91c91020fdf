"""DiT training-step throughput on the CPU: our Cosmos DiT (megatron-core) against diffusers'
`CosmosTransformer3DModel`, in the same process at equal dimensions, dtype, latent grid and text length.

One step is forward + a velocity-style MSE loss against a fixed target + backward + one AdamW step:

- ours: `DiTModel` wrapped by the trainer's harness (megatron DDP with its gradient buffers, megatron's
  `get_forward_backward_func`, megatron's optimizer with gradient clipping at 1.0), with the CPU adapter's
  accelerations as the trainer has them by default (`--variants plain` turns them off: megatron's own path);
- peer: `CosmosTransformer3DModel` (same config: heads, head dim, layers, adaLN-LoRA, Predict2.5-style
  per-frame timesteps and text projection off by default) with torch's fused AdamW and gradient clipping at
  `--peer-clip` (1.0 by default, as our step and diffusers' training examples clip; 0 = none).

Steps alternate between the models (the order rotates each round) so that machine noise hits both alike; the
best step of each is reported with the median, the ratio ours/peer (target >= 1.1), and the achieved FLOP/s
(2 FLOPs per weight per token forward, x3 with backward, plus the self- and cross-attention matmuls) as a
fraction of the fp32/bf16 matmul peak measured in the same run.

    python benchmarks/dit_step.py                      # hidden 512, 4 layers, 8 x 16 x 24 latents, fp32, 2 threads
    python benchmarks/dit_step.py --threads 1 --hidden 1024 --heads 8 --layers 2
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import DTYPES, alternate, cpu_capability, peer_update  # noqa: E402


def flops_per_step(args) -> float:
    d, layers = args.hidden, args.layers
    tokens = args.batch * args.frames * (args.height // 2) * (args.width // 2)
    seq = tokens // args.batch
    per_layer = 4 * d * d + 2 * d * d + 2 * d * 1024 + 2 * d * 4 * d  # self q,k,v,o; cross q,o + k,v of text; MLP
    weights = layers * per_layer + d * (17 + 1) * 4 + d * 16 * 4
    attention = layers * (4 * seq * d + 4 * args.text * d)
    return 3.0 * tokens * (2.0 * weights + attention)


def dit_config(args):
    from cosmos_nemo.models.dit.config import dit_config as named

    return named("tiny_predict2", hidden_size=args.hidden, num_attention_heads=args.heads,
                 head_dim=args.hidden // args.heads, num_layers=args.layers, adaln_lora_dim=args.lora_dim,
                 ).replace(name="bench")


def batch(args):
    g = torch.Generator().manual_seed(0)
    B, T, H, W = args.batch, args.frames, args.height, args.width
    return {"x": torch.randn(B, 16, T, H, W, generator=g), "t": torch.rand(B, T, generator=g),
            "text": torch.randn(B, args.text, 1024, generator=g), "cond": torch.zeros(B, 1, T, H, W),
            "pad": torch.zeros(1, 1, H * 8, W * 8), "target": torch.randn(B, 16, T, H, W, generator=g)}


def ours_step(args, dtype, data, spec: str):
    from cosmos_nemo.models.dit.model import build_dit_model
    from cosmos_nemo.parallel import cpu_adapter
    from cosmos_nemo.training import harness
    from cosmos_nemo.training.config import OptimizerConfig

    cfg = dit_config(args)
    os.environ[cpu_adapter.ENV_VAR] = spec
    chunks = harness.wrap_model(lambda pre, post: build_dit_model(cfg, pre, post, dtype=dtype))
    optimizer = harness.build_optimizer(chunks, OptimizerConfig(lr=1e-4), bf16=dtype == torch.bfloat16)

    def forward_step(data_iterator, model):
        b = next(data_iterator)
        out = model(b["x"].to(dtype), b["t"], b["text"].to(dtype), padding_mask=b["pad"], condition_mask=b["cond"].to(dtype))

        def loss_fn(output):
            loss = torch.nn.functional.mse_loss(output.float(), b["target"])
            return loss, {"loss": loss.detach()}

        return out, loss_fn

    batches = itertools.repeat(data)
    seq = args.frames * (args.height // 2) * (args.width // 2)

    def step():
        os.environ[cpu_adapter.ENV_VAR] = spec
        return harness.train_step(forward_step, batches, chunks, optimizer, 1, seq, args.batch)["loss"]

    step.params = sum(p.numel() for p in chunks[0].parameters())
    return step


def build_peer(args, dtype):
    """diffusers' CosmosTransformer3DModel at the config of `dit_config(args)`."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from diffusers_peer import cosmos_transformer_class

    from cosmos_nemo.models.dit.convert import diffusers_config

    peer_class = cosmos_transformer_class()
    if peer_class is None:
        raise SystemExit("diffusers is not installed (pip install -r requirements-dev.txt)")
    conf = {k: v for k, v in diffusers_config(dit_config(args)).items() if not k.startswith("_")}
    return peer_class(**conf).to(dtype)


def peer_step(peer, optimizer, data, args, dtype, clip: float):
    """The peer's training step as a diffusers training loop runs it: the loss, backward, gradient clipping at
    `clip` (`accelerator.clip_grad_norm_(..., max_grad_norm=1.0)` in diffusers' training examples, and what our
    step does; 0 = none), the optimizer step, gradients freed."""
    B, T = args.batch, args.frames

    def step():
        out = peer(data["x"].to(dtype), data["t"].view(B, 1, T, 1, 1).to(dtype), data["text"].to(dtype),
                   condition_mask=data["cond"].to(dtype), padding_mask=data["pad"].to(dtype)).sample
        return peer_update(peer, optimizer, torch.nn.functional.mse_loss(out.float(), data["target"]), clip)

    step.params = sum(p.numel() for p in peer.parameters())
    return step


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2, help="torch threads for both models (default 2)")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="fp32", help="parameter and compute dtype (default fp32)")
    p.add_argument("--layers", type=int, default=4, help="DiT blocks (default 4)")
    p.add_argument("--hidden", type=int, default=512, help="hidden size (default 512)")
    p.add_argument("--heads", type=int, default=4, help="attention heads; head dim = hidden / heads (default 4)")
    p.add_argument("--lora-dim", "--lora_dim", dest="lora_dim", type=int, default=128, help="adaLN-LoRA width (default 128)")
    p.add_argument("--frames", type=int, default=8, help="latent frames T (default 8)")
    p.add_argument("--height", type=int, default=16, help="latent height H; tokens per frame = H/2 x W/2 (default 16)")
    p.add_argument("--width", type=int, default=24, help="latent width W (default 24)")
    p.add_argument("--text", type=int, default=64, help="text tokens (1024-d) per sample (default 64)")
    p.add_argument("--batch", type=int, default=1, help="samples per step (default 1)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per model (default 2)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per model (default 5)")
    p.add_argument("--variants", default="adapter",
                   help="comma-separated variants of our step: adapter (the CPU defaults) and/or plain (megatron's own "
                        "path, as on a GPU); default adapter")
    p.add_argument("--peer-clip", "--peer_clip", type=float, default=1.0,
                   help="the peer's gradient clipping max norm, as diffusers' training examples' max_grad_norm "
                        "(default 1.0, like our step's clipping); 0 = no clipping")
    p.add_argument("--json", help="also write the results to this JSON file")
    args = p.parse_args(argv)
    if args.hidden % args.heads:
        p.error("--hidden must be a multiple of --heads")

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dtype = DTYPES[args.dtype]
    from cosmos_nemo import parallel

    parallel.setup()
    data = batch(args)
    specs = {"plain": "0", "adapter": "1"}
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in specs]
    if unknown:
        p.error(f"unknown variants {unknown}; choose from {sorted(specs)}")
    steps = {f"ours[{v}]": ours_step(args, dtype, data, specs[v]) for v in variants}
    peer = build_peer(args, dtype)
    steps["peer"] = peer_step(peer, torch.optim.AdamW(peer.parameters(), lr=1e-4, fused=True), data, args, dtype,
                              args.peer_clip)
    tokens = args.batch * args.frames * (args.height // 2) * (args.width // 2)
    n_ours, n_peer = next(iter(steps.values())).params, steps["peer"].params
    print(f"threads {args.threads}, dtype {args.dtype}, batch {args.batch} x {tokens // args.batch} tokens "
          f"(latents {args.frames}x{args.height}x{args.width}), text {args.text}; params ours {n_ours / 1e6:.1f} M, "
          f"diffusers {n_peer / 1e6:.1f} M; gradient clipping: ours 1.0, the peer "
          f"{args.peer_clip if args.peer_clip > 0 else 'none'}", flush=True)
    times, _, peak = alternate(steps, args.warmup, args.steps, dtype)
    flops = flops_per_step(args)
    result = {"args": vars(args), "params_ours": n_ours, "params_peer": n_peer, "matmul_peak_flops": peak,
              "flops_per_step": flops, "load_average": os.getloadavg(),
              "cpu_capability": cpu_capability()}
    for name in steps:
        t = min(times[name])
        result[name] = {"step_s": t, "median_step_s": statistics.median(times[name]), "flops_per_s": flops / t,
                        "peak_fraction": flops / t / peak, "all_step_s": times[name]}
    print(f"matmul peak ({args.dtype}, {args.threads} threads): {peak / 1e9:.1f} GFLOP/s; model FLOPs per step "
          f"{flops / 1e9:.1f} G; load average {result['load_average'][0]:.1f} on {os.cpu_count()} CPUs "
          f"({result['cpu_capability']})")
    for name in steps:
        r = result[name]
        if name != "peer":
            r["ratio"] = result["peer"]["step_s"] / r["step_s"]
            r["ratio_median"] = result["peer"]["median_step_s"] / r["median_step_s"]
        label = "diffusers CosmosTransformer3DModel" if name == "peer" else f"cosmos_nemo DiT {name[5:-1]}"
        ratio = "" if name == "peer" else f"  ratio {r['ratio']:.2f}x best, {r['ratio_median']:.2f}x median"
        print(f"{label:36s} best {r['step_s']:.3f} s/step (median {r['median_step_s']:.3f})  "
              f"{r['flops_per_s'] / 1e9:6.1f} GFLOP/s = {r['peak_fraction']:.1%} of peak{ratio}")
    print("ratios are ours / diffusers in steps per second (target >= 1.1x)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    parallel.teardown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
