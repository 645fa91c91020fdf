"""LPIPS (VGG, v0.1) as TokenBench computes it, without torchvision.

TokenBench calls `lpips.LPIPS(net="vgg")` on each frame pair scaled to [-1, 1]. The network is:
scale by the ImageNet-ish `ScalingLayer`; run VGG16's `features` up to relu1_2, relu2_2, relu3_3, relu4_3
and relu5_3; unit-normalise each feature map over channels (eps 1e-10); square the difference; apply a
1x1 conv without bias per layer (the "lin" heads); average over space; sum over the five layers.

Weights (`--lpips-weights`, one or more local files, merged; nothing is downloaded):

* a full state_dict of `lpips.LPIPS(net="vgg")` (keys `net.sliceK.I.weight/bias` and `linK.model.1.weight`,
  `lins.K...` duplicates and `scaling_layer.*` buffers accepted), as safetensors or a torch file; or
* two files: torchvision's VGG16 ImageNet weights `vgg16-397923af.pth` (keys `features.I.weight/bias`) and
  the lpips package's linear heads `lpips/weights/v0.1/vgg.pth` (keys `linK.model.1.weight`).

Files are read by `cosmos_nemo.io.tensors.read_weights`: torch files weights-only, safetensors checked whole.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# VGG16 `features` indices of the 13 convolutions and their channel counts.
_VGG_CONVS = {0: (3, 64), 2: (64, 64), 5: (64, 128), 7: (128, 128), 10: (128, 256), 12: (256, 256),
              14: (256, 256), 17: (256, 512), 19: (512, 512), 21: (512, 512), 24: (512, 512),
              26: (512, 512), 28: (512, 512)}
# Convs in each of the five slices; a 2x2 max-pool precedes every slice but the first.
_SLICES = ((0, 2), (5, 7), (10, 12, 14), (17, 19, 21), (24, 26, 28))
_LIN_CHANNELS = (64, 128, 256, 512, 512)
# lpips' ScalingLayer constants.
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)

HELP_WEIGHTS = (
    "the LPIPS-VGG weights: a state_dict of lpips.LPIPS(net='vgg') (safetensors or .pth), or two files "
    "separated by a comma: torchvision's vgg16-397923af.pth and the lpips package's weights/v0.1/vgg.pth"
)


class LPIPSVGG(nn.Module):
    """LPIPS v0.1 with the VGG16 trunk; `forward(a, b)` takes NCHW in [-1, 1] and returns `[N]` distances."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.ModuleDict({str(i): nn.Conv2d(cin, cout, 3, padding=1) for i, (cin, cout) in _VGG_CONVS.items()})
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in _LIN_CHANNELS)
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = (x - self.shift) / self.scale
        outs = []
        for k, convs in enumerate(_SLICES):
            if k:
                h = F.max_pool2d(h, kernel_size=2, stride=2)
            for i in convs:
                h = F.relu(self.convs[str(i)](h))
            outs.append(h)
        return outs

    @staticmethod
    def _unit(f: torch.Tensor) -> torch.Tensor:
        return f / (torch.sqrt(torch.sum(f * f, dim=1, keepdim=True)) + 1e-10)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        fa, fb = self.features(a), self.features(b)
        total = 0
        for lin, xa, xb in zip(self.lins, fa, fb):
            d = (self._unit(xa) - self._unit(xb)) ** 2
            total = total + lin(d).mean(dim=(2, 3), keepdim=True)
        return total.flatten()


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    from cosmos_nemo.io.tensors import read_weights

    return read_weights(path)  # truncated / foreign / empty files: a TensorFileError naming the file


_CONV_KEY = re.compile(r"^(?:net\.slice\d\.|features\.)(\d+)\.(weight|bias)$")
_LIN_KEY = re.compile(r"^(?:lin(\d)|lins\.(\d))\.model\.[01]\.weight$")


def lpips_state_from_files(paths: list[str | os.PathLike]) -> dict[str, torch.Tensor]:
    """Merge the given weight files into `LPIPSVGG`'s state_dict, refusing incomplete sets."""
    state: dict[str, torch.Tensor] = {}
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise FileNotFoundError(f"LPIPS weights file {path} does not exist; --lpips-weights needs {HELP_WEIGHTS}")
        for key, value in _read_tensors(path).items():
            if m := _CONV_KEY.match(key):
                idx = int(m.group(1))
                if idx in _VGG_CONVS:
                    state[f"convs.{idx}.{m.group(2)}"] = value
            elif m := _LIN_KEY.match(key):
                state[f"lins.{m.group(1) or m.group(2)}.weight"] = value
    expected = LPIPSVGG().state_dict()
    missing = sorted(set(expected) - set(state))
    if missing:
        what = "VGG16 conv weights (vgg16-397923af.pth)" if any(k.startswith("convs") for k in missing) else ""
        if any(k.startswith("lins") for k in missing):
            what = (what + " and " if what else "") + "LPIPS linear heads (lpips weights/v0.1/vgg.pth)"
        raise ValueError(f"--lpips-weights {', '.join(map(str, paths))} lacks the {what}: missing {missing[:4]}...")
    for key, ref in expected.items():
        if tuple(state[key].shape) != tuple(ref.shape):
            raise ValueError(f"LPIPS weight {key} has shape {tuple(state[key].shape)}, expected {tuple(ref.shape)}")
    return {k: state[k].float() for k in expected}


def load_lpips(paths: list[str | os.PathLike], device: str | torch.device = "cpu") -> LPIPSVGG:
    model = LPIPSVGG()
    model.load_state_dict(lpips_state_from_files(paths))
    return model.to(device).eval()


def frames_to_lpips_input(frames_u8: torch.Tensor, device: str | torch.device) -> torch.Tensor:
    """uint8 `[n, H, W, 3]` -> float32 NCHW in [-1, 1], computed as the reference does (float64, then cast)."""
    x = frames_u8.to(device).permute(0, 3, 1, 2).to(torch.float64)
    return (2 * (x / 255.0 - 0.5)).to(torch.float32)


@torch.no_grad()
def lpips_per_frame(model: LPIPSVGG, a_u8, b_u8, batch: int = 4) -> torch.Tensor:
    """LPIPS of each frame pair of uint8 `[n, H, W, 3]` arrays, as float64 `[n]` on the CPU."""
    a_u8, b_u8 = torch.as_tensor(a_u8), torch.as_tensor(b_u8)
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(a_u8), batch):
        xa = frames_to_lpips_input(a_u8[i : i + batch], device)
        xb = frames_to_lpips_input(b_u8[i : i + batch], device)
        out.append(model(xa, xb).double().cpu())
    return torch.cat(out)
