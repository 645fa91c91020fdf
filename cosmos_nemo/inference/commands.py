"""`cosmos-nemo generate`: continue a video (or an image) with a trained AR model.

The flags are those of the reference `nemo/inference/general.py`, with kebab-case aliases.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _flag(p, reference: str, **kw):
    kebab = reference.replace("_", "-")
    names = [reference] if kebab == reference else [reference, kebab]
    p.add_argument(*names, **kw)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="continue a video or image with a trained AR model and write an mp4 + contact sheet",
        description="Continue a video (or an image) with a trained Cosmos AR model: the input is resized and "
        "center-cropped to WIDTHxHEIGHT, its last --num_input_frames frames are kept and padded to "
        "--num_context_frames by repeating the last one (as the reference does), tokenized, and the latent "
        "frames covering the input are the prompt; the rest of the latent grid is sampled with a KV cache and "
        "decoded. Runs in one process (TP=1). Writes the mp4 and a PNG contact sheet (input | generated). "
        "For diffusion (DiT) models use `cosmos-nemo generate diffusion` (see `cosmos-nemo generate diffusion --help`).",
    )
    _flag(p, "--input_image_or_video_path", default=None, help="(required) the video or image to continue")
    _flag(p, "--input_type", choices=("video", "image"), default="video", help="video or image (default video)")
    _flag(p, "--ar_model_dir", default=None, help="(required) a run folder written by `cosmos-nemo train` (its latest checkpoint is used)")
    _flag(p, "--encoder_path", default=None, help="(required) the video tokenizer: a registry name, hub id, or folder from train-tokenizer")
    _flag(p, "--decoder_path", default=None, help="accepted for the reference's spelling; must equal --encoder_path if given")
    _flag(p, "--width", type=int, default=1024, help="frame width the model was trained at (default 1024)")
    _flag(p, "--height", type=int, default=640, help="frame height (default 640)")
    _flag(p, "--num_context_frames", type=int, default=33, help="frames of a full clip, 1 + k*t (default 33)")
    _flag(p, "--num_input_frames", type=int, default=9, help="input frames used as the prompt, 1 + k*t (default 9; 1 for an image)")
    _flag(p, "--tokenizer_compression_factor", default=None, help="t,h,w; checked against the tokenizer when given")
    _flag(p, "--video_save_name", default="generated_video.mp4", help="output mp4 (default generated_video.mp4)")
    _flag(p, "--top_p", type=float, default=0.8, help="nucleus sampling mass (default 0.8)")
    _flag(p, "--top_k", type=int, default=0, help="top-k sampling (1 = greedy; default 0 = use top_p)")
    _flag(p, "--temperature", type=float, default=1.0, help="sampling temperature (a float; default 1.0)")
    _flag(p, "--seed", type=int, default=0, help="sampling seed (default 0)")
    _flag(p, "--weights", choices=("model", "ema"), default="model", help="which weights of the checkpoint (default model)")
    _flag(p, "--fps", type=float, default=24.0, help="output frame rate (default 24)")
    p.set_defaults(func=_run, _generate_parser=p)
    modes = p.add_subparsers(dest="generate_family", metavar="{diffusion}",
                             help="`diffusion`: Text/Image/Video2World with a Cosmos DiT (without it: AR generation)")
    from cosmos_nemo.inference.diffusion_cli import register_diffusion

    register_diffusion(modes)


_AR_REQUIRED = ("input_image_or_video_path", "ar_model_dir", "encoder_path")


def _run(args) -> int:
    missing = [f"--{name}" for name in _AR_REQUIRED if getattr(args, name, None) is None]
    if missing:  # argparse's own message and exit status (the flags are not `required` so that `diffusion` parses)
        args._generate_parser.error(f"the following arguments are required: {', '.join(missing)}")
    import numpy as np
    import torch

    from cosmos_nemo import parallel
    from cosmos_nemo.data_prep.clips import apply_geometry, geometry
    from cosmos_nemo.inference.ar import SamplingConfig, continue_clip
    from cosmos_nemo.inference.loading import load_trained_model
    from cosmos_nemo.inference.media import contact_sheet
    from cosmos_nemo.io.video import VideoDecodeError, read_frames, write_mp4
    from cosmos_nemo.tokenizers import load_video_tokenizer
    from cosmos_nemo.tokenizers.grid import Compression, GridError, check_frames

    if args.decoder_path and args.decoder_path != args.encoder_path:
        print("error: --decoder_path must name the same tokenizer as --encoder_path", file=sys.stderr)
        return 2
    try:
        tokenizer = load_video_tokenizer(args.encoder_path)
        if args.tokenizer_compression_factor and Compression.parse(args.tokenizer_compression_factor) != Compression.parse(tokenizer.compression):
            raise GridError(f"--tokenizer_compression_factor {args.tokenizer_compression_factor} does not match the "
                            f"tokenizer's {tokenizer.compression}")
        num_input = 1 if args.input_type == "image" else args.num_input_frames
        check_frames(args.num_context_frames, tokenizer.compression)
        check_frames(num_input, tokenizer.compression)
        if args.input_type == "image":
            from PIL import Image

            frames = np.asarray(Image.open(args.input_image_or_video_path).convert("RGB"))[None]
        else:
            frames = read_frames(args.input_image_or_video_path)
    except (GridError, VideoDecodeError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    frames = apply_geometry(frames, geometry(frames.shape[1], frames.shape[2], args.height, args.width, "crop"))
    frames = frames[-num_input:]
    pad = args.num_context_frames - frames.shape[0]
    if pad > 0:
        frames = np.concatenate([frames, np.repeat(frames[-1:], pad, axis=0)])
    parallel.setup()
    try:
        model, _, ckpt = load_trained_model(args.ar_model_dir, args.weights)
        generated, _, grid, prompt_len = continue_clip(
            model, tokenizer, frames[: args.num_context_frames], num_input,
            SamplingConfig(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, seed=args.seed))
    finally:
        parallel.teardown()
    out = write_mp4(args.video_save_name, generated, fps=args.fps)
    sheet = contact_sheet({"input": frames[: args.num_context_frames], "generated": generated}, Path(out).with_suffix(".png"))
    print(f"checkpoint {ckpt}; latent grid {tuple(grid)}: {prompt_len} context tokens, "
          f"{grid.num_tokens - prompt_len} generated\nwrote {out}\nwrote {sheet}")
    return 0
