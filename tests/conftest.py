"""Shared test fixtures.

The golden outputs of NVIDIA's reference code live in `../shared/golden/` relative to the project root
(override with COSMOS_NEMO_GOLDEN). Tests that need them skip with a clear reason when they are absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
GOLDEN_ROOT = Path(os.environ.get("COSMOS_NEMO_GOLDEN", PROJECT_ROOT.parent / "shared" / "golden"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


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
    """megatron's parallel state for one process (TP=PP=DP=1, gloo on CPU) around a test module."""
    import torch

    from cosmos_nemo import parallel

    torch.set_num_threads(2)
    parallel.setup()
    yield
    parallel.teardown()
