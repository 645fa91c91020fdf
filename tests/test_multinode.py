"""Multi-node training on one machine: 2 "nodes" x 1 process, each node its own torchrun agent, meeting
through torchrun's c10d rendezvous on loopback (`--nnodes 2 --node-rank R --rdzv-endpoint 127.0.0.1:PORT`,
the form the Slurm sbatch script uses with the head node's address), train the tiny AR model at TP=2 (the
tensor-parallel all-reduces cross the "nodes") and must give exactly what the 1-node 2-process run gives:
the same per-step losses and the same final weights, bit for bit (same ranks, same layout, same gloo
reductions; only the launcher differs).

This file is also the worker: torchrun runs it as a script with `--worker ARGS_JSON`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def _worker(args: dict) -> None:
    """One torchrun rank: train, and rank 0 writes the losses and the weight differences to args['out']."""
    sys.path.insert(0, str(HERE))
    from test_parallel_equivalence import _train

    env = {k: os.environ.get(k) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "GROUP_RANK",
                                          "LOCAL_WORLD_SIZE")}
    out = _train(args["data"], args["runs"], args["name"], args["init"], tp=2, compare_to=args.get("compare_to"))
    if int(os.environ["RANK"]) == 0:
        Path(args["out"]).write_text(json.dumps({"losses": out["losses"], "step": out["step"], "env": env,
                                                 "weight_differences": out.get("weight_differences")}))


def _node_command(node_rank: int, port: int, args: dict) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run",
        "--nnodes", "2", "--nproc-per-node", "1", "--node-rank", str(node_rank),
        "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "cosmos-nemo-multinode",
        "--local-addr", "127.0.0.1", "--max-restarts", "0",
        str(Path(__file__).resolve()), "--worker", json.dumps(args),
    ]


def _launch_two_nodes(tmp: Path, args: dict) -> dict:
    from cosmos_nemo.parallel import free_port

    port = free_port()
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo",
           "COSMOS_NEMO_BACKEND": "gloo", "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    logs = [tmp / f"node{r}.log" for r in range(2)]
    procs = []
    for rank in range(2):  # the agents start in either order: node 1 first here, rendezvous sorts it out
        with open(logs[1 - rank], "w") as log:
            procs.append(subprocess.Popen(_node_command(1 - rank, port, args), stdout=log, stderr=subprocess.STDOUT,
                                          env=env, cwd=str(tmp), start_new_session=True))
    try:
        codes = [p.wait(timeout=600) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    if any(codes):
        tails = "\n".join(f"--- {log.name} ---\n" + "\n".join(log.read_text().splitlines()[-30:]) for log in logs)
        raise AssertionError(f"torchrun agents exited with {codes}:\n{tails}")
    return json.loads(Path(args["out"]).read_text())


def test_two_nodes_on_loopback_equal_one_node_two_processes(tmp_path):
    from test_parallel_equivalence import STEPS, VOCAB, _train_kw, _write_initial_weights

    from cosmos_nemo.data import write_pattern_dataset
    from cosmos_nemo.parallel.launch import run_in_processes

    data, runs, init = str(tmp_path / "data"), str(tmp_path / "runs"), str(tmp_path / "init")
    write_pattern_dataset(data, 40, grid=(2, 4, 4), vocab_size=VOCAB, seed=0, pattern="ramp")
    run_in_processes(_write_initial_weights, 1, init)

    # The 1-node 2-process run (one launcher, both ranks on this "node").
    one_node = run_in_processes(_train_kw, 2, dict(data_dir=data, out_root=runs, name="one_node", init=init, tp=2))[0]
    reference = str(Path(one_node["checkpoint"]) / "model")

    # The same training as 2 nodes x 1 process, compared with that run's final checkpoint.
    out = _launch_two_nodes(tmp_path, dict(data=data, runs=runs, init=init, name="two_nodes", compare_to=reference,
                                           out=str(tmp_path / "two_nodes.json")))

    # It really was two nodes: each rank is local rank 0 of a 1-process node, in a world of 2.
    assert out["env"]["WORLD_SIZE"] == "2" and out["env"]["LOCAL_RANK"] == "0" and out["env"]["LOCAL_WORLD_SIZE"] == "1"
    assert out["env"]["MASTER_ADDR"] in ("127.0.0.1", "localhost"), out["env"]
    assert out["step"] == STEPS and len(one_node["losses"]) == STEPS
    assert one_node["losses"][-1] < one_node["losses"][0] - 0.5  # it trained, so the comparison means something
    assert out["losses"] == one_node["losses"]  # exactly: same ranks, same layout, same reductions
    diffs = out["weight_differences"]
    assert len(diffs) > 10 and max(diffs.values()) == 0.0, {k: v for k, v in diffs.items() if v}


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        _worker(json.loads(sys.argv[2]))
    else:
        sys.exit("usage: test_multinode.py --worker ARGS_JSON (run by torchrun from the test)")
