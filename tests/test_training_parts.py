"""Trainer components against independent references: LR schedules vs torch's schedulers, the AR loss
(z-loss, masks, accuracy) vs a direct formula at TP=1 and TP=2, EMA vs its recurrence, W&B offline,
fine-tuning from a checkpoint, and data/model mismatches refused before a model is built."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from cosmos_nemo.data import write_pattern_dataset
from cosmos_nemo.parallel.launch import run_in_processes
from cosmos_nemo.training.config import OptimizerConfig
from cosmos_nemo.training.schedules import lr_at

from test_training_resume import _train_kw


def _torch_lrs(scheduler_factory, steps, lr=1.0):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=lr)
    sched = scheduler_factory(opt)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_cosine_with_warmup_matches_torch_schedulers():
    cfg = OptimizerConfig(lr=1.0, min_lr=0.1, schedule="cosine", warmup_steps=5)
    ours = [lr_at(s, cfg, max_steps=25) for s in range(25)]
    ref = _torch_lrs(lambda o: torch.optim.lr_scheduler.SequentialLR(
        o, [torch.optim.lr_scheduler.LinearLR(o, start_factor=0.2, end_factor=1.0, total_iters=4),
            torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=20, eta_min=0.1)], milestones=[5]), 25)
    np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-12)


def test_constant_and_cycle_schedules():
    cfg = OptimizerConfig(lr=2.0, schedule="constant", warmup_steps=0)
    assert all(lr_at(s, cfg, 10) == 2.0 for s in range(10))
    cyc = OptimizerConfig(lr=1.0, schedule="cycle", warmup_steps=4, cycle_length=10, f_start=0.0, f_max=0.5, f_min=0.2)
    ours = [lr_at(s, cyc, 100) for s in range(30)]
    assert ours[:4] == pytest.approx([0.0, 0.125, 0.25, 0.375])
    # after the warm-up: f_max at the start of each cycle, then linearly toward f_min
    assert ours[4] == pytest.approx(0.5) and ours[14] == pytest.approx(0.5) and ours[24] == pytest.approx(0.5)
    assert ours[9] == pytest.approx(0.2 + 0.3 * 5 / 10)
    with pytest.raises(ValueError, match="unknown lr schedule"):
        lr_at(0, OptimizerConfig(schedule="linear"), 10)


def _loss_check(tp: int):
    torch.set_num_threads(1)
    from megatron.core import parallel_state

    from cosmos_nemo import parallel
    from cosmos_nemo.models.ar.step import ARStep, clamp_labels, logits_token_loss

    parallel.setup(tp, 1)
    g = torch.Generator().manual_seed(0)
    full = torch.randn(2, 7, 12, generator=g)
    labels = torch.randint(0, 12, (2, 7), generator=g)
    labels[0, 3] = 64002  # an out-of-vocabulary PAD label, masked below
    mask = torch.ones(2, 7)
    mask[0, 3] = 0
    mask[1, :2] = 0
    rank = parallel_state.get_tensor_model_parallel_rank()
    local = full.chunk(tp, dim=-1)[rank].clone().requires_grad_(True)
    safe = clamp_labels(labels, mask, 12)
    loss, metrics = ARStep(z_loss=1e-2).loss(logits_token_loss(local, safe, with_lse=True), safe, mask)
    loss.backward()
    parallel.teardown()
    return float(loss), float(metrics["loss"]), float(metrics["accuracy"]), local.grad.numpy()


@pytest.mark.slow
@pytest.mark.parametrize("tp", [1, 2])
def test_ar_loss_matches_direct_formula(tp):
    results = run_in_processes(_loss_check, tp, tp)
    g = torch.Generator().manual_seed(0)
    full = torch.randn(2, 7, 12, generator=g).double().requires_grad_(True)
    labels = torch.randint(0, 12, (2, 7), generator=g)
    mask = torch.ones(2, 7)
    mask[0, 3] = 0
    mask[1, :2] = 0
    m = mask.bool()
    ce = torch.nn.functional.cross_entropy(full[m], labels[m])
    z = (torch.logsumexp(full[m], dim=-1) ** 2).mean()
    total = ce + 1e-2 * z
    total.backward()
    acc = (full.argmax(-1)[m] == labels[m]).double().mean()
    grads = [r[3] for r in results]
    for loss, ce_only, accuracy, _ in results:
        assert loss == pytest.approx(float(total), rel=1e-6)
        assert ce_only == pytest.approx(float(ce), rel=1e-6)
        assert accuracy == pytest.approx(float(acc))
    np.testing.assert_allclose(np.concatenate(grads, axis=-1), full.grad.numpy(), rtol=1e-5, atol=1e-7)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("parts")
    write_pattern_dataset(root / "data", 30, grid=(2, 4, 4), vocab_size=64, seed=1, pattern="ramp")
    return root


def _ema_and_wandb_run(data_dir: str, out_root: str):
    import os

    torch.set_num_threads(1)
    os.environ["WANDB_SILENT"] = "true"
    from cosmos_nemo.data import ARDataConfig
    from cosmos_nemo.models.ar.config import ar_config
    from cosmos_nemo.training.config import CheckpointConfig, LogConfig, ParallelConfig, TrainerConfig
    from cosmos_nemo.training.trainer import train

    return train(ar_config("tiny", vocab_size=64),
                 ARDataConfig(paths=[data_dir], split_string="9,1,0", global_batch_size=2, micro_batch_size=1),
                 OptimizerConfig(lr=1e-2),
                 TrainerConfig(max_steps=3, val_interval=0, ema_decay=0.5),
                 CheckpointConfig(output_root=out_root, name="ema", save_interval=1, keep_last=0),
                 ParallelConfig(), LogConfig(progress_bar=False, tensorboard=True, wandb_mode="offline"))


def _read_ckpt(folder: str) -> dict:
    torch.set_num_threads(1)
    from cosmos_nemo import parallel
    from cosmos_nemo.models.ar.config import ar_config
    from cosmos_nemo.checkpoint import dist as dist_ckpt
    from cosmos_nemo.models.ar.model import build_ar_model

    parallel.setup()
    model = build_ar_model(ar_config("tiny", vocab_size=64))
    dist_ckpt.load_model([model], folder)
    out = {k: v.detach().clone().numpy() for k, v in model.named_parameters()}
    parallel.teardown()
    return out


@pytest.mark.slow
def test_ema_follows_its_recurrence_and_wandb_offline_logs(data_dir):
    out = run_in_processes(_ema_and_wandb_run, 1, str(data_dir / "data"), str(data_dir / "runs"))[0]
    run = Path(out["run_dir"])
    ckpts = run / "checkpoints"
    ema2 = run_in_processes(_read_ckpt, 1, str(ckpts / "iter_000000002" / "ema"))[0]
    ema3 = run_in_processes(_read_ckpt, 1, str(ckpts / "iter_000000003" / "ema"))[0]
    w3 = run_in_processes(_read_ckpt, 1, str(ckpts / "iter_000000003" / "model"))[0]
    changed = 0
    for key in ema3:
        np.testing.assert_allclose(ema3[key], 0.5 * ema2[key] + 0.5 * w3[key], rtol=1e-6, atol=1e-7, err_msg=key)
        changed += not np.allclose(ema3[key], w3[key])
    assert changed > 0  # the EMA is not the weights themselves
    assert list((run / "wandb").glob("offline-run-*")), "W&B offline mode wrote no run"
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    for name in ("config.yaml", "launch_info.yaml", "job_env.yaml"):
        assert (run / name).is_file()
    assert (ckpts / "latest_checkpoint.txt").read_text().strip() == "iter_000000003"


@pytest.mark.slow
def test_finetune_from_run_folder_starts_from_its_weights(data_dir):
    base = run_in_processes(_train_kw, 1, (str(data_dir / "data"), str(data_dir / "runs"), "base", 2), {})[0]
    # lr=0: one fine-tuning step leaves the weights exactly as loaded.
    ft = run_in_processes(_finetune, 1, str(data_dir / "data"), str(data_dir / "runs"), base["run_dir"])[0]
    a = run_in_processes(_read_ckpt, 1, base["checkpoint"] + "/model")[0]
    b = run_in_processes(_read_ckpt, 1, ft["checkpoint"] + "/model")[0]
    for key in a:
        assert np.array_equal(a[key], b[key]), key


def _finetune(data_dir, out_root, pretrained):
    torch.set_num_threads(1)
    from cosmos_nemo.data import ARDataConfig
    from cosmos_nemo.models.ar.config import ar_config
    from cosmos_nemo.training.config import CheckpointConfig, LogConfig, ParallelConfig, TrainerConfig
    from cosmos_nemo.training.trainer import train

    return train(ar_config("tiny", vocab_size=64),
                 ARDataConfig(paths=[data_dir], split_string="9,1,0", global_batch_size=2, micro_batch_size=1),
                 OptimizerConfig(lr=0.0, weight_decay=0.0), TrainerConfig(max_steps=1, val_interval=0),
                 CheckpointConfig(output_root=out_root, name="ft", mode="finetune", pretrained=pretrained),
                 ParallelConfig(), LogConfig(progress_bar=False, tensorboard=False))


def _mismatch(data_dir, out_root):
    torch.set_num_threads(1)
    from cosmos_nemo.data import ARDataConfig
    from cosmos_nemo.models.ar import family
    from cosmos_nemo.models.ar.config import ar_config
    from cosmos_nemo.training import trainer
    from cosmos_nemo.training.config import CheckpointConfig, LogConfig, ParallelConfig, TrainerConfig

    built = []
    build = family.FAMILY.build_model
    family.FAMILY.build_model = lambda *a, **k: built.append(1) or build(*a, **k)
    try:
        trainer.train(ar_config("tiny"),  # FSQ vocabulary 64000 against a 64-token dataset
                      ARDataConfig(paths=[data_dir], split_string="9,1,0", global_batch_size=2),
                      OptimizerConfig(), TrainerConfig(max_steps=1), CheckpointConfig(output_root=out_root, name="bad"),
                      ParallelConfig(), LogConfig(progress_bar=False, tensorboard=False))
    except Exception as e:  # noqa: BLE001 - the test inspects it
        return type(e).__name__, str(e), len(built)
    return None, "", len(built)


def test_vocabulary_mismatch_is_refused_before_the_model_is_built(data_dir):
    name, message, built = run_in_processes(_mismatch, 1, str(data_dir / "data"), str(data_dir / "runs"))[0]
    assert name == "DataModelMismatch", message
    assert "64" in message and "resize_vocab" in message
    assert built == 0


def _bf16_vs_fp32(data_dir: str, out_root: str):
    torch.set_num_threads(1)
    from cosmos_nemo.data import ARDataConfig
    from cosmos_nemo.models.ar.config import ar_config
    from cosmos_nemo.training.config import CheckpointConfig, LogConfig, ParallelConfig, TrainerConfig
    from cosmos_nemo.training.trainer import train

    out = {}
    for precision in ("fp32", "bf16"):
        out[precision] = train(ar_config("tiny", vocab_size=64),
                               ARDataConfig(paths=[data_dir], split_string="9,1,0", global_batch_size=2, micro_batch_size=1),
                               OptimizerConfig(lr=1e-3), TrainerConfig(max_steps=3, val_interval=0, precision=precision),
                               CheckpointConfig(output_root=out_root, name=f"prec_{precision}", save_interval=0),
                               ParallelConfig(), LogConfig(progress_bar=False, tensorboard=False))["losses"]
    return out


@pytest.mark.slow
def test_bf16_training_tracks_fp32(data_dir):
    out = run_in_processes(_bf16_vs_fp32, 1, str(data_dir / "data"), str(data_dir / "runs"))[0]
    assert out["fp32"] != out["bf16"]  # bf16 compute really ran
    for a, b in zip(out["bf16"], out["fp32"], strict=True):
        assert math.isfinite(a) and abs(a - b) < 0.05 * b, (out["bf16"], out["fp32"])


def test_zero_nonfinite_gradients_cleans_main_grads():
    from cosmos_nemo.training.trainer import _zero_nonfinite

    layer = torch.nn.Linear(3, 2)
    layer.weight.main_grad = torch.tensor([[1.0, float("nan"), 2.0], [float("inf"), -float("inf"), 3.0]])
    layer.bias.main_grad = torch.tensor([0.5, -0.5])
    _zero_nonfinite([layer])
    assert layer.weight.main_grad.tolist() == [[1.0, 0.0, 2.0], [0.0, 0.0, 3.0]]
    assert layer.bias.main_grad.tolist() == [0.5, -0.5]
