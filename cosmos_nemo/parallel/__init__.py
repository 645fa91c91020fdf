"""Process groups, device selection and the CPU adapter for megatron-core.

This room owns initialising torch.distributed and megatron's model-parallel state (TP/PP/DP, CP plumbed
through) from torchrun's environment, choosing the device at run time (NCCL on GPU, gloo on CPU), and the
one module (cpu_adapter) that redirects megatron-core's CUDA-only calls when no GPU is present."""

from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist

from cosmos_nemo.parallel import cpu_adapter

__all__ = ["ParallelState", "setup", "teardown", "get_device", "free_port"]


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
) -> ParallelState:
    """Initialise torch.distributed and megatron's model-parallel state for this process.

    Reads RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT as torchrun sets them; without
    them it forms a 1-process group on an in-memory store (no port, no environment changes). NCCL on
    GPU, gloo on CPU (where the CPU adapter for megatron's CUDA-only calls is installed first). Seeds
    torch and megatron's model-parallel RNG tracker.
    """
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

    cpu_adapter.install()
    device = get_device()
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        timeout = datetime.timedelta(minutes=timeout_minutes)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        if "WORLD_SIZE" in os.environ:  # launched by torchrun (or parallel.launch): rendezvous from the env
            dist.init_process_group(backend=backend, timeout=timeout)
        else:
            # A lone process: an in-memory store, so no port is taken and nothing leaks into os.environ
            # (a MASTER_PORT left there would be inherited by every subprocess this one starts).
            dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1,
                                    timeout=timeout)
    world = dist.get_world_size()
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
