"""Process groups, device selection and the CPU adapter for megatron-core.

This room owns initialising torch.distributed and megatron's model-parallel state (TP/PP/DP, CP plumbed
through) from torchrun's environment, choosing the device at run time (NCCL on GPU, gloo on CPU, or the
backend asked for: `setup(backend=...)` or the `COSMOS_NEMO_BACKEND` environment variable), and the one
module (cpu_adapter) that redirects megatron-core's CUDA-only calls when no GPU is present. A launched
worker is guarded by `lifeline.watch()`: it stops when torchrun or the launcher dies, or on SIGTERM."""

from __future__ import annotations

import datetime
import importlib.util
import logging
import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist

from cosmos_nemo.parallel import cpu_adapter, lifeline

__all__ = ["ParallelState", "setup", "teardown", "get_device", "free_port", "resolve_backend", "BACKEND_ENV"]

# An explicit backend request for `setup()` ("gloo" or "nccl"), as `parallel.launch.run_in_processes` sets
# it in its workers; unset, the backend follows the hardware (NCCL when CUDA is available, else gloo).
BACKEND_ENV = "COSMOS_NEMO_BACKEND"
BACKENDS = ("gloo", "nccl")


@dataclass(frozen=True)
class ParallelState:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    tensor_parallel: int
    pipeline_parallel: int
    context_parallel: int
    data_parallel: int
    tp_rank: int
    pp_rank: int
    dp_rank: int

    @property
    def is_first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pipeline_parallel - 1


