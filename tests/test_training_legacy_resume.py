"""A run folder written before the model-family spine (commit 166aa3d, tests/fixtures/legacy_run_166aa3d/)
resumes with today's trainer at the next step, with the losses its uninterrupted run gave then."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from cosmos_nemo.parallel.launch import run_in_processes

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

FIXTURE = Path(__file__).parent / "fixtures" / "legacy_run_166aa3d"


def _resume(root: str, accelerations: bool):
    torch.set_num_threads(1)
    from cosmos_nemo.data import ARDataConfig
    from cosmos_nemo.models.ar.config import ar_config
    from cosmos_nemo.training.config import CheckpointConfig, LogConfig, OptimizerConfig, ParallelConfig, TrainerConfig
    from cosmos_nemo.training.trainer import train

    model = json.loads((Path(root) / "expected.json").read_text())["model"]
    return train(ar_config("tiny", **model),
                 ARDataConfig(paths=[str(Path(root) / "data")], split_string="9,1,0", micro_batch_size=1,
                              global_batch_size=2, seed=7),
                 OptimizerConfig(lr=2e-3, warmup_steps=1, eps=1e-6),
                 TrainerConfig(max_steps=4, val_interval=0, seed=3, cpu_accelerations=accelerations),
                 CheckpointConfig(output_root=str(Path(root) / "runs"), name="legacy", save_interval=2, keep_last=1),
                 ParallelConfig(), LogConfig(progress_bar=False, tensorboard=False))


@pytest.mark.parametrize("accelerations", [True, False])
def test_legacy_run_folder_resumes_at_the_next_step(tmp_path, accelerations):
    root = tmp_path / "legacy"
    shutil.copytree(FIXTURE / "data", root / "data")
    shutil.copytree(FIXTURE / "run", root / "runs" / "cosmos_nemo" / "default" / "legacy")
    shutil.copy(FIXTURE / "expected.json", root / "expected.json")
    expected = json.loads((FIXTURE / "expected.json").read_text())["losses_steps_1_to_4"]
    out = run_in_processes(_resume, 1, str(root), accelerations)[0]
    assert out["step"] == 4 and len(out["losses"]) == 2  # steps 3 and 4 only: it resumed, it did not restart
    for got, want in zip(out["losses"], expected[2:], strict=True):
        assert abs(got - want) <= 1e-5 * abs(want), (out["losses"], expected)
