"""`--sft-toml`: NVIDIA's structured SFT TOML (seed 000) validated by its pydantic schema and mapped onto the recipes.

Every example TOML validates; a typo'd key, a wrong type, a missing environment variable, a field of the other
family and a field not supported yet each fail before any model is built, naming the file, line and key (and the
closest valid key for a typo); a TOML plus overrides gives exactly the recipe the Python recipe plus the equivalent
overrides gives; the reference's LambdaLinear schedule matches its formula; tiny AR and DiT runs launched from a
TOML (`python -m cosmos_nemo.train --sft-toml`) write the usual run folder and resume from iter_N exactly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cosmos_nemo.recipes.overrides import apply_overrides
from cosmos_nemo.recipes.registry import build_recipe
from cosmos_nemo.recipes.sft_toml import SFTConfigError, load_sft_toml, read_sft_toml

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "toml"


def _write(tmp_path, text: str, name: str = "sft.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


TINY_DIT = """\
[job]
task = "vfm"
experiment = "cosmos_predict25_tiny_finetune"
name = "tiny_dit"
output_root = "{root}"

[model]
precision = "float32"

[model.ema]
enabled = true
rate = 0.1

[optimizer]
lr = 1e-3
betas = [0.9, 0.99]
weight_decay = 0.0

[scheduler]
cycle_lengths = [3, 100]
warm_up_steps = [1, 1]
f_start = [0.1, 0.1]
f_max = [1.0, 0.5]
f_min = [0.5, 0.2]

[trainer]
max_iter = 4
grad_accum_iter = 2
logging_iter = 1

[trainer.callbacks.grad_clip]
clip_norm = 0.5
force_finite = true

[checkpoint]
save_iter = 2