def get_device() -> torch.device:
    """The device for this process: its local GPU under NCCL, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def gpu_kernels_note(device: torch.device) -> str | None:
    """On a GPU without Transformer Engine, the one line that says so (megatron-core's own import-time warnings
    about it are silenced in `cosmos_nemo/__init__.py`); None on a CPU or with Transformer Engine."""
    if device.type != "cuda" or importlib.util.find_spec("transformer_engine") is not None:
        return None
    return ("Transformer Engine is not installed: megatron-core runs its local layer spec and torch fallbacks (no "
            "TE fused attention, norms, RoPE or FusedAdam); `pip install -e .[gpu]` or NVIDIA's PyTorch container "
            "adds it")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def resolve_backend(backend: str | None = None) -> str:
    """The process-group backend: `backend`, else $COSMOS_NEMO_BACKEND, else NCCL with CUDA and gloo without.

    An explicit request is checked against the hardware: NCCL needs CUDA; gloo runs this library on the CPU,
    so it needs the GPUs hidden from this process (CUDA_VISIBLE_DEVICES="" before torch initialises CUDA,
    as `run_in_processes(backend="gloo")` does) rather than half the work on a GPU under gloo.
    """
    source = "backend argument"
    if backend is None and os.environ.get(BACKEND_ENV):
        backend, source = os.environ[BACKEND_ENV], f"${BACKEND_ENV}"
    if backend is None:
        return "nccl" if torch.cuda.is_available() else "gloo"
    backend = backend.strip().lower()
    if backend not in BACKENDS:
        raise ValueError(f"unknown process-group backend {backend!r} ({source}); choose one of {BACKENDS}")
    cuda = torch.cuda.is_available()
    if backend == "nccl" and not cuda:
        raise RuntimeError(
            f"NCCL was requested ({source}) but CUDA is not available to this process (torch "
            f"{torch.__version__}, CUDA build {torch.version.cuda or 'none'}, CUDA_VISIBLE_DEVICES="
            f"{os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')!r}); NCCL runs on GPUs only: use the gloo "
            "backend on a CPU"
        )
    if backend == "gloo" and cuda:
        raise RuntimeError(
            f"gloo was requested ({source}) but CUDA is visible to this process: gloo runs this library on the "
            "CPU; hide the GPUs before torch initialises CUDA (CUDA_VISIBLE_DEVICES=\"\", as "
            "parallel.launch.run_in_processes(backend='gloo') does), or use NCCL on the GPUs"
        )
    return backend


def check_sizes(world_size: int, tensor_parallel: int, pipeline_parallel: int, context_parallel: int = 1) -> int:
    """Return the data-parallel size, or raise with the arithmetic when the sizes don't fit the world."""
    for name, value in (("tensor_parallel", tensor_parallel), ("pipeline_parallel", pipeline_parallel),
                        ("context_parallel", context_parallel)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    model_parallel = tensor_parallel * pipeline_parallel * context_parallel
    if world_size % model_parallel:
        raise ValueError(
            f"world size {world_size} is not divisible by TP x PP x CP = {tensor_parallel} x "
            f"{pipeline_parallel} x {context_parallel} = {model_parallel}; use a process count that is a "
            f"multiple of {model_parallel}, or smaller parallel sizes"
        )
    return world_size // model_parallel


def setup(
    tensor_parallel: int = 1,
    pipeline_parallel: int = 1,
    context_parallel: int = 1,
    seed: int = 1234,
    timeout_minutes: int = 30,
    backend: str | None = None,
) -> ParallelState:
    """Initialise torch.distributed and megatron's model-parallel state for this process.

    Reads RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT as torchrun sets them; without
    them it forms a 1-process group on an in-memory store (no port, no environment changes). NCCL on
    GPU, gloo on CPU (where the CPU adapter for megatron's CUDA-only calls is installed first); an
    explicit `backend` (or $COSMOS_NEMO_BACKEND) is honoured or refused with the reason
    (`resolve_backend`). Seeds torch and megatron's model-parallel RNG tracker.
    """
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

    explicit = backend is not None or bool(os.environ.get(BACKEND_ENV))
    backend = resolve_backend(backend)
    if dist.is_initialized() and explicit and dist.get_backend() != backend:
        raise RuntimeError(
            f"torch.distributed is already initialised with {dist.get_backend()!r}, but {backend!r} was requested; "
            "call parallel.teardown() first or request the same backend"
        )
    cpu_adapter.install()
    device = get_device()
    if backend == "nccl" and device.index is not None and device.index >= torch.cuda.device_count():
        raise RuntimeError(
            f"LOCAL_RANK {device.index} has no GPU: {torch.cuda.device_count()} visible; NCCL runs one process per GPU"
        )
    if not dist.is_initialized():
        timeout = datetime.timedelta(minutes=timeout_minutes)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        if "WORLD_SIZE" in os.environ:  # launched by torchrun (or parallel.launch): rendezvous from the env
            lifeline.watch()  # stop when torchrun or the launcher dies, or on SIGTERM/SIGINT
            dist.init_process_group(backend=backend, timeout=timeout)
        else:
            # A lone process: an in-memory store, so no port is taken and nothing leaks into os.environ
            # (a MASTER_PORT left there would be inherited by every subprocess this one starts).
            dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1,
                                    timeout=timeout)
    world = dist.get_world_size()
    note = gpu_kernels_note(device)
    if note and dist.get_rank() == 0:
        logging.getLogger(__name__).warning(note)
    data_parallel = check_sizes(world, tensor_parallel, pipeline_parallel, context_parallel)
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=tensor_parallel,
        pipeline_model_parallel_size=pipeline_parallel,
        context_parallel_size=context_parallel,
    )
    torch.manual_seed(seed)
    model_parallel_cuda_manual_seed(seed)
    return ParallelState(
        rank=dist.get_rank(),
        world_size=world,
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        device=device,
        tensor_parallel=tensor_parallel,
        pipeline_parallel=pipeline_parallel,
        context_parallel=context_parallel,
        data_parallel=data_parallel,
        tp_rank=parallel_state.get_tensor_model_parallel_rank(),
        pp_rank=parallel_state.get_pipeline_model_parallel_rank(),
        dp_rank=parallel_state.get_data_parallel_rank(),
    )


def teardown() -> None:
    """Destroy megatron's parallel state and the process group (safe to call twice)."""
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
