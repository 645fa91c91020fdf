"""`cosmos-nemo harness-demo`: the megatron training harness on a tiny GPT, under torchrun."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys


def _harness_demo(args: argparse.Namespace) -> int:
    if args.nproc % (args.tensor_parallel * args.pipeline_parallel):
        print(
            f"error: --nproc {args.nproc} is not a multiple of TP x PP = {args.tensor_parallel} x {args.pipeline_parallel}",
            file=sys.stderr,
        )
        return 2
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.nproc}",
        "-m", "cosmos_nemo.training.demo",
        f"--tensor-parallel={args.tensor_parallel}", f"--pipeline-parallel={args.pipeline_parallel}",
        f"--steps={args.steps}", f"--global-batch={args.global_batch}", f"--micro-batch={args.micro_batch}",
        f"--lr={args.lr}",
    ]
    print("launching:", " ".join(cmd), flush=True)
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), PYTHONWARNINGS="ignore")
    return subprocess.call(cmd, env=env)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "harness-demo",
        help="train a tiny megatron GPT with TP/PP/DP for a few steps and print its losses",
        description="Train a tiny megatron-core GPT on a synthetic, learnable task (arithmetic progressions) "
        "through the same harness every recipe uses (megatron schedules, DDP, optimizer), with torchrun on "
        "CPU (gloo) or GPU (NCCL). The losses fall from ln(128)=4.85 toward 0.",
    )
    p.add_argument("--nproc", type=int, default=2, help="number of processes (default 2)")
    p.add_argument("--tensor-parallel", "--tensor_parallel", type=int, default=2, help="tensor-parallel size (default 2)")
    p.add_argument("--pipeline-parallel", "--pipeline_parallel", type=int, default=1, help="pipeline-parallel size (default 1)")
    p.add_argument("--steps", type=int, default=30, help="optimizer steps (default 30)")
    p.add_argument("--global-batch", "--global_batch", type=int, default=8, help="sequences per optimizer step (default 8)")
    p.add_argument("--micro-batch", "--micro_batch", type=int, default=2, help="sequences per micro-batch (default 2)")
    p.add_argument("--lr", type=float, default=3e-3, help="AdamW learning rate (default 3e-3)")
    p.set_defaults(func=_harness_demo)
