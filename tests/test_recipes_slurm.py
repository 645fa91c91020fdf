"""Slurm submissions against a stand-in Slurm: `sbatch`, `sacct`, `squeue` and `scancel` scripts on PATH
that record their calls and answer as Slurm does. A valid `cosmos-nemo train --executor slurm` submits
the sbatch script it wrote (exactly once, detached); invalid parallel sizes are refused before sbatch is
ever called; `cosmos-nemo experiment status|logs|cancel` reach the job through nemo-run's experiment API
(sacct, the job's log file, scancel)."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

from cosmos_nemo.cli import main as cli_main


JOB_ID = "4242"

_SBATCH = f"""#!/bin/bash
echo "sbatch $*" >> "$FAKE_SLURM_LOG"
echo {JOB_ID}
"""
# sacct --parsable2 -j ID: the state comes from $FAKE_SLURM_STATE (a file), CANCELLED once scancel ran
_SACCT = """#!/bin/bash
echo "sacct $*" >> "$FAKE_SLURM_LOG"
state=$(cat "$FAKE_SLURM_STATE")
echo "JobID|JobName|Partition|Account|AllocCPUS|State|ExitCode"
echo "${3}|acct1-acct1.cosmos_ar_12b_finetune|batch|acct1|16|${state}|0:0"
"""
_SCANCEL = """#!/bin/bash
echo "scancel $*" >> "$FAKE_SLURM_LOG"
echo CANCELLED > "$FAKE_SLURM_STATE"
"""
_SQUEUE = """#!/bin/bash
echo "squeue $*" >> "$FAKE_SLURM_LOG"
"""


@pytest.fixture
def slurm(tmp_path, monkeypatch):
    """The stand-in Slurm on PATH; returns a function giving the recorded calls."""
    bin_dir = tmp_path / "slurm_bin"
    bin_dir.mkdir()
    for name, text in (("sbatch", _SBATCH), ("sacct", _SACCT), ("scancel", _SCANCEL), ("squeue", _SQUEUE)):
        path = bin_dir / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    log, state = tmp_path / "slurm_calls.log", tmp_path / "slurm_state"
    log.write_text("")
    state.write_text("RUNNING\n")
    monkeypatch.setenv("PATH", os.pathsep.join([str(bin_dir), os.environ["PATH"]]))
    monkeypatch.setenv("FAKE_SLURM_LOG", str(log))
    monkeypatch.setenv("FAKE_SLURM_STATE", str(state))
    # nemo-run records Slurm job ids in <NEMORUN_HOME>/.slurm_jobs; keep it in this test's folder
    from nemo_run.run.torchx_backend.schedulers import slurm as nr_slurm

    monkeypatch.setattr(nr_slurm, "SLURM_JOB_DIRS", str(tmp_path / "nemo_run_home" / ".slurm_jobs"))
    # nemo-run's LocalTunnel runs shell commands through `invoke`, which reads stdin; pytest forbids that.
    with open(os.devnull) as devnull:
        monkeypatch.setattr(sys, "stdin", devnull)
        yield lambda: [line for line in log.read_text().splitlines() if line]


def _train(tmp_path, *extra):
    return cli_main([
        "train", "cosmos_ar_12b_finetune", "data.paths=[/lustre/tokens]", "checkpoint.pretrained=/lustre/ckpt/model.pt",
        "data.global_batch_size=64", *extra, "--executor", "slurm", "--gpus-per-node", "8", "--account", "acct1",
        "--partition", "batch", "--container-image", "nvcr.io/org/cosmos-nemo:1.0", "--mounts", "/lustre:/lustre",
        "--job-dir", str(tmp_path / "jobs"),
    ])


def test_invalid_sizes_are_refused_before_anything_is_submitted(slurm, tmp_path, capsys):
    assert _train(tmp_path, "--nodes", "2", "parallel.tensor=16", "parallel.pipeline=2") == 2
    assert "world size 16 is not divisible by TP x PP x CP = 16 x 2 x 1 = 32" in capsys.readouterr().err
    assert _train(tmp_path, "--nodes", "3", "data.global_batch_size=4") == 2
    assert "micro_batch_size x DP = 2 x 3 = 6" in capsys.readouterr().err
    assert slurm() == []  # sbatch (or anything else of Slurm's) never ran
    assert not (tmp_path / "jobs").exists()


def test_submit_then_status_logs_cancel(slurm, tmp_path, capsys):
    jobs = tmp_path / "jobs"
    assert _train(tmp_path, "--nodes", "2") == 0
    out = capsys.readouterr().out
    assert f"SUBMITTED as Slurm job {JOB_ID}" in out
    submits = [c for c in slurm() if c.startswith("sbatch")]
    assert len(submits) == 1  # detached: submitted once, not waited for
    script = Path(submits[0].split()[-1])
    assert submits[0].startswith("sbatch --requeue --parsable ") and script.is_file()
    assert script.parent.parent.parent == jobs / "experiments"  # the script sbatch got is the one written
    text = script.read_text()
    assert "#SBATCH --nodes=2" in text and "--nnodes 2 --nproc-per-node 8" in text and "export COSMOS_NEMO_BACKEND=nccl" in text
    assert f"cosmos-nemo experiment status {jobs}" in out

    assert cli_main(["experiment", "status", str(jobs)]) == 0
    out = capsys.readouterr().out
    assert f"job cosmos_ar_12b_finetune: RUNNING  (Slurm job {JOB_ID})" in out
    assert any(c == f"sacct --parsable2 -j {JOB_ID}" for c in slurm())

    # the job's log, where the sbatch script's srun --output sends it; a finished job's log is printed whole
    (Path(os.environ["FAKE_SLURM_STATE"])).write_text("COMPLETED\n")
    task_dir = script.parent / "cosmos_ar_12b_finetune"
    (task_dir / f"log-acct1-acct1.cosmos_ar_12b_finetune_{JOB_ID}_0.out").write_text("step 1 loss 3.25\nstep 2 loss 3.00\n")
    assert cli_main(["experiment", "logs", str(jobs), "--regex", "step 2"]) == 0
    err = capsys.readouterr().err
    assert "step 2 loss 3.00" in err and "step 1 loss" not in err

    (Path(os.environ["FAKE_SLURM_STATE"])).write_text("RUNNING\n")
    assert cli_main(["experiment", "cancel", str(jobs)]) == 0
    assert f"scancel {JOB_ID}" in slurm()
    assert "job cosmos_ar_12b_finetune: cancel requested; now CANCELLED" in capsys.readouterr().out


def test_experiment_command_errors(slurm, tmp_path, capsys):
    assert cli_main(["experiment", "status", str(tmp_path)]) == 2
    assert "no nemo-run experiment under" in capsys.readouterr().err
    assert _train(tmp_path, "--nodes", "1") == 0
    capsys.readouterr()
    assert cli_main(["experiment", "status", str(tmp_path / "jobs"), "--id", "nope_1"]) == 2
    assert "no experiment 'nope_1'" in capsys.readouterr().err
    assert cli_main(["experiment", "status", str(tmp_path / "jobs"), "--job", "other"]) == 2
    assert "has no job 'other'; its jobs: cosmos_ar_12b_finetune" in capsys.readouterr().err
