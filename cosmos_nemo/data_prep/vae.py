"""The two VAEs `prepare latents` encodes with, behind one interface (diffusion_models.md §2).

Both take uint8 clips `[B, T, H, W, 3]`, map them to `x / 127.5 - 1` (the Cosmos diffusion models'
`_normalize_video_databatch_inplace`), encode, and return the clean, normalised latent the DiT trains on,
float32 `[B, C, t, h, w]`:

- **Wan2.1** (`--vae wan2.1`; Predict2 / Predict2.5): diffusers' `AutoencoderKLWan` (not re-implemented
  here), loaded from a diffusers folder (`config.json` + weights, or its `vae/` subfolder) or the hub id
  `Wan-AI/Wan2.1-T2V-1.3B-Diffusers` (subfolder `vae`). 4x8x8 compression, 16 channels. The latent is the
  posterior **mean** (deterministic), normalised per channel with the fixed 16 means/stds of
  `cosmos_predict2/tokenizers/tokenizer.py` (`WAN21_LATENTS_MEAN/STD`): `z = (mu - mean) / std`, then
  times `latent_scale` (Predict2's sigma_data 1, a no-op; Predict2.5 uses z as is).
- **Cosmos CV** (`--vae cosmos-cv`; Predict1, `Cosmos-Tokenize1-CV8x8x8-720p`): the continuous Cosmos
  tokenizer of `cosmos_nemo.tokenizers` (NVIDIA's `encoder.jit` or our safetensors), with the per-channel,
  per-latent-frame `mean_std.pt` normalisation: `z = (E(x) - mean[c, t]) / std[c, t]`, then `x0 = z *
  latent_scale` (sigma_data 0.5 for Predict1). `mean_std.pt` holds `(mean, std)`, each `C x T_max` values
  (channel-major, as `view(1, C, -1, 1, 1)` reads them); latent frame t uses column t, so a clip may have
  at most `T_max` latent frames (16 for the released 121-frame chunk: only that chunk length is what the
  model was trained on, predict1#6). It is read with `torch.load(weights_only=True)` (tensors only) or
  from a `mean_std.safetensors` with `mean` and `std`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from cosmos_nemo.data_prep.engine import PrepareError

VAE_KINDS = ("wan2.1", "cosmos-cv")
WAN21_HUB_ID = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
COSMOS_CV_DEFAULT = "nvidia/Cosmos-Tokenize1-CV8x8x8-720p"
DEFAULT_PATHS = {"wan2.1": WAN21_HUB_ID, "cosmos-cv": COSMOS_CV_DEFAULT}
# The reference's clip lengths: Predict2/2.5 train on 93 frames (24 latent frames), Predict1 on one 121-frame chunk.
DEFAULT_FRAMES = {"wan2.1": 93, "cosmos-cv": 121}
# sigma_data the reference multiplies the normalised latent by before training (Predict1 0.5; Predict2 1).
DEFAULT_SCALE = {"wan2.1": 1.0, "cosmos-cv": 0.5}

# cosmos_predict2/tokenizers/tokenizer.py (Wan2pt1VAEInterface): the fixed per-channel statistics.
WAN21_LATENTS_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                      0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
WAN21_LATENTS_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                     3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)


def frames_to_vae_input(clips: np.ndarray | list[np.ndarray], dtype=torch.float32, device="cpu") -> torch.Tensor:
    """uint8 `[B, T, H, W, 3]` -> `[B, 3, T, H, W]` in [-1, 1] as `x / 127.5 - 1` (computed in float32)."""
    arr = np.stack(clips) if isinstance(clips, list) else clips
    x = torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 4, 1, 2, 3).float()
    return (x / 127.5 - 1.0).to(device=device, dtype=dtype)


def valid_frame_counts(frames: int, t: int) -> str:
    k = max(0, (frames - 1) // t)
    lower, upper = 1 + k * t, 1 + (k + 1) * t
    return f"{lower} or {upper}" if lower >= 1 and lower != frames else f"{upper}"


def identity_of(spec: str) -> dict:
    """A cheap identity of weights: the name, or a folder's (recursive) file names, sizes and mtimes."""
    path = Path(spec)
    if path.is_file():
        path = path.parent
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        return {"folder": str(path.resolve()),
                "files": [[p.relative_to(path).as_posix(), p.stat().st_size, p.stat().st_mtime_ns] for p in files]}
    return {"name": spec}


