"""Fitting a causal video tokenizer to a folder of videos (`cosmos-nemo train-tokenizer`).

Clips of `num_frames` (1 + k·t) frames are cut from every decodable video, resized (short side, antialiased)
and centre-cropped to `height × width`. Whole videos are held out for evaluation, so held-out PSNR measures
generalisation to unseen footage. Clips are optionally augmented (colour permutation/inversion, flips). The
loss is a pixel reconstruction loss (L1 + MSE) through the real
encoder → FSQ (straight-through rounding) → decoder path. Training runs in an exactly equivalent
orthonormal-Haar parametrization (`orthonormal_haar`), which is what makes a small tokenizer learn small
objects on a CPU budget; weights are saved in the reference layout. Reconstruction PSNR on the held-out clips is
measured with the real discrete round trip (`encode` → `decode`) on uint8 frames, before and after training.

The output folder holds `encoder.safetensors`, `decoder.safetensors`, `tokenizer_config.json` and
`training_report.json`, and for a continuous tokenizer `mean_std.safetensors`: the per-channel, per-latent-frame
mean and std of its latents over the training clips (`mean`, `std`: [C, T]), what `mean_std.pt` is to a released
CV tokenizer, which `prepare latents` and `generate diffusion` normalise with. It is assembled in a temporary
folder and renamed into place when complete.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cosmos_nemo.io.atomic import atomic_dir
from cosmos_nemo.io.video import VideoDecodeError, list_videos, read_frames

from .api import CausalVideoTokenizer, load_video_tokenizer
from .configs import resolve_name

log = logging.getLogger(__name__)

STATS_FILE = "mean_std.safetensors"


@dataclass
class TrainTokenizerConfig:
    data: str
    output: str
    tokenizer: str = "tiny"  # registry name, hub id or folder to start from (fine-tuning when it has weights)
    num_frames: int = 17
    height: int = 64
    width: int = 64
    clips_per_video: int = 4  # at most this many clips from the start of each video
    clip_stride: int | None = None  # frames between clip starts (None: num_frames, non-overlapping clips)
    motion_weight: float = 0.0  # extra loss weight on pixels that change between frames (small moving objects)
    heldout_videos: int = 0  # 0: about 20 % of the videos, at least 1
    steps: int = 300
    batch_size: int = 4
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0
    time_limit_s: float | None = None  # stop early (still evaluating and saving) after this many seconds
    threads: int | None = None
    augment: bool = False  # colour permutation/inversion and flips; off by default (see augment_clip)
    overwrite: bool = False
    progress: bool = True


@dataclass
class TrainTokenizerResult:
    output: str
    tokenizer: str
    train_clips: int
    heldout_clips: int
    steps_done: int
    seconds: float
    psnr_before: float
    psnr_after: float
    final_loss: float
    skipped: list[dict] = field(default_factory=list)


def _resize_crop(frames: np.ndarray, height: int, width: int) -> torch.Tensor:
    """uint8 `[T, H, W, 3]` → float `[3, T, height, width]` in [-1, 1]: short-side resize (antialiased
    bilinear) so the clip covers the target, then a centre crop."""
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()  # T, 3, H, W
    h, w = x.shape[-2:]
    scale = max(height / h, width / w)
    nh, nw = max(height, round(h * scale)), max(width, round(w * scale))
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
    top, left = (nh - height) // 2, (nw - width) // 2
    x = x[:, :, top : top + height, left : left + width]
    x = x.clamp(0, 255) / 127.5 - 1.0
    return x.permute(1, 0, 2, 3).contiguous()


def load_clips(
    folder: str | os.PathLike, num_frames: int, height: int, width: int, clips_per_video: int,
    clip_stride: int | None = None,
) -> tuple[list[list[torch.Tensor]], list[Path], list[dict]]:
    """Per usable video, its clips `[3, num_frames, height, width]` (starting every `clip_stride` frames, by
    default `num_frames`: non-overlapping); plus the videos used and those skipped."""
    stride = clip_stride or num_frames
    videos = list_videos(folder, recursive=True)
    if not videos:
        raise FileNotFoundError(f"no video files under {folder} (looked for {', '.join(('.mp4', '.mov', '.mkv', '…'))})")
    per_video, used, skipped = [], [], []
    for path in videos:
        try:
            frames = read_frames(path, 0, num_frames + stride * (clips_per_video - 1))
        except VideoDecodeError as e:
            skipped.append({"video": str(path), "reason": str(e)})
            continue
        n = min(clips_per_video, (len(frames) - num_frames) // stride + 1) if len(frames) >= num_frames else 0
        if n == 0:
            skipped.append({"video": str(path), "reason": f"{len(frames)} frames, fewer than num_frames={num_frames}"})
            continue
        per_video.append([_resize_crop(frames[i * stride : i * stride + num_frames], height, width) for i in range(n)])
        used.append(path)
    return per_video, used, skipped


def split_heldout(per_video: list[list[torch.Tensor]], heldout_videos: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Hold out the last videos (whole); with a single video, hold out its last clip instead."""
    if len(per_video) >= 2:
        k = heldout_videos or max(1, round(0.2 * len(per_video)))
        if k >= len(per_video):
            raise ValueError(f"heldout_videos={k} leaves no training video out of {len(per_video)}")
        train = [c for v in per_video[:-k] for c in v]
        held = [c for v in per_video[-k:] for c in v]
        return train, held
    clips = per_video[0] if per_video else []
    if len(clips) < 2:
        raise ValueError(
            "need at least two clips to train and evaluate on held-out data: give more videos or longer ones "
            "(or lower --num-frames)"
        )
    return clips[:-1], clips[-1:]


