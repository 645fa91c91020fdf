"""The trainer on the tiny AR model: it learns, resumes bit-exactly, survives SIGKILL anywhere in a save.

Every run goes through `training.trainer.train` in fresh gloo processes, on a synthetic dataset written
in the AR token dataset contract.
"""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from cosmos_nemo.data import ARDataConfig, write_pattern_dataset
from cosmos_nemo.models.ar.config import ar_config
from cosmos_nemo.parallel.launch import run_in_processes
from cosmos_nemo.checkpoint import run as checkpointing
from cosmos_nemo.training.config import CheckpointConfig, LogConfig, OptimizerConfig, ParallelConfig, TrainerConfig

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

VOCAB = 64


def _train(data_dir: str, out_root: str, name: str, max_steps: int, tp: int = 1, save_interval: int = 3,
           env: dict | None = None, val_interval: int = 0, lr: float = 2e-3, global_batch: int = 4):
    import os

    torch.set_num_threads(1)
    os.environ.update(env or {})
    from cosmos_nemo.training.trainer import train

    return train(
        ar_config("tiny", vocab_size=VOCAB),
        ARDataConfig(paths=[data_dir], split_string="9,1,0", micro_batch_size=1, global_batch_size=global_batch, seed=7),
        OptimizerConfig(lr=lr, warmup_steps=2, eps=1e-6),
        TrainerConfig(max_steps=max_steps, val_interval=val_interval, val_batches=2, seed=3),
        CheckpointConfig(output_root=out_root, name=name, save_interval=save_interval, keep_last=2),
        ParallelConfig(tensor=tp),
        LogConfig(progress_bar=False, tensorboard=False),
    )


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("trainer")
    write_pattern_dataset(root / "data", 60, grid=(2, 4, 4), vocab_size=VOCAB, seed=0, pattern="ramp")
    return root


def launch(nprocs, *args, **kwargs):
    return run_in_processes(_train_kw, nprocs, args, kwargs)[0]


def _train_kw(args, kwargs):
    return _train(*args, **kwargs)


@pytest.fixture(scope="module")
def straight(dataset):
    """An uninterrupted 7-step run: 4 micro-batches per step (gradient accumulation), 54 train docs,
    so a save at step 3 falls in the middle of the first epoch."""
    return launch(1, str(dataset / "data"), str(dataset / "runs"), "straight", 7)


def test_tiny_model_learns_the_pattern(dataset):
    out = launch(1, str(dataset / "data"), str(dataset / "runs"), "learn", 40, val_interval=40, lr=3e-3,
                 save_interval=0)
    uniform = math.log(VOCAB)
    assert out["val_loss_first"] > 0.9 * uniform
    assert out["val_loss"] < 0.5 * uniform, out  # a real learning check, not "the loss is finite"


def test_resume_same_tp_is_bit_identical(dataset, straight):
    first = launch(1, str(dataset / "data"), str(dataset / "runs"), "resumed", 3)
    second = launch(1, str(dataset / "data"), str(dataset / "runs"), "resumed", 7)
    assert first["losses"] == straight["losses"][:3]
    assert second["losses"] == straight["losses"][3:], (second["losses"], straight["losses"])


def test_resume_at_another_tp_within_1e5(dataset, straight):
    launch(1, str(dataset / "data"), str(dataset / "runs"), "tpswap", 3)
    second = launch(2, str(dataset / "data"), str(dataset / "runs"), "tpswap", 7, tp=2)
    for a, b in zip(second["losses"], straight["losses"][3:], strict=True):
        assert abs(a - b) <= 1e-5 * abs(b), (a, b)


KILL_POINTS = ["model_shard", "after_model", "after_optim", "before_rename", "before_pointer"]


# Seeds chosen so the draws cover a kill inside dist_checkpointing.save (2: model_shard at step 3),
# after the rename but before the pointer moves (5), and between the model and optimizer saves (4).
@pytest.mark.parametrize("seed", [2, 4, 5])
def test_sigkill_during_save_resumes_from_last_complete(dataset, straight, seed):
    rng = random.Random(seed)
    point, kill_step = rng.choice(KILL_POINTS), rng.choice([3, 6])
    name = f"killed{seed}"
    runs = dataset / "runs"
    with pytest.raises(RuntimeError, match="died|failed"):
        launch(1, str(dataset / "data"), str(runs), name, 7,
               env={"COSMOS_NEMO_KILL_AT": point, "COSMOS_NEMO_KILL_STEP": str(kill_step)})
    ckpts = runs / "cosmos_nemo" / "default" / name / "checkpoints"
    pointer = ckpts / checkpointing.POINTER
    if pointer.exists():  # the pointer never names an incomplete folder
        assert checkpointing.is_complete(ckpts / pointer.read_text().strip())
    latest = checkpointing.latest_checkpoint(ckpts)
    # The pointer is authoritative: it moves last. Only when there is no pointer yet does resume fall
    # back to the newest complete folder (a kill before the very first pointer write).
    expected_step = kill_step if (point == "before_pointer" and kill_step == 3) else kill_step - 3
    if expected_step == 0:
        assert latest is None
    else:
        assert latest is not None and latest.name == checkpointing.iter_name(expected_step), (point, kill_step, latest)
    resumed = launch(1, str(dataset / "data"), str(runs), name, 7)
    assert resumed["losses"] == straight["losses"][expected_step:], (point, kill_step)
    assert not list(ckpts.glob("*.tmp-*"))  # the next save cleaned up the partial folder
    state = json.loads((ckpts / checkpointing.iter_name(7) / "trainer" / "trainer.json").read_text())
    assert state["step"] == 7
