"""The trainer serves any model family: a test-only regression family (tests/family_regression.py) trains,
logs, checkpoints and resumes through the same `train()` as the AR family, at TP=2, PP=2 and DP=2, and
its run folder rebuilds its model for inference."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cosmos_nemo.parallel.launch import run_in_processes

pytestmark = pytest.mark.distributed

STEPS = 6


def _init_weights(path: Path) -> None:
    from family_regression import RegressionModelConfig

    cfg = RegressionModelConfig()
    h, g = cfg.hidden_size, torch.Generator().manual_seed(5)
    shapes = {"input.weight": (h, cfg.in_features), "input.bias": (h,), "head.weight": (cfg.out_features, h),
              "head.bias": (cfg.out_features,)}
    for i in range(cfg.num_layers):
        shapes.update({f"layer{i}.fc1.weight": (2 * h, h), f"layer{i}.fc1.bias": (2 * h,),
                       f"layer{i}.fc2.weight": (h, 2 * h), f"layer{i}.fc2.bias": (h,)})
    from safetensors.torch import save_file

    save_file({k: torch.randn(s, generator=g) * 0.3 for k, s in shapes.items()}, str(path))


def _train(out_root: str, name: str, steps: int, init: str, tp: int = 1, pp: int = 1, val_interval: int = 0):
    torch.set_num_threads(1)
    from family_regression import RegressionDataConfig, RegressionModelConfig

    from cosmos_nemo.training.config import CheckpointConfig, LogConfig, OptimizerConfig, ParallelConfig, TrainerConfig
    from cosmos_nemo.training.trainer import train

    return train(RegressionModelConfig(), RegressionDataConfig(),
                 # eps: Adam divides by sqrt(v) + eps; near-zero gradients would take lr-sized steps whose
                 # sign depends on reduction order, making "equal weights" across layouts a test of noise.
                 OptimizerConfig(lr=1e-2, warmup_steps=0, schedule="constant", eps=1e-4, weight_decay=0.0),
                 TrainerConfig(max_steps=steps, val_interval=val_interval, val_batches=2, seed=1),
                 CheckpointConfig(output_root=out_root, name=name, save_interval=3, keep_last=0, mode="finetune",
                                  pretrained=init),
                 ParallelConfig(tensor=tp, pipeline=pp),
                 LogConfig(progress_bar=False, tensorboard=val_interval > 0))


def _final_weights(run_dir: str) -> dict:
    """The run's latest weights, loaded through the family-generic inference loader (bare model)."""
    torch.set_num_threads(1)
    from cosmos_nemo import parallel
    from cosmos_nemo.inference.loading import load_trained_model

    parallel.setup()
    model, cfg, ckpt = load_trained_model(run_dir)
    out = {k: v.detach().clone() for k, v in model.state_dict().items() if torch.is_tensor(v)}
    with torch.no_grad():
        out["_prediction"] = model(torch.ones(2, cfg.in_features))
    out["_is_bare"] = torch.tensor(type(model).__name__ == "RegressionModel")
    half, _, _ = load_trained_model(run_dir, dtype=torch.bfloat16)  # bf16 for inference when asked
    out["_bf16_equal"] = torch.tensor(all(
        p.dtype == torch.bfloat16 and torch.equal(p, out[name].to(torch.bfloat16)) for name, p in half.named_parameters()))
    parallel.teardown()
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("family")
    init = root / "init.safetensors"
    _init_weights(init)
    out = run_in_processes(_train, 1, str(root / "runs"), "ref", STEPS, str(init), 1, 1, 3)[0]
    return root, str(init), out


def _close(losses, ref, rel=1e-5):
    assert len(losses) == len(ref) == STEPS
    for step, (a, b) in enumerate(zip(losses, ref)):
        assert abs(a - b) <= rel * abs(b), f"step {step}: {a} vs {b}"


@pytest.mark.medium
def test_trains_logs_and_rebuilds_from_its_run_folder(reference):
    root, _, out = reference
    run = Path(out["run_dir"])
    assert out["step"] == STEPS and out["val_loss"] < 0.7 * out["val_loss_first"], out  # it learns
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"train/loss", "train/mae", "train/grad_norm", "train/tokens_per_s"} <= set().union(*lines)
    assert any("val/mae" in line for line in lines)  # the family's own metric, logged and validated
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert "family: family_regression" in (run / "config.yaml").read_text()
    weights = run_in_processes(_final_weights, 1, str(run))[0]
    assert bool(weights["_is_bare"]) and weights["_prediction"].shape == (2, 3) and bool(weights["_bf16_equal"])
    assert "layer1.fc2.weight" in weights


@pytest.mark.slow
def test_resume_is_bit_identical(reference):
    root, init, ref = reference
    first = run_in_processes(_train, 1, str(root / "runs"), "resumed", 3, init)[0]
    second = run_in_processes(_train, 1, str(root / "runs"), "resumed", STEPS, init)[0]
    assert first["losses"] + second["losses"] == ref["losses"]


@pytest.mark.slow
@pytest.mark.parametrize("tp,pp,nproc", [(2, 1, 2), (1, 2, 2), (1, 1, 2)], ids=["tp2", "pp2", "dp2"])
def test_parallel_layouts_match_one_process(reference, tp, pp, nproc):
    root, init, ref = reference
    name = f"tp{tp}pp{pp}n{nproc}"
    out = run_in_processes(_train, nproc, str(root / "runs"), name, STEPS, init, tp, pp)[0]
    _close(out["losses"], ref["losses"])
    got = run_in_processes(_final_weights, 1, out["run_dir"])[0]
    want = run_in_processes(_final_weights, 1, ref["run_dir"])[0]
    for key, value in want.items():
        if not key.startswith("_is"):
            np.testing.assert_allclose(got[key], value, rtol=1e-5, atol=1e-7, err_msg=key)


def test_unknown_family_is_a_clear_error():
    from cosmos_nemo.models.family import get_family

    with pytest.raises(KeyError, match="unknown model family 'no_such_family'"):
        get_family("no_such_family")
