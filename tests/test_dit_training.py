"""The DiT trains through the shared trainer: objectives against their formulas, the latent dataset contract,
learning, bit-identical resume, and starting from a released Cosmos checkpoint (`checkpoint.pretrained`)."""

from __future__ import annotations

import math

import pytest
import torch

from cosmos_nemo.parallel.launch import run_in_processes


def _pattern_latents(n: int, shape=(16, 3, 4, 6), seed: int = 0) -> list[torch.Tensor]:
    """Smooth, structured latents: a few sinusoid modes with random amplitudes per clip."""
    g = torch.Generator().manual_seed(seed)
    C, T, H, W = shape
    t, h, w = torch.meshgrid(torch.arange(T).float(), torch.arange(H).float(), torch.arange(W).float(), indexing="ij")
    modes = torch.stack([torch.sin(0.7 * h + 0.3 * t), torch.cos(0.5 * w - 0.4 * t), torch.sin(0.3 * (h + w))])
    out = []
    for _ in range(n):
        amp = torch.randn(C, 3, generator=g)
        out.append(torch.einsum("cm,mthw->cthw", amp, modes) * 0.5)
    return out


def write_dataset(path, n: int = 8, width: int = 1024, length: int = 8, seed: int = 0):
    from cosmos_nemo.data.dit_dataset import write_dit_dataset

    g = torch.Generator().manual_seed(seed + 1)
    emb = torch.randn(2, length, width, generator=g)
    emb[1, 5:] = 0  # a shorter prompt, zero-padded as T5 embeddings are
    mask = emb.abs().sum(-1) > 0
    return write_dit_dataset(path, _pattern_latents(n, seed=seed), [i % 2 for i in range(n)], emb, mask, fps=24.0,
                             vae={"name": "synthetic"}, text={"encoder": "random", "length": length, "dim": width})


# ---------------------------------------------------------------------------------------------------
# objectives


class _Recorder(torch.nn.Module):
    logvar = None


def test_edm_objective_matches_its_formulas():
    from cosmos_nemo.models.dit.objectives import DiffusionObjective, prepare

    obj = DiffusionObjective(kind="edm", logvar=False, video_noise_multiplier="sqrt_t",
                             conditional_frames_probs={2: 1.0})
    x0 = torch.randn(3, 16, 4, 2, 2)
    g = torch.Generator().manual_seed(5)
    step = prepare(obj, _Recorder(), x0, True, g)
    # redraw the same numbers to know sigma and eps
    g = torch.Generator().manual_seed(5)
    obj.draw_condition_frames(3, 4, True, g)
    eps = torch.randn(x0.shape, generator=g)
    sigma = obj.draw_sigma(3, 4, g).float()
    s = sigma.view(-1, 1, 1, 1, 1)
    c_in = 1 / torch.sqrt(s**2 + 0.25)
    assert torch.allclose(step.timesteps, 0.25 * torch.log(sigma))
    gen = (step.condition_mask[:, :, 2:] == 0).all() and (step.condition_mask[:, :, :2] == 1).all()
    assert gen
    assert torch.allclose(step.net_input[:, :, 2:], (c_in * (x0 + s * eps))[:, :, 2:], atol=1e-6)
    # an output that predicts x0 exactly on the generated frames has zero loss: F = (x0 - c_skip x_t) / c_out
    x_t = x0 + s * eps
    perfect = (x0 - 0.25 / (s**2 + 0.25) * x_t) / (s * 0.5 / torch.sqrt(s**2 + 0.25))
    assert step.loss(perfect)[0].abs() < 1e-5
    # and lambda weighting: a unit error in x0 costs lambda(sigma) on the generated frames only
    loss, _ = step.loss(perfect + 1 / (s * 0.5 / torch.sqrt(s**2 + 0.25)))
    lam = (sigma**2 + 0.25) / (sigma * 0.5) ** 2
    assert torch.allclose(loss, (lam * 0.5).mean(), rtol=1e-4)  # 2 of 4 frames carry loss


