"""DiT recipes (recipes/dit.py): the seed values they keep, the launcher's checks for the DiT, and a tiny
recipe trained through `cosmos-nemo train` with 2 processes at TP=2, equal to the 1-process run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import fiddle as fdl
import pytest

from cosmos_nemo.recipes import dit
from cosmos_nemo.recipes.launch import LaunchError, preflight
from cosmos_nemo.recipes.overrides import apply_overrides
from cosmos_nemo.recipes.registry import RECIPES, build_recipe
from test_dit_training import write_dataset

_P1 = dict(lr=2**-14.3, wd=0.1, betas=(0.9, 0.99), eps=1e-10, warmup=500, f_max=1.0, f_min=1.0, steps=2000, save=200,
           precision="bf16", objective="edm", group="diffusion_video2world")
_P25 = dict(lr=2**-14.5, wd=1e-3, betas=(0.9, 0.999), eps=1e-8, warmup=250, f_max=0.5, f_min=0.2, steps=1000, save=200,
            precision="bf16", objective="rf", group="diffusion_predict25")
PINNED = {
    "cosmos_predict1_7b_v2w_finetune": dict(_P1, model="predict1_7b_v2w", pretrained=dit.HUB_IDS["predict1_7b_v2w"]),
    "cosmos_predict1_14b_v2w_finetune": dict(_P1, model="predict1_14b_v2w", pretrained=dit.HUB_IDS["predict1_14b_v2w"]),
    "cosmos_predict1_7b_t2w_finetune": dict(_P1, model="predict1_7b_t2w", pretrained=dit.HUB_IDS["predict1_7b_t2w"],
                                            group="diffusion_text2world"),
    "cosmos_predict1_14b_t2w_finetune": dict(_P1, model="predict1_14b_t2w", pretrained=dit.HUB_IDS["predict1_14b_t2w"],
                                             group="diffusion_text2world"),
    "cosmos_predict25_2b_finetune": dict(_P25, model="predict25_2b", pretrained=None),
    "cosmos_predict25_14b_finetune": dict(_P25, model="predict25_14b", pretrained=None),
}


LORA = {
    "cosmos_predict1_7b_v2w_lora": dict(model="predict1_7b_v2w", targets=["FA[to_q, to_v]", "CA[to_q, to_v]"], rank=8,
                                        alpha=8.0, first_n=28, init="gaussian", lr=1e-4, wd=0.1, eps=1e-10,
                                        schedule="constant", steps=5000, save=1000, ema=None,
                                        pretrained=dit.HUB_IDS["predict1_7b_v2w"], trainable=6_651_904),
    "cosmos_predict25_2b_lora": dict(model="predict25_2b", targets=["q_proj", "k_proj", "v_proj", "output_proj",
                                                                    "mlp.layer1", "mlp.layer2"], rank=32, alpha=32.0,
                                     first_n=None, init="kaiming", lr=2**-14.5, wd=1e-3, eps=1e-8, schedule="cycle",
                                     steps=1000, save=200, ema=0.1, pretrained=None, trainable=45_875_200),
    "cosmos_predict25_14b_lora": dict(model="predict25_14b", targets=["q_proj", "k_proj", "v_proj", "output_proj",
                                                                      "mlp.layer1", "mlp.layer2"], rank=32, alpha=32.0,
                                      first_n=None, init="kaiming", lr=2**-14.5, wd=1e-3, eps=1e-8, schedule="cycle",
                                      steps=1000, save=200, ema=0.1, pretrained=None, trainable=None),
}
TINY = {"cosmos_predict1_tiny_v2w_finetune", "cosmos_predict25_tiny_finetune", "cosmos_predict1_tiny_v2w_lora",
        "cosmos_predict25_tiny_lora"}


@pytest.mark.parametrize("name", sorted(LORA))
def test_lora_recipes_keep_the_seed_values(name):
    want, p = LORA[name], _parts(name)
    peft, o = p["peft"], p["optim"]
    assert p["model"].name == want["model"]
    assert (peft.targets, peft.rank, peft.alpha, peft.first_n_blocks, peft.init) == (
        want["targets"], want["rank"], want["alpha"], want["first_n"], want["init"])
    assert (o.lr, o.weight_decay, o.eps, o.schedule) == (want["lr"], want["wd"], want["eps"], want["schedule"])
    assert (p["trainer"].max_steps, p["checkpoint"].save_interval, p["trainer"].ema_sigma_rel) == (
        want["steps"], want["save"], want["ema"])
    assert (p["checkpoint"].mode, p["checkpoint"].pretrained) == ("finetune", want["pretrained"])
    if "predict25" in name:  # T2W / I2W / V2W in one run, a third each (seed 004)
        assert p["model"].objective.conditional_frames_probs == {0: 0.333, 1: 0.333, 2: 0.334}
    if want["trainable"]:
        from cosmos_nemo.parallel.launch import run_in_processes
        from test_peft_lora import _counts

        assert run_in_processes(_counts, 1, want["model"], peft.targets, peft.rank, peft.alpha,
                                peft.first_n_blocks)[0] == want["trainable"]


def _parts(name):
    fn = fdl.build(build_recipe(name))
    return fn.keywords


def test_every_dit_recipe_is_registered():
    names = {n for n in RECIPES if "predict" in n}
    assert names == set(PINNED) | set(LORA) | TINY


@pytest.mark.parametrize("name", sorted(PINNED))
def test_released_recipes_keep_the_seed_values(name):
    want, p = PINNED[name], _parts(name)
    o = p["optim"]
    assert p["model"].name == want["model"] and p["model"].objective.kind == want["objective"]
    assert (o.lr, o.weight_decay, (o.beta1, o.beta2), o.eps, o.schedule, o.warmup_steps, o.f_max, o.f_min) == (
        want["lr"], want["wd"], want["betas"], want["eps"], "cycle", want["warmup"], want["f_max"], want["f_min"])
    assert (p["trainer"].max_steps, p["trainer"].precision, p["checkpoint"].save_interval) == (
        want["steps"], want["precision"], want["save"])
    assert (p["checkpoint"].mode, p["checkpoint"].pretrained, p["checkpoint"].group, p["checkpoint"].name) == (
        "finetune", want["pretrained"], want["group"], name)
    assert (p["data"].micro_batch_size, p["data"].global_batch_size) == (1, 8)
    assert o.warmup_steps < p["trainer"].max_steps  # the references' warm-up longer than the run is not copied


def test_objective_fields_are_overridable():
    recipe = build_recipe("cosmos_predict25_tiny_finetune")
    apply_overrides(recipe, ["model.objective.shift=3.0", "model.objective.loss_scale=2"])
    model = _parts_of(recipe)["model"]
    assert (model.objective.shift, model.objective.loss_scale) == (3.0, 2.0)


def _parts_of(recipe):
    return fdl.build(recipe).keywords


def test_launcher_checks_the_dit_layout_and_data(tmp_path):
    data = write_dataset(tmp_path / "d1024", n=4)  # 1024-d text: not what the tiny Predict2.5 (512-d) reads
    recipe = build_recipe("cosmos_predict25_tiny_finetune")
    apply_overrides(recipe, [f"data.paths=[{data}]"])
    with pytest.raises(LaunchError, match="512-d"):
        preflight(recipe, 1)
    for override, message in (("parallel.pipeline=2", "does not support pipeline parallelism"),
                              ("parallel.tensor=3", "must divide model.num_attention_heads=4")):
        bad = build_recipe("cosmos_predict25_tiny_finetune")
        apply_overrides(bad, [f"data.paths=[{data}]", override])
        with pytest.raises(LaunchError, match=message):
            preflight(bad, 2 if "pipeline" in override else 3, check_data=False)
    if sys.modules.get("torch") is None or not __import__("torch").cuda.is_available():
        cp = build_recipe("cosmos_predict25_tiny_finetune")
        apply_overrides(cp, [f"data.paths=[{data}]", "parallel.context=2"])
        with pytest.raises(LaunchError, match="context parallelism of the DiT needs GPUs"):
            preflight(cp, 2, check_data=False)


def _cli(*args, timeout=600):
    env = dict(os.environ, PYTHONWARNINGS="ignore", COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "cosmos_nemo", "train", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, stdin=subprocess.DEVNULL)


def _losses(run_dir: Path) -> dict[int, float]:
    import json

    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "train/loss" in row:
            out[row["step"]] = row["train/loss"]
    return out


@pytest.mark.slow
@pytest.mark.distributed
def test_tiny_recipe_trains_at_tp2_like_tp1(tmp_path):
    data = write_dataset(tmp_path / "data", n=8, width=512)
    common = ["cosmos_predict25_tiny_finetune", f"data.paths=[{data}]", "trainer.max_steps=3", "log.progress_bar=false",
              "trainer.val_interval=0"]
    tp2 = _cli(*common, f"checkpoint.output_root={tmp_path / 'tp2'}", "parallel.tensor=2", "--nproc", "2", "--quiet")
    assert tp2.returncode == 0, tp2.stdout[-3000:] + tp2.stderr[-3000:]
    run_dir = tmp_path / "tp2" / "cosmos_nemo" / "diffusion_predict25" / "cosmos_predict25_tiny_finetune"
    assert (run_dir / "checkpoints" / "latest_checkpoint.txt").read_text().strip() == "iter_000000003"
    tp1 = _cli(*common, f"checkpoint.output_root={tmp_path / 'tp1'}", "--direct")
    assert tp1.returncode == 0, tp1.stdout[-3000:] + tp1.stderr[-3000:]
    a = _losses(run_dir)
    b = _losses(tmp_path / "tp1" / "cosmos_nemo" / "diffusion_predict25" / "cosmos_predict25_tiny_finetune")
    assert sorted(a) == sorted(b) == [1, 2, 3]
    for step in a:
        assert abs(a[step] - b[step]) <= 1e-5 * abs(b[step]), (step, a[step], b[step])


def test_launcher_refuses_lora_without_a_base(tmp_path):
    recipe = build_recipe("cosmos_predict25_tiny_lora")
    apply_overrides(recipe, [f"data.paths=[{tmp_path}]"])
    with pytest.raises(LaunchError, match="needs checkpoint.pretrained"):
        preflight(recipe, 1, check_data=False)
    apply_overrides(recipe, ["checkpoint.mode=pretrain"])
    with pytest.raises(LaunchError, match="never starts from random weights"):
        preflight(recipe, 1, check_data=False)
    apply_overrides(recipe, ["checkpoint.mode=finetune", "checkpoint.pretrained=/x", "peft.rank=0"])
    with pytest.raises(LaunchError, match="peft.rank must be a positive integer"):
        preflight(recipe, 1, check_data=False)
