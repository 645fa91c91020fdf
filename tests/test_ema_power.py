"""The EDM2 power EMA (checkpoint/ema.py) against its formulas, and through the trainer into `convert dit-export --ema`."""

from __future__ import annotations

import pytest
import torch

from cosmos_nemo.checkpoint.ema import EMA, power_ema_gamma
from cosmos_nemo.parallel.launch import run_in_processes


def test_gamma_and_betas_of_sigma_rel_0_1():
    gamma = power_ema_gamma(0.1)
    assert abs(gamma - 6.937) < 1e-3
    assert abs(gamma**3 + 7 * gamma**2 + (16 - 100) * gamma + (12 - 100)) < 1e-9
    ema = EMA([torch.nn.Linear(2, 2)], sigma_rel=0.1)
    assert ema.beta(0) == 0.0  # the first update copies the weights
    for step, expected in ((10, 0.469), (100, 0.924), (1000, 0.992)):  # diffusion_models.md §6
        assert abs(ema.beta(step) - expected) < 1e-3, (step, ema.beta(step))
    with pytest.raises(ValueError, match="not both"):
        EMA([torch.nn.Linear(2, 2)], decay=0.9, sigma_rel=0.1)


def test_power_ema_averages_the_weight_history():
    layer = torch.nn.Linear(3, 1, bias=False)
    ema = EMA([layer], sigma_rel=0.1)
    history = []
    for step in range(6):
        with torch.no_grad():
            layer.weight.fill_(float(step + 1))
        history.append(layer.weight.detach().clone())
        ema.update(step)
    expected = torch.zeros(1, 3)
    for step, w in enumerate(history):  # the recursion written out
        beta = (1 - 1 / (step + 1)) ** (power_ema_gamma(0.1) + 1)
        expected = beta * expected + (1 - beta) * w
    assert torch.allclose(ema.shadow["weight"], expected)


def _train_with_ema(root: str, steps: int = 3, name: str = "ema") -> dict:
    torch.set_num_threads(1)
    from cosmos_nemo.data.dit_dataset import DiTDataConfig
    from cosmos_nemo.models.dit.config import dit_config
    from cosmos_nemo.training.config import CheckpointConfig, LogConfig, OptimizerConfig, ParallelConfig, TrainerConfig
    from cosmos_nemo.training.trainer import train

    return train(dit_config("tiny_predict2"),
                 DiTDataConfig(paths=[root + "/data"], split_string="1,0,0", micro_batch_size=2, global_batch_size=2),
                 OptimizerConfig(lr=1e-2, warmup_steps=0, schedule="constant"),
                 TrainerConfig(max_steps=steps, val_interval=0, seed=1, ema_sigma_rel=0.1),
                 CheckpointConfig(output_root=root + "/runs", name=name, save_interval=2, keep_last=0),
                 ParallelConfig(), LogConfig(progress_bar=False, tensorboard=False))


@pytest.mark.medium
def test_trainer_keeps_a_power_ema_that_dit_export_writes(tmp_path):
    from safetensors.torch import load_file

    from cosmos_nemo.cli import main
    from test_dit_training import write_dataset

    write_dataset(tmp_path / "data", n=4)
    out = run_in_processes(_train_with_ema, 1, str(tmp_path))[0]
    ckpt = tmp_path / "runs" / "cosmos_nemo" / "default" / "ema" / "checkpoints" / "iter_000000003"
    assert (ckpt / "ema" / ".metadata").is_file() and out["step"] == 3
    for flag, name in (([], "reg"), (["--ema"], "ema")):
        assert main(["convert", "dit-export", "--checkpoint", out["run_dir"], "--model", "tiny_predict2", *flag,
                     "--output", str(tmp_path / f"{name}.safetensors")]) == 0
    reg, ema = load_file(str(tmp_path / "reg.safetensors")), load_file(str(tmp_path / "ema.safetensors"))
    assert reg.keys() == ema.keys() and all(k.startswith("net.") for k in reg)
    # three steps moved the weights; the EMA (betas 0, 0.004, 0.040) lags slightly behind them
    diffs = [float((reg[k] - ema[k]).abs().max()) for k in reg]
    assert 0 < max(diffs) < 0.05


def test_ema_averages_trainable_parameters_only():
    layer = torch.nn.Linear(2, 2)
    layer.bias.requires_grad_(False)
    ema = EMA([layer], decay=0.5)
    assert set(ema.shadow) == {"weight"}
    with torch.no_grad():
        layer.weight.add_(2.0)
    ema.update(0)
    assert torch.allclose(ema.shadow["weight"], layer.weight - 1.0)


@pytest.mark.slow
def test_power_ema_resumes_exactly(tmp_path):
    from megatron.core import dist_checkpointing  # noqa: F401  (the checkpoints are dist-ckpt folders)
    from safetensors.torch import load_file

    from cosmos_nemo.cli import main
    from test_dit_training import write_dataset

    write_dataset(tmp_path / "data", n=4)
    straight = run_in_processes(_train_with_ema, 1, str(tmp_path), 4, "straight")[0]
    run_in_processes(_train_with_ema, 1, str(tmp_path), 2, "resumed")
    resumed = run_in_processes(_train_with_ema, 1, str(tmp_path), 4, "resumed")[0]
    assert resumed["losses"] == straight["losses"][2:]
    for name, out in (("a", straight), ("b", resumed)):
        assert main(["convert", "dit-export", "--checkpoint", out["run_dir"], "--model", "tiny_predict2", "--ema",
                     "--output", str(tmp_path / f"{name}.safetensors")]) == 0
    a, b = load_file(str(tmp_path / "a.safetensors")), load_file(str(tmp_path / "b.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