[dataloader_train]
paths = ["{data}"]
max_samples_per_batch = 1
seed = 7
"""


def _env(**values):
    return {"DATASET_PATH": "/data", "BASE_CHECKPOINT_PATH": "/ckpt", "VLM_SAFETENSORS_PATH": "/vlm", **values}


# ---------------------------------------------------------------------------------------------------
# the examples


@pytest.mark.parametrize("name", ["ar_sft.toml", "dit_sft.toml", "dit_lora_sft.toml", "vlm_sft.toml"])
def test_every_example_toml_validates(name, tmp_path):
    vae = tmp_path / "vae.pth"
    vae.write_bytes(b"")
    (tmp_path / "vlm").mkdir()
    env = _env(VAE_PATH=str(vae), VLM_SAFETENSORS_PATH=str(tmp_path / "vlm"), VIDEOPHYSICS_ROOT="/videophysics")
    cfg, _, _ = read_sft_toml(EXAMPLES / name, environ=env)
    assert cfg.job.task == ("vlm" if name.startswith("vlm") else "vfm")
    assert (EXAMPLES / name.replace(".toml", ".sh")).is_file()
    if cfg.job.task == "vlm":
        recipe, _, _ = load_sft_toml(EXAMPLES / name, world_size=8, environ=env)
        assert recipe.model.__fn_or_cls__.__name__ == "VLMModelConfig" and recipe.model.name == "qwen3_vl"
        assert recipe.checkpoint.pretrained == str(tmp_path / "vlm") and recipe.checkpoint.mode == "finetune"
        assert recipe.data.paths == ["/videophysics"] and recipe.data.kind == "videophy2"
        assert recipe.model.gradient_checkpointing is True and recipe.model.max_tokens == 16384
        assert recipe.trainer.precision == "bf16" and recipe.optim.lr == 1e-5 and recipe.optim.beta2 == 0.95
        assert recipe.data.micro_batch_size == 1 and recipe.data.global_batch_size == 8  # 1 x 1 x DP 8
        return
    recipe, _, _ = load_sft_toml(EXAMPLES / name, world_size=8, environ=env)
    assert recipe.data.paths == ["/data"] and recipe.checkpoint.pretrained == "/ckpt"
    assert recipe.checkpoint.mode == "finetune"
    if name == "ar_sft.toml":  # grad_accum_iter 4 x 2 samples x DP (8 / TP 2)
        assert (recipe.parallel.tensor, recipe.data.micro_batch_size, recipe.data.global_batch_size) == (2, 2, 32)
    else:
        assert recipe.optim.schedule == "lambda_linear" and recipe.optim.lambda_linear.f_max == [0.5]
    if name == "dit_lora_sft.toml":
        assert recipe.peft.rank == 32 and recipe.optim.keys_to_select == ["lora_"]


def test_example_launcher_resolves_default_paths(tmp_path):
    """The launch script exports DATASET_PATH / BASE_CHECKPOINT_PATH / VAE_PATH defaults (absolute, under the repo's
    examples/) unless they are set, and forwards the TOML to `cosmos-nemo train --sft-toml`."""
    fake = tmp_path / "fake-cosmos-nemo"
    fake.write_text('#!/usr/bin/env bash\necho "ARGS $*"\necho "DATASET_PATH=$DATASET_PATH"\n'
                    'echo "BASE=$BASE_CHECKPOINT_PATH"\necho "VAE=$VAE_PATH"\n')
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("DATASET_PATH", "BASE_CHECKPOINT_PATH", "VAE_PATH")}
    env.update(COSMOS_NEMO=str(fake), NPROC="2", VAE_PATH="/elsewhere/vae.pth")
    out = subprocess.run(["bash", str(EXAMPLES / "dit_sft.sh"), "trainer.max_iter=5"], capture_output=True, text=True,
                         env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    root = EXAMPLES.parents[1]
    assert "ARGS train --sft-toml examples/toml/dit_sft.toml --nproc 2 trainer.max_iter=5" in out.stdout
    assert f"DATASET_PATH={root}/examples/data/predict25_latents" in out.stdout
    assert f"BASE={root}/examples/checkpoints/Cosmos-Predict2.5-2B" in out.stdout
    assert "VAE=/elsewhere/vae.pth" in out.stdout  # an exported value wins


# ---------------------------------------------------------------------------------------------------
# errors: before any model is built, naming file, line and key


def _error(tmp_path, text, *overrides, environ=None, world_size=1) -> str:
    path = _write(tmp_path, text)
    with pytest.raises(SFTConfigError) as info:
        load_sft_toml(path, overrides, world_size=world_size, environ=environ if environ is not None else {})
    return str(info.value)


BASE = '[job]\ntask = "vfm"\nexperiment = "cosmos_ar_tiny_finetune"\n'


def test_typo_names_file_line_key_and_the_closest_key(tmp_path):
    message = _error(tmp_path, BASE + "\n[trainer]\nlogging_iter = 1\nmax_iters = 4\n")
    assert f"{tmp_path / 'sft.toml'}:7:" in message
    assert "unknown key 'trainer.max_iters'" in message and "did you mean 'trainer.max_iter'?" in message
    message = _error(tmp_path, BASE + "\n[optimiser]\nlr = 1e-4\n")
    assert ":5:" in message and "'optimiser'" in message and "'optimizer" in message
    message = _error(tmp_path, BASE + "\n[trainer.callbacks.grad_clip]\nclip_nrom = 1.0\n")
    assert ":6:" in message and "did you mean 'trainer.callbacks.grad_clip.clip_norm'?" in message


@pytest.mark.parametrize("command", [["-m", "cosmos_nemo", "train", "--sft-toml"], ["-m", "cosmos_nemo.train", "--sft-toml"]])
def test_a_mistake_in_the_file_is_reported_before_the_heavy_imports(tmp_path, command):
    """The file is checked before megatron-core and nemo-run are imported (~8 s), in both entry points."""
    path = tmp_path / "sft.toml"
    path.write_text(BASE + "\n[trainer]\nmax_iters = 4\n")
    probe = ("import runpy, sys\n"
             f"sys.argv = ['x', *{command[2:]!r}, {str(path)!r}]\n"
             "try:\n"
             f"    runpy.run_module({command[1]!r}, run_name='__main__')\n"
             "except SystemExit as e:\n"
             "    code = e.code\n"
             "heavy = sorted(m for m in ('megatron', 'nemo_run', 'cosmos_nemo.training.trainer') if m in sys.modules)\n"
             "print('EXIT', code, 'HEAVY', heavy)\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert "unknown key 'trainer.max_iters'" in result.stderr
    assert "EXIT 2 HEAVY []" in result.stdout, result.stdout + result.stderr[-2000:]


def test_wrong_type_names_the_key(tmp_path):
    message = _error(tmp_path, BASE + "\n[trainer]\nmax_iter = \"four\"\n")
    assert ":6:" in message and "trainer.max_iter" in message and "'four'" in message
    message = _error(tmp_path, BASE + "\n[optimizer]\nbetas = [0.9]\n")
    assert ":6:" in message and "optimizer.betas" in message
    message = _error(tmp_path, BASE.replace('"vfm"', '"vision"'))
    assert ":2:" in message and "job.task" in message


def test_missing_env_var_names_it_and_the_key(tmp_path):
    text = BASE + '\n[checkpoint]\nload_path = "${oc.env:BASE_CHECKPOINT_PATH}"\n'
    message = _error(tmp_path, text)
    assert ":6:" in message and "checkpoint.load_path" in message and "BASE_CHECKPOINT_PATH is not set" in message
    # set, or with a default: resolved
    recipe, _, _ = load_sft_toml(_write(tmp_path, text), environ={"BASE_CHECKPOINT_PATH": "/w"})
    assert recipe.checkpoint.pretrained == "/w" and recipe.checkpoint.mode == "finetune"
    text = BASE + '\n[dataloader_train]\npaths = ["${oc.env:DATASET_PATH,/default/data}"]\n'
    recipe, _, _ = load_sft_toml(_write(tmp_path, text), environ={})
    assert recipe.data.paths == ["/default/data"]
    message = _error(tmp_path, BASE + '\n[checkpoint]\nload_path = "???"\n')
    assert "checkpoint.load_path: is required" in message


def test_field_of_the_other_family_is_an_error(tmp_path):
    message = _error(tmp_path, BASE + '\n[model]\nattn_implementation = "sdpa"\n')
    assert ":6:" in message and "model.attn_implementation" in message and 'task = "vlm"' in message
    vlm = '[job]\ntask = "vlm"\nexperiment = "videophy2"\n'
    message = _error(tmp_path, vlm + "\n[optimizer]\neps = 1e-8\n")
    assert "optimizer.eps" in message and 'task = "vfm"' in message
    message = _error(tmp_path, vlm + '\n[model.tokenizer]\nvae_path = "/v"\n')
    assert "model.tokenizer" in message and 'task = "vfm"' in message
    # a DiT-only field on an AR recipe
    message = _error(tmp_path, BASE + '\n[model.tokenizer]\nvae_path = "/v"\n')
    assert "model.tokenizer.vae_path" in message and "AR recipe" in message


def test_vlm_toml_maps_onto_the_reasoner_recipes(tmp_path):
    snapshot = tmp_path / "snap"
    snapshot.mkdir()
    (snapshot / "config.json").write_text("{}")
    text = ('[job]\ntask = "vlm"\nexperiment = "llava_ov"\n\n[model]\nattn_implementation = "eager"\n\n'
            '[model.backbone]\nsafetensors_path = "${oc.env:VLM}"\n\n[dataloader_train]\nmax_sequence_length = 4096\n')
    path = _write(tmp_path, text)
    recipe, cfg, _ = load_sft_toml(path, ["data.paths=[/records]", "data_setting.max_tokens=2048"],
                                   environ={"VLM": str(snapshot)})
    assert cfg.model.attn_implementation == "eager" and recipe.model.attn_implementation == "eager"
    assert recipe.data.kind == "llava_ov" and recipe.data.paths == ["/records"]
    assert recipe.model.model_name == str(snapshot) and recipe.checkpoint.pretrained == str(snapshot)
    assert recipe.model.max_tokens == 2048  # the reference's tail override, after the TOML's 4096
    # the same as the Python recipe with the same fields set
    from cosmos_nemo.recipes.registry import build_recipe

    direct = build_recipe("reasoner_8b_sft_llava_ov")
    direct.model.attn_implementation, direct.model.model_name, direct.model.max_tokens = "eager", str(snapshot), 2048
    direct.checkpoint.pretrained, direct.data.paths = str(snapshot), ["/records"]
    assert str(recipe) == str(direct)
    # a generator recipe under task = "vlm", and a Reasoner recipe under task = "vfm"
    bad = _write(tmp_path, '[job]\ntask = "vlm"\nexperiment = "cosmos_ar_tiny_finetune"\n')
    with pytest.raises(SFTConfigError, match="job.task.*Reasoner recipes"):
        load_sft_toml(bad, environ={})
    bad = _write(tmp_path, '[job]\ntask = "vfm"\nexperiment = "reasoner_tiny_sft"\n')
    with pytest.raises(SFTConfigError, match='need task = "vlm"'):
        load_sft_toml(bad, environ={})
    bad = _write(tmp_path, '[job]\ntask = "vlm"\nexperiment = "llava_ov"\n\n[model]\nattn_implementation = "cosmos"\n')
    with pytest.raises(SFTConfigError, match="not supported yet"):
        load_sft_toml(bad, environ={})


@pytest.mark.parametrize("section, field, value", [
    ("model", "joint_attn_implementation", '"flex"'),
    ("model.compile", "enabled", "true"),
    ("trainer", "distributed_parallelism", '"fsdp"'),
    ("model.ema", "iteration_shift", "100"),
    ("checkpoint", "keys_to_skip_loading", '["blocks.0."]'),
    ("dataloader_train", "max_sequence_length", "4096"),
    ("model.parallelism", "cfg_parallel_shard_degree", "2"),
    ("model.activation_checkpointing", "determinism_check", '"default"'),
    ("optimizer", "fused", "false"),
])
def test_reference_fields_not_honoured_say_not_supported_yet(tmp_path, section, field, value):
    message = _error(tmp_path, BASE + f"\n[{section}]\n{field} = {value}\n", world_size=2)
    assert "not supported yet" in message and section in message


def test_parallel_degrees_must_multiply_to_the_world_size(tmp_path):
    text = BASE + "\n[model.parallelism]\ndata_parallel_shard_degree = 2\ndata_parallel_replicate_degree = 2\n"
    message = _error(tmp_path, text, world_size=8)
    assert "= 4, but the world size is 8" in message and ":5:" in message
    recipe, _, notes = load_sft_toml(_write(tmp_path, text), world_size=4, environ={})
    assert "data parallel 4" in notes[0]
    text = BASE + "\n[model.parallelism]\ndata_parallel_shard_degree = -1\ntensor_parallel_degree = 2\n" \
                  "\n[trainer]\ngrad_accum_iter = 3\n\n[dataloader_train]\nmax_samples_per_batch = 2\n"
    recipe, _, _ = load_sft_toml(_write(tmp_path, text), world_size=8, environ={})
    assert (recipe.parallel.tensor, recipe.data.global_batch_size) == (2, 3 * 2 * 4)


def test_unknown_override_names_the_closest_keys(tmp_path):
    path = _write(tmp_path, BASE)
    with pytest.raises(SFTConfigError, match="trainer.max_steps"):
        load_sft_toml(path, ["trainer.max_step=3"], environ={})
    with pytest.raises(SFTConfigError, match="trainer.max_iter"):
        load_sft_toml(path, ["trainer.max_iter=four"], environ={})


def test_cli_refuses_a_bad_toml_before_building_anything(tmp_path, capsys):
    from cosmos_nemo.cli import main

    path = _write(tmp_path, BASE + "\n[trainer]\nmax_iters = 4\n")
    assert main(["train", "--sft-toml", path, "--dryrun"]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'trainer.max_iter'?" in err and f"{path}:6" in err


# ---------------------------------------------------------------------------------------------------
# a TOML is the recipe plus what it says


def test_toml_plus_overrides_equals_the_python_recipe_plus_overrides(tmp_path):
    path = _write(tmp_path, TINY_DIT.format(root=tmp_path / "runs", data="/latents"))
    tail = ["trainer.max_iter=6", "data.split_string=1,0,0", "trainer.val_interval=0", "log.progress_bar=false"]
    from_toml, _, _ = load_sft_toml(path, tail, world_size=2, environ={})

    python = build_recipe("cosmos_predict25_tiny_finetune")
    apply_overrides(python, [
        "checkpoint.name=tiny_dit", f"checkpoint.output_root={tmp_path / 'runs'}", "trainer.precision=fp32",
        "trainer.ema_sigma_rel=0.1", "trainer.ema_decay=null", "optim.lr=1e-3", "optim.beta1=0.9", "optim.beta2=0.99",
        "optim.weight_decay=0.0", "optim.schedule=lambda_linear", "optim.lambda_linear.cycle_lengths=[3,100]",
        "optim.lambda_linear.warm_up_steps=[1,1]", "optim.lambda_linear.f_start=[0.1,0.1]",
        "optim.lambda_linear.f_max=[1.0,0.5]", "optim.lambda_linear.f_min=[0.5,0.2]", "trainer.max_steps=6",
        "trainer.log_interval=1", "optim.clip_grad=0.5", "optim.zero_nonfinite_grads=true",
        "checkpoint.save_interval=2", "data.paths=[/latents]", "data.micro_batch_size=1", "data.seed=7",
        "data.global_batch_size=4",  # grad_accum_iter 2 x 1 sample x DP 2
        "data.split_string=1,0,0", "trainer.val_interval=0", "log.progress_bar=false",
    ])
    assert from_toml == python, f"{from_toml}\n!=\n{python}"
    # [optimizer.lr_multipliers] maps onto optim.lr_multipliers
    text = BASE + '\n[optimizer.lr_multipliers]\n"decoder.layers.0." = 0.5\n'
    recipe, _, _ = load_sft_toml(_write(tmp_path, text), ["optimizer.lr_multipliers.output_layer=2"], environ={})
    assert recipe.optim.lr_multipliers == {"decoder.layers.0.": 0.5, "output_layer": 2.0}


# ---------------------------------------------------------------------------------------------------
# the trainer's additions: LambdaLinear, keys_to_select


def _imaginaire_lambda_linear(n, warm_up_steps, f_min, f_max, f_start, cycle_lengths):
    """imaginaire `LambdaLinearScheduler.schedule` (functional/lr_scheduler.py), written out from its formula."""
    import numpy as np

    cum = np.cumsum([0] + list(cycle_lengths))
    cycle = next(i for i, end in enumerate(cum[1:]) if n <= end)
    n = n - cum[cycle]
    if n < warm_up_steps[cycle]:
        return (f_max[cycle] - f_start[cycle]) / warm_up_steps[cycle] * n + f_start[cycle]
    return f_min[cycle] + (f_max[cycle] - f_min[cycle]) * (cycle_lengths[cycle] - n) / (
        cycle_lengths[cycle] - warm_up_steps[cycle])


def test_lambda_linear_matches_the_reference_formula():
    from cosmos_nemo.training.config import LambdaLinearConfig, OptimizerConfig
    from cosmos_nemo.training.schedules import lr_at

    lists = dict(warm_up_steps=[4, 2], cycle_lengths=[10, 7], f_start=[1e-6, 0.3], f_max=[1.0, 0.6], f_min=[0.2, 0.1])
    cfg = OptimizerConfig(lr=2.0, schedule="lambda_linear", lambda_linear=LambdaLinearConfig(**lists))
    for step in range(18):
        assert lr_at(step, cfg, 18) == pytest.approx(2.0 * _imaginaire_lambda_linear(step, **lists), rel=1e-12), step
    assert lr_at(0, cfg, 18) == pytest.approx(2e-6)
    assert lr_at(4, cfg, 18) == pytest.approx(2.0)  # the peak right after the warm-up
    assert lr_at(10, cfg, 18) == pytest.approx(2.0 * 0.2)  # a cycle's last boundary still belongs to it
    from cosmos_nemo.training.schedules import check_lambda_linear

    with pytest.raises(ValueError, match="no value past its last cycle"):
        check_lambda_linear(LambdaLinearConfig(**lists), 30)
    with pytest.raises(ValueError, match="one entry per cycle"):
        check_lambda_linear(LambdaLinearConfig(**dict(lists, f_min=[0.2])))


def test_keys_to_select_freezes_the_rest():
    import torch

    from cosmos_nemo.training.trainer import select_trainable

    model = torch.nn.ModuleDict({"blocks": torch.nn.Linear(2, 2), "head": torch.nn.Linear(2, 1)})
    note = select_trainable(model, ["head."])
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["head.weight", "head.bias"]
    assert "training 3 of 9" in note
    with pytest.raises(ValueError, match="'hed.' .*closest name part: 'head'"):
        select_trainable(torch.nn.ModuleDict({"head": torch.nn.Linear(2, 1)}), ["hed."])


# ---------------------------------------------------------------------------------------------------
# tiny runs launched from a TOML: the run folder, and an exact resume from iter_N


def _train(toml: str, *overrides: str):
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    return subprocess.run([sys.executable, "-m", "cosmos_nemo.train", f"--sft-toml={toml}", "--", *overrides],
                          capture_output=True, text=True, timeout=600, env=env, stdin=subprocess.DEVNULL)


def _losses(run_dir: Path) -> dict[int, float]:
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "train/loss" in row:
            out[row["step"]] = row["train/loss"]
    return out


def _run_and_resume(tmp_path, toml_text: str, run_subdir: str, extra=()):
    common = ["trainer.val_interval=0", "log.progress_bar=false", "log.tensorboard=false", *extra]
    straight = _write(tmp_path, toml_text.replace("{name}", "straight"), "straight.toml")
    resumed = _write(tmp_path, toml_text.replace("{name}", "resumed"), "resumed.toml")
    out = _train(straight, *common)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    first = _train(resumed, "trainer.max_iter=2", *common)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    second = _train(resumed, *common)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    runs = tmp_path / "runs" / run_subdir
    a, b = runs / "straight", runs / "resumed"
    for run in (a, b):
        for name in ("config.yaml", "launch_info.yaml", "job_env.yaml"):
            assert (run / name).is_file(), run / name
        assert (run / "checkpoints" / "latest_checkpoint.txt").read_text().strip() == "iter_000000004"
        for part in ("model", "optim", "scheduler", "trainer", "dataloader"):
            assert (run / "checkpoints" / "iter_000000004" / part).is_dir()
    assert "resumed from" in second.stdout and "iter_000000002" in second.stdout
    la, lb = _losses(a), _losses(b)
    assert sorted(la) == sorted(lb) == [1, 2, 3, 4]
    assert la == lb  # bit-exact: the same floats
    family, cfg = _same_final_weights(a, b)
    return a, b, family, cfg


def _same_final_weights(a: Path, b: Path):
    """Both runs' iter_000000004 weights, loaded into the model their config.yaml describes, are identical."""
    import torch

    from cosmos_nemo import parallel
    from cosmos_nemo.checkpoint import dist as dist_ckpt
    from cosmos_nemo.checkpoint.run import read_model_config

    family, cfg = read_model_config(a)
    parallel.setup()
    try:
        states = []
        for run in (a, b):
            model = family.build_model(cfg, True, True, torch.float32)
            dist_ckpt.load_model([model], run / "checkpoints" / "iter_000000004" / "model")
            states.append({k: v.clone() for k, v in model.state_dict().items() if torch.is_tensor(v)})
    finally:
        parallel.teardown()
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    return family, cfg


