"""Run a function in N local processes with a gloo (or NCCL) group: the distributed tests' launcher.

`run_in_processes(fn, nprocs, *args)` spawns `nprocs` processes with torchrun's environment variables
set (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), calls `fn(*args)` in each, and returns
the list of per-rank return values (which must be picklable: floats, lists, dicts, numpy arrays; torch
tensors are returned as numpy arrays, because a tensor sent through a queue lives in the worker's shared
memory, which is gone once the worker exits). An exception in any rank is re-raised here with that
rank's traceback.
"""

from __future__ import annotations

import os
import traceback

import torch.multiprocessing as mp

from cosmos_nemo.parallel import free_port


def _detach(value):
    """Tensors -> numpy copies, recursively through lists, tuples and dicts."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy().copy()
    if isinstance(value, dict):
        return {k: _detach(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_detach(v) for v in value)
    return value


def _worker(rank: int, nprocs: int, port: int, fn, args, queue) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(nprocs), LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )
    try:
        result = _detach(fn(*args))
        queue.put((rank, True, result))
    except BaseException:
        queue.put((rank, False, traceback.format_exc()))
        raise


def run_in_processes(fn, nprocs: int, *args, timeout: float = 600.0) -> list:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(r, nprocs, port, fn, args, queue), daemon=False) for r in range(nprocs)]
    for p in procs:
        p.start()
    results: dict[int, object] = {}
    errors: list[str] = []
    import queue as queue_mod
    import time

    deadline = time.monotonic() + timeout
    while len(results) < nprocs and not errors:
        try:
            rank, ok, payload = queue.get(timeout=1.0)
        except queue_mod.Empty:
            dead = [i for i, p in enumerate(procs) if p.exitcode not in (None, 0)]
            if dead:
                errors.append(f"rank(s) {dead} died with exit codes {[procs[i].exitcode for i in dead]}")
            elif time.monotonic() > deadline:
                errors.append(f"timed out after {timeout:.0f} s")
            continue
        if ok:
            results[rank] = payload
        else:
            errors.append(f"rank {rank} failed:\n{payload}")
    for p in procs:
        p.join(timeout=timeout if not errors else 5)
        if p.is_alive():
            p.kill()
    if errors:
        raise RuntimeError("\n".join(errors))
    return [results[r] for r in range(nprocs)]
