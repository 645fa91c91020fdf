"""`cosmos-nemo sample-data` and `cosmos-nemo prepare {ar-tokens,v2w,prompts}`."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    _register_sample_data(subparsers)
    try:
        from cosmos_nemo.data_prep import prepare_cli
    except ImportError:  # pragma: no cover - only while the prepare module is absent
        return
    prepare_cli.register(subparsers)


def _register_sample_data(subparsers) -> None:
    p = subparsers.add_parser(
        "sample-data",
        help="write a small captioned video set (simulated bouncing balls) to try the pipeline on",
        description=(
            "Write a small, deterministic set of captioned videos a model can learn from: balls of varied "
            "colour, count and size falling under gravity and bouncing off the walls and each other, on "
            "varied backgrounds, with captions written from the simulation. Layout: OUT_DIR/videos/*.mp4, "
            "OUT_DIR/metas/*.txt (one caption per video, same stem) and OUT_DIR/prompts.jsonl "
            '({"prompt", "visual_input"} per line, the input of `prepare v2w`; paths relative to OUT_DIR).'
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("out_dir", metavar="OUT_DIR", type=Path, help="folder to write (created if missing)")
    p.add_argument("--num-videos", "--num_videos", dest="num_videos", type=int, default=8, help="number of videos")
    p.add_argument("--seed", type=int, default=0, help="seed; video i depends only on (seed, i)")
    p.add_argument(
        "--num-frames", "--num_frames", dest="num_frames", type=int, default=33,
        help="frames per video (33 = one 8x16x16 tokenizer chunk; 17 for 4x8x8)",
    )
    p.add_argument("--height", type=int, default=128, help="frame height in pixels")
    p.add_argument("--width", type=int, default=128, help="frame width in pixels")
    p.add_argument("--fps", type=int, default=12, help="frame rate written in the mp4 and used by the simulation")
    p.set_defaults(func=_run_sample_data)


def _run_sample_data(args) -> int:
    from cosmos_nemo.data_prep.sample_data import generate_sample_dataset

    try:
        paths = generate_sample_dataset(
            args.out_dir, num_videos=args.num_videos, seed=args.seed, num_frames=args.num_frames,
            height=args.height, width=args.width, fps=args.fps, progress=True,
        )
    except ValueError as e:
        print(f"error: {e}")
        return 2
    print(f"wrote {len(paths)} videos to {args.out_dir / 'videos'}, captions to {args.out_dir / 'metas'}, "
          f"and {args.out_dir / 'prompts.jsonl'}")
    return 0
