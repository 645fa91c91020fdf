"""LoRA against full fine-tuning on the CPU: the same model, the same batch, the trainer's step, in one run.

For a DiT (`dit_step.py`'s model: Predict2-style, hidden 512, 4 blocks, 8x16x24 latents, 64 text tokens) and a
Cosmos AR model (`train_throughput.py`'s: ~136 M parameters, 6 layers of hidden 768 and a 64,000-row untied
vocabulary, 2 x 256 tokens), three copies of the model are built from the same seed:

- full: every parameter trained (the named peer);
- lora: `peft.lora.apply_lora` on the bare model before DDP, as the trainer does (`train(..., peft=...)`):
  the base frozen, fp32 adapters on the six reference targets (q_proj, k_proj, v_proj, output_proj,
  mlp.layer1, mlp.layer2), rank 16, alpha 16 by default (alpha = rank: scale 1, Cosmos-Predict1's);
- floor: the base frozen with no adapters, only the first block's query-norm gain trained, so the backward
  still runs down to the first block: the forward and input-gradient work that every LoRA step has to do.
  lora - floor is what the adapters themselves cost (`--no-floor` skips it).

Each step is the trainer's (`training.harness`: megatron DDP, `get_forward_backward_func`, megatron's
optimizer with clipping at 1.0, the CPU adapter's default accelerations), on synthetic data of the right
shapes. The steps alternate (`train_throughput.alternate`) so machine noise hits all alike. Printed per model
and variant, then the ratios lora / full and floor / full:

- trainable parameters and their fraction of the model;
- optimizer state: the bytes of the tensors megatron's optimizer holds after its first steps, counted from
  them (torch AdamW's exp_avg / exp_avg_sq / step, plus the fp32 main copies of bf16 parameters), and,
  beside it, DDP's gradient buffers;
- step time: the median of `--steps` timed steps after `--warmup` (the best beside it), and the median
  process CPU time per step (all threads), which a busy machine disturbs less than wall time;
- FLOPs per step as executed, counted by torch's `FlopCounterMode` on one extra untimed step (matmuls and
  attention, forward and backward: a frozen linear that still computed its weight gradient would show up
  here), and the achieved FLOP/s at the median step as a fraction of the matmul peak measured in the same
  run (`train_throughput.matmul_peak`). For full fine-tuning the usual model count of `dit_step.py` /
  `train_throughput.py` is printed as a check. The ideal LoRA step executes about 2/3 of the full one (the
  forward and the input gradients, no weight gradients of the base) plus the adapters.

Time it in fp32: a CPU without native bf16 (no AVX512-BF16/AMX) runs bf16 matmuls about 100x slower than
fp32, so `--dtype bf16` is only good for the optimizer-state bytes there (token counts do not change them:
`--ar grid=1x2x4,batch=1` keeps such a run short).

    python benchmarks/lora.py                          # both models, fp32, 2 threads, rank 16
    python benchmarks/lora.py --models ar --steps 9 --rank 8 --alpha 8 --threads 1
    python benchmarks/lora.py --dit layers=2,hidden=256 --ar layers=2,vocab=4096   # other shapes
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
import dit_step  # noqa: E402
import train_throughput  # noqa: E402
from train_throughput import DTYPES, alternate  # noqa: E402

TARGETS = "q_proj,k_proj,v_proj,output_proj,mlp.layer1,mlp.layer2"
# the models of dit_step.py and train_throughput.py at their defaults; `--dit` / `--ar` override fields
DIT = dict(hidden=512, heads=4, layers=4, lora_dim=128, frames=8, height=16, width=24, text=64, batch=1)
AR = dict(layers=6, hidden=768, heads=12, groups=4, head_dim=64, ffn=2048, vocab=64000, grid=(2, 8, 16), batch=2)


# ---------------------------------------------------------------------------------------------------
# the two models: a config, a batch, a forward step, and the usual FLOP count of a full step


class DiTForward:
    """forward_step for megatron's schedules: the DiT on one latent batch, MSE against a fixed target."""

    def __init__(self, dtype):
        self.dtype = dtype

    def __call__(self, data_iterator, model):
        b, dt = next(data_iterator), self.dtype
        out = model(b["x"].to(dt), b["t"], b["text"].to(dt), padding_mask=b["pad"], condition_mask=b["cond"].to(dt))

        def loss_fn(output):
            loss = torch.nn.functional.mse_loss(output.float(), b["target"])
            return loss, {"loss": loss.detach()}

        return out, loss_fn


