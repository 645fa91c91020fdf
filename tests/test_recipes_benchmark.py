"""benchmarks/train_throughput.py compares like with like: the two models it times have the same
dimensions, and its model-FLOP count matches the peer's weights counted independently."""

from __future__ import annotations

import pytest

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "train_throughput.py"
TINY = ["--layers", "2", "--hidden", "64", "--heads", "4", "--groups", "2", "--head-dim", "16", "--ffn", "128",
        "--vocab", "512", "--grid", "1", "2", "4", "--batch", "2", "--threads", "1"]


def _bench_module():
    spec = importlib.util.spec_from_file_location("train_throughput", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_flop_count_matches_the_peer_weights():
    import argparse

    bench = _bench_module()
    args = argparse.Namespace(layers=2, hidden=64, heads=4, groups=2, head_dim=16, ffn=128, vocab=512, seq=8)
    peer = bench.build_peer(args, __import__("torch").float32)
    # weights that multiply activations: everything but the input embedding and the RMSNorm gains
    weights = sum(p.numel() for n, p in peer.named_parameters() if "embed_tokens" not in n and "norm" not in n)
    tokens = 16
    attention = 12 * args.layers * args.heads * args.head_dim * args.seq * tokens
    assert bench.model_flops_per_step(args, tokens) == 6 * weights * tokens + attention


@pytest.mark.slow
def test_benchmark_runs_both_models_with_the_same_dimensions(tmp_path):
    out = tmp_path / "result.json"
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    result = subprocess.run([sys.executable, str(BENCH), *TINY, "--warmup", "0", "--steps", "2",
                             "--variants", "plain,adapter,-fused_loss", "--json", str(out)],
                            capture_output=True, text=True, timeout=300, env=env, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(out.read_text())
    # ours = Llama + the QK RMSNorm gains (one head_dim vector for q and one for k per layer)
    assert data["params_ours"] == data["params_peer"] + 2 * 16 * 2
    assert data["variants"] == ["plain", "adapter", "-fused_loss"]
    assert data["cpu_capability"] == __import__("torch").backends.cpu.get_cpu_capability()  # e.g. AVX2, AVX512
    assert data["peer_clip"] == 1.0  # the peer clips its gradients as our step does (transformers' Trainer default)
    for name in ("ours[plain]", "ours[adapter]", "ours[-fused_loss]"):
        assert data[name]["tokens_per_s"] > 0 and 0 < data[name]["peak_fraction"] and data[name]["ratio"] > 0
        steps = data[name]["all_step_s"], data["peer"]["all_step_s"]
        assert data[name]["ratio_mean"] == pytest.approx((sum(steps[1]) / len(steps[1])) / (sum(steps[0]) / len(steps[0])))
    assert data["peer"]["tokens_per_s"] > 0
    assert "cosmos_nemo AR plain" in result.stdout and "cosmos_nemo AR adapter" in result.stdout


@pytest.mark.parametrize("clip", [0.0, 1e-3])
def test_the_peer_step_clips_as_asked(clip):
    """The peer's step hands the optimizer gradients of total norm <= clip (clipping on), or unclipped ones."""
    import torch

    bench = _bench_module()
    args = bench.argparse.Namespace(vocab=512, hidden=64, ffn=128, layers=2, heads=4, groups=2, head_dim=16, seq=8)
    torch.manual_seed(0)
    peer = bench.build_peer(args, torch.float32)
    norms = []

    class Recorder(torch.optim.SGD):
        def step(self, closure=None):
            norms.append(float(torch.linalg.vector_norm(torch.stack(
                [torch.linalg.vector_norm(p.grad) for p in peer.parameters() if p.grad is not None]))))
            return super().step(closure)

    step = bench.peer_step(peer, Recorder(peer.parameters(), lr=0.0), torch.randint(0, 512, (2, 8)), clip)
    step()
    assert all(p.grad is None for p in peer.parameters())  # freed after the step, as set_to_none does
    if clip:
        assert norms[0] == pytest.approx(clip, rel=1e-4)
    else:
        assert norms[0] > 1e-2  # a fresh model's gradient is far above the clip value used above