def test_rf_objective_matches_its_formulas():
    from cosmos_nemo.models.dit.objectives import DiffusionObjective, prepare

    obj = DiffusionObjective(kind="rf", shift=5.0, timestep_input_scale=1000.0, conditional_frames_probs={1: 1.0})
    x0 = torch.randn(2, 16, 3, 2, 2)
    g = torch.Generator().manual_seed(3)
    step = prepare(obj, _Recorder(), x0, True, g)
    g = torch.Generator().manual_seed(3)
    obj.draw_condition_frames(2, 3, True, g)
    eps = torch.randn(x0.shape, generator=g)
    u = torch.sigmoid(torch.randn(2, generator=g, dtype=torch.float64))
    t = (5 * u / (1 + 4 * u)).float()
    tt = t.view(-1, 1, 1, 1, 1)
    assert torch.allclose(step.timesteps, 1000 * t[:, None].expand(2, 3))
    assert torch.allclose(step.net_input[:, :, 1:], (tt * eps + (1 - tt) * x0)[:, :, 1:], atol=1e-6)
    assert torch.equal(step.net_input[:, :, :1], x0[:, :, :1])  # the conditional frame is clean
    v = eps - x0
    assert step.loss(v)[0] < 1e-10
    assert torch.allclose(step.loss(v + 1)[0], torch.tensor(2 / 3), rtol=1e-5)  # no loss on the cond frame
    # the logit-normal with shift 5 puts the median t at 5/6
    assert abs(torch.median(obj.draw_t(20001, 1, torch.Generator().manual_seed(0))).item() - 5 / 6) < 0.01


def test_dataset_contract_and_model_checks(tmp_path):
    from cosmos_nemo.data.dit_dataset import DiTDataConfig, DiTDatasetError, DiTLatentDataset, build_dit_dataloaders
    from cosmos_nemo.models.dit.config import dit_config

    write_dataset(tmp_path / "d")
    ds = DiTLatentDataset(tmp_path / "d")
    assert len(ds) == 8 and ds.grids.tolist()[0] == [3, 4, 6] and ds.embeddings.shape == (2, 8, 1024)
    train, valid, notes = build_dit_dataloaders(DiTDataConfig(paths=[str(tmp_path / "d")], split_string="6,2,0",
                                                              micro_batch_size=2, global_batch_size=2),
                                                dit_config("tiny_predict2"))
    batch = next(train)
    assert batch["latents"].shape == (2, 16, 3, 4, 6) and batch["context"].shape == (2, 8, 1024)
    assert train.seq_length() == 3 * 2 * 3 and valid is not None
    state = train.state_dict()
    a = next(train)["sample_ids"]
    train.load_state_dict(state)
    assert torch.equal(next(train)["sample_ids"], a)  # an exact, resumable position
    with pytest.raises(DiTDatasetError, match="100352-d"):  # Predict2.5 reads Reason1 embeddings
        build_dit_dataloaders(DiTDataConfig(paths=[str(tmp_path / "d")]), dit_config("predict25_2b"))
    write_dataset(tmp_path / "odd", n=2)
    (tmp_path / "odd" / "manifest.jsonl").write_text("")
    with pytest.raises(DiTDatasetError, match="interrupted"):
        DiTLatentDataset(tmp_path / "odd")


# ---------------------------------------------------------------------------------------------------
# training through the shared trainer


def _train(root: str, name: str, model: str, steps: int, pretrained: str | None = None, overrides: dict | None = None,
           lr: float = 2e-3):
    torch.set_num_threads(1)
    from cosmos_nemo.data.dit_dataset import DiTDataConfig
    from cosmos_nemo.models.dit.config import dit_config
    from cosmos_nemo.training.config import CheckpointConfig, LogConfig, OptimizerConfig, ParallelConfig, TrainerConfig
    from cosmos_nemo.training.trainer import train

    return train(dit_config(model, **(overrides or {})),
                 DiTDataConfig(paths=[root + "/data"], split_string="1,0,0", micro_batch_size=2, global_batch_size=4),
                 OptimizerConfig(lr=lr, warmup_steps=0, schedule="constant", weight_decay=0.0),
                 TrainerConfig(max_steps=steps, val_interval=0, seed=1),
                 CheckpointConfig(output_root=root + "/runs", name=name, save_interval=3, keep_last=0,
                                  mode="finetune" if pretrained else "pretrain", pretrained=pretrained),
                 ParallelConfig(), LogConfig(progress_bar=False, tensorboard=False))


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("dit_train")
    write_dataset(root / "data", n=8)
    return root


