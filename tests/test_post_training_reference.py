"""The kept reference commands: `torchrun -m cosmos_nemo.post_training.general` and
`...video2world_finetuning` train the tiny models, and each reference flag changes what it should."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import fiddle as fdl
import pytest
import yaml

from cosmos_nemo.data.synthetic import write_pattern_dataset
from cosmos_nemo.post_training import general, video2world_finetuning
from cosmos_nemo.post_training.common import infer_size, reference_recipe

REFERENCE_FLAGS = ("--data_path", "--split_string", "--log_dir", "--global_batch_size", "--micro_batch_size", "--lr",
                   "--max_steps", "--save_every_n_steps", "--max_epochs", "--tensor_model_parallel_size", "--model_path")


def _torchrun(module: str, *args, nproc: int = 1):
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m", module, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, stdin=subprocess.DEVNULL)


def _scalars(run_dir: Path, tag: str) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    return {e.step: e.value for e in acc.Scalars(tag)}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("post_training")
    base = write_pattern_dataset(root / "base", 16, grid=(2, 4, 6), vocab_size=64000, seed=2, pattern="ramp")
    v2w = write_pattern_dataset(root / "v2w", 12, grid=(2, 4, 6), vocab_size=64000, seed=3, task="video2world",
                                text_dim=384, text_length=16)
    return {"base": str(base), "v2w": str(v2w)}


def test_help_says_what_each_reference_flag_maps_to(capsys):
    for module in (general, video2world_finetuning):
        with pytest.raises(SystemExit):
            module.main(["--help"])
        text = " ".join(capsys.readouterr().out.split())
        for flag in REFERENCE_FLAGS:
            assert flag in text, (module.__name__, flag)
        assert text.count("Maps to") >= len(REFERENCE_FLAGS)
        for field in ("checkpoint.output_root", "data.paths", "trainer.max_steps", "checkpoint.save_interval",
                      "trainer.max_epochs", "parallel.tensor", "data.global_batch_size", "data.micro_batch_size",
                      "optim.lr", "checkpoint.pretrained", "data.split_string"):
            assert field in text, (module.__name__, field)
        assert "hub id" in text and "dist-ckpt" in text and ".pt" in text


def test_each_reference_flag_sets_its_recipe_field():
    argv = ["--data_path", "/d/tokens", "--model_path", "/w/Cosmos-1.0-Autoregressive-12B/model.pt",
            "--log_dir", "/out", "--experiment_name", "exp", "--tensor_model_parallel_size", "4", "--max_steps", "7",
            "--max_epochs", "3", "--save_every_n_steps", "5", "--global_batch_size", "16", "--micro_batch_size", "4",
            "--lr", "2e-5", "--split_string", "90,5,5", "--precision", "fp32", "trainer.z_loss=1e-4"]
    args = general.build_parser().parse_intermixed_args(argv)
    r = reference_recipe(args, "general", general.RECIPES, tuple(general.RECIPES))
    assert fdl.build(r.model).name == "12b"  # the size read from the path picks the recipe
    assert r.data.paths == ["/d/tokens"] and r.data.split_string == "90,5,5"
    assert (r.data.global_batch_size, r.data.micro_batch_size) == (16, 4)
    assert (r.checkpoint.pretrained, r.checkpoint.mode) == ("/w/Cosmos-1.0-Autoregressive-12B/model.pt", "finetune")
    assert (r.checkpoint.output_root, r.checkpoint.name, r.checkpoint.save_interval) == ("/out", "exp", 5)
    assert r.parallel.tensor == 4
    assert (r.trainer.max_steps, r.trainer.max_epochs, r.trainer.precision, r.trainer.z_loss) == (7, 3, "fp32", 1e-4)
    assert (r.optim.lr, r.optim.schedule, r.optim.warmup_steps) == (2e-5, "constant", 0)

    # the reference's own defaults, and 'none' for random weights
    args = video2world_finetuning.build_parser().parse_intermixed_args(
        ["--data_path", "/v", "--model_path", "none", "--model_size", "tiny_v2w"])
    r = reference_recipe(args, "video2world", video2world_finetuning.RECIPES, tuple(video2world_finetuning.RECIPES))
    assert (r.checkpoint.pretrained, r.checkpoint.mode, r.checkpoint.name) == (None, "pretrain", "video2world_tiny_v2w")
    assert (r.parallel.tensor, r.trainer.max_steps, r.data.global_batch_size, r.optim.lr) == (4, 10, 1, 5e-5)
    assert r.trainer.precision == "fp32" and r.checkpoint.group == "autoregressive_video2world"  # the recipe's own
    assert r.checkpoint.output_root == "./log_dir"


def test_model_size_from_path_or_run_folder(tmp_path):
    sizes = tuple(general.RECIPES)
    assert infer_size("nvidia/Cosmos-1.0-Autoregressive-4B", sizes) == "4b"
    assert infer_size("/ckpts/Cosmos-1.0-Autoregressive-12B/model.pt", sizes) == "12b"
    assert infer_size("/ckpts/Cosmos-1.0-Autoregressive-13B-Video2World", tuple(video2world_finetuning.RECIPES)) == "13b_v2w"
    assert infer_size("nvidia/Cosmos-1.0-Autoregressive-5B-Video2World", tuple(video2world_finetuning.RECIPES)) == "5b_v2w"
    assert infer_size("./logs/my_run", sizes) is None  # the reference raised NotImplementedError here
    run = tmp_path / "run"
    (run / "checkpoints" / "iter_000000002" / "model").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"model": {"name": "tiny"}}))
    assert infer_size(str(run), sizes) == "tiny"
    assert infer_size(str(run / "checkpoints" / "iter_000000002" / "model"), sizes) == "tiny"


def test_reference_command_refuses_bad_setups_before_starting(capsys, data, tmp_path):
    assert general.main(["--data_path", data["base"], "--model_path", str(tmp_path / "my_run"),
                         "--log_dir", str(tmp_path)]) == 2
    assert "pass --model_size (4b, 12b, tiny)" in capsys.readouterr().err
    # reference default TP=2 on a 1-process world
    assert general.main(["--data_path", data["base"], "--model_path", "none", "--model_size", "tiny",
                         "--log_dir", str(tmp_path)]) == 2
    assert "world size 1 is not divisible by TP x PP x CP = 2" in capsys.readouterr().err
    assert general.main(["--data_path", data["base"], "--model_path", "none", "--model_size", "tiny",
                         "--tensor_model_parallel_size", "1", "--global_batch_size", "3", "--micro_batch_size", "2",
                         "--log_dir", str(tmp_path)]) == 2
    assert "global_batch_size=3 is not a multiple" in capsys.readouterr().err
    # extra dotted overrides may sit between the reference flags; unknown keys name the closest one
    assert general.main(["--data_path", data["base"], "trainer.max_step=3", "--model_path", "none", "--model_size",
                         "tiny", "--tensor_model_parallel_size", "1", "--log_dir", str(tmp_path)]) == 2
    assert "the closest valid key is 'trainer.max_steps'" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_general_trains_tiny_and_each_flag_takes_effect(data, tmp_path):
    log_dir = tmp_path / "log_dir"
    result = _torchrun(
        "cosmos_nemo.post_training.general", "--data_path", data["base"], "--model_path", "none", "--model_size", "tiny",
        "--log_dir", str(log_dir), "--split_string", "6,1,1", "--global_batch_size", "4", "--micro_batch_size", "2",
        "--lr", "2e-3", "--max_steps", "3", "--save_every_n_steps", "2", "--max_epochs", "5",
        "--tensor_model_parallel_size", "1", "log.tensorboard=true", "log.progress_bar=false",
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    run_dir = log_dir / "cosmos_nemo" / "autoregressive" / "general_tiny"
    assert f"run folder: {run_dir}" in result.stdout  # --log_dir is the output root, the run folder is printed
    ckpts = run_dir / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("iter_*")) == ["iter_000000002", "iter_000000003"]  # saved at 2, end at 3
    assert (ckpts / "latest_checkpoint.txt").read_text().strip() == "iter_000000003"  # --max_steps 3
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert cfg["data"]["split_string"] == "6,1,1" and cfg["data"]["paths"] == [data["base"]]
    assert (cfg["data"]["global_batch_size"], cfg["data"]["micro_batch_size"]) == (4, 2)
    assert cfg["trainer"]["max_epochs"] == 5 and cfg["parallel"]["tensor"] == 1
    lrs = _scalars(run_dir, "train/lr")
    assert sorted(lrs) == [1, 2, 3] and all(abs(v - 2e-3) < 1e-9 for v in lrs.values())  # constant, as the reference

    # --max_epochs: 16 documents all in the train split, global batch 4 -> 4 steps make one epoch
    epochs = _torchrun(
        "cosmos_nemo.post_training.general", "--data_path", data["base"], "--model_path", str(run_dir),
        "--log_dir", str(log_dir), "--experiment_name", "one_epoch", "--split_string", "1,0,0",
        "--global_batch_size", "4", "--micro_batch_size", "2", "--max_steps", "100", "--max_epochs", "1",
        "--save_every_n_steps", "100", "--tensor_model_parallel_size", "1",
    )
    assert epochs.returncode == 0, epochs.stdout[-2000:] + epochs.stderr[-3000:]
    assert "finished: step 4" in epochs.stdout
    # --model_path took the first run's folder (size read from its config.yaml) and loaded its latest weights
    assert f"initialised from dist-ckpt {ckpts / 'iter_000000003' / 'model'}" in epochs.stdout + epochs.stderr


@pytest.mark.slow
def test_video2world_finetuning_trains_tiny_v2w(data, tmp_path):
    result = _torchrun(
        "cosmos_nemo.post_training.video2world_finetuning", "--data_path", data["v2w"], "--model_path", "none",
        "--model_size", "tiny_v2w", "--log_dir", str(tmp_path), "--tensor_model_parallel_size", "1",
        "--max_steps", "2", "--save_every_n_steps", "1", "--global_batch_size", "2", "--micro_batch_size", "1",
        "--precision", "fp32",
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    run_dir = tmp_path / "cosmos_nemo" / "autoregressive_video2world" / "video2world_tiny_v2w"
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("iter_*")) == ["iter_000000001", "iter_000000002"]
    info = yaml.safe_load((run_dir / "launch_info.yaml").read_text())
    assert (info["world_size"], info["tensor_parallel"]) == (1, 1)
    assert "finished: step 2" in result.stdout
