"""Launch checks and dry runs: sizes validated against the world before anything starts, Slurm sbatch
scripts for 1, 2 and 8 nodes, the local torchrun command, and hub ids resolved or refused clearly
(tests/test_recipes_slurm.py submits to a stand-in Slurm)."""

from __future__ import annotations

import os
import re
import sys

import pytest

from cosmos_nemo.cli import main as cli_main
from cosmos_nemo.data.synthetic import write_pattern_dataset
from cosmos_nemo.recipes import launch as L
from cosmos_nemo.recipes.overrides import apply_overrides
from cosmos_nemo.recipes.registry import build_recipe


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipes_launch")
    return str(write_pattern_dataset(root / "tokens", 12, grid=(2, 4, 6), vocab_size=64000, seed=0))


def _tiny(data, *overrides):
    return apply_overrides(build_recipe("cosmos_ar_tiny_finetune"), [f"data.paths=[{data}]", *overrides])


def test_preflight_accepts_and_reports_the_decomposition(tiny_data):
    notes = L.preflight(_tiny(tiny_data, "parallel.tensor=2", "data.global_batch_size=8", "data.micro_batch_size=2"), 4)
    # world 4 / TP 2 = DP 2; 8 = 2 x 2 x 2
    assert "world 4 = TP 2 x PP 1 x DP 2" in notes[0] and "2 accumulation steps" in notes[0]


@pytest.mark.parametrize("overrides, world, message", [
    (["parallel.tensor=2"], 3, "world size 3 is not divisible by TP x PP x CP = 2 x 1 x 1 = 2"),
    (["parallel.tensor=8"], 8, "parallel.tensor=8 must divide model.num_attention_heads=4"),
    (["parallel.tensor=4"], 4, "parallel.tensor=4 must divide model.num_query_groups=2"),
    (["parallel.pipeline=4"], 4, "parallel.pipeline=4 must divide model.num_layers=2"),
    (["parallel.context=2"], 2, "context parallelism is not supported"),
    (["data.global_batch_size=5", "data.micro_batch_size=2"], 1, "global_batch_size=5 is not a multiple of micro_batch_size x DP = 2 x 1 = 2"),
    (["data.global_batch_size=4", "data.micro_batch_size=1"], 3, "micro_batch_size x DP = 1 x 3 = 3"),
    (["trainer.precision=fp16"], 1, "trainer.precision must be"),
    (["checkpoint.mode=finetune"], 1, "needs checkpoint.pretrained"),
    (["data.paths=[/nonexistent/tokens]"], 1, "data path(s) not found"),
    (["data.paths=[]"], 1, "no training data"),
    (["checkpoint.pretrained=/w/model.pt"], 1, "is ignored by checkpoint.mode=pretrain"),
])
def test_preflight_refuses_invalid_runs(tiny_data, overrides, world, message):
    with pytest.raises(L.LaunchError) as err:
        L.preflight(_tiny(tiny_data, *overrides), world)
    assert message in str(err.value)


def test_preflight_checks_the_data_against_the_model(tmp_path):
    small_vocab = write_pattern_dataset(tmp_path / "v64", 8, grid=(2, 4, 6), vocab_size=64, seed=0)
    with pytest.raises(L.LaunchError, match="vocabulary of 64 ids but the model has 64000"):
        L.preflight(_tiny(small_vocab), 1)
    big_grid = write_pattern_dataset(tmp_path / "big", 8, grid=(4, 4, 6), vocab_size=64000, seed=0)
    with pytest.raises(L.LaunchError, match="does not fit the model"):
        L.preflight(_tiny(big_grid), 1)  # 96 tokens > the tiny model's 3x4x6 = 72


@pytest.fixture
def stdin_devnull(monkeypatch):
    # nemo-run's LocalTunnel runs shell commands through `invoke`, which reads stdin; pytest forbids that.
    with open(os.devnull) as devnull:
        monkeypatch.setattr(sys, "stdin", devnull)
        yield


def _sbatch(capsys, tmp_path, nodes, gpus, extra=()):
    rc = cli_main([
        "train", "cosmos_ar_12b_finetune", "data.paths=[/lustre/tokens]", "checkpoint.pretrained=/lustre/ckpt/model.pt",
        *extra, "--executor", "slurm", "--nodes", str(nodes), "--gpus-per-node", str(gpus), "--account", "acct1",
        "--partition", "batch", "--time", "02:30:00", "--container-image", "nvcr.io/org/cosmos-nemo:1.0",
        "--mounts", "/lustre/data:/data,/lustre/ckpt:/ckpt:ro", "--job-dir", str(tmp_path / "jobs"), "--dryrun",
    ])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.parametrize("nodes", [1, 2, 8])
