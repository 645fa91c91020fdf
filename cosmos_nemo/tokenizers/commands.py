"""`cosmos-nemo train-tokenizer`: fit (or fine-tune) a causal video tokenizer on a folder of videos."""

from __future__ import annotations

import argparse
import json
import logging


def _add(parser: argparse.ArgumentParser, name: str, **kw) -> None:
    """Add a kebab-case flag with its underscore alias (`--num-frames` / `--num_frames`)."""
    flags = [f"--{name}"]
    if "-" in name:
        flags.append(f"--{name.replace('-', '_')}")
    parser.add_argument(*flags, **kw)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train-tokenizer",
        help="train or fine-tune a causal video tokenizer (tiny by default) on a folder of videos",
        description=(
            "Train a Cosmos causal video tokenizer with a pixel reconstruction loss (L1 + MSE through the real "
            "encoder → FSQ → decoder path) on clips cut from a folder of videos, then save it as safetensors. "
            "Whole videos are held out; reconstruction PSNR on them is reported before and after training. "
            "Load the result with load_video_tokenizer(OUTPUT) or pass OUTPUT wherever a tokenizer is asked for."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _add(p, "data", required=True, help="folder of videos (searched recursively: .mp4, .mov, .mkv, …)")
    _add(p, "output", required=True, help="folder to write encoder/decoder safetensors, config and report to")
    _add(
        p,
        "tokenizer",
        default="tiny",
        help="starting point: a registry name (tiny, tiny-cv, Cosmos-0.1-Tokenizer-DV4x8x8, …), a hub id, or a "
        "folder with weights (fine-tuning); registry names without released weights start from a seeded random init",
    )
    _add(p, "num-frames", type=int, default=17, help="frames per training clip; must be 1 + k·(temporal compression)")
    _add(p, "height", type=int, default=64, help="clip height after short-side resize and centre crop")
    _add(p, "width", type=int, default=64, help="clip width after short-side resize and centre crop")
    _add(p, "clips-per-video", type=int, default=4, help="at most this many clips per video, from its start")
    _add(p, "clip-stride", type=int, default=None, help="frames between clip starts (default: num-frames, so clips do not "
         "overlap); smaller gives more, overlapping clips from short videos")
    _add(p, "motion-weight", type=float, default=0.0, help="extra loss weight on pixels that change between frames "
         "(1 + W x change): helps a small tokenizer learn small moving objects that the static background outweighs")
    _add(p, "heldout-videos", type=int, default=0, help="videos held out for evaluation; 0 = about 20%% (at least 1)")
    _add(p, "steps", type=int, default=300, help="optimizer steps")
    _add(p, "batch-size", type=int, default=4, help="clips per step")
    _add(p, "lr", type=float, default=1e-3, help="peak AdamW learning rate (linear warm-up, cosine decay to 10%%)")
    _add(p, "weight-decay", type=float, default=0.0, help="AdamW weight decay")
    _add(p, "seed", type=int, default=0, help="seed of the random init, clip sampling and flips")
    _add(p, "time-limit", type=float, default=None, help="stop training after this many seconds (then evaluate and save)")
    _add(p, "threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    _add(p, "augment", action="store_true", help="augment clips with colour permutation/inversion and flips (helps when held-out "
         "videos have colours the few training videos lack; off by default)")
    _add(p, "overwrite", action="store_true", help="replace OUTPUT if it exists and is not empty")
    _add(p, "no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from cosmos_nemo.io.video import VideoDecodeError

    from .api import VideoShapeError
    from .loading import TokenizerLoadError, TokenizerNotAvailableError
    from .train import TrainTokenizerConfig, train_tokenizer

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = TrainTokenizerConfig(
        data=args.data,
        output=args.output,
        tokenizer=args.tokenizer,
        num_frames=args.num_frames,
        height=args.height,
        width=args.width,
        clips_per_video=args.clips_per_video,
        clip_stride=args.clip_stride,
        motion_weight=args.motion_weight,
        heldout_videos=args.heldout_videos,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        seed=args.seed,
        time_limit_s=args.time_limit,
        threads=args.threads,
        augment=args.augment,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    try:
        result = train_tokenizer(cfg)
    except (
        FileNotFoundError,
        FileExistsError,
        ValueError,
        VideoShapeError,
        VideoDecodeError,
        TokenizerLoadError,
        TokenizerNotAvailableError,
    ) as e:
        print(f"train-tokenizer: error: {e}")
        return 1
    print(
        f"held-out reconstruction PSNR: {result.psnr_before:.2f} dB before → {result.psnr_after:.2f} dB after "
        f"{result.steps_done} steps ({result.train_clips} training clips, {result.heldout_clips} held-out, "
        f"{result.seconds:.0f} s)"
    )
    print(f"saved to {result.output} (load with load_video_tokenizer({result.output!r}))")
    if result.skipped:
        print(f"skipped {len(result.skipped)} videos: " + json.dumps(result.skipped))
    return 0
