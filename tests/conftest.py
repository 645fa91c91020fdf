"""Shared test fixtures, and the hardware tiers.

Tiers (markers registered in pyproject.toml): `gpu` tests skip with the reason where torch sees no CUDA
device; `cpu_only` tests (behaviour that only a CPU-only process shows, such as "NCCL is refused without
CUDA") skip where CUDA is present. Everything else runs on both; the multi-process tests run their
workers on the CPU even on a GPU machine (`parallel.launch.run_in_processes`, gloo).

The golden outputs of NVIDIA's reference code live in `../shared/golden/` relative to the project root
(override with COSMOS_NEMO_GOLDEN). Tests that need them skip with a clear reason when they are absent.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
GOLDEN_ROOT = Path(os.environ.get("COSMOS_NEMO_GOLDEN", PROJECT_ROOT.parent / "shared" / "golden"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Multi-process tests fork their workers from one server that has torch and megatron imported, instead of spawning
# interpreters that import them again (seconds per test; `parallel.launch.run_in_processes`). Each worker still starts
# from that clean state with the test's environment. COSMOS_NEMO_START_METHOD=spawn runs them as users' code does.
os.environ.setdefault("COSMOS_NEMO_START_METHOD", "forkserver")

# A suite started in the background by a non-interactive shell (`bash .ci/run &`, a CI runner's job) inherits SIGINT
# ignored, as POSIX has such jobs do, and every process a test starts would inherit it too: the Ctrl-C tests (which
# send SIGINT to a `cosmos-nemo` they start) would see a command that cannot be interrupted. A handler here is reset
# to the default on exec, so the started commands get Python's own KeyboardInterrupt, as from a terminal.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    # `medium` tests count as slow for the fast tier (before `-m` deselects anything).
    for item in items:
        if item.get_closest_marker("medium") and not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.slow)
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    cpu_items = [item for item in items if item.get_closest_marker("cpu_only")]
    if not gpu_items and not cpu_items:
        return
    if _cuda_available():
        skip = pytest.mark.skip(reason="cpu_only: checks behaviour without CUDA, and this machine has a CUDA device")
        for item in cpu_items:
            item.add_marker(skip)
    else:
        import torch

        reason = (f"gpu: needs a CUDA device; torch {torch.__version__} (CUDA build "
                  f"{torch.version.cuda or 'none'}) sees none")
        for item in gpu_items:
            item.add_marker(pytest.mark.skip(reason=reason))


def ffmpeg_cli() -> str | None:
    """An ffmpeg executable for independent decode checks: the one on PATH, else the static build that the
    `imageio-ffmpeg` wheel ships (a test dependency), else None."""
    import shutil

    found = shutil.which("ffmpeg")
    if found:
        return found
    try:
        import imageio_ffmpeg
    except ImportError:
        return None
    try:
        return imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError:
        return None


def golden_dir(*parts: str) -> Path:
    """The golden folder `parts`, or skip the test when it is absent."""
    path = GOLDEN_ROOT.joinpath(*parts)
    if not path.is_dir():
        pytest.skip(f"golden reference folder {path} is absent (it ships beside the project in CI)")
    return path


@pytest.fixture
def golden():
    return golden_dir


@pytest.fixture(scope="module")
def single_process():
    """megatron's parallel state for one process (TP=PP=DP=1, gloo on CPU) around a test module.

    The tests that use it build megatron models in the pytest process and feed them CPU tensors; where
    CUDA is visible megatron would place the models on the GPU, so they skip there (the multi-process tests
    run their workers on the CPU on any machine, and tests/test_gpu.py covers the GPU)."""
    import torch

    from cosmos_nemo import parallel

    if torch.cuda.is_available():
        pytest.skip("cpu_only: builds megatron models on the CPU in the pytest process, and CUDA is present")

    torch.set_num_threads(2)
    parallel.setup()
    yield
    parallel.teardown()


@pytest.fixture(scope="session")
def tiny_byt5_encoder(tmp_path_factory) -> Path:
    """A saved random-init T5 encoder (d_model 16, one layer) with the ByT5 tokenizer: a real `transformers` text
    encoder folder, built once per session, for the tests that encode or damage text-encoder folders."""
    import torch

    from cosmos_nemo.compat import hide_unusable_torchvision

    hide_unusable_torchvision()
    from transformers import ByT5Tokenizer, T5Config, T5EncoderModel

    folder = tmp_path_factory.mktemp("t5")
    torch.manual_seed(0)
    T5EncoderModel(T5Config(vocab_size=384, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=4,
                            decoder_start_token_id=0, pad_token_id=0)).save_pretrained(folder)
    ByT5Tokenizer().save_pretrained(folder)
    return folder