def test_slurm_dryrun_script(capsys, tmp_path, nodes, stdin_devnull):
    # the 12B recipe: TP 8 inside each node, DP = nodes; a global batch of 64 = micro 2 x DP x accumulation
    rc, out, err = _sbatch(capsys, tmp_path, nodes, 8, extra=["data.global_batch_size=64", "--env", "NCCL_SOCKET_IFNAME=ib0",
                                                              "--env", "NCCL_DEBUG=INFO"])
    assert rc == 0, err
    assert f"#SBATCH --nodes={nodes}" in out
    assert "#SBATCH --gpus-per-node=8" in out
    assert "#SBATCH --ntasks-per-node=1" in out  # one torchrun per node starts the 8 ranks
    assert "#SBATCH --account=acct1" in out and "#SBATCH --partition=batch" in out and "#SBATCH --time=02:30:00" in out
    srun = next(line for line in out.splitlines() if line.startswith("srun ") and "torchrun" in line)
    assert "--container-image nvcr.io/org/cosmos-nemo:1.0" in srun
    assert re.search(r"--container-mounts /lustre/data:/data,/lustre/ckpt:/ckpt:ro[,\s]", srun)
    assert f"--nnodes {nodes} --nproc-per-node 8" in srun
    if nodes > 1:  # rendezvous at the head node's address, each node's rank from Slurm
        assert "--rdzv-backend c10d --rdzv-endpoint $head_node_ip:29500" in srun and "--node-rank $SLURM_NODEID" in srun
        assert "head_node_ip=$(srun --nodes=1 --ntasks=1 -w \"$head_node\" hostname --ip-address)" in out
    else:  # one node: a local rendezvous on a free port
        assert "--rdzv-backend c10d --rdzv-endpoint localhost:0" in srun and "--node-rank 0" in srun
    assert "-m nemo_run.core.runners.fdl_runner" in srun
    assert f"note: world {nodes * 8} = TP 8 x PP 1 x DP {nodes}" in out
    assert f"global batch 64 = micro 2 x DP {nodes} x {64 // (2 * nodes)} accumulation steps" in out
    # the NCCL environment every rank gets, with --env adding to it and overriding a default
    exports = dict(re.findall(r"^export (\w+)=(.*)$", out, re.M))
    assert exports["COSMOS_NEMO_BACKEND"] == "nccl" and exports["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1"
    assert exports["CUDA_DEVICE_MAX_CONNECTIONS"] == "1"
    assert exports["NCCL_SOCKET_IFNAME"] == "ib0" and exports["NCCL_DEBUG"] == "INFO"
    # the job folder on the shared file system holds the sbatch output and the logs
    assert f"#SBATCH --output={tmp_path}/jobs/experiments/" in out and f"--output {tmp_path}/jobs/experiments/" in srun


def test_slurm_dryrun_refuses_invalid_parallel_sizes(capsys, tmp_path, stdin_devnull):
    rc, _, err = _sbatch(capsys, tmp_path, 1, 8, extra=["parallel.tensor=16"])
    assert rc == 2 and "world size 8 is not divisible by TP x PP x CP = 16 x 1 x 1 = 16" in err
    rc, _, err = _sbatch(capsys, tmp_path, 4, 8, extra=["data.global_batch_size=6"])
    assert rc == 2 and "global_batch_size=6 is not a multiple of micro_batch_size x DP = 2 x 4 = 8" in err
    rc = cli_main(["train", "cosmos_ar_12b_finetune", "data.paths=[/x]", "--executor", "slurm", "--dryrun"])
    assert rc == 2 and "--account and --partition" in capsys.readouterr().err
    with pytest.raises(L.LaunchError, match="SRC:DST"):
        L.parse_mounts("/only/source")
    # 2 nodes x 8 GPUs = 16: TP 8 x PP 4 = 32 does not divide it
    rc, _, err = _sbatch(capsys, tmp_path, 2, 8, extra=["parallel.pipeline=4", "model.num_layers=40"])
    assert rc == 2 and "world size 16 is not divisible by TP x PP x CP = 8 x 4 x 1 = 32" in err
    rc, _, err = _sbatch(capsys, tmp_path, 2, 8, extra=["--env", "1BAD=x"])
    assert rc == 2 and "--env takes KEY=VALUE" in err


def test_local_dryrun_prints_the_torchrun_command(capsys, tiny_data, tmp_path):
    # overrides and options in any order, as users type them
    rc = cli_main(["train", "cosmos_ar_tiny_finetune", f"data.paths=[{tiny_data}]", "--nproc", "2",
                   "parallel.tensor=2", "--dryrun", f"checkpoint.output_root={tmp_path}"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "ParallelConfig(tensor=2" in out
    command = next(line for line in out.splitlines() if " torchrun " in line)
    assert "--nproc-per-node 2" in command and "--nnodes 1" in command and "OMP_NUM_THREADS=1" in command
    assert f"# run folder: {tmp_path}/cosmos_nemo/autoregressive/cosmos_ar_tiny_finetune" in out
    assert not (tmp_path / "cosmos_nemo").exists()  # a dry run starts and writes nothing


def test_cli_reports_override_and_recipe_errors(capsys, tiny_data):
    assert cli_main(["train", "cosmos_ar_tiny_finetune", "trainer.max_step=3", "--dryrun"]) == 2
    assert "the closest valid key is 'trainer.max_steps'" in capsys.readouterr().err
    assert cli_main(["train", "cosmos_ar_tiny_tokenizer_swap", f"data.paths=[{tiny_data}]", "--recipe-arg", "frames=10",
                     "--dryrun"]) == 2
    assert "frames must be 1 + 4k for a 4x8x8 tokenizer" in capsys.readouterr().err
    assert cli_main(["train", "cosmos_ar_tiny_finetun"]) == 2
    assert "did you mean 'cosmos_ar_tiny_finetune'" in capsys.readouterr().err
    # a hub id is not downloaded by a dry run; a local weights path that does not exist is refused
    assert cli_main(["train", "cosmos_ar_4b_finetune", f"data.paths=[{tiny_data}]", "--nproc", "2", "--dryrun",
                     "data.global_batch_size=2", "data.micro_batch_size=1"]) == 0
    captured = capsys.readouterr()
    assert "nvidia/Cosmos-1.0-Autoregressive-4B is a hub id: it is downloaded when the run is launched" in captured.out
    assert cli_main(["train", "cosmos_ar_tiny_finetune", f"data.paths=[{tiny_data}]",
                     "checkpoint.pretrained=/nonexistent/model.pt", "--dryrun"]) == 2  # implies mode=finetune
    assert "pretrained weights '/nonexistent/model.pt' not found" in capsys.readouterr().err
    assert cli_main(["train", "--list"]) == 0
    assert "cosmos_ar_13b_v2w_tokenizer_swap" in capsys.readouterr().out


def test_hub_ids_offline_name_the_local_path_to_pass(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache: nothing to find offline
    with pytest.raises(L.LaunchError) as err:
        L.resolve_pretrained("nvidia/Cosmos-1.0-Autoregressive-4B")
    assert "--model_path DIR/model.pt" in str(err.value) and "huggingface-cli download" in str(err.value)
    # `org/name` is also a relative path: a missing one is reported as both, not only as a failed download.
    assert "neither a file or folder here" in str(err.value)
    weights = tmp_path / "model.pt"
    weights.write_bytes(b"")
    assert L.resolve_pretrained(str(weights)) == str(weights)
    with pytest.raises(L.LaunchError, match="not found"):
        L.resolve_pretrained(str(tmp_path / "missing" / "model.pt"))
    assert L.is_hub_id("nvidia/Cosmos-1.0-Autoregressive-4B") and not L.is_hub_id(str(weights))


def test_launch_puts_this_interpreters_torchrun_first_on_path(monkeypatch):
    """CI runs `.venv/bin/python -m cosmos_nemo train ...` without the venv on PATH; nemo-run starts
    `torchrun` by name, so the interpreter's own bin folder must come first."""
    import shutil

    here = os.path.dirname(os.path.abspath(sys.executable))
    monkeypatch.setenv("PATH", os.pathsep.join(["/usr/bin", "/bin", here]))
    L._interpreter_bin_on_path()
    parts = os.environ["PATH"].split(os.pathsep)
    assert parts[0] == here and parts.count(here) == 1 and "/usr/bin" in parts
    assert os.path.dirname(shutil.which("torchrun")) == here