@pytest.mark.slow
def test_tiny_ar_run_from_toml_resumes_exactly(tmp_path):
    from cosmos_nemo.data.synthetic import write_pattern_dataset

    data = write_pattern_dataset(tmp_path / "tokens", 16, grid=(2, 4, 6), vocab_size=64000, seed=1, pattern="motif")
    text = f"""\
[job]
task = "vfm"
experiment = "cosmos_ar_tiny_finetune"
group = "sft"
name = "{{name}}"
output_root = "{tmp_path / 'runs'}"

[optimizer]
lr = 3e-3

[scheduler]
cycle_lengths = [100]
warm_up_steps = [2]
f_start = [0.1]
f_max = [1.0]
f_min = [0.1]

[trainer]
max_iter = 4
grad_accum_iter = 2

[checkpoint]
save_iter = 2

[dataloader_train]
paths = ["{data}"]
max_samples_per_batch = 2
"""
    a, _, family, cfg = _run_and_resume(tmp_path, text, "cosmos_nemo/sft")
    config = (a / "config.yaml").read_text()
    assert "lambda_linear" in config and family.name == "ar"


@pytest.mark.slow
def test_tiny_dit_run_from_toml_resumes_exactly(tmp_path):
    from test_dit_training import write_dataset

    data = write_dataset(tmp_path / "latents", n=8, width=512)
    text = TINY_DIT.format(root=tmp_path / "runs", data=data).replace('name = "tiny_dit"', 'name = "{name}"')
    a, b, family, cfg = _run_and_resume(tmp_path, text, "cosmos_nemo/diffusion_predict25",
                                               extra=("data.split_string=1,0,0",))
    assert family.name == "dit"
    for run in (a, b):
        assert (run / "checkpoints" / "iter_000000004" / "ema").is_dir()  # [model.ema] enabled


