"""FVD: Fréchet distance against scipy, I3D preprocessing against the reference formula, and the
`--fvd-weights` TorchScript path end to end with a small scripted stand-in network."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F

from cosmos_nemo.cli import main
from cosmos_nemo.eval.fvd import FeatureStats, FVDAccumulator, frechet_distance, i3d_preprocess, load_i3d
from cosmos_nemo.eval.synthetic import synthetic_frames
from cosmos_nemo.io.video import read_frames, write_mp4

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")


def scipy_frechet(mu1, s1, mu2, s2) -> float:
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real)


@pytest.mark.parametrize("n,d", [(50, 8), (200, 32), (12, 20)])
def test_frechet_matches_scipy(n, d):
    rng = np.random.default_rng(n + d)
    real = rng.normal(size=(n, d)) @ rng.normal(size=(d, d))
    fake = real * 0.9 + rng.normal(0.3, 0.5, size=(n, d))
    acc = FVDAccumulator()
    for r, f in zip(real, fake):
        acc.add_pair(torch.from_numpy(r), torch.from_numpy(f))
    mu_r, mu_f = real.mean(0), fake.mean(0)
    s_r, s_f = np.cov(real, rowvar=False, ddof=1), np.cov(fake, rowvar=False, ddof=1)
    ours = acc.compute()
    ref = scipy_frechet(mu_r, s_r, mu_f, s_f)
    assert ours == pytest.approx(ref, rel=1e-6, abs=1e-6)
    m, c = acc.real.mean_cov()
    np.testing.assert_allclose(m.numpy(), mu_r, atol=1e-12)
    np.testing.assert_allclose(c.numpy(), s_r, atol=1e-9)


def test_same_distribution_is_zero():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(40, 6)))
    s = FeatureStats()
    for row in x:
        s.add(row)
    mu, cov = s.mean_cov()
    assert abs(frechet_distance(mu, cov, mu, cov)) < 1e-8


def test_one_video_is_refused():
    acc = FVDAccumulator()
    acc.add_pair(torch.ones(4), torch.zeros(4))
    with pytest.raises(ValueError, match="at least 2 videos"):
        acc.compute()


def reference_preprocess_single(video_cthw: torch.Tensor, resolution: int = 224) -> torch.Tensor:
    """TokenBench `fvd.preprocess_single`, written from its definition."""
    c, t, h, w = video_cthw.shape
    scale = resolution / min(h, w)
    size = (resolution, math.ceil(w * scale)) if h < w else (math.ceil(h * scale), resolution)
    v = F.interpolate(video_cthw, size=size, mode="bilinear", align_corners=False)
    c, t, h, w = v.shape
    ws, hs = (w - resolution) // 2, (h - resolution) // 2
    return ((v[:, :, hs : hs + resolution, ws : ws + resolution] - 0.5) * 2).contiguous()


def _reference_input(frames_u8: np.ndarray) -> torch.Tensor:
    # metrics_cli: torch.from_numpy(vid / 255.0).float().permute(3, 0, 1, 2)
    return torch.from_numpy(frames_u8 / 255.0).float().permute(3, 0, 1, 2)


@pytest.mark.parametrize("hw", [(45, 67), (67, 45), (50, 50), (230, 300)])
def test_i3d_preprocess_chunked_equals_reference(hw):
    frames = synthetic_frames(5, *hw, seed=1)
    ref = reference_preprocess_single(_reference_input(frames))
    ours = torch.cat([i3d_preprocess(torch.from_numpy(frames[s : s + 2])) for s in range(0, 5, 2)], dim=1)
    assert ours.shape == (3, 5, 224, 224)
    assert torch.equal(ours, ref)


class _TinyI3D(torch.nn.Module):
    """Stands in for the StyleGAN-V I3D: the same call signature, a few pooled statistics as features."""

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False) -> torch.Tensor:
        assert not rescale and not resize and return_features
        pooled = F.avg_pool3d(x, kernel_size=(1, 32, 32))
        return torch.cat([x.mean(dim=(2, 3, 4)), x.std(dim=(2, 3, 4)), pooled.amax(dim=(2, 3, 4)), (x * x).mean(dim=(2, 3, 4))], dim=1)


@pytest.fixture
def tiny_i3d(tmp_path):
    path = tmp_path / "i3d_torchscript.pt"
    torch.jit.script(_TinyI3D()).save(str(path))
    return path


def test_fvd_end_to_end_matches_direct(tmp_path, tiny_i3d):
    gt, gen = tmp_path / "gt", tmp_path / "gen"
    for i, crf in enumerate((20, 30, 40)):
        frames = synthetic_frames(6, 35, 47, seed=i)
        write_mp4(gt / f"v{i}.mp4", frames, crf=0)
        write_mp4(gen / f"v{i}.mp4", frames, crf=crf)
    rc = main(["evaluate", "tokenbench", "--gtpath", str(gt), "--targetpath", str(gen), "--metrics", "psnr,fvd",
               "--fvd-weights", str(tiny_i3d), "--chunk-size", "4"])
    assert rc == 0
    report = json.loads((gen / "tokenbench.json").read_text())

    model = torch.jit.load(str(tiny_i3d))
    real, fake = [], []
    for i in range(3):
        for folder, out in ((gt, real), (gen, fake)):
            v = reference_preprocess_single(_reference_input(read_frames(folder / f"v{i}.mp4")[:300]))
            out.append(model(v[None], rescale=False, resize=False, return_features=True)[0].double().numpy())
    real, fake = np.stack(real), np.stack(fake)
    ref = scipy_frechet(real.mean(0), np.cov(real, rowvar=False), fake.mean(0), np.cov(fake, rowvar=False))
    assert report["means"]["fvd"] == pytest.approx(ref, rel=1e-5, abs=1e-8)


def test_fvd_with_one_pair_is_a_note_not_nan(tmp_path, tiny_i3d):
    gt, gen = tmp_path / "gt", tmp_path / "gen"
    frames = synthetic_frames(3, 20, 24)
    write_mp4(gt / "a.mp4", frames, crf=0)
    write_mp4(gen / "a.mp4", frames, crf=30)
    assert main(["evaluate", "tokenbench", "--gtpath", str(gt), "--targetpath", str(gen), "--metrics", "psnr,ssim,fvd",
                 "--fvd-weights", str(tiny_i3d)]) == 0
    text = (gen / "tokenbench.json").read_text()
    assert "NaN" not in text and "fvd" not in json.loads(text)["means"]
    assert "at least 2" in json.loads(text)["notes"]["fvd"]


def test_missing_i3d_file_names_it(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="i3d_torchscript.pt"):
        load_i3d(tmp_path / "nope.pt")
