"""Run a function in N local processes with a gloo (or NCCL) group: the distributed tests' launcher.

`run_in_processes(fn, nprocs, *args, backend="gloo")` spawns `nprocs` processes with torchrun's
environment variables set (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), calls `fn(*args)` in
each, and returns the list of per-rank return values (which must be picklable: floats, lists, dicts,
numpy arrays; torch tensors are returned as numpy arrays, because a tensor sent through a queue lives in
the worker's shared memory, which is gone once the worker exits). An exception in any rank is re-raised
here with that rank's traceback.

Backends:
- `"gloo"` (the default): the workers run entirely on the CPU, on any machine. On a machine with GPUs
  they are started with `CUDA_VISIBLE_DEVICES=""`, so torch in the workers never sees a GPU
  (`torch.cuda.is_available()` is false, megatron's CUDA-only calls go through `parallel.cpu_adapter`):
  a CPU test means the same thing on a GPU box as on a laptop.
- `"nccl"`: one GPU per rank (rank r uses `cuda:r`); refused with a clear error when CUDA is absent or
  there are fewer visible GPUs than processes.

The choice reaches `parallel.setup()` in the workers through the `COSMOS_NEMO_BACKEND` environment
variable (`parallel.BACKEND_ENV`), so code that calls `setup()` without a backend (the trainer) follows it,
and so do processes the workers start themselves.

Start methods (`start_method=`, default from `COSMOS_NEMO_START_METHOD`, else `"spawn"`):
- `"spawn"`: each worker is a fresh interpreter that imports torch and megatron itself (seconds per call).
- `"forkserver"` (gloo only; the test suite's choice, set in tests/conftest.py): one server process,
  started at the first call with `CUDA_VISIBLE_DEVICES=""` and with torch and megatron-core imported (no
  tensor work, so no thread pools exist yet), forks every later worker in milliseconds. Each worker still
  starts from that clean state, not from the caller's: it gets the caller's environment of the moment
  (`os.environ`, replaced wholesale) before `fn` runs, as a spawned one would. NCCL runs always spawn.
"""

from __future__ import annotations

import contextlib
import os
import threading
import traceback

import torch.multiprocessing as mp

from cosmos_nemo.parallel import BACKEND_ENV, BACKENDS, free_port

_ENV_LOCK = threading.Lock()


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


START_METHOD_ENV = "COSMOS_NEMO_START_METHOD"
START_METHODS = ("spawn", "forkserver")
# What the fork server imports once, so its forked workers start with it in memory: imports only (no tensor
# is computed, so no OpenMP or intra-op thread pool exists to be broken by fork).
FORKSERVER_PRELOAD = (
    "torch", "torch.distributed", "megatron.core", "megatron.core.parallel_state", "megatron.core.tensor_parallel",
    "megatron.core.models.gpt", "megatron.core.optimizer", "megatron.core.distributed",
    "megatron.core.dist_checkpointing",
)


def _worker(rank: int, nprocs: int, port: int, backend: str, fn, args, queue, environ=None) -> None:
    if environ is not None:  # forked from the fork server: take the caller's environment of the moment
        os.environ.clear()
        os.environ.update(environ)
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(nprocs), LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )
    os.environ[BACKEND_ENV] = backend
    try:
        result = _detach(fn(*args))
        queue.put((rank, True, result))
    except BaseException:
        queue.put((rank, False, traceback.format_exc()))
        raise


def check_nccl(nprocs: int) -> None:
    """Raise unless this machine can run `nprocs` NCCL ranks, one GPU each."""
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError(
            f"backend='nccl' needs CUDA, but torch.cuda.is_available() is False here (torch "
            f"{torch.__version__}, CUDA build {torch.version.cuda or 'none'}, CUDA_VISIBLE_DEVICES="
            f"{os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')!r}); use backend='gloo' to run on the CPU"
        )
    count = torch.cuda.device_count()
    if count < nprocs:
        raise RuntimeError(
            f"backend='nccl' runs one process per GPU: {nprocs} processes need {nprocs} GPUs, but {count} "
            f"{'is' if count == 1 else 'are'} visible; use nprocs <= {count}, or backend='gloo' for the CPU"
        )


@contextlib.contextmanager
def _child_environment(changes: dict[str, str]):
    """Set `changes` in os.environ while the workers are spawned (a spawned process inherits the
    environment at exec, before any of its Python code, and so before torch can initialise CUDA)."""
    with _ENV_LOCK:
        saved = {k: os.environ.get(k) for k in changes}
        os.environ.update(changes)
        try:
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def _start_method(requested: str | None, backend: str) -> str:
    method = requested or os.environ.get(START_METHOD_ENV) or "spawn"
    if method not in START_METHODS:
        raise ValueError(f"start_method ({START_METHOD_ENV}) must be one of {START_METHODS}, got {method!r}")
    return "spawn" if backend == "nccl" else method


def run_in_processes(fn, nprocs: int, *args, timeout: float = 600.0, backend: str = "gloo",
                     start_method: str | None = None) -> list:
    """Call `fn(*args)` in `nprocs` fresh processes forming one process group; return their results."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if nprocs < 1:
        raise ValueError(f"nprocs must be >= 1, got {nprocs}")
    method = _start_method(start_method, backend)
    env = {BACKEND_ENV: backend}
    if backend == "nccl":
        check_nccl(nprocs)
    else:
        env["CUDA_VISIBLE_DEVICES"] = ""  # gloo: the workers run on the CPU even where GPUs exist
    ctx = mp.get_context(method)
    if method == "forkserver":
        ctx.set_forkserver_preload(list(FORKSERVER_PRELOAD))
    queue = ctx.Queue()
    port = free_port()
    environ = {**os.environ, **env} if method == "forkserver" else None
    procs = [ctx.Process(target=_worker, args=(r, nprocs, port, backend, fn, args, queue, environ), daemon=False)
             for r in range(nprocs)]
    with _child_environment(env):
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