@pytest.mark.slow
def test_predict25_style_learns_and_resumes_bit_identically(data_root):
    root = str(data_root)
    full = run_in_processes(_train, 1, root, "rf", "tiny_predict2", 12)[0]
    losses = full["losses"]
    assert len(losses) == 12 and all(math.isfinite(v) for v in losses)
    assert sum(losses[-4:]) < 0.7 * sum(losses[:4]), losses  # it learns
    first = run_in_processes(_train, 1, root, "rf_resumed", "tiny_predict2", 6)[0]
    second = run_in_processes(_train, 1, root, "rf_resumed", "tiny_predict2", 12)[0]
    assert first["losses"] + second["losses"] == losses


@pytest.mark.medium
def test_predict1_finetunes_from_a_released_checkpoint(golden, data_root, tmp_path):
    """`checkpoint.pretrained` = NVIDIA's Cosmos-layout weights (the golden tiny Predict1 V2W net), EDM with
    conditional frames. With lr 0 the run's checkpoint is exactly those weights (the run started from them)."""
    from safetensors.torch import load_file

    from cosmos_nemo.cli import main

    weights = golden("dit", "dit7b_v2w") / "weights_cosmos.safetensors"
    out = run_in_processes(_train, 1, str(data_root), "edm", "tiny_predict1_v2w", 2, str(weights),
                           {"logvar_head": False}, 0.0)[0]
    assert out["step"] == 2 and all(math.isfinite(v) for v in out["losses"])
    assert main(["convert", "dit-export", "--checkpoint", out["run_dir"], "--model", "tiny_predict1_v2w", "--set",
                 "logvar_head=False", "--no-prefix", "--output", str(tmp_path / "back.safetensors")]) == 0
    back, original = load_file(str(tmp_path / "back.safetensors")), load_file(str(weights))
    assert back.keys() == original.keys() and all(torch.equal(back[k], original[k]) for k in original)


def test_noise_level_distributions_match_their_definitions():
    """EDM: ln sigma ~ N(p_mean, p_std) (+ ln sqrt(T) with the video multiplier); RF: t = s u / (1 + (s - 1) u) with
    u = sigmoid(N(0, 1)), so logit(u) = ln(t / (s (1 - t))) is standard normal."""
    from cosmos_nemo.models.dit.objectives import DiffusionObjective

    g = torch.Generator().manual_seed(0)
    n = 40_000
    edm = DiffusionObjective(kind="edm", p_mean=-0.5, p_std=1.2, video_noise_multiplier="sqrt_t")
    ln_sigma = torch.log(edm.draw_sigma(n, 16, g))
    assert abs(ln_sigma.mean().item() - (-0.5 + math.log(4.0))) < 0.03 and abs(ln_sigma.std().item() - 1.2) < 0.02
    rf = DiffusionObjective(kind="rf", shift=5.0)
    t = rf.draw_t(n, 1, g)
    z = torch.log(t / (5.0 * (1 - t)))
    assert abs(z.mean().item()) < 0.03 and abs(z.std().item() - 1.0) < 0.02
    p2 = DiffusionObjective(kind="rf", time_distribution="lognormal_sigma", video_noise_multiplier="sqrt_t")
    t2 = p2.draw_t(n, 24, g)  # t = sigma / (1 + sigma), ln sigma ~ N(ln sqrt(24), 1)
    ln_s = torch.log(t2 / (1 - t2))
    assert abs(ln_s.mean().item() - 0.5 * math.log(24)) < 0.03 and abs(ln_s.std().item() - 1.0) < 0.02


