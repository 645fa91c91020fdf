"""benchmarks/dit_step.py compares like with like: the diffusers peer clips its gradients as our step does."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "dit_step.py"


def _bench_module():
    spec = importlib.util.spec_from_file_location("dit_step", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("clip", [0.0, 1e-3])
def test_the_peer_step_clips_as_asked(clip):
    """The optimizer gets gradients of total norm == clip (clipping on), or the unclipped ones; then they are freed."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    bench = _bench_module()
    args = argparse.Namespace(hidden=64, heads=2, layers=1, lora_dim=16, frames=2, height=4, width=4, text=3, batch=1)
    torch.manual_seed(0)
    peer = bench.build_peer(args, torch.float32)
    norms = []

    class Recorder(torch.optim.SGD):
        def step(self, closure=None):
            grads = [torch.linalg.vector_norm(p.grad) for p in peer.parameters() if p.grad is not None]
            norms.append(float(torch.linalg.vector_norm(torch.stack(grads))))
            return super().step(closure)

    step = bench.peer_step(peer, Recorder(peer.parameters(), lr=0.0), bench.batch(args), args, torch.float32, clip)
    assert step() > 0
    assert all(p.grad is None for p in peer.parameters())
    if clip:
        assert norms[0] == pytest.approx(clip, rel=1e-4)
    else:
        assert norms[0] > 1e-2