def test_keys_to_select_lora_selects_exactly_the_adapters():
    """The reference's `keys_to_select = ["lora_"]` names this library's adapter parameters (`..._lora.q.lora_A`)."""
    import torch

    from cosmos_nemo import parallel
    from cosmos_nemo.models.dit.config import dit_config
    from cosmos_nemo.models.dit.model import build_dit_model
    from cosmos_nemo.peft.lora import LoRAConfig, apply_lora, is_adapter_key
    from cosmos_nemo.training.trainer import select_trainable

    if torch.cuda.is_available():
        pytest.skip("cpu_only: builds a megatron model on the CPU in the pytest process")
    parallel.setup()
    try:
        model = build_dit_model(dit_config("tiny_predict25"))
        apply_lora(model, LoRAConfig(rank=4, alpha=4.0))
        adapters = {n for n, p in model.named_parameters() if p.requires_grad}
        select_trainable(model, ["lora_"])
        assert {n for n, p in model.named_parameters() if p.requires_grad} == adapters
        assert adapters and all(is_adapter_key(n) for n in adapters)
    finally:
        parallel.teardown()


def _train_with_multipliers(data: str, root: str):
    import torch

    torch.set_num_threads(1)
    from cosmos_nemo.data import ARDataConfig
    from cosmos_nemo.models.ar.config import ar_config
    from cosmos_nemo.training.config import (CheckpointConfig, LogConfig, OptimizerConfig, ParallelConfig,
                                             TrainerConfig)
    from cosmos_nemo.training.trainer import train

    return train(ar_config("tiny", vocab_size=64), ARDataConfig(paths=[data], split_string="1,0,0", global_batch_size=2),
                 OptimizerConfig(lr=1e-2, schedule="constant", weight_decay=0.1,
                                 lr_multipliers={"decoder.layers.0.": 0.0, "final_layernorm": 0.5}),
                 TrainerConfig(max_steps=2, val_interval=0), CheckpointConfig(output_root=root, save_interval=1, keep_last=0),
                 ParallelConfig(), LogConfig(progress_bar=False, tensorboard=False))


