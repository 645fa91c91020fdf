"""`CausalVideoTokenizer` and `load_video_tokenizer`: the interface the rest of the project uses.

Video is float in [-1, 1], `[B, 3, T, H, W]`, with `T = 1 + k·t` (t = temporal compression) and H, W
multiples of the spatial compression. DV tokenizers encode to int64 indices `[B, 1+k, H/s, W/s]` in
[0, 64000); CV tokenizers to latents `[B, C, 1+k, H/s, W/s]`. Frame 0 is encoded alone (causal), so an image
is the T = 1 case.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cosmos_nemo.io.atomic import atomic_path
from cosmos_nemo.io.tensors import save_tensors

from .configs import REGISTRY, TokenizerConfig, resolve_name
from .loading import (
    CONFIG_FILE,
    SAFETENSORS_FILES,
    LoadReport,
    TokenizerNotAvailableError,
    config_for_folder,
    download_from_hub,
    load_strict,
    local_candidates,
    read_state_dict,
    weight_files,
)
from .network import TokenizerDecoder, TokenizerEncoder

log = logging.getLogger(__name__)

RANDOM_INIT_SEED = 0


class VideoShapeError(ValueError):
    """A video or latent does not fit the tokenizer's compression; the message shows the arithmetic."""


class CausalVideoTokenizer(nn.Module):
    """A Cosmos causal video tokenizer: `encoder` and `decoder` hold the two released halves."""

    def __init__(self, config: TokenizerConfig):
        super().__init__()
        self.config = config
        self.encoder = TokenizerEncoder(config)
        self.decoder = TokenizerDecoder(config)
        self.load_reports: list[LoadReport] = []

    # --- properties -------------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def discrete(self) -> bool:
        return self.config.discrete

    @property
    def compression(self) -> tuple[int, int, int]:
        return self.config.compression

    @property
    def vocab_size(self) -> int:
        """64,000 for the FSQ DV tokenizers; 0 for continuous ones."""
        return self.config.vocab_size

    @property
    def latent_channels(self) -> int:
        return self.config.latent_dim

    @property
    def dtype(self) -> torch.dtype:
        return self.encoder.quant_conv.conv3d.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.encoder.quant_conv.conv3d.weight.device

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        """The latent grid (t, h, w) of a `frames × height × width` video; raises with the arithmetic if invalid."""
        t, s, _ = self.compression
        problems = []
        if frames < 1 or (frames - 1) % t:
            k = max(0, (frames - 1) // t)
            problems.append(
                f"frames={frames} is not 1 + k·{t} (nearest valid: {1 + k * t} or {1 + (k + 1) * t})"
            )
        for what, n in (("height", height), ("width", width)):
            if n < s or n % s:
                problems.append(f"{what}={n} is not a positive multiple of {s}")
        if problems:
            raise VideoShapeError(f"{self.name} (compression {t}x{s}x{s}): " + "; ".join(problems))
        return (1 + (frames - 1) // t, height // s, width // s)

    # --- encode / decode ------------------------------------------------------------------------------------

    def _check_video(self, video: torch.Tensor, check_frames: bool = True) -> torch.Tensor:
        if not isinstance(video, torch.Tensor) or video.ndim != 5 or video.shape[1] != 3:
            shape = tuple(video.shape) if isinstance(video, torch.Tensor) else type(video).__name__
            raise VideoShapeError(f"expected video [B, 3, T, H, W] in [-1, 1], got {shape}")
        self.latent_shape(1 + self.compression[0] if not check_frames else video.shape[2], *video.shape[3:])
        return video.to(device=self.device, dtype=self.dtype)

    @staticmethod
    def _windows(total: int, window: int | None) -> list[tuple[int, int]]:
        if window is None or window >= total:
            return [(0, total)]
        return [(i, min(i + window, total)) for i in range(0, total, window)]

    def _check_window(self, temporal_window: int | None) -> None:
        t = self.compression[0]
        if temporal_window is not None and (temporal_window < 1 or (temporal_window - 1) % t):
            raise VideoShapeError(f"temporal_window={temporal_window} must be 1 + k·{t}")

    @torch.no_grad()
    def encode(self, video: torch.Tensor, temporal_window: int | None = None) -> torch.Tensor:
        """DV: int64 indices `[B, t, h, w]`; CV: latents `[B, C, t, h, w]`.

        With `temporal_window` (1 + k·t frames), the video is cut into consecutive windows that are encoded
        independently and concatenated along latent time, as the reference chunks long videos; each window,
        including the last, must itself be 1 + k·t frames.
        """
        video = self._check_video(video, check_frames=temporal_window is None)
        self._check_window(temporal_window)
        outs = []
        for a, b in self._windows(video.shape[2], temporal_window):
            chunk = video[:, :, a:b]
            try:
                self.latent_shape(*chunk.shape[2:])
            except VideoShapeError as e:
                raise VideoShapeError(
                    f"temporal window [{a}, {b}) of a {video.shape[2]}-frame video: {e}; with temporal_window="
                    f"{temporal_window} the frame count must be a sum of windows of 1 + k·{self.compression[0]} frames"
                ) from None
            out = self.encoder(chunk)
            outs.append(out[0].to(torch.int64) if self.discrete else out[0])
        return torch.cat(outs, dim=1 if self.discrete else 2)

    @torch.no_grad()
    def encode_with_codes(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """DV only: `(indices int64 [B,t,h,w], quantized codes [B,6,t,h,w])`."""
        if not self.discrete:
            raise TypeError(f"{self.name} is continuous; use encode()")
        indices, codes, _ = self.encoder(self._check_video(video))
        return indices.to(torch.int64), codes

    @torch.no_grad()
    def decode(self, x: torch.Tensor, temporal_window: int | None = None) -> torch.Tensor:
        """DV: integer indices `[B, t, h, w]` (or float codes `[B, 6, t, h, w]`); CV: latents `[B, C, t, h, w]`.

        Returns video `[B, 3, 1 + (t−1)·tc, H, W]`, nominally in [-1, 1] (not clamped, as the reference).
        `temporal_window` is in *pixel* frames, matching `encode`.
        """
        self._check_window(temporal_window)
        time_dim = 1 if (self.discrete and not x.dtype.is_floating_point) else 2
        if self.discrete and not x.dtype.is_floating_point:
            if x.ndim != 4:
                raise VideoShapeError(f"expected DV indices [B, t, h, w], got {tuple(x.shape)}")
            if x.numel() and (int(x.min()) < 0 or int(x.max()) >= self.vocab_size):
                raise ValueError(f"indices must lie in [0, {self.vocab_size}), got [{int(x.min())}, {int(x.max())}]")
        elif x.ndim != 5 or x.shape[1] != self.latent_channels:
            raise VideoShapeError(
                f"expected {'DV codes' if self.discrete else 'CV latents'} [B, {self.latent_channels}, t, h, w], "
                f"got {tuple(x.shape)}"
            )
        x = x.to(self.device)
        latent_window = None if temporal_window is None else 1 + (temporal_window - 1) // self.compression[0]
        outs = []
        for a, b in self._windows(x.shape[time_dim], latent_window):
            chunk = x.narrow(time_dim, a, b - a)
            if time_dim == 1:
                outs.append(self.decoder(chunk))
            elif self.discrete:
                outs.append(self.decoder.decode_codes(chunk.to(self.dtype)))
            else:
                outs.append(self.decoder(chunk.to(self.dtype)))
        return torch.cat(outs, dim=2)

    @torch.no_grad()
    def autoencode(self, video: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(video))

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """Differentiable reconstruction for training: FSQ rounding passes gradients straight through."""
        video = self._check_video(video)
        if self.discrete:
            _, codes, _ = self.encoder(video)
            return self.decoder.decode_codes(codes)
        return self.decoder(self.encoder(video)[0])

    @torch.no_grad()
    def reconstruct_frames(self, frames: np.ndarray, temporal_window: int = 17) -> np.ndarray:
        """uint8 `[T, H, W, 3]` → reconstructed uint8 `[T, H, W, 3]`, the way NVIDIA's `video_cli` does it.

        Windows of `temporal_window` frames are processed independently. Each is zero-padded spatially
        (centred) to a multiple of 16 (and of the spatial compression) and edge-padded in time to `1 + 8k`
        frames (and `1 + k·t`), mapped to [-1, 1] in the model dtype, autoencoded, mapped back with
        `((x+1)/2).clamp(0,1)·255 + 0.5` truncated to uint8, and cropped.
        """
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise VideoShapeError(f"expected uint8 frames [T, H, W, 3], got {frames.dtype} {frames.shape}")
        t_c, s, _ = self.compression
        sp = math.lcm(16, s)
        tp = math.lcm(8, t_c)
        out = []
        for a in range(0, frames.shape[0], temporal_window):
            clip = frames[a : a + temporal_window]
            n, h, w = clip.shape[:3]
            ph, pw = (sp - h % sp) % sp, (sp - w % sp) % sp
            pt = (tp - (n - 1) % tp) % tp
            padded = np.pad(clip, ((0, 0), (ph >> 1, ph - (ph >> 1)), (pw >> 1, pw - (pw >> 1)), (0, 0)))
            padded = np.pad(padded, ((pt >> 1, pt - (pt >> 1)), (0, 0), (0, 0), (0, 0)), mode="edge")
            x = torch.from_numpy(padded).permute(3, 0, 1, 2)[None].float() / 255.0 * 2 - 1
            y = self.autoencode(x.to(self.dtype))
            y = ((y.float() + 1) / 2).clamp(0, 1) * 255 + 0.5
            y = y.to(torch.uint8)[0].permute(1, 2, 3, 0).cpu().numpy()
            out.append(y[pt >> 1 : (pt >> 1) + n, ph >> 1 : (ph >> 1) + h, pw >> 1 : (pw >> 1) + w])
        return np.concatenate(out, axis=0)

    # --- weights --------------------------------------------------------------------------------------------

    def load_halves(self, encoder_sd, decoder_sd, source: str, files: tuple | None = None) -> None:
        """Load both halves strictly; `files` (the encoder's and decoder's weight files) name the file in an
        error, else `source`."""
        labels = [str(f) for f in files] if files else [f"{source} (encoder)", f"{source} (decoder)"]
        self.load_reports = [
            load_strict(self.encoder, encoder_sd, labels[0]),
            load_strict(self.decoder, decoder_sd, labels[1]),
        ]
        for r in self.load_reports:
            log.info(r.summary())

    def save(self, folder: str | os.PathLike) -> Path:
        """Write `encoder.safetensors`, `decoder.safetensors` (the released key layout, buffers included) and
        `tokenizer_config.json`; files appear under their final names only when complete."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        items = [
            (SAFETENSORS_FILES[0], self.encoder.state_dict()),
            (SAFETENSORS_FILES[1], self.decoder.state_dict()),
        ]
        for name, sd in items:
            save_tensors(folder / name, sd, metadata={"format": "pt", "tokenizer": self.name})
        with atomic_path(folder / CONFIG_FILE) as tmp:
            self.config.to_json(tmp)
        return folder


def _build(cfg: TokenizerConfig, device, dtype, seed: int | None) -> CausalVideoTokenizer:
    if seed is None:
        model = CausalVideoTokenizer(cfg)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = CausalVideoTokenizer(cfg)
    return model.to(device=device, dtype=dtype).eval()


def _from_folder(folder: Path, device, dtype, config) -> CausalVideoTokenizer:
    files = weight_files(folder)
    if files is None:
        raise FileNotFoundError(
            f"{folder} holds no tokenizer weights: expected {SAFETENSORS_FILES[0]} + {SAFETENSORS_FILES[1]} "
            f"(written by `cosmos-nemo train-tokenizer` or CausalVideoTokenizer.save) or encoder.jit + decoder.jit "
            f"(NVIDIA's hub files)"
        )
    enc_sd, dec_sd = read_state_dict(files[0]), read_state_dict(files[1])
    cfg = config_for_folder(folder, enc_sd, dec_sd, config)
    model = CausalVideoTokenizer(cfg)
    model.load_halves(enc_sd, dec_sd, str(folder), files=tuple(files))
    return model.to(device=device, dtype=dtype).eval()


def load_video_tokenizer(
    name_or_path: str | os.PathLike,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    config: TokenizerConfig | str | None = None,
    seed: int = RANDOM_INIT_SEED,
) -> CausalVideoTokenizer:
    """A tokenizer by registry name, hub id or local folder.

    - a folder: our safetensors + `tokenizer_config.json`, or NVIDIA's `encoder.jit`/`decoder.jit` (config from
      `config`, the folder name, or the tensor shapes);
    - `tiny` / `tiny-cv`: randomly initialised with a fixed `seed` (train it with `cosmos-nemo train-tokenizer`
      and pass the output folder for trained weights);
    - a released name or hub id (`Cosmos-0.1-Tokenizer-DV4x8x8`, `nvidia/Cosmos-0.1-Tokenizer-DV4x8x8`): from
      `$COSMOS_NEMO_CHECKPOINTS/<name>`, `./checkpoints/<name>`, or downloaded with huggingface_hub.
    """
    path = Path(name_or_path)
    if path.is_dir():
        return _from_folder(path, device, dtype, config)
    if path.is_file():
        raise FileNotFoundError(
            f"{path} is a file; pass the folder that holds encoder/decoder weights ({path.parent})"
        )
    cfg = resolve_name(str(name_or_path))
    if cfg is None:
        raise FileNotFoundError(
            f"{name_or_path!r} is neither a folder nor a known tokenizer; known names: {', '.join(sorted(REGISTRY))} "
            f"(or their hub ids, e.g. nvidia/Cosmos-0.1-Tokenizer-DV4x8x8)"
        )
    if isinstance(config, TokenizerConfig):
        cfg = config
    if cfg.hub_id is None:
        return _build(cfg, device, dtype, seed)
    for candidate in local_candidates(cfg.hub_id):
        if weight_files(candidate) is not None:
            return _from_folder(candidate, device, dtype, cfg)
    folder = download_from_hub(cfg.hub_id)
    return _from_folder(folder, device, dtype, cfg)


__all__ = [
    "CausalVideoTokenizer",
    "TokenizerNotAvailableError",
    "VideoShapeError",
    "load_video_tokenizer",
]
