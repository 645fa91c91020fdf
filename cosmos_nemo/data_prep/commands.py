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

    _register_videophy2(sub)


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


def _register_videophy2(sub) -> None:
    vp = sub.add_parser(
        "videophy2",
        help="downloaded VideoPhy-2 (HF videophysics/videophy2_train, _test) -> the Cosmos3 Reasoner SFT layout "
             "videophy2_{train,val}/{meta.json, media/, text/} (reference: prepare_videophy2_from_hf)",
        description=(
            "Materialise VideoPhy-2 for the Cosmos3 Reasoner SFT (1-5 physical-plausibility scoring), as the "
            "reference `python -m cosmos_framework.scripts.vlm.prepare_videophy2_from_hf --out_root "
            "examples/data/videophysics --split both` does, but offline, from downloaded copies: `hf download "
            "--repo-type dataset videophysics/videophy2_train --local-dir DIR` (and videophy2_test, written as "
            "videophy2_val). Reads the data files (csv, json, jsonl; parquet with pyarrow) with the columns "
            "video_url, caption, pc (and usually sa) and writes OUT_ROOT/videophy2_{train,val}/: meta.json (a JSON "
            "list of {id, video: media/<id>.mp4, text: text/<id>.txt, caption, pc, sa, source: the video_url, and "
            "the other scalar columns}, in row order), media/<id>.mp4 (hard link or copy) and text/<id>.txt (the "
            "caption). Rows whose video is missing or does not decode, whose caption is empty or whose pc is not "
            "an integer 1-5 are skipped with a reason; each split folder is written whole or not at all."
        ),
    )
    vp.add_argument("--out_root", "--out-root", dest="out_root", type=Path, required=True, metavar="OUT_ROOT",
                    help="folder to write videophy2_train/ and videophy2_val/ into (the reference's --out_root; its "
                         "launcher takes it as VIDEOPHYSICS_ROOT)")
    vp.add_argument("--split", choices=("train", "val", "both"), default="both",
                    help="which split to write: train (from --train-dir), val (from --test-dir) or both "
                         "(default: both)")
    vp.add_argument("--train-dir", "--train_dir", dest="train_dir", type=Path, default=None, metavar="DIR",
                    help="downloaded copy of videophysics/videophy2_train (a folder of data files and videos, or one "
                         "data file)")
    vp.add_argument("--test-dir", "--test_dir", dest="test_dir", type=Path, default=None, metavar="DIR",
                    help="downloaded copy of videophysics/videophy2_test, written as videophy2_val")
    vp.add_argument("--videos", "--videos-dir", "--videos_dir", dest="videos_dir", type=Path, default=None,
                    metavar="DIR",
                    help="folder searched (recursively) for each row's video by the file name in its video_url; "
                         "default: the split's downloaded folder. A video_url that is a local path is used as is")
    vp.add_argument("--overwrite", action="store_true",
                    help="replace existing videophy2_train/ or videophy2_val/ folders (without it they are an error)")
    vp.add_argument("--limit", type=int, default=None, metavar="N",
                    help="use only the first N rows of each split, to try the command (default: all rows)")
    vp.add_argument("--no-progress", "--no_progress", dest="progress", action="store_false",
                    help="do not show progress bars (shown by default)")
    vp.set_defaults(func=_run_videophy2)


def _run_videophy2(args) -> int:
    from cosmos_nemo.data_prep.videophy2 import VideoPhy2Error, prepare_videophy2, summary

    try:
        report = prepare_videophy2(
            args.out_root, train_dir=args.train_dir, test_dir=args.test_dir, videos_dir=args.videos_dir,
            split=args.split, overwrite=args.overwrite, limit=args.limit, progress=args.progress,
        )
    except VideoPhy2Error as e:
        if e.report is not None:
            print(summary(e.report))
            print(f"error: {e}")
            return 1
        print(f"error: {e}")
        return 2
    print(summary(report))
    return 0
