"""The CPU adapter: installs nothing when CUDA is present, and its redirects keep values unchanged."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip()


@pytest.mark.medium
def test_adapter_is_noop_when_cuda_is_present():
    out = _run(
        """
        import torch
        from unittest import mock
        before = (torch.cuda.current_device, torch.cuda.synchronize, torch.cuda.Stream, torch.Tensor.cuda)
        import megatron.core.pipeline_parallel.schedules as schedules
        import megatron.core.optimizer.clip_grads as clip_grads
        from megatron.core.tensor_parallel import random as mp_random
        tracker_cls, sched_torch, clip = mp_random.CudaRNGStatesTracker, schedules.torch, clip_grads.clip_grad_by_total_norm_fp32
        l2norm = clip_grads.l2_norm_impl
        from megatron.core.optimizer import optimizer as mopt
        fp16_init, get_state = mopt.Float16OptimizerWithFloat16Params.__init__, mp_random._get_cuda_rng_state
        from cosmos_nemo.parallel import cpu_adapter
        with mock.patch.object(torch.cuda, "is_available", return_value=True):
            installed = cpu_adapter.install()
        after = (torch.cuda.current_device, torch.cuda.synchronize, torch.cuda.Stream, torch.Tensor.cuda)
        assert installed is False and not cpu_adapter.is_installed()
        assert all(a is b for a, b in zip(before, after))
        assert schedules.torch is torch and mp_random.CudaRNGStatesTracker is tracker_cls
        assert clip_grads.clip_grad_by_total_norm_fp32 is clip and clip_grads.l2_norm_impl is l2norm
        assert mopt.Float16OptimizerWithFloat16Params.__init__ is fp16_init and mp_random._get_cuda_rng_state is get_state
        print("noop")
        """
    )
    assert out == "noop"


@pytest.mark.medium
@pytest.mark.cpu_only
def test_adapter_redirects_on_cpu_and_keeps_values():
    out = _run(
        """
        import torch
        from cosmos_nemo.parallel import cpu_adapter
        assert cpu_adapter.install() is True
        import megatron.core.pipeline_parallel.schedules as schedules
        t = schedules.torch.zeros([], dtype=torch.int, device="cuda")
        assert t.device.type == "cpu" and t.dtype == torch.int
        assert torch.cuda.current_device() == torch.device("cpu")
        torch.cuda.synchronize()
        x = torch.arange(4.0)
        assert x.cuda() is x
        # The replaced gradient clipping scales exactly like megatron's: by max_norm / (norm + 1e-6).
        from megatron.core.optimizer import clip_grads
        p = torch.nn.Parameter(torch.ones(3)); p.grad = torch.full((3,), 2.0)
        clip_grads.clip_grad_by_total_norm_fp32([p], max_norm=1.0, total_norm=4.0)
        assert torch.allclose(p.grad, torch.full((3,), 2.0 / (4.0 + 1e-6)))
        # The CPU RNG tracker: fork() draws from the named stream and restores the outer one.
        from megatron.core.tensor_parallel import random as mp_random
        tracker = mp_random.get_cuda_rng_tracker()
        tracker.add("a", 123)
        torch.manual_seed(0); outer_expected = torch.rand(2)
        torch.manual_seed(0)
        with tracker.fork("a"):
            inside = torch.rand(2)
        outer = torch.rand(2)
        assert torch.equal(outer, outer_expected)
        assert torch.equal(inside, torch.Generator().manual_seed(123) and torch.rand(2, generator=torch.Generator().manual_seed(123)))
        with tracker.fork("a"):
            second = torch.rand(2)
        assert not torch.equal(second, inside)  # the named stream advanced
        # Tensor.type() is untouched outside the bf16 optimizer's constructor.
        assert torch.zeros(1, dtype=torch.bfloat16).type() == "torch.BFloat16Tensor"
        print("ok")
        """
    )
    assert out == "ok"


@pytest.mark.medium
@pytest.mark.cpu_only  # a 1-process gloo group; with CUDA, setup() picks NCCL, which cannot reduce CPU tensors
def test_lone_process_setup_takes_no_port_and_leaves_the_environment_alone():
    """Outside torchrun, setup() forms its 1-process group on an in-memory store: no MASTER_PORT (or other
    rendezvous variable) is left in os.environ for subprocesses to inherit, and collectives still work."""
    code = textwrap.dedent(
        """
        import os, torch, torch.distributed as dist
        from cosmos_nemo import parallel
        keys = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
        for k in keys:
            os.environ.pop(k, None)
        state = parallel.setup()
        t = torch.ones(3)
        dist.all_reduce(t)
        print(state.world_size, [k for k in keys if k in os.environ], t.tolist())
        parallel.teardown()
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "1 [] [1.0, 1.0, 1.0]"


@pytest.mark.medium
def test_dependency_notices_are_silenced_unless_asked_for():
    """Setting up and building a model prints none of megatron-core's / torch's import-time notices
    ("Transformer Engine and Apex are not installed" x4, "Apex is not installed", "GPTModel IS DEPRECATED", ...);
    COSMOS_NEMO_SHOW_IMPORT_NOTICES=1 shows them again."""
    code = textwrap.dedent(
        """
        import logging
        logging.basicConfig(level=logging.INFO)  # as a launched run configures it: megatron's log lines show
        from cosmos_nemo import parallel
        parallel.setup()
        from cosmos_nemo.models.ar.config import ar_config
        from cosmos_nemo.models.ar.model import build_ar_model
        from megatron.core.optimizer import clip_grads  # one of the modules that warn at import
        build_ar_model(ar_config("tiny"))
        print("built")
        parallel.teardown()
        """
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONWARNINGS", "COSMOS_NEMO_SHOW_IMPORT_NOTICES")}
    notices = ("Transformer Engine and Apex are not installed", "Apex is not installed", "GPTModel IS DEPRECATED",
               "MimoModelConfig is experimental", "No CUDA runtime is found")
    quiet = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert quiet.returncode == 0 and quiet.stdout.strip() == "built", quiet.stderr[-2000:]
    assert [n for n in notices if n in quiet.stderr] == [], quiet.stderr[-3000:]
    loud = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**env, "COSMOS_NEMO_SHOW_IMPORT_NOTICES": "1"})
    assert loud.returncode == 0, loud.stderr[-2000:]
    assert "Transformer Engine and Apex are not installed" in loud.stderr


def test_gpu_without_transformer_engine_gets_one_note(monkeypatch):
    import importlib.util

    import torch

    from cosmos_nemo import parallel

    assert parallel.gpu_kernels_note(torch.device("cpu")) is None
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    note = parallel.gpu_kernels_note(torch.device("cuda", 0))
    assert "Transformer Engine is not installed" in note and "[gpu]" in note
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())
    assert parallel.gpu_kernels_note(torch.device("cuda", 0)) is None