def dit_model(shape: argparse.Namespace, dtype):
    from cosmos_nemo.models.dit.model import build_dit_model

    cfg = dit_step.dit_config(shape)
    seq = shape.frames * (shape.height // 2) * (shape.width // 2)
    return dict(build=lambda pre, post: build_dit_model(cfg, pre, post, dtype=dtype), forward=DiTForward(dtype),
                batch=dit_step.batch(shape), seq=seq, micro_batch=shape.batch,
                model_flops=dit_step.flops_per_step(shape), tokens=shape.batch * seq)


def ar_model(shape: argparse.Namespace, dtype):
    from cosmos_nemo.models.ar.model import build_ar_model
    from cosmos_nemo.models.ar.step import ARStep

    shape.seq = shape.grid[0] * shape.grid[1] * shape.grid[2]
    cfg = train_throughput.ours_config(shape)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, shape.vocab, (shape.batch, shape.seq), generator=g)
    batch = {"tokens": tokens, "labels": torch.roll(tokens, -1, dims=1), "loss_mask": torch.ones(tokens.shape),
             "grid": tuple(shape.grid)}
    n_tok = shape.batch * shape.seq
    return dict(build=lambda pre, post: build_ar_model(cfg, pre, post, dtype=dtype), forward=ARStep(), batch=batch,
                seq=shape.seq, micro_batch=shape.batch, model_flops=train_throughput.model_flops_per_step(shape, n_tok),
                tokens=n_tok)


MODELS = {"dit": (DIT, dit_model, "DiT (tiny_predict2 blocks)"), "ar": (AR, ar_model, "Cosmos AR")}


def shape_of(defaults: dict, text: str | None) -> argparse.Namespace:
    """The model's dimensions: the defaults with `key=value,...` overrides (grid as TxHxW)."""
    shape = dict(defaults)
    for item in filter(None, (text or "").split(",")):
        key, _, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if key not in shape:
            raise SystemExit(f"unknown field {key!r}; known: {', '.join(shape)}")
        shape[key] = tuple(int(v) for v in value.split("x")) if key == "grid" else int(value)
    return argparse.Namespace(**shape)


# ---------------------------------------------------------------------------------------------------
# measuring


def optimizer_bytes(optimizer) -> dict:
    """Bytes held by megatron's optimizer, counted from its tensors: the torch optimizer's state (AdamW's
    exp_avg, exp_avg_sq, step) and the fp32 main copies of bf16/fp16 parameters."""
    seen, state, main = set(), 0, 0

    def size(t) -> int:
        if not torch.is_tensor(t) or t.data_ptr() in seen:
            return 0
        seen.add(t.data_ptr())
        return t.numel() * t.element_size()

    for inner in getattr(optimizer, "chained_optimizers", [optimizer]):
        for entry in inner.optimizer.state.values():
            state += sum(size(t) for t in entry.values())
        for group in getattr(inner, "fp32_from_float16_groups", []):
            main += sum(size(p) for p in group)
    return {"adam_state": state, "main_params": main, "total": state + main}


def grad_buffer_bytes(chunks) -> int:
    """Bytes of megatron DDP's persistent gradient buffers (one fp32 gradient per trainable parameter)."""
    return sum(b.grad_data.numel() * b.grad_data.element_size() for c in chunks for b in c.buffers)


def executed_flops(step) -> float:
    """Matmul and attention FLOPs of one step as executed (torch's FlopCounterMode; its formulas are applied
    to three ops its registry leaves out: the CPU flash-attention kernels and the in-place `addmm_` of the
    fused loss's weight gradient)."""
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten
    mapping = {  # called with the arguments' shapes
        aten._scaled_dot_product_flash_attention_for_cpu: lambda q, k, v, *a, **kw: fc.sdpa_flop_count(q, k, v),
        aten._scaled_dot_product_flash_attention_for_cpu_backward:
            lambda g, q, k, v, *a, **kw: fc.sdpa_backward_flop_count(g, q, k, v),
        aten.addmm_: lambda c, a, b, *args, **kw: 2 * a[0] * a[1] * b[1],
    }
    with fc.FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        step()
    return float(counter.get_total_flops())


