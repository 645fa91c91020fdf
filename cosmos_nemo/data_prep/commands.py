"""`cosmos-nemo sample-data` and `cosmos-nemo prepare {ar-tokens,v2w,prompts,text-embeddings,latents}`."""

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


def _register_prepare(subparsers) -> None:
    # The flags of each command are generated from its config dataclass (data_prep/settings.py, which
    # imports no torch): a setting's default, type and help are written once, on its field.
    from cosmos_nemo.data_prep.flags import add_flags
    from cosmos_nemo.data_prep.settings import (
        ARTokensConfig,
        LatentsConfig,
        PromptsConfig,
        TextEmbeddingsConfig,
        V2WConfig,
    )

    prep = subparsers.add_parser(
        "prepare",
        help="turn videos (and captions) into training datasets: ar-tokens, v2w, prompts, text-embeddings, latents",
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
            "of NVIDIA's prepare_dataset.py keep their meaning (and spelling, with kebab-case aliases); "
            "--output_prefix names a directory."
        ),
    )
    add_flags(ar, ARTokensConfig)
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
    )
    add_flags(v2w, V2WConfig)
    v2w.set_defaults(func=_run_v2w)

    pr = sub.add_parser(
        "prompts",
        help="write metas/<stem>.txt for every video (reference: create_prompts_for_nemo_assets)",
        description="For DATASET/videos/<stem>.<ext>, write DATASET/metas/<stem>.txt holding --prompt.",
    )
    add_flags(pr, PromptsConfig)
    pr.set_defaults(func=_run_prompts)

    te = sub.add_parser(
        "text-embeddings",
        help="captions of a diffusion dataset -> T5-XXL (or any transformers encoder) embeddings, one row per "
             "distinct caption (reference: get_t5_embeddings_from_cosmos_nemo_assets.py)",
        description=(
            "Read the captions of --dataset_path (metas/<stem>.txt, or Predict2.5's captions/<stem>.json), embed each "
            "distinct caption once with --text-encoder (T5-XXL by default: google-t5/t5-11b encoder, 512 tokens, "
            "positions past the caption's length zero; Predict2.5: --encoder reason1 --encoder-path FOLDER, the "
            "Cosmos-Reason1 FULL_CONCAT of 28 normalised layers, [512,100352], or reason1-tiny offline) and write one "
            "safetensors file: embeddings [P,L,D], mask "
            "[P,L], the prompts and the stem -> row map in its metadata. --write-pickles also writes the reference's "
            "t5_xxl/<stem>.pickle files; --text-source pickles converts existing ones (needs --trust-pickle: a "
            "pickle can run code when loaded). Resumable: a rerun after a kill encodes only the rest."
        ),
    )
    add_flags(te, TextEmbeddingsConfig)
    te.set_defaults(func=_run_text_embeddings)

    la = sub.add_parser(
        "latents",
        help="a diffusion dataset folder (videos/ + metas/ [+ t5_xxl/]) -> DiT latent dataset (VAE latents + text "
             "embeddings)",
        description=(
            "Cut every video of --dataset_path/videos into clips of --num_frames frames (every --sequence_interval-th "
            "source frame; a clip every --start_frame_interval frames), resize them to --video_size, encode them with "
            "--vae (wan2.1: diffusers AutoencoderKLWan, posterior mean, fixed 16 means/stds; cosmos-cv: the Cosmos "
            "CV8x8x8 tokenizer with its per-channel per-frame mean_std.pt, times sigma_data 0.5) and write the DiT "
            "latent dataset to --output_dir: latents-*.safetensors, manifest.jsonl, text_embeddings.safetensors (one "
            "row per distinct caption; computed, read from t5_xxl pickles with --trust-pickle, or from `prepare "
            "text-embeddings`), dataset.json with the skip report. Parallel (--workers; byte-identical output for any "
            "number), resumable after a kill, bad videos skipped with a reason."
        ),
    )
    add_flags(la, LatentsConfig)
    la.set_defaults(func=_run_latents)


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
    from cosmos_nemo.data_prep.ar_tokens import prepare_ar_tokens
    from cosmos_nemo.data_prep.flags import from_args
    from cosmos_nemo.data_prep.settings import ARTokensConfig

    cfg = from_args(ARTokensConfig, args)
    return _report(lambda: prepare_ar_tokens(cfg))


def _run_v2w(args) -> int:
    from cosmos_nemo.data_prep.flags import from_args
    from cosmos_nemo.data_prep.settings import V2WConfig
    from cosmos_nemo.data_prep.v2w import prepare_v2w

    cfg = from_args(V2WConfig, args)
    if cfg.split_string:
        print(f"note: --split_string {cfg.split_string} is applied when training reads the dataset, not here")
    return _report(lambda: prepare_v2w(cfg))


def _run_prompts(args) -> int:
    from cosmos_nemo.data_prep.engine import PrepareError
    from cosmos_nemo.data_prep.flags import from_args
    from cosmos_nemo.data_prep.prompts import create_prompts
    from cosmos_nemo.data_prep.settings import PromptsConfig

    cfg = from_args(PromptsConfig, args)
    try:
        rep = create_prompts(cfg.dataset_path, cfg.prompt, overwrite=cfg.overwrite, jsonl=cfg.jsonl)
    except PrepareError as e:
        print(f"error: {e}")
        return 2
    print(f"wrote {rep.written} caption files, kept {rep.kept} existing ones in {cfg.dataset_path / 'metas'}"
          + (f"; wrote {rep.jsonl}" if rep.jsonl else ""))
    return 0


def _run_text_embeddings(args) -> int:
    from cosmos_nemo.data_prep.flags import from_args
    from cosmos_nemo.data_prep.settings import TextEmbeddingsConfig
    from cosmos_nemo.data_prep.text_embeddings import prepare_text_embeddings

    cfg = from_args(TextEmbeddingsConfig, args)
    return _report(lambda: prepare_text_embeddings(cfg))


def _run_latents(args) -> int:
    from cosmos_nemo.data_prep.flags import from_args
    from cosmos_nemo.data_prep.latents import prepare_latents
    from cosmos_nemo.data_prep.settings import LatentsConfig

    cfg = from_args(LatentsConfig, args)
    return _report(lambda: prepare_latents(cfg))