@pytest.mark.slow
def test_lr_multipliers_scale_the_learning_rate_of_matching_parameters(tmp_path):
    """`optimizer.lr_multipliers`: a factor 0 on layer 0 leaves it untouched by a step (AdamW's decoupled weight decay
    scales with the lr too) while the other parameters move."""
    import torch

    from cosmos_nemo import parallel
    from cosmos_nemo.checkpoint import dist as dist_ckpt
    from cosmos_nemo.data import write_pattern_dataset
    from cosmos_nemo.models.ar.config import ar_config
    from cosmos_nemo.models.family import family_of
    from cosmos_nemo.parallel.launch import run_in_processes
    from cosmos_nemo.training.harness import lr_multiplier_of

    assert lr_multiplier_of("module.decoder.layers.0.mlp.linear_fc1.weight", {"layers.0.": 0.5, "mlp": 4.0}) == 2.0
    write_pattern_dataset(tmp_path / "data", 8, grid=(2, 4, 4), vocab_size=64, seed=0, pattern="ramp")
    run = Path(run_in_processes(_train_with_multipliers, 1, str(tmp_path / "data"), str(tmp_path / "runs"))[0]["run_dir"])
    cfg = ar_config("tiny", vocab_size=64)
    parallel.setup()
    try:
        states = []
        for step in (1, 2):
            model = family_of(cfg).build_model(cfg, True, True, torch.float32)
            dist_ckpt.load_model([model], run / "checkpoints" / f"iter_{step:09d}" / "model")
            states.append({k: v.clone() for k, v in model.state_dict().items() if torch.is_tensor(v)})
    finally:
        parallel.teardown()
    frozen = [k for k in states[0] if k.startswith("decoder.layers.0.") and "_extra_state" not in k]
    moved = [k for k in states[0] if k.startswith("decoder.layers.1.") and k.endswith("weight")]
    assert frozen and moved
    assert all(torch.equal(states[0][k], states[1][k]) for k in frozen)
    assert all(not torch.equal(states[0][k], states[1][k]) for k in moved)
