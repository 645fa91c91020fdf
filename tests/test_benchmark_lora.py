"""benchmarks/lora.py measures what it says: LoRA's optimizer state is counted from the optimizer's tensors
(8 bytes of Adam moments per trainable parameter plus one step scalar per tensor, nothing for the frozen
base), and the FLOP counter sees every matmul of a full step (the AR model's count is exact)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "lora.py"
TINY = ["--dit", "layers=1,hidden=64,heads=2,lora_dim=16,frames=2,height=4,width=4,text=8",
        "--ar", "layers=2,hidden=64,heads=4,groups=2,head_dim=16,ffn=128,vocab=512,grid=1x2x4",
        "--rank", "4", "--alpha", "8", "--warmup", "0", "--steps", "1", "--threads", "1"]


@pytest.mark.medium
def test_lora_benchmark_counts_optimizer_state_and_flops(tmp_path):
    out = tmp_path / "lora.json"
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    result = subprocess.run([sys.executable, str(BENCH), *TINY, "--json", str(out)], capture_output=True, text=True,
                            timeout=300, env=env, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(out.read_text())
    for name in ("dit", "ar"):
        r = data[name]
        full, lora, floor = r["full"], r["lora"], r["floor"]
        assert full["trainable"] == full["total"] == lora["total"] - lora["trainable"]  # adapters added
        assert 0 < lora["trainable"] < full["trainable"] and floor["trainable"] < lora["trainable"]
        for v in (full, lora, floor):
            state = v["optimizer_bytes"]
            # fp32: exp_avg + exp_avg_sq (8 bytes a parameter) and a 4-byte step per tensor; no main copies
            assert 8 * v["trainable"] < state["adam_state"] < 8 * v["trainable"] + 4 * 1000
            assert state["main_params"] == 0
            assert v["grad_buffer_bytes"] >= 4 * v["trainable"]
            assert v["median_step_s"] > 0 and 0 < v["peak_fraction"]
        # a frozen base computes no weight gradients: the floor executes about 2/3 of the full step
        assert floor["flops_per_step"] < lora["flops_per_step"] < full["flops_per_step"]
        assert floor["flops_per_step"] < 0.8 * full["flops_per_step"]
    # the AR model count (6 x weights x tokens + attention) is what FlopCounterMode sees for the full step
    assert abs(data["ar"]["full"]["flops_per_step"] / data["ar"]["model_flops_full"] - 1) < 0.01
    assert "lora / full: optimizer state" in result.stdout
