"""The diffusion references' training command line (`-m cosmos_nemo.post_training.diffusion_train --config=... --
experiment=NAME key=value`): experiment names, reference keys, refusals, and a tiny real run."""

from __future__ import annotations

import os
import subprocess
import sys

import fiddle as fdl
import pytest

from cosmos_nemo.post_training.diffusion_train import reference_recipe
from cosmos_nemo.recipes.launch import LaunchError


def test_reference_experiment_and_keys_map_onto_the_recipe(monkeypatch):
    monkeypatch.setenv("IMAGINAIRE_OUTPUT_ROOT", "/tmp/out_root")
    recipe = reference_recipe(["experiment=video2world_7b_example_cosmos_nemo_assets", "trainer.max_iter=500",
                               "checkpoint.save_iter=50", "checkpoint.load_path=/ckpt/model.pt", "optimizer.lr=1e-5",
                               "job.name=mine", "dataloader_train.batch_size=2", "data.paths=[/data/latents]",
                               "model.objective.shift=3.0"], world_size=8)
    p = fdl.build(recipe).keywords
    assert p["model"].name == "predict1_7b_v2w" and p["model"].objective.kind == "edm"
    assert (p["trainer"].max_steps, p["checkpoint"].save_interval, p["checkpoint"].pretrained, p["optim"].lr) == (
        500, 50, "/ckpt/model.pt", 1e-5)
    assert (p["checkpoint"].name, p["checkpoint"].output_root, p["checkpoint"].mode) == ("mine", "/tmp/out_root", "finetune")
    assert (p["data"].micro_batch_size, p["data"].global_batch_size) == (2, 16)  # per GPU x 8 data-parallel ranks
    assert p["model"].objective.shift == 3.0 and p["data"].paths == ["/data/latents"]


@pytest.mark.parametrize("experiment, recipe", [
    ("video2world_7b_lora_example_cosmos_nemo_assets", "predict1_7b_v2w"),
    ("predict2_lora_training_2b_cosmos_nemo_assets", "predict25_2b"),
    ("predict2_lora_training_14b_cosmos_nemo_assets", "predict25_14b"),
])
def test_reference_lora_experiments_run_the_lora_recipes(experiment, recipe):
    from cosmos_nemo.recipes import dit

    ours = {"predict1_7b_v2w": dit.cosmos_predict1_7b_v2w_lora, "predict25_2b": dit.cosmos_predict25_2b_lora,
            "predict25_14b": dit.cosmos_predict25_14b_lora}[recipe]
    p = fdl.build(reference_recipe([f"experiment={experiment}", "checkpoint.load_path=/ckpt/base.pt",
                                    "data.paths=[/data/latents]"])).keywords
    expected = fdl.build(ours()).keywords
    assert p["model"].name == expected["model"].name
    assert p["peft"] is not None and p["peft"] == expected["peft"]  # the LoRA recipe's targets, rank and alpha
    assert (p["checkpoint"].mode, p["checkpoint"].pretrained) == ("finetune", "/ckpt/base.pt")


@pytest.mark.parametrize("items, message", [
    (["trainer.max_iter=5"], "experiment=NAME is required"),
    (["experiment=video2world_7b_exampel_cosmos_nemo_assets"], "did you mean 'video2world_7b_example_cosmos_nemo_assets'"),
    (["experiment=video2world_7b_example_cosmos_nemo_assets", "trainer.grad_accum_iter=4", "data.paths=[x]"],
     "unknown key 'trainer.grad_accum_iter'.*Reference keys mapped here"),
    (["experiment=video2world_7b_example_cosmos_nemo_assets", "dataloader_train.num_workers=4", "data.paths=[x]"],
     "reference key 'dataloader_train.num_workers' has no counterpart"),
    (["experiment=video2world_7b_example_cosmos_nemo_assets"], "prepare latents"),
])
def test_refusals_say_what_to_do(items, message):
    with pytest.raises(LaunchError, match=message):
        reference_recipe(items)


@pytest.mark.slow
def test_tiny_reference_command_trains(tmp_path):
    from test_dit_training import write_dataset

    data = write_dataset(tmp_path / "latents", n=8, width=512)
    env = dict(os.environ, PYTHONWARNINGS="ignore", IMAGINAIRE_OUTPUT_ROOT=str(tmp_path / "out"))
    result = subprocess.run([sys.executable, "-m", "cosmos_nemo.post_training.diffusion_train",
                             "--config=cosmos_predict2/_src/predict2/configs/video2world/config.py", "--",
                             "experiment=predict2_video2world_training_tiny", "trainer.max_iter=2",
                             f"data.paths=[{data}]", "log.progress_bar=false"],
                            capture_output=True, text=True, timeout=600, env=env, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    run = tmp_path / "out" / "cosmos_nemo" / "diffusion_predict25" / "cosmos_predict25_tiny_finetune"
    assert (run / "checkpoints" / "latest_checkpoint.txt").read_text().strip() == "iter_000000002"