def freeze_but_one_norm(chunk) -> None:
    """The base frozen with no adapters; only the first block's query-norm gain is trained. Its gradient
    needs the backward to run from the loss down to the first block's attention, as every LoRA step's
    does: this step is the forward and input-gradient work of LoRA without the adapters."""
    params = dict(chunk.named_parameters())
    keep = next((n for n in params if n.endswith("self_attention.q_layernorm.weight")), None)
    if keep is None:
        raise SystemExit("the floor variant needs a model with QK-norm (self_attention.q_layernorm)")
    for name, p in params.items():
        p.requires_grad_(name == keep)


def build_step(model: dict, dtype, prepare=None, seed: int = 0):
    """The trainer's step for `model`: a fresh model from `seed`, `prepare(chunk)` on the bare model before
    DDP (e.g. adding LoRA adapters, as the trainer does), megatron's optimizer over what is trainable."""
    from cosmos_nemo.training import harness
    from cosmos_nemo.training.config import OptimizerConfig

    def provide(pre, post):
        torch.manual_seed(seed)
        chunk = model["build"](pre, post)
        if prepare is not None:
            prepare(chunk)
        return chunk

    chunks = harness.wrap_model(provide)
    optimizer = harness.build_optimizer(chunks, OptimizerConfig(lr=1e-4), bf16=dtype == torch.bfloat16)
    batches = itertools.repeat(model["batch"])

    def step():
        return harness.train_step(model["forward"], batches, chunks, optimizer, 1, model["seq"], model["micro_batch"])

    params = list(chunks[0].parameters())
    step.trainable = sum(p.numel() for p in params if p.requires_grad)
    step.total = sum(p.numel() for p in params)
    step.chunks, step.optimizer = chunks, optimizer
    return step


def measure(name: str, args, dtype, peft) -> dict:
    from cosmos_nemo.peft.lora import apply_lora

    defaults, make, label = MODELS[name]
    shape = shape_of(defaults, getattr(args, name))
    model = make(shape, dtype)
    steps = {"full": build_step(model, dtype), "lora": build_step(model, dtype, lambda m: apply_lora(m, peft))}
    if args.floor:
        steps["floor"] = build_step(model, dtype, freeze_but_one_norm)
    times, cpu, peak = alternate(steps, args.warmup, args.steps, dtype)
    result = {"label": label, "shape": vars(shape), "tokens": model["tokens"], "matmul_peak_flops": peak,
              "model_flops_full": model["model_flops"]}
    for variant, step in steps.items():
        flops = executed_flops(step)
        median = statistics.median(times[variant])
        result[variant] = {
            "trainable": step.trainable, "total": step.total, "fraction": step.trainable / step.total,
            "optimizer_bytes": optimizer_bytes(step.optimizer), "grad_buffer_bytes": grad_buffer_bytes(step.chunks),
            "median_step_s": median, "best_step_s": min(times[variant]), "all_step_s": times[variant],
            "median_cpu_s": statistics.median(cpu[variant]), "all_cpu_s": cpu[variant], "flops_per_step": flops,
            "flops_per_s": flops / median, "peak_fraction": flops / median / peak,
        }
    full, lora = result["full"], result["lora"]
    ratios = {key: lora[key] / full[key] for key in ("trainable", "median_step_s", "best_step_s", "median_cpu_s",
                                                     "flops_per_step", "peak_fraction")}
    ratios["optimizer_bytes"] = lora["optimizer_bytes"]["total"] / full["optimizer_bytes"]["total"]
    if "floor" in result:  # what the adapters add to the forward + input-gradient work LoRA cannot avoid
        floor = result["floor"]
        ratios["floor_median_step_s"] = floor["median_step_s"] / full["median_step_s"]
        ratios["floor_median_cpu_s"] = floor["median_cpu_s"] / full["median_cpu_s"]
        ratios["adapters_cpu_share"] = (lora["median_cpu_s"] - floor["median_cpu_s"]) / lora["median_cpu_s"]
        ratios["adapters_flops_share"] = (lora["flops_per_step"] - floor["flops_per_step"]) / lora["flops_per_step"]
    result["ratios"] = ratios
    return result


