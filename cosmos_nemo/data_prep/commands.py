"""`cosmos-nemo sample-data` and `cosmos-nemo prepare {ar-tokens,v2w,prompts}`."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    _register_sample_data(subparsers)
    _register_prepare(subparsers)


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


# ------------------------------------------------------------------------------------------------------
# prepare


def _flag(parser, reference: str, kebab: str | None = None, **kw):
    """A flag under its reference spelling plus a kebab-case alias (or a new kebab flag + underscore alias)."""
    names = [reference] + ([kebab] if kebab and kebab != reference else [])
    parser.add_argument(*names, **kw)


def _add_tokenize_flags(p, video_help: str) -> None:
    _flag(p, "--encoder_path", "--encoder-path", default="nvidia/Cosmos-1.0-Tokenizer-DV8x16x16",
          help="video tokenizer: a hub id or name (nvidia/Cosmos-1.0-Tokenizer-DV8x16x16, Cosmos-0.1-Tokenizer-DV4x8x8), "
               "a local folder (NVIDIA's encoder.jit/decoder.jit, or one written by `cosmos-nemo train-tokenizer`), or "
               "'tiny' (small random-init tokenizer for CPU tests). A path to encoder.jit means its folder.")
    _flag(p, "--decoder_path", "--decoder-path", default=None,
          help="accepted for compatibility with the reference script; tokenizing needs only the encoder, so it is unused")
    p.add_argument("--width", type=int, default=1024, help="clip width in pixels after resize/crop (reference default)")
    p.add_argument("--height", type=int, default=640, help="clip height in pixels after resize/crop (reference default)")
    _flag(p, "--num_context_frames", "--num-context-frames", type=int, default=33,
          help="frames per clip window; must be 1 + k*t for the tokenizer's temporal compression t (33 for 8x16x16, 17 for 4x8x8)")
    _flag(p, "--tokenizer_compression_factor", "--tokenizer-compression-factor", default=None,
          help="'t,h,w' the data is meant for (reference: '8,16,16'); when given it must equal the tokenizer's compression, "
               "else the run stops before any work; None means the tokenizer's own")
    p.add_argument("--stride", type=int, default=None,
                   help="frames between window starts; None means --num_context_frames (non-overlapping windows over the "
                        "whole video; the reference kept only the first window)")
    _flag(p, "--resize-mode", "--resize_mode", choices=("crop", "pad"), default="crop",
          help="crop: scale so both sides cover the target then center-crop (reference); pad: scale to fit and center on black")
    _flag(p, "--allow-upscale", "--allow_upscale", action="store_true",
          help="use videos smaller than the target by upscaling them; without it they are skipped with a reason")
    p.add_argument("--workers", type=int, default=1,
                   help="parallel worker processes (replaces the reference's torchrun ranks); the output is byte-identical "
                        "for any number")
    _flag(p, "--batch-size", "--batch_size", type=int, default=4,
          help="clip windows of one video tokenized per encoder call (the reference encoder batch is <= 8)")
    p.add_argument("--device", default=None, help="tokenizer device: cpu, cuda, cuda:1; None means cuda if available, else cpu")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                   help="tokenizer compute dtype; None means bfloat16 on cuda (as the reference) and float32 on cpu")
    _flag(p, "--threads-per-worker", "--threads_per_worker", type=int, default=1,
          help="torch threads per worker; part of the settings (a different value may change float rounding), so "
               "keep it fixed across reruns")
    _flag(p, "--decode-threads", "--decode_threads", type=int, default=None,
          help="FFmpeg decoder threads per worker; None means automatic with 1 worker and 1 with several")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a complete dataset made from other inputs or settings; without it such a directory is refused before any work")
    _flag(p, "--no-progress", "--no_progress", action="store_true", help="no progress bars")


def _device_and_dtype(args) -> tuple[str, str]:
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = args.dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    return device, dtype


def _register_prepare(subparsers) -> None:
    prep = subparsers.add_parser(
        "prepare",
        help="turn videos (and captions) into training datasets: ar-tokens, v2w, prompts",
        description="Data preparation commands. Each is resumable (rerun after a kill to finish), skips bad inputs "
                    "with a reason, and never leaves a half-written dataset.",
    )
    sub = prep.add_subparsers(dest="prepare_command", metavar="KIND")
    prep.set_defaults(func=lambda args: (prep.print_help(), 2)[1])

    ar = sub.add_parser(
        "ar-tokens",
        help="a folder of videos -> AR token dataset (reference: prepare_dataset.py)",
        description=(
            "Decode every video under --input_videos_dir (mp4, mov, mkv, webm, avi, mpg, ...; rotation applied; VFR "
            "frames as decoded; 8/10-bit), cut windows of --num_context_frames every --stride frames, resize and "
            "center-crop (or pad) to --width x --height, tokenize with --encoder_path and write the AR token dataset "
            "to --output_prefix: tokens.bin/.idx (megatron IndexedDataset), manifest.jsonl, dataset.json (with the skip "
            "report). Captions are read from <root>/metas/<stem>.txt or <stem>.txt beside a video when present. Flags "
            "of NVIDIA's prepare_dataset.py keep their meaning; --output_prefix names a directory."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _flag(ar, "--input_videos_dir", "--input-videos-dir", required=True, type=Path,
          help="folder of videos (searched recursively; hidden folders ignored)")
    _flag(ar, "--output_prefix", "--output-prefix", required=True, type=Path,
          help="output directory of the dataset (created; a rerun resumes an interrupted run)")
    _add_tokenize_flags(ar, "videos")
    _flag(ar, "--no-recursive", "--no_recursive", action="store_true", help="only the top level of --input_videos_dir")
    _flag(ar, "--no-captions", "--no_captions", action="store_true", help="do not read captions into the manifest")
    ar.set_defaults(func=_run_ar_tokens)

    v2w = sub.add_parser(
        "v2w",
        help="jsonl of {prompt, visual_input} -> Video2World token dataset + text embeddings "
             "(reference: video2world_prepare_dataset.py)",
        description=(
            "Like ar-tokens, for Video2World: reads --input_jsonl (one {\"prompt\", \"visual_input\"} per line; paths "
            "absolute or relative to the jsonl), stores each clip as [BOV] + ids + [PAD]*k, and writes one bf16 text "
            "embedding per distinct prompt to text_embeddings.safetensors (documents refer to it by prompt_id)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _flag(v2w, "--input_jsonl", "--input-jsonl", required=True, type=Path, help="the jsonl to read")
    _flag(v2w, "--output_dir", "--output-dir", required=True, type=Path,
          help="output directory (never deleted wholesale, unlike the reference; a rerun resumes)")
    _add_tokenize_flags(v2w, "videos")
    _flag(v2w, "--text-encoder", "--text_encoder", default="t5-11b",
          help="text encoder: t5-11b (google-t5/t5-11b encoder, 1024-d x 512 tokens, the reference), minilm (bundled "
               "offline MiniLM-L6, 384-d x 256), a local folder, or a hub id")
    _flag(v2w, "--prompt-length", "--prompt_length", type=int, default=None,
          help="text tokens per prompt L; None means 512 for T5 and 256 for MiniLM")
    _flag(v2w, "--text-batch-size", "--text_batch_size", type=int, default=8, help="prompts per text-encoder call")
    _flag(v2w, "--split_string", "--split-string", default=None,
          help="accepted for compatibility; splits are taken when the dataset is read (the training recipe's "
               "split_string, deterministic), so this command writes one dataset")
    v2w.set_defaults(func=_run_v2w)

    pr = sub.add_parser(
        "prompts",
        help="write metas/<stem>.txt for every video (reference: create_prompts_for_nemo_assets)",
        description="For DATASET/videos/<stem>.<ext>, write DATASET/metas/<stem>.txt holding --prompt.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _flag(pr, "--dataset_path", "--dataset-path", required=True, type=Path, help="folder holding videos/")
    pr.add_argument("--prompt", required=True, help='caption for every video, e.g. "A video of sks teal robot."')
    pr.add_argument("--overwrite", action="store_true", help="replace existing non-empty captions; without it they are kept")
    pr.add_argument("--jsonl", action="store_true", help="also write DATASET/prompts.jsonl for `prepare v2w`")
    pr.set_defaults(func=_run_prompts)


def _common(args) -> dict:
    device, dtype = _device_and_dtype(args)
    return dict(
        encoder_path=args.encoder_path, width=args.width, height=args.height,
        num_context_frames=args.num_context_frames, tokenizer_compression_factor=args.tokenizer_compression_factor,
        stride=args.stride, resize_mode=args.resize_mode, allow_upscale=args.allow_upscale, workers=args.workers,
        batch_size=args.batch_size, device=device, dtype=dtype, threads_per_worker=args.threads_per_worker,
        decode_threads=args.decode_threads, overwrite=args.overwrite, progress=not args.no_progress,
    )


def _report(run) -> int:
    from cosmos_nemo.data_prep.engine import PrepareError

    try:
        report = run()
    except PrepareError as e:
        print(f"error: {e}")
        return 2
    print(report.summary())
    return 0


def _run_ar_tokens(args) -> int:
    from cosmos_nemo.data_prep.ar_tokens import ARTokensConfig, prepare_ar_tokens

    cfg = ARTokensConfig(input_videos_dir=args.input_videos_dir, output_prefix=args.output_prefix,
                         recursive=not args.no_recursive, captions=not args.no_captions, **_common(args))
    return _report(lambda: prepare_ar_tokens(cfg))


def _run_v2w(args) -> int:
    from cosmos_nemo.data_prep.v2w import V2WConfig, prepare_v2w

    if args.split_string:
        print(f"note: --split_string {args.split_string} is applied when training reads the dataset, not here")
    cfg = V2WConfig(input_jsonl=args.input_jsonl, output_dir=args.output_dir, text_encoder=args.text_encoder,
                    prompt_length=args.prompt_length, text_batch_size=args.text_batch_size, **_common(args))
    return _report(lambda: prepare_v2w(cfg))


def _run_prompts(args) -> int:
    from cosmos_nemo.data_prep.engine import PrepareError
    from cosmos_nemo.data_prep.prompts import create_prompts

    try:
        rep = create_prompts(args.dataset_path, args.prompt, overwrite=args.overwrite, jsonl=args.jsonl)
    except PrepareError as e:
        print(f"error: {e}")
        return 2
    print(f"wrote {rep.written} caption files, kept {rep.kept} existing ones in {args.dataset_path / 'metas'}"
          + (f"; wrote {rep.jsonl}" if rep.jsonl else ""))
    return 0
