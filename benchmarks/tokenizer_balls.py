"""How well the quickstart's tiny DV 4x8x8 tokenizer reproduces the sample data's moving balls (issue 19, part 3).

Not a speed benchmark: a measurement of reconstruction quality against training budget. It writes `--videos N + 4`
sample videos (`cosmos-nemo sample-data`'s simulation, 33 frames at 64x64, seed 0), trains `train-tokenizer` on
all but videos 24-27 (held out: never seen), and reports PSNR of the discrete round trip (encode -> decode, uint8
frames, the first 17 frames) over whole frames and over the balls alone (the simulator's own foreground mask,
`sample_data.foreground_masks`), on the held-out videos and on 4 training videos (0-3).

    python benchmarks/tokenizer_balls.py --steps 600                       # the quickstart's budget
    python benchmarks/tokenizer_balls.py --steps 600 --motion-weight 4
    python benchmarks/tokenizer_balls.py --steps 1500 --videos 120 --clip-stride 8 --clips-per-video 3 --motion-weight 4
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
import time
from pathlib import Path

import torch


def ball_psnr(tokenizer, videos: Path, indices, frames: int = 17, size: int = 64) -> tuple[float, float]:
    """Mean PSNR over `indices` of whole frames and of ball pixels (uint8 round trip)."""
    from cosmos_nemo.data_prep.sample_data import foreground_masks
    from cosmos_nemo.io.video import read_frames
    from cosmos_nemo.tokenizers.train import _resize_crop, to_uint8

    whole, balls = [], []
    for i in indices:
        clip = _resize_crop(read_frames(videos / f"sample_{i:04d}.mp4", 0, frames), size, size)[None]
        with torch.no_grad():
            rec = tokenizer.decode(tokenizer.encode(clip))
        err = (to_uint8(rec[0]).float() - to_uint8(clip[0]).float()).square()  # [3, T, H, W]
        mask = torch.from_numpy(foreground_masks(0, i, 33, size, size, 12)[:frames])[None].expand_as(err)
        whole.append(10 * math.log10(255**2 / err.mean().item()))
        balls.append(10 * math.log10(255**2 / err[mask].mean().item()))
    return sum(whole) / len(whole), sum(balls) / len(balls)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=int, default=24, help="training videos (default 24, the quickstart's)")
    p.add_argument("--steps", type=int, default=600, help="tokenizer steps (default 600, the quickstart's)")
    p.add_argument("--motion-weight", type=float, default=0.0, help="train-tokenizer --motion-weight")
    p.add_argument("--clip-stride", type=int, default=None, help="train-tokenizer --clip-stride")
    p.add_argument("--clips-per-video", type=int, default=4, help="train-tokenizer --clips-per-video")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--workdir", default=None, help="keep the videos and the tokenizer here (default: a temporary folder)")
    args = p.parse_args()
    if args.videos < 24:
        p.error("--videos must be at least 24 (videos 24-27 are the held-out ones)")
    torch.set_num_threads(args.threads)

    from cosmos_nemo.data_prep.sample_data import generate_sample_dataset
    from cosmos_nemo.tokenizers import load_video_tokenizer
    from cosmos_nemo.tokenizers.train import TrainTokenizerConfig, train_tokenizer

    work = Path(args.workdir or tempfile.mkdtemp(prefix="tokenizer_balls_"))
    sample = work / f"sample_{args.videos}"
    if not (sample / "videos").is_dir():
        generate_sample_dataset(sample, num_videos=args.videos + 4, seed=0, num_frames=33, height=64, width=64, fps=12,
                                progress=False)
    train = work / f"train_{args.videos}"
    if not train.is_dir():
        train.mkdir()
        for i in range(args.videos + 4):
            if not 24 <= i < 28:
                shutil.copy(sample / "videos" / f"sample_{i:04d}.mp4", train)
    start = time.perf_counter()
    result = train_tokenizer(TrainTokenizerConfig(
        data=str(train), output=str(work / "tokenizer"), steps=args.steps, motion_weight=args.motion_weight,
        clip_stride=args.clip_stride, clips_per_video=args.clips_per_video, heldout_videos=4, overwrite=True,
        progress=False))
    seconds = time.perf_counter() - start
    tokenizer = load_video_tokenizer(str(work / "tokenizer"))
    held = ball_psnr(tokenizer, sample / "videos", range(24, 28))
    seen = ball_psnr(tokenizer, sample / "videos", range(0, 4))
    print(json.dumps({"videos": args.videos, "train_clips": result.train_clips, "steps": args.steps,
                      "motion_weight": args.motion_weight, "clip_stride": args.clip_stride,
                      "heldout_psnr": round(held[0], 2), "heldout_balls_psnr": round(held[1], 2),
                      "train_psnr": round(seen[0], 2), "train_balls_psnr": round(seen[1], 2),
                      "train_seconds": round(seconds)}))
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