def to_uint8(video: torch.Tensor) -> torch.Tensor:
    """[-1, 1] → uint8 values as the reference writes reconstructions: ((x+1)/2).clamp(0,1)·255 + 0.5, truncated."""
    return (((video.float() + 1) / 2).clamp(0, 1) * 255 + 0.5).to(torch.uint8)


def psnr_uint8(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR of two uint8 videos from one global MSE (TokenBench's per-video definition)."""
    mse = (a.double() - b.double()).pow(2).mean().item()
    return 20 * math.log10(255.0 / (math.sqrt(mse) + float(np.finfo(np.float32).eps)))


@torch.no_grad()
def heldout_psnr(model: CausalVideoTokenizer, clips: list[torch.Tensor], batch_size: int = 4) -> float:
    """Mean over clips of the PSNR of the real round trip encode → decode, on uint8 frames."""
    was_training = model.training
    model.eval()
    scores = []
    for i in range(0, len(clips), batch_size):
        x = torch.stack(clips[i : i + batch_size])
        rec = model.decode(model.encode(x))
        ref_u8, rec_u8 = to_uint8(x), to_uint8(rec)
        scores.extend(psnr_uint8(ref_u8[j], rec_u8[j]) for j in range(len(x)))
    model.train(was_training)
    return float(np.mean(scores))


def augment_clip(clip: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Random RGB permutation, colour inversion (x → −x in [-1, 1]) and horizontal/vertical flips of one clip
    `[3, T, H, W]`. With only a handful of training videos the tokenizer otherwise memorises their colours
    instead of learning to transmit colour. Off by default: with the orthonormal-Haar training below it
    lowered the held-out PSNR on the sample data (benchmarks/README.md, "Measurements behind code choices")."""
    clip = clip[torch.as_tensor(rng.permutation(3))]
    if rng.random() < 0.5:
        clip = -clip
    if rng.random() < 0.5:
        clip = clip.flip(-1)
    if rng.random() < 0.5:
        clip = clip.flip(-2)
    return clip


@contextlib.contextmanager
def orthonormal_haar(model: CausalVideoTokenizer, convert_in: bool = True):
    """Train in an exactly equivalent parametrization with an orthonormal Haar patcher.

    The reference patcher divides every wavelet round by 2·√2 and the unpatcher multiplies by it, so with
    patch size p the network sees its input shrunk by g = (2·√2)^log2(p) (8 for p = 4) and its output is
    blown up by g. From a standard init, Adam then spends its steps on that mismatch: a tiny tokenizer
    stays at the background-only PSNR for hundreds of steps where the orthonormal form already reproduces
    the balls (benchmarks/README.md, "Measurements behind code choices"). Both parametrizations compute the same function when
    the first encoder convolution's weights are divided by g and the last decoder convolution's weights and
    bias are multiplied by g, since both layers are linear in the transform's output/input. Inside this
    context the model is in the orthonormal form; on exit it is converted back, so saved weights are always
    in the reference layout and load anywhere. `convert_in=False` (a random init) takes the current weights
    as the orthonormal-form weights, i.e. the standard init lands where it trains well.
    """
    encoder_net, decoder_net = model.encoder.encoder, model.decoder.decoder
    patcher, unpatcher = encoder_net.patcher3d, decoder_net.unpatcher3d
    first = encoder_net.conv_in[0].conv3d
    last = decoder_net.conv_out[-1].conv3d
    gain = float(patcher._scale()) ** patcher.levels

    def convert(factor: float) -> None:
        with torch.no_grad():
            first.weight.mul_(1.0 / factor)
            last.weight.mul_(factor)
            if last.bias is not None:
                last.bias.mul_(factor)

    if convert_in:
        convert(gain)
    patcher.orthonormal = unpatcher.orthonormal = True
    try:
        yield model
    finally:
        patcher.orthonormal = unpatcher.orthonormal = False
        convert(1.0 / gain)


def motion_weights(clip: torch.Tensor, strength: float) -> torch.Tensor:
    """Per-pixel loss weights `[B, 1, T, H, W]`: 1 + strength x how much the pixel changes from the previous frame
    or to the next one (max over channels, in units of the [-1, 1] range, clipped at 1). Static background
    keeps weight 1; pixels a moving object covers or uncovers get up to 1 + strength."""
    diff = (clip[:, :, 1:] - clip[:, :, :-1]).abs().amax(dim=1, keepdim=True)  # [B, 1, T-1, H, W]
    zero = torch.zeros_like(diff[:, :, :1])
    change = torch.maximum(torch.cat([zero, diff], 2), torch.cat([diff, zero], 2))
    return 1.0 + strength * change.clamp(max=1.0)


def reconstruction_loss(rec: torch.Tensor, target: torch.Tensor, motion_weight: float = 0.0) -> torch.Tensor:
    """L1 + MSE, each a mean over pixels; with `motion_weight`, a weighted mean (`motion_weights`)."""
    if not motion_weight:
        return F.l1_loss(rec, target) + F.mse_loss(rec, target)
    w = motion_weights(target, motion_weight)
    err = rec - target
    norm = w.expand_as(err).sum()
    return ((err.abs() + err.square()) * w).sum() / norm


@torch.no_grad()
def latent_statistics(model: CausalVideoTokenizer, clips: list[torch.Tensor], batch_size: int = 4):
    """(mean, std), each float32 `[C, T]`: a continuous tokenizer's latents over `clips`, per channel and latent
    frame (over clips and positions); std at least 1e-6."""
    z = torch.cat([model.encode(torch.stack(clips[i: i + batch_size])).float()
                   for i in range(0, len(clips), batch_size)])  # [N, C, T, h, w]
    return z.mean(dim=(0, 3, 4)).contiguous(), z.std(dim=(0, 3, 4)).clamp_min(1e-6).contiguous()


def train_tokenizer(cfg: TrainTokenizerConfig) -> TrainTokenizerResult:
    start = time.monotonic()
    output = Path(cfg.output)
    if output.exists() and not cfg.overwrite and output.is_dir() and any(output.iterdir()):
        raise FileExistsError(f"{output} exists and is not empty; pass --overwrite to replace it")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)

    model = load_video_tokenizer(cfg.tokenizer, seed=cfg.seed)
    t, s, _ = model.compression
    model.latent_shape(cfg.num_frames, cfg.height, cfg.width)  # clear error before reading any video

    if cfg.clip_stride is not None and cfg.clip_stride < 1:
        raise ValueError(f"clip_stride must be >= 1, got {cfg.clip_stride}")
    per_video, used, skipped = load_clips(cfg.data, cfg.num_frames, cfg.height, cfg.width, cfg.clips_per_video,
                                          cfg.clip_stride)
    for item in skipped:
        log.warning("skipped %s: %s", item["video"], item["reason"])
    train_clips, held_clips = split_heldout(per_video, cfg.heldout_videos)
    log.info("%d videos (%d skipped): %d training clips, %d held-out clips", len(used), len(skipped), len(train_clips), len(held_clips))

    # A registry name without released weights starts from a random init: take it as the orthonormal-form
    # weights (see orthonormal_haar); weights from a folder or the hub are converted exactly.
    resolved = None if Path(cfg.tokenizer).is_dir() else resolve_name(str(cfg.tokenizer))
    random_init = resolved is not None and resolved.hub_id is None
    psnr_before = heldout_psnr(model, held_clips)
    with orthonormal_haar(model, convert_in=not random_init):
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99))
        warmup = max(1, cfg.steps // 20)

        def lr_at(step: int) -> float:  # linear warm-up, then cosine decay to 10 %
            if step < warmup:
                return cfg.lr * (step + 1) / warmup
            progress = (step - warmup) / max(1, cfg.steps - warmup)
            return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

        bar = None
        if cfg.progress:
            from tqdm import tqdm

            bar = tqdm(total=cfg.steps, desc="train-tokenizer", unit="step")
        data = torch.stack(train_clips)
        loss_value = float("nan")
        steps_done = 0
        for step in range(cfg.steps):
            if cfg.time_limit_s is not None and time.monotonic() - start > cfg.time_limit_s:
                log.warning("time limit %.0f s reached after %d steps", cfg.time_limit_s, step)
                break
            idx = rng.choice(len(data), size=min(cfg.batch_size, len(data)), replace=len(data) < cfg.batch_size)
            batch = data[torch.as_tensor(idx)]
            if cfg.augment:
                batch = torch.stack([augment_clip(clip, rng) for clip in batch])
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
            rec = model(batch)
            loss = reconstruction_loss(rec, batch, cfg.motion_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            loss_value = float(loss.detach())
            steps_done = step + 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.4f}")
        if bar is not None:
            bar.close()

    psnr_after = heldout_psnr(model, held_clips)
    result = TrainTokenizerResult(
        output=str(output),
        tokenizer=model.name,
        train_clips=len(train_clips),
        heldout_clips=len(held_clips),
        steps_done=steps_done,
        seconds=round(time.monotonic() - start, 2),
        psnr_before=round(psnr_before, 4),
        psnr_after=round(psnr_after, 4),
        final_loss=loss_value,
        skipped=skipped,
    )
    # An empty folder is replaced as with --overwrite; a non-empty one without it was refused at the start.
    replace = cfg.overwrite or (output.is_dir() and not any(output.iterdir()))
    with atomic_dir(output, overwrite=replace) as tmp:
        model.eval().save(tmp)
        if not model.discrete:
            from cosmos_nemo.io.tensors import save_tensors

            mean, std = latent_statistics(model, train_clips)
            save_tensors(tmp / STATS_FILE, {"mean": mean, "std": std},
                         metadata={"clips": str(len(train_clips)), "frames": str(cfg.num_frames)})
        report = {"result": asdict(result), "config": asdict(cfg), "compression": [t, s, s]}
        (tmp / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return result
