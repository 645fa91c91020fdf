"""FVD as TokenBench computes it (`token_bench/fvd.py`): StyleGAN-V I3D features and a Fréchet distance.

The feature network is the StyleGAN-V I3D TorchScript file `i3d_torchscript.pt` (TokenBench loads it from
`./pretrained_ckpts/opensora/eval/fvd/styleganv/i3d_torchscript.pt`; it is published in the Hugging Face
repo `LanguageBind/Open-Sora-Plan-v1.0.0` under `opensora/eval/fvd/styleganv/`). Pass its local path as
`--fvd-weights`; it is opened with `torch.jit.load` (TorchScript, no pickle). Nothing is downloaded.

Per video: the first 300 frames, `/255` in float64 then float32, shaped `[1, 3, T, H, W]`; each frame's
short side resized to 224 with bilinear `F.interpolate` (`align_corners=False`, no antialias; long side
`ceil(long * 224 / short)`), centre-cropped to 224x224 and mapped to [-1, 1]; then
`model(x, rescale=False, resize=False, return_features=True)` gives one feature vector. Reference videos
are the "real" set, generated ones the "fake" set. Sums and outer products accumulate in float64; the
covariance divides by N-1; the distance is ``|mu_r - mu_f|^2 + tr S_r + tr S_f - 2 sum sqrt(eig(S_r S_f)).real``
(torchmetrics' `_compute_fid`).
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

I3D_FILE = "i3d_torchscript.pt"
FVD_MAX_FRAMES = 300
I3D_RESOLUTION = 224


def load_i3d(path: str | os.PathLike, device: str | torch.device = "cpu"):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"FVD weights {path} do not exist; --fvd-weights needs the StyleGAN-V I3D TorchScript file "
            f"{I3D_FILE} (Hugging Face LanguageBind/Open-Sora-Plan-v1.0.0, opensora/eval/fvd/styleganv/)"
        )
    from cosmos_nemo.io.tensors import TensorFileError

    if path.stat().st_size == 0:
        raise TensorFileError(f"{path}: empty file (0 bytes), not the I3D TorchScript file {I3D_FILE}; download it again")
    with warnings.catch_warnings():
        # The file is TorchScript; torch.jit.load is the only way to open it, deprecation notwithstanding.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        try:
            model = torch.jit.load(str(path), map_location=device)
        except (RuntimeError, ValueError) as e:  # truncated zip, not an archive at all
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise TensorFileError(f"{path}: not a TorchScript archive, or a truncated one ({first}); --fvd-weights "
                                  f"needs the StyleGAN-V I3D file {I3D_FILE}") from None
    model.eval()
    return model


def i3d_preprocess(frames_u8: torch.Tensor, device: str | torch.device = "cpu", resolution: int = I3D_RESOLUTION) -> torch.Tensor:
    """uint8 `[n, H, W, 3]` -> float32 `[3, n, 224, 224]` in [-1, 1], per frame as `preprocess_single` does."""
    x = torch.as_tensor(frames_u8).to(device)
    x = (x.to(torch.float64) / 255.0).to(torch.float32).permute(3, 0, 1, 2)  # C, T, H, W
    _, _, h, w = x.shape
    scale = resolution / min(h, w)
    size = (resolution, math.ceil(w * scale)) if h < w else (math.ceil(h * scale), resolution)
    # A 4-D [C, T, H, W] input makes interpolate treat C as batch and T as channels: one resize per frame.
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    _, _, h, w = x.shape
    top, left = (h - resolution) // 2, (w - resolution) // 2
    x = x[:, :, top : top + resolution, left : left + resolution]
    return ((x - 0.5) * 2).contiguous()


@torch.no_grad()
def i3d_features(model, video: torch.Tensor) -> torch.Tensor:
    """Features `[D]` (float64, CPU) of one preprocessed video `[3, T, 224, 224]`."""
    feats = model(video[None], rescale=False, resize=False, return_features=True)
    return feats.reshape(-1).double().cpu()


@dataclass
class FeatureStats:
    """Running float64 sum and sum of outer products of feature vectors."""

    total: torch.Tensor | None = None
    outer: torch.Tensor | None = None
    count: int = 0

    def add(self, feats: torch.Tensor) -> None:
        f = feats.reshape(1, -1).double()
        if self.total is None:
            self.total = torch.zeros(f.shape[1], dtype=torch.float64)
            self.outer = torch.zeros(f.shape[1], f.shape[1], dtype=torch.float64)
        self.total += f[0]
        self.outer += f.T @ f
        self.count += 1

    def mean_cov(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.count < 2:
            raise ValueError(f"FVD needs at least 2 videos per side, got {self.count}")
        mean = self.total / self.count
        cov = (self.outer - self.count * torch.outer(mean, mean)) / (self.count - 1)
        return mean, cov


def frechet_distance(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor) -> float:
    """`|mu1-mu2|^2 + tr(S1) + tr(S2) - 2 * sum(sqrt(eigvals(S1 @ S2))).real`, in float64."""
    mu1, mu2, sigma1, sigma2 = (t.double() for t in (mu1, mu2, sigma1, sigma2))
    a = (mu1 - mu2).square().sum()
    b = sigma1.trace() + sigma2.trace()
    c = torch.linalg.eigvals(sigma1 @ sigma2).sqrt().real.sum()
    return float(a + b - 2 * c)


@dataclass
class FVDAccumulator:
    real: FeatureStats = field(default_factory=FeatureStats)
    fake: FeatureStats = field(default_factory=FeatureStats)

    def add_pair(self, real_feats: torch.Tensor, fake_feats: torch.Tensor) -> None:
        self.real.add(real_feats)
        self.fake.add(fake_feats)

    def compute(self) -> float:
        mr, cr = self.real.mean_cov()
        mf, cf = self.fake.mean_cov()
        return frechet_distance(mr, cr, mf, cf)