def _mb(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB" if n >= 2**20 else f"{n / 2**10:,.1f} KiB"


def report(r: dict, args) -> None:
    full, ratios = r["full"], r["ratios"]
    print(f"\n{r['label']}: {full['total'] / 1e6:.1f} M parameters, {r['tokens']} tokens per step; matmul peak "
          f"{r['matmul_peak_flops'] / 1e9:.1f} GFLOP/s ({args.dtype}, {args.threads} threads); full step by the model "
          f"count {r['model_flops_full'] / 1e9:.1f} GFLOP")
    print(f"{'':6s} {'trainable':>20s} {'optimizer':>10s} {'(fp32 main)':>11s} {'grad buf':>10s} {'median':>8s} "
          f"{'best':>7s} {'CPU s':>6s} {'GFLOP/step':>10s} {'GFLOP/s':>8s} {'of peak':>7s}")
    for variant in ("full", "lora", "floor"):
        v = r.get(variant)
        if v is None:
            continue
        print(f"{variant:6s} {v['trainable']:>11,} ({v['fraction']:6.2%}) {_mb(v['optimizer_bytes']['total']):>10s} "
              f"{_mb(v['optimizer_bytes']['main_params']):>11s} {_mb(v['grad_buffer_bytes']):>10s} "
              f"{v['median_step_s']:>6.3f} s {v['best_step_s']:>5.3f} s {v['median_cpu_s']:>6.3f} "
              f"{v['flops_per_step'] / 1e9:>10.1f} {v['flops_per_s'] / 1e9:>8.1f} {v['peak_fraction']:>7.1%}")
    print(f"lora / full: optimizer state {ratios['optimizer_bytes']:.4f}x (trainable parameters "
          f"{ratios['trainable']:.4f}x); step time {ratios['median_step_s']:.2f}x median ({ratios['best_step_s']:.2f}x "
          f"best), CPU time {ratios['median_cpu_s']:.2f}x; FLOPs {ratios['flops_per_step']:.2f}x; fraction of peak "
          f"{ratios['peak_fraction']:.2f}x")
    if "floor" in r:
        print(f"floor / full: step time {ratios['floor_median_step_s']:.2f}x, CPU time {ratios['floor_median_cpu_s']:.2f}x;"
              f" the adapters are {ratios['adapters_flops_share']:.1%} of the LoRA step's FLOPs and "
              f"{ratios['adapters_cpu_share']:.1%} of its CPU time")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="dit,ar", help="comma-separated: dit, ar (default both)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="fp32", help="model dtype; adapters are fp32 (default fp32)")
    p.add_argument("--rank", type=int, default=16, help="LoRA rank (default 16)")
    p.add_argument("--alpha", type=float, default=16.0, help="LoRA alpha (default 16)")
    p.add_argument("--targets", default=TARGETS, help=f"LoRA targets (default {TARGETS})")
    p.add_argument("--dit", help=f"DiT overrides key=value,... of {DIT}")
    p.add_argument("--ar", help=f"AR overrides key=value,... (grid=TxHxW) of {AR}")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per variant (default 2)")
    p.add_argument("--steps", type=int, default=7, help="timed steps per variant (default 7)")
    p.add_argument("--no-floor", dest="floor", action="store_false",
                   help="skip the floor variant (base frozen, no adapters: what LoRA's step costs without them)")
    p.add_argument("--json", help="also write the results to this JSON file")
    args = p.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not models or any(m not in MODELS for m in models):
        p.error(f"--models: choose from {sorted(MODELS)}")

    torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype]
    from cosmos_nemo import parallel
    from cosmos_nemo.peft.lora import LoRAConfig

    peft = LoRAConfig(targets=args.targets, rank=args.rank, alpha=args.alpha)
    peft.validate()
    parallel.setup()
    print(f"LoRA rank {args.rank}, alpha {args.alpha:g} on {','.join(peft.targets)}; {args.warmup} warm-up + "
          f"{args.steps} timed steps per variant, alternating; threads {args.threads}, dtype {args.dtype}", flush=True)
    results = {"args": vars(args), "load_average_start": os.getloadavg()}
    for name in models:
        results[name] = measure(name, args, dtype, peft)
        report(results[name], args)
    results["load_average_end"] = os.getloadavg()
    print(f"\nload average {results['load_average_start'][0]:.1f} -> {results['load_average_end'][0]:.1f} on "
          f"{os.cpu_count()} CPUs; FLOPs as executed (torch's FlopCounterMode: matmuls + attention); GFLOP/s at the "
          "median step; CPU s: median process CPU time per step (all threads), steadier than wall time on a busy machine")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    parallel.teardown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
