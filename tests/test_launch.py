"""The process launcher and the backend choice: gloo workers run on the CPU on any machine; NCCL is
refused with a clear message where it cannot run."""

from __future__ import annotations

import os

import pytest
import torch

from cosmos_nemo import parallel
from cosmos_nemo.parallel.launch import run_in_processes

pytestmark = pytest.mark.distributed


def _gloo_worker(value: float) -> dict:
    import torch.distributed as dist

    state = parallel.setup()
    total = torch.tensor([value * (state.rank + 1)])
    dist.all_reduce(total)
    out = {"backend": dist.get_backend(), "cuda": torch.cuda.is_available(), "device": str(state.device),
           "visible": os.environ.get("CUDA_VISIBLE_DEVICES"), "env": os.environ.get(parallel.BACKEND_ENV),
           "sum": float(total), "rank": state.rank, "world": state.world_size}
    parallel.teardown()
    return out


def test_gloo_run_is_on_the_cpu_on_any_machine():
    before = {k: os.environ.get(k) for k in (parallel.BACKEND_ENV, "CUDA_VISIBLE_DEVICES")}
    out = run_in_processes(_gloo_worker, 2, 1.5)
    assert [o["rank"] for o in out] == [0, 1]
    for o in out:
        # The GPUs (if any) are hidden from the workers before torch starts, so the CPU path is the one taken.
        assert o == {**o, "backend": "gloo", "cuda": False, "device": "cpu", "visible": "", "env": "gloo",
                     "sum": 1.5 + 3.0, "world": 2}
    # The launcher leaves the caller's environment as it was.
    assert {k: os.environ.get(k) for k in before} == before


def _environment_probe() -> dict:
    return {"pid": os.getpid(), "probe": os.environ.get("COSMOS_NEMO_TEST_PROBE"), "gone": "COSMOS_NEMO_TEST_GONE"
            in os.environ, "visible": os.environ.get("CUDA_VISIBLE_DEVICES"), "rank": os.environ.get("RANK")}


@pytest.mark.medium
@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_each_start_method_gives_workers_the_callers_environment_of_the_moment(method, monkeypatch):
    """The fork server was started once, with whatever environment the first call had; its workers must still see
    the environment of each call (a test's monkeypatched variables), exactly as spawned workers do."""
    monkeypatch.setenv("COSMOS_NEMO_TEST_PROBE", "first")
    monkeypatch.setenv("COSMOS_NEMO_TEST_GONE", "1")
    first = run_in_processes(_environment_probe, 2, start_method=method)
    monkeypatch.setenv("COSMOS_NEMO_TEST_PROBE", "second")
    monkeypatch.delenv("COSMOS_NEMO_TEST_GONE")
    second = run_in_processes(_environment_probe, 1, start_method=method)
    assert [(o["probe"], o["gone"], o["visible"], o["rank"]) for o in first] == [("first", True, "", "0"),
                                                                                 ("first", True, "", "1")]
    assert [(o["probe"], o["gone"], o["rank"]) for o in second] == [("second", False, "0")]
    # Fresh processes every call, never the caller.
    pids = {o["pid"] for o in first + second}
    assert len(pids) == 3 and os.getpid() not in pids


def test_unknown_start_method_is_refused(monkeypatch):
    with pytest.raises(ValueError, match="start_method .* must be one of"):
        run_in_processes(_environment_probe, 1, start_method="fork")
    monkeypatch.setenv("COSMOS_NEMO_START_METHOD", "thread")
    with pytest.raises(ValueError, match="COSMOS_NEMO_START_METHOD"):
        run_in_processes(_environment_probe, 1)


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="backend must be one of"):
        run_in_processes(_gloo_worker, 1, 1.0, backend="mpi")
    with pytest.raises(ValueError, match="unknown process-group backend 'mpi'"):
        parallel.resolve_backend("mpi")


def test_nccl_with_more_ranks_than_gpus_is_refused_before_spawning():
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    expected = "needs CUDA" if gpus == 0 else "one process per GPU"
    with pytest.raises(RuntimeError, match=expected) as info:
        run_in_processes(_gloo_worker, gpus + 1, 1.0, backend="nccl")
    assert "backend='gloo'" in str(info.value)  # the message says what to do instead


def _nccl_requests() -> dict:
    """parallel.setup asked for NCCL by argument, then by $COSMOS_NEMO_BACKEND: the error of each."""
    messages = {}
    for source, request in (("argument", lambda: parallel.setup(backend="nccl")),
                            ("environment", lambda: (os.environ.__setitem__(parallel.BACKEND_ENV, "nccl"),
                                                     parallel.setup()))):
        try:
            request()
            messages[source] = "initialised"
        except RuntimeError as err:
            messages[source] = str(err)
    return messages


@pytest.mark.cpu_only
def test_setup_refuses_nccl_without_cuda():
    # In a fresh gloo worker (no CUDA there on any machine): the request comes from the argument or from
    # the environment variable the launcher sets and the trainer's setup() reads.
    messages = run_in_processes(_nccl_requests, 1)[0]
    for source, where in (("argument", "backend argument"), ("environment", "$COSMOS_NEMO_BACKEND")):
        message = messages[source]
        assert "NCCL was requested" in message and where in message and "CUDA is not available" in message, message
        assert "use the gloo backend" in message


@pytest.mark.cpu_only
def test_resolve_backend_follows_the_hardware_without_a_request(monkeypatch):
    monkeypatch.delenv(parallel.BACKEND_ENV, raising=False)
    assert parallel.resolve_backend() == "gloo"
    monkeypatch.setenv(parallel.BACKEND_ENV, "gloo")
    assert parallel.resolve_backend() == "gloo"
    with pytest.raises(RuntimeError, match="NCCL was requested"):
        parallel.resolve_backend("NCCL")
