"""PSNR and SSIM equal scikit-image / NumPy computed directly, on random and real-looking odd-sized videos."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from cosmos_nemo.eval.metrics import FrameTooSmallError, PairAccumulator, psnr_from_sse, score_frames
from cosmos_nemo.eval.synthetic import synthetic_frames
from cosmos_nemo.io.video import read_frames, write_mp4

EPS32 = np.finfo(np.float32).eps


def reference_psnr(v0: np.ndarray, v1: np.ndarray) -> float:
    """TokenBench's PSNR, verbatim in NumPy: float32 videos, one global MSE."""
    v0, v1 = v0.astype(np.float32), v1.astype(np.float32)
    mse = ((v0 - v1) ** 2).mean()
    return float(20 * np.log10(255.0 / (np.sqrt(mse) + EPS32)))


def reference_ssim(v0: np.ndarray, v1: np.ndarray) -> float:
    """TokenBench's SSIM: skimage per frame on float32 frames, averaged over frames."""
    return float(np.mean([
        structural_similarity(a.astype(np.float32), b.astype(np.float32), data_range=255.0, channel_axis=-1)
        for a, b in zip(v0, v1)
    ]))


def _noisy_copy(v: np.ndarray, amp: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(v.astype(np.int16) + rng.integers(-amp, amp + 1, v.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("shape", [(3, 7, 7), (2, 7, 19), (4, 23, 9), (3, 37, 51), (2, 64, 97)])
def test_ssim_psnr_random_frames_match_skimage(shape):
    rng = np.random.default_rng(sum(shape))
    a = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    b = _noisy_copy(a, 60, 1)
    scores = score_frames(a, b)
    for i in range(len(a)):
        ref = structural_similarity(a[i].astype(np.float32), b[i].astype(np.float32), data_range=255.0, channel_axis=-1)
        assert abs(scores.ssim[i] - ref) < 1e-6
        # In float64 skimage has no rounding to speak of, and we agree to ~1e-15.
        ref64 = structural_similarity(a[i].astype(np.float64), b[i].astype(np.float64), data_range=255.0, channel_axis=-1)
        assert abs(scores.ssim[i] - ref64) < 1e-12
        assert scores.sse[i] == int(((a[i].astype(np.int64) - b[i]) ** 2).sum())


def test_float32_ratio_also_matches():
    import torch

    rng = np.random.default_rng(5)
    a = rng.integers(0, 256, (2, 41, 53, 3), dtype=np.uint8)
    b = _noisy_copy(a, 30, 2)
    s32 = score_frames(a, b, float_dtype=torch.float32).ssim
    s64 = score_frames(a, b).ssim
    assert np.abs(s32 - s64).max() < 1e-6


@pytest.mark.parametrize("crf", [0, 18, 30, 45])
def test_encoded_videos_match_reference(tmp_path, crf):
    """Real-looking clips of odd size, decoded after encoding at several qualities."""
    frames = synthetic_frames(6, 45, 67, seed=crf)
    write_mp4(tmp_path / "ref.mp4", frames, crf=0)
    write_mp4(tmp_path / "gen.mp4", frames, crf=crf)
    v0, v1 = read_frames(tmp_path / "ref.mp4"), read_frames(tmp_path / "gen.mp4")
    acc = PairAccumulator()
    acc.update(v0, v1)
    assert abs(acc.psnr - reference_psnr(v0, v1)) < 1e-4
    assert abs(acc.ssim - reference_ssim(v0, v1)) < 1e-6


def test_identical_videos_are_finite():
    v = synthetic_frames(2, 9, 11)
    acc = PairAccumulator()
    acc.update(v, v)
    assert acc.psnr == pytest.approx(20 * np.log10(255 / EPS32))
    assert acc.ssim == pytest.approx(1.0, abs=1e-12)
    assert acc.psnr == pytest.approx(reference_psnr(v, v), abs=1e-4)


def test_psnr_is_global_mse_not_mean_of_frames():
    """A nearly clean frame and a noisy one: the mean of per-frame PSNRs is far from TokenBench's PSNR."""
    v0 = synthetic_frames(2, 32, 48)
    v1 = v0.copy()
    v1[0] = _noisy_copy(v0[0], 2, 3)
    v1[1] = _noisy_copy(v0[1], 80, 4)
    acc = PairAccumulator()
    acc.update(v0, v1)
    per_frame = np.mean([reference_psnr(a[None], b[None]) for a, b in zip(v0, v1)])
    assert abs(acc.psnr - reference_psnr(v0, v1)) < 1e-4
    assert abs(per_frame - acc.psnr) > 3.0


@pytest.mark.parametrize("chunk", [1, 2, 5])
def test_chunked_equals_whole_video(chunk):
    v0 = synthetic_frames(9, 21, 33, seed=2)
    v1 = _noisy_copy(v0, 25, 7)
    whole = PairAccumulator()
    whole.update(v0, v1)
    streamed = PairAccumulator()
    for s in range(0, len(v0), chunk):
        streamed.update(v0[s : s + chunk], v1[s : s + chunk])
    assert streamed.sse == whole.sse
    assert streamed.psnr == whole.psnr
    assert streamed.ssim == pytest.approx(whole.ssim, abs=1e-15)
    assert abs(streamed.ssim - reference_ssim(v0, v1)) < 1e-6
    assert abs(streamed.psnr - reference_psnr(v0, v1)) < 1e-4


def test_strip_boundaries_do_not_change_ssim(monkeypatch):
    """Tall frames cross several row strips; the SSIM and squared errors must not depend on the strips."""
    import cosmos_nemo.eval.metrics as m

    rng = np.random.default_rng(3)
    a = rng.integers(0, 256, (1, 150, 30, 3), dtype=np.uint8)
    b = _noisy_copy(a, 40, 9)
    base = score_frames(a, b)
    for rows in (1, 7, 16, 149):
        monkeypatch.setattr(m, "strip_rows_for_width", lambda w, d="cpu", r=rows: r)
        s = score_frames(a, b)
        assert s.sse[0] == base.sse[0]
        assert abs(s.ssim[0] - base.ssim[0]) < 1e-14


def test_frame_smaller_than_window():
    a = np.zeros((1, 6, 20, 3), dtype=np.uint8)
    with pytest.raises(FrameTooSmallError, match="smaller than the 7x7 SSIM window"):
        score_frames(a, a)
    with pytest.raises(ValueError):  # skimage refuses too: the two agree on what is valid
        structural_similarity(a[0].astype(np.float32), a[0].astype(np.float32), data_range=255.0, channel_axis=-1)


def test_psnr_from_sse_formula():
    assert psnr_from_sse(4 * 100, 100) == pytest.approx(20 * np.log10(255 / (2 + float(EPS32))), abs=1e-12)
    with pytest.raises(ValueError):
        psnr_from_sse(0, 0)


def test_torch_path_for_other_devices_equals_the_numpy_path(monkeypatch):
    """On CPU the scores come from NumPy; any other device runs the same formulation in torch. The torch
    code is run here on CPU tensors (as it runs on a GPU, whole frames at a time and in strips)."""
    torch = pytest.importorskip("torch")
    import cosmos_nemo.eval.metrics as m

    rng = np.random.default_rng(11)
    a = rng.integers(0, 256, (2, 37, 51, 3), dtype=np.uint8)
    b = _noisy_copy(a, 50, 3)
    ref = score_frames(a, b)
    for rows in (1 << 30, 9):
        monkeypatch.setattr(m, "strip_rows_for_width", lambda w, d="cpu", r=rows: r)
        for i in range(len(a)):
            ssim, sse = m._score_one(torch.from_numpy(a[i]), torch.from_numpy(b[i]), torch.device("cpu"),
                                     torch.float64, True)
            assert abs(ssim - ref.ssim[i]) < 1e-12
            assert sse == ref.sse[i]
    # Tensors are accepted on the NumPy path too, and the result is the same.
    assert np.array_equal(score_frames(torch.from_numpy(a), torch.from_numpy(b)).sse, ref.sse)