class LatentEncoder:
    """uint8 clips -> normalised latents for one VAE (see the module docstring)."""

    kind: str
    name: str
    compression: tuple[int, int, int]
    channels: int
    latent_scale: float
    device: torch.device
    dtype: torch.dtype

    def check_clip(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        """The latent grid of a `frames x height x width` clip, or a PrepareError that says how to fix it."""
        t, s, _ = self.compression
        problems = []
        if frames < 1 or (frames - 1) % t:
            problems.append(f"--num_frames {frames} is not 1 + k*{t} for {self.name}'s temporal compression {t}; "
                            f"use {valid_frame_counts(frames, t)}")
        for flag, n in (("height", height), ("width", width)):
            if n < s or n % s:
                near = max(s, round(n / s) * s)
                problems.append(f"--video_size {flag} {n} is not a multiple of the spatial compression {s}; use {near}")
        if problems:
            raise PrepareError("the clip does not fit the VAE:\n  " + "\n  ".join(problems))
        return (1 + (frames - 1) // t, height // s, width // s)

    def info(self) -> dict:
        raise NotImplementedError

    def encode(self, clips: np.ndarray) -> torch.Tensor:
        raise NotImplementedError


# ------------------------------------------------------------------------------------------------------
# Wan2.1 through diffusers


def import_autoencoder_kl_wan():
    """diffusers' `AutoencoderKLWan`. diffusers imports torchvision, and a torchvision wheel built for
    another torch fails to import (`operator torchvision::nms does not exist`); the VAE needs none of its
    C++ ops, so such a torchvision is registered as a bare namespace package (its pure-Python modules stay
    importable) before diffusers is imported. A working torchvision is used as is."""
    from cosmos_nemo.compat import torchvision_namespace

    torchvision_namespace()
    try:
        from diffusers import AutoencoderKLWan
    except ImportError as e:
        raise PrepareError(f"--vae wan2.1 needs the `diffusers` package (pip install diffusers): {e}") from None
    return AutoencoderKLWan


def _wan_source(spec: str) -> tuple[str, Optional[str]]:
    path = Path(spec)
    if path.is_dir():
        if (path / "config.json").is_file():
            return str(path), None
        if (path / "vae" / "config.json").is_file():
            return str(path), "vae"
        raise PrepareError(f"--vae-path {path} holds no diffusers AutoencoderKLWan (no config.json there or in vae/)")
    if path.exists():
        raise PrepareError(f"--vae-path {path} is a file; give the diffusers folder (config.json + weights)")
    return spec, "vae"


class WanLatentEncoder(LatentEncoder):
    kind = "wan2.1"

    def __init__(self, spec: str, device="cpu", dtype=torch.float32, latent_scale: float | None = None):
        AutoencoderKLWan = import_autoencoder_kl_wan()
        source, subfolder = _wan_source(spec)
        from cosmos_nemo.io.tensors import TensorFileError, check_safetensors_folder

        try:
            check_safetensors_folder(Path(source) / (subfolder or ""))
            vae = AutoencoderKLWan.from_pretrained(source, subfolder=subfolder, torch_dtype=dtype)
        except TensorFileError as e:
            raise PrepareError(f"cannot load the Wan2.1 VAE from {spec!r}: {e}") from None
        except (OSError, ValueError, EnvironmentError) as e:
            raise PrepareError(
                f"cannot load the Wan2.1 VAE from {spec!r}: {str(e).splitlines()[0] if str(e) else type(e).__name__}\n"
                f"Download it where the hub is reachable (`huggingface-cli download {WAN21_HUB_ID} --include 'vae/*' "
                f"--local-dir checkpoints/Wan2.1-T2V-1.3B-Diffusers`) and pass --vae-path with that folder."
            ) from None
        cfg = vae.config
        if int(cfg.z_dim) != len(WAN21_LATENTS_MEAN):
            raise PrepareError(f"{spec}: an AutoencoderKLWan with {cfg.z_dim} latent channels is not Wan2.1 (16 channels; "
                               "Wan2.2's 48-channel VAE is not a Cosmos Predict2 VAE)")
        self.vae = vae.to(device).eval()
        self.name = Path(spec).name if Path(spec).is_dir() else spec
        self.spec = spec
        t = 2 ** sum(bool(x) for x in cfg.temperal_downsample)
        s = 2 ** len(cfg.temperal_downsample)
        self.compression = (t, s, s)
        self.channels = int(cfg.z_dim)
        self.latent_scale = float(DEFAULT_SCALE[self.kind] if latent_scale is None else latent_scale)
        self.device, self.dtype = torch.device(device), dtype
        self.mean = torch.tensor(WAN21_LATENTS_MEAN, dtype=torch.float32).view(1, -1, 1, 1, 1)
        self.inv_std = 1.0 / torch.tensor(WAN21_LATENTS_STD, dtype=torch.float32).view(1, -1, 1, 1, 1)

    def info(self) -> dict:
        return {"name": "wan2.1", "source": self.spec, "class": "diffusers.AutoencoderKLWan", "compression": list(self.compression),
                "latent": "posterior mean", "input": "x/127.5-1",
                "normalization": {"kind": "per_channel", "mean": list(WAN21_LATENTS_MEAN), "std": list(WAN21_LATENTS_STD)},
                "scale": self.latent_scale}

    @torch.no_grad()
    def encode(self, clips: np.ndarray) -> torch.Tensor:
        x = frames_to_vae_input(clips, dtype=self.dtype, device=self.device)
        mu = self.vae.encode(x).latent_dist.mean.float().cpu()
        return (mu - self.mean) * self.inv_std * self.latent_scale


# ------------------------------------------------------------------------------------------------------
# Cosmos continuous tokenizer (CV8x8x8) + mean_std


def read_mean_std(path: Path, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`(mean, std)` as float32 `[C, T_max]` from `mean_std.pt` (weights-only torch file) or `.safetensors`."""
    if not path.is_file():
        raise PrepareError(f"no latent statistics at {path}")
    try:
        if path.suffix == ".safetensors":
            from cosmos_nemo.io.tensors import read_safetensors

            t = read_safetensors(path, required=("mean", "std"))
            mean, std = t["mean"], t["std"]
        else:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
            if isinstance(obj, dict):
                mean, std = obj["mean"], obj["std"]
            else:
                mean, std = obj
    except PrepareError:
        raise
    except Exception as e:
        raise PrepareError(f"{path}: not a latent statistics file ((mean, std) tensors, or a dict / safetensors with "
                           f"'mean' and 'std'): {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    mean, std = torch.as_tensor(mean).float().flatten(), torch.as_tensor(std).float().flatten()
    if mean.numel() != std.numel() or mean.numel() % channels or mean.numel() == 0:
        raise PrepareError(f"{path}: mean has {mean.numel()} values and std {std.numel()}; each must be a multiple of the "
                           f"{channels} latent channels (C x T_max)")
    if not bool((std > 0).all()):
        raise PrepareError(f"{path}: std has values <= 0")
    return mean.view(channels, -1), std.view(channels, -1)


def _cosmos_folder(spec: str) -> Path | None:
    """The folder a tokenizer spec names (a folder, or a released name found locally), else None."""
    from cosmos_nemo.tokenizers.configs import resolve_name
    from cosmos_nemo.tokenizers.loading import local_candidates, weight_files

    path = Path(spec)
    if path.is_file():
        path = path.parent
    if path.is_dir():
        return path
    cfg = resolve_name(spec)
    if cfg is not None and cfg.hub_id:
        for candidate in local_candidates(cfg.hub_id):
            if weight_files(candidate) is not None:
                return candidate
    return None


def _hub_mean_std(spec: str) -> Path | None:
    """`mean_std.pt` of a released tokenizer from the hub (the tokenizer loader fetches only the .jit files)."""
    from cosmos_nemo.tokenizers.configs import resolve_name

    cfg = resolve_name(spec)
    if cfg is None or not cfg.hub_id:
        return None
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(cfg.hub_id, "mean_std.pt"))
    except Exception:  # offline, no such file, gated: the caller's message says what to pass
        return None


class CosmosCVLatentEncoder(LatentEncoder):
    kind = "cosmos-cv"

    def __init__(self, spec: str, device="cpu", dtype=torch.float32, latent_scale: float | None = None,
                 mean_std: str | None = None):
        from cosmos_nemo.tokenizers import load_video_tokenizer

        folder = _cosmos_folder(spec)
        try:
            tok = load_video_tokenizer(str(folder) if folder is not None else spec, device=device, dtype=dtype)
        except (FileNotFoundError, OSError, ValueError, RuntimeError) as e:
            raise PrepareError(f"cannot load the Cosmos tokenizer {spec!r}: {e}") from None
        if tok.discrete:
            raise PrepareError(f"{tok.name} is a discrete (DV) tokenizer; the DiT needs a continuous one (CV), e.g. "
                               f"{COSMOS_CV_DEFAULT}")
        stats = Path(mean_std) if mean_std else None
        if stats is None and folder is not None:
            for name in ("mean_std.pt", "mean_std.safetensors"):
                if (folder / name).is_file():
                    stats = folder / name
                    break
        if stats is None and folder is None:
            stats = _hub_mean_std(spec)
        if stats is None:
            where = f"in {folder}" if folder is not None else f"for {spec}"
            raise PrepareError(f"no mean_std.pt {where}: the Cosmos CV latents are normalised per channel and latent "
                               "frame with the tokenizer's mean_std.pt (shipped with Cosmos-Tokenize1-CV8x8x8-720p); "
                               "pass --mean-std PATH")
        self.tok = tok
        self.spec, self.name = spec, tok.name
        self.compression = tuple(int(c) for c in tok.compression)
        self.channels = int(tok.latent_channels)
        self.mean, self.std = read_mean_std(stats, self.channels)
        self.stats_path = str(stats)
        self.latent_scale = float(DEFAULT_SCALE[self.kind] if latent_scale is None else latent_scale)
        self.device, self.dtype = torch.device(device), dtype

    def check_clip(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        grid = super().check_clip(frames, height, width)
        t_max = int(self.mean.shape[1])
        if grid[0] > t_max:
            t = self.compression[0]
            raise PrepareError(f"--num_frames {frames} gives {grid[0]} latent frames, but {self.stats_path} has statistics "
                               f"for {t_max} (the tokenizer's chunk of {1 + (t_max - 1) * t} frames); use --num_frames "
                               f"<= {1 + (t_max - 1) * t}")
        return grid

    def info(self) -> dict:
        return {"name": self.name, "source": self.spec, "compression": list(self.compression), "input": "x/127.5-1",
                "normalization": {"kind": "per_channel_per_frame", "file": Path(self.stats_path).name,
                                  "frames": int(self.mean.shape[1])},
                "scale": self.latent_scale}

    @torch.no_grad()
    def encode(self, clips: np.ndarray) -> torch.Tensor:
        x = frames_to_vae_input(clips, dtype=self.dtype, device=self.device)
        z = self.tok.encode(x).float().cpu()
        t = z.shape[2]
        mean = self.mean[:, :t].reshape(1, self.channels, t, 1, 1)
        std = self.std[:, :t].reshape(1, self.channels, t, 1, 1)
        return (z - mean) / std * self.latent_scale


def load_latent_encoder(kind: str, spec: str | None, device="cpu", dtype=torch.float32,
                        latent_scale: float | None = None, mean_std: str | None = None) -> LatentEncoder:
    if kind not in VAE_KINDS:
        raise PrepareError(f"--vae must be one of {VAE_KINDS}, got {kind!r}")
    spec = spec or DEFAULT_PATHS[kind]
    if kind == "wan2.1":
        if mean_std:
            raise PrepareError("--mean-std is for --vae cosmos-cv; Wan2.1 uses its fixed 16 means/stds")
        return WanLatentEncoder(spec, device=device, dtype=dtype, latent_scale=latent_scale)
    return CosmosCVLatentEncoder(spec, device=device, dtype=dtype, latent_scale=latent_scale, mean_std=mean_std)


def vae_identity(kind: str, spec: str | None, mean_std: str | None) -> dict:
    spec = spec or DEFAULT_PATHS[kind]
    out = {"kind": kind, "weights": identity_of(spec)}
    if mean_std:
        out["mean_std"] = identity_of(mean_std) if not Path(mean_std).is_file() else [
            str(Path(mean_std).resolve()), os.stat(mean_std).st_size, os.stat(mean_std).st_mtime_ns]
    return out


__all__ = ["COSMOS_CV_DEFAULT", "DEFAULT_FRAMES", "DEFAULT_SCALE", "VAE_KINDS", "WAN21_HUB_ID", "WAN21_LATENTS_MEAN",
           "WAN21_LATENTS_STD", "CosmosCVLatentEncoder", "LatentEncoder", "WanLatentEncoder", "frames_to_vae_input",
           "decode_latents", "import_autoencoder_kl_wan", "load_latent_encoder", "read_mean_std", "vae_identity"]


# ------------------------------------------------------------------------------------------------------
# Decoding (generation): the inverse of `encode`'s normalisation, then the VAE's decoder


@torch.no_grad()
def decode_latents(encoder: LatentEncoder, latents: torch.Tensor) -> np.ndarray:
    """Normalised latents `[B, C, t, h, w]` (as `encode` returns them, or as the DiT generates them) ->
    uint8 clips `[B, T, H, W, 3]`: the normalisation undone (Wan2.1: `mu = z / scale * std + mean`; Cosmos
    CV: `E = z / scale * std[c, t] + mean[c, t]`), decoded, and mapped from [-1, 1] back to uint8 with the
    reference's `(x + 1) / 2` clamp and rounding."""
    z = latents.float().cpu() / encoder.latent_scale
    if isinstance(encoder, WanLatentEncoder):
        mu = z / encoder.inv_std + encoder.mean
        x = encoder.vae.decode(mu.to(encoder.device, encoder.dtype)).sample
    elif isinstance(encoder, CosmosCVLatentEncoder):
        t = z.shape[2]
        if t > encoder.mean.shape[1]:
            raise PrepareError(f"{t} latent frames, but {encoder.stats_path} has statistics for {encoder.mean.shape[1]}")
        mean = encoder.mean[:, :t].reshape(1, encoder.channels, t, 1, 1)
        std = encoder.std[:, :t].reshape(1, encoder.channels, t, 1, 1)
        x = encoder.tok.decode((z * std + mean).to(encoder.device, encoder.dtype))
    else:
        raise TypeError(f"no decoder for {type(encoder).__name__}")
    x = ((x.float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 4, 1).contiguous().cpu().numpy()