@pytest.mark.parametrize("n_cond", [0, 1, 2])
def test_conditional_frames_are_clean_inputs_without_loss(n_cond):
    """For 0, 1 and 2 conditional frames: those frames enter the net clean (RF) and carry no loss; the rest do."""
    from cosmos_nemo.models.dit.objectives import DiffusionObjective, prepare

    obj = DiffusionObjective(kind="rf", conditional_frames_probs={n_cond: 1.0})
    x0 = torch.randn(2, 16, 4, 2, 2)
    step = prepare(obj, _Recorder(), x0, True, torch.Generator().manual_seed(1))
    assert torch.equal(step.net_input[:, :, :n_cond], x0[:, :, :n_cond])
    assert (step.condition_mask[:, :, :n_cond] == 1).all() and (step.condition_mask[:, :, n_cond:] == 0).all()
    # an error of 1 everywhere costs 1 per generated frame only
    g = torch.Generator().manual_seed(1)
    obj.draw_condition_frames(2, 4, True, g)
    eps = torch.randn(x0.shape, generator=g)
    loss, metrics = step.loss(eps - x0 + 1)
    assert torch.allclose(loss, torch.tensor((4 - n_cond) / 4)) and metrics["cond_frames"] == n_cond


# ---------------------------------------------------------------------------------------------------
# crash safety: a SIGKILL anywhere in a save, then the same command, resumes exactly (EMA included)


def _train_ema(root: str, name: str, steps: int, env: dict | None = None):
    import os

    os.environ.update(env or {})
    torch.set_num_threads(1)
    from cosmos_nemo.data.dit_dataset import DiTDataConfig
    from cosmos_nemo.models.dit.config import dit_config
    from cosmos_nemo.training.config import CheckpointConfig, LogConfig, OptimizerConfig, ParallelConfig, TrainerConfig
    from cosmos_nemo.training.trainer import train

    return train(dit_config("tiny_predict2"),
                 DiTDataConfig(paths=[root + "/data"], split_string="1,0,0", micro_batch_size=2, global_batch_size=4),
                 OptimizerConfig(lr=2e-3, warmup_steps=0, schedule="constant", weight_decay=0.0),
                 TrainerConfig(max_steps=steps, val_interval=0, seed=1, ema_sigma_rel=0.1),
                 CheckpointConfig(output_root=root + "/runs", name=name, save_interval=2, keep_last=2),
                 ParallelConfig(), LogConfig(progress_bar=False, tensorboard=False))


def _ema_tensors(checkpoint: str) -> dict:
    from cosmos_nemo import parallel
    from cosmos_nemo.checkpoint import dist as dist_ckpt
    from cosmos_nemo.models.dit.config import dit_config
    from cosmos_nemo.models.dit.model import build_dit_model

    parallel.setup()
    model = build_dit_model(dit_config("tiny_predict2"))
    dist_ckpt.load_model([model], checkpoint + "/ema")
    out = {k: v.detach().clone() for k, v in model.state_dict().items() if torch.is_tensor(v)}
    parallel.teardown()
    return out


@pytest.fixture(scope="module")
def ema_straight(data_root):
    return run_in_processes(_train_ema, 1, str(data_root), "ema_straight", 5)[0]


@pytest.mark.slow
@pytest.mark.parametrize("point, step", [("model_shard", 4), ("after_optim", 2), ("before_pointer", 4)])
def test_sigkill_during_a_dit_save_resumes_exactly_with_its_ema(data_root, ema_straight, point, step):
    root = str(data_root)
    name = f"ema_killed_{point}"
    with pytest.raises(RuntimeError, match="died|failed"):
        run_in_processes(_train_ema, 1, root, name, 5, {"COSMOS_NEMO_KILL_AT": point, "COSMOS_NEMO_KILL_STEP": str(step)})
    resumed = run_in_processes(_train_ema, 1, root, name, 5)[0]
    done = step - 2  # the pointer names the last checkpoint completed before the killed save (it moves last)
    assert resumed["losses"] == ema_straight["losses"][done:], (point, step)
    a, b = (run_in_processes(_ema_tensors, 1, run["checkpoint"])[0] for run in (resumed, ema_straight))
    assert a.keys() == b.keys() and all(torch.equal(torch.as_tensor(a[k]), torch.as_tensor(b[k])) for k in a)
