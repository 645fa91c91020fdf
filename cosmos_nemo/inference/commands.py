"""`cosmos-nemo generate`: continue a video (or an image) with a trained AR model, base or Video2World.

The flags are those of the reference `nemo/inference/general.py` and `nemo/inference/video2world.py`
(`--prompt`), plus cosmos-predict1's `--batch_input_path`/`--video_save_folder`, with kebab-case aliases.
Imports stay inside the functions (the CLI starts fast).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _flag(p, reference: str, **kw):
    kebab = reference.replace("_", "-")
    names = [reference] if kebab == reference else [reference, kebab]
    p.add_argument(*names, **kw)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="continue a video or image with a trained AR model (base or Video2World) and write an mp4 + contact sheet",
        description="Continue a video (or an image) with a trained Cosmos AR model: the input is resized and "
        "center-cropped to WIDTHxHEIGHT, its last --num_input_frames frames are kept and padded to "
        "--num_context_frames by repeating the last one (as the reference does), tokenized, and the latent "
        "frames covering the input are the prompt; the rest of the latent grid is sampled with a KV cache and "
        "decoded. Runs in one process (TP=1). Writes the mp4 and a PNG contact sheet (input | generated). "
        "A Video2World model (5B/13B, tiny_v2w) also needs a text prompt (--prompt, or --batch_input_path for a "
        "jsonl of {\"prompt\", \"visual_input\"}), as the reference video2world.py: the text is encoded once "
        "per clip by the encoder its training data used (prepare v2w), the sequence is [BOV] + clip as in "
        "training, and the cross-attention's text K/V are computed once and cached. The records of "
        "--batch_input_path run as one batch; record k samples with seed --seed + k (so it can be reproduced "
        "alone with --seed SEED+k). Flags map to the reference's: general.py / video2world.py spellings are "
        "accepted as written (with kebab-case aliases); --batch_input_path and --video_save_folder are "
        "cosmos-predict1's. For diffusion (DiT) models use `cosmos-nemo generate diffusion` (see `cosmos-nemo "
        "generate diffusion --help`).",
    )
    _flag(p, "--input_image_or_video_path", default=None, help="(required unless --batch_input_path) the video or image to continue")
    _flag(p, "--input_type", choices=("video", "image"), default="video", help="video or image (default video)")
    _flag(p, "--prompt", default=None, help="Video2World: the text prompt (required for a Video2World model; refused for a base model)")
    _flag(p, "--batch_input_path", default=None,
          help="a jsonl with one {\"prompt\": ..., \"visual_input\": path} per line (the `prepare v2w` input; "
               "paths relative to the jsonl's folder; \"prompt\" only for Video2World models); all records run as "
               "one batch and need the same --input_type; outputs go to --video_save_folder as <line>.mp4")
    _flag(p, "--batch-size", type=int, default=None,
          help="with --batch_input_path: clips per generation batch (default: all records in one batch); the "
               "tokens do not depend on it (record k always samples with seed --seed + k)")
    _flag(p, "--video_save_folder", default="outputs",
          help="with --batch_input_path: folder of the outputs 0.mp4, 1.mp4, ... (default outputs)")
    _flag(p, "--ar_model_dir", default=None, help="(required) a run folder written by `cosmos-nemo train` (its latest checkpoint is used)")
    _flag(p, "--encoder_path", default=None, help="(required) the video tokenizer: a registry name, hub id, or folder from train-tokenizer")
    _flag(p, "--decoder_path", default=None, help="accepted for the reference's spelling; must equal --encoder_path if given")
    _flag(p, "--width", type=int, default=1024, help="frame width the model was trained at (default 1024)")
    _flag(p, "--height", type=int, default=640, help="frame height (default 640)")
    _flag(p, "--num_context_frames", type=int, default=33, help="frames of a full clip, 1 + k*t (default 33)")
    _flag(p, "--num_input_frames", type=int, default=9, help="input frames used as the prompt, 1 + k*t (default 9; 1 for an image)")
    _flag(p, "--tokenizer_compression_factor", default=None, help="t,h,w; checked against the tokenizer when given")
    _flag(p, "--video_save_name", default="generated_video.mp4", help="output mp4 of a single input (default generated_video.mp4)")
    _flag(p, "--top_p", type=float, default=0.8, help="nucleus sampling mass (default 0.8)")
    _flag(p, "--top_k", type=int, default=0, help="top-k sampling (1 = greedy; default 0 = use top_p)")
    _flag(p, "--temperature", type=float, default=1.0, help="sampling temperature (a float; default 1.0)")
    _flag(p, "--seed", type=int, default=0, help="sampling seed (default 0); record k of --batch_input_path uses seed + k")
    _flag(p, "--weights", choices=("model", "ema"), default="model", help="which weights of the checkpoint (default model)")
    _flag(p, "--fps", type=float, default=24.0, help="output frame rate (default 24)")
    _flag(p, "--text_encoder", default=None,
          help="Video2World: the text encoder, as `prepare v2w --text_encoder` (t5-11b, minilm, a folder or hub id); "
               "default: the one the run's training data was prepared with (recorded in its dataset.json), else "
               "from the model's context width: 1024 -> t5-11b, 384 -> minilm")
    _flag(p, "--prompt_length", type=int, default=None,
          help="Video2World: text tokens per prompt, as `prepare v2w --prompt_length` (default: the length of the "
               "run's training text embeddings when its dataset is readable, else the encoder's: 512 T5, 256 MiniLM)")
    _flag(p, "--no_text_mask", action="store_true",
          help="Video2World: let the cross-attention see the padded text positions (zero vectors), as NVIDIA's "
               "reference inference does; use it for released weights not fine-tuned here. Default: they are "
               "masked, as training here masks them")
    _flag(p, "--disable_diffusion_decoder", action="store_true",
          help="accepted for the reference's command line: tokens are always decoded by --encoder_path's decoder "
               "(there is no diffusion decoder here)")
    p.set_defaults(func=_run, _generate_parser=p)
    modes = p.add_subparsers(dest="generate_family", metavar="{diffusion}",
                             help="`diffusion`: Text/Image/Video2World with a Cosmos DiT (without it: AR generation)")
    from cosmos_nemo.inference.diffusion_cli import register_diffusion

    register_diffusion(modes)


_AR_REQUIRED = ("input_image_or_video_path", "ar_model_dir", "encoder_path")


class _InputError(ValueError):
    """A bad command line or input, reported before anything is written."""


def _read_batch_input(path: str) -> list[tuple[str | None, str]]:
    """(prompt or None, absolute visual_input path) per non-empty line of a --batch_input_path jsonl."""
    import json

    jsonl = Path(path)
    if not jsonl.is_file():
        raise _InputError(f"--batch_input_path {jsonl} does not exist")
    base = jsonl.resolve().parent
    records = []
    for n, line in enumerate(jsonl.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError as e:
            raise _InputError(f"{jsonl}:{n}: not valid JSON ({e})") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("visual_input"), str) or (
                "prompt" in rec and not isinstance(rec["prompt"], str)):
            raise _InputError(f'{jsonl}:{n}: each line needs a string "visual_input" (and, for a Video2World model, '
                              f'a string "prompt"), got {line[:120]!r}')
        video = Path(rec["visual_input"])
        records.append((rec.get("prompt"), str(video if video.is_absolute() else base / video)))
    if not records:
        raise _InputError(f"--batch_input_path {jsonl} holds no records")
    return records


def _check_prompts(cfg, prompts: list, run_dir: str) -> None:
    """A Video2World model needs a prompt for every clip; a base model takes none."""
    if cfg.video2world:
        missing = [i for i, p in enumerate(prompts) if p is None or not p.strip()]
        if missing:
            where = ("pass --prompt \"...\"" if len(prompts) == 1 and missing == [0] else
                     f'give every line of --batch_input_path a "prompt" (missing on records {missing[:8]})')
            raise _InputError(f"{run_dir} is a Video2World model ({cfg.name}): it generates from a text prompt; {where}")
    elif any(p is not None for p in prompts):
        raise _InputError(f"{run_dir} is a base model ({cfg.name}) without text conditioning: drop --prompt (and the "
                          "jsonl's \"prompt\" fields), or use a Video2World run")


def _training_text(run_dir: str) -> tuple[int | None, str | None]:
    """(token count L, text encoder) of the text embeddings the run trained on, each when its datasets are still
    readable and agree on it (the encoder is recorded by `prepare v2w` in dataset.json)."""
    import yaml

    from cosmos_nemo.data.ar_dataset import read_text_embedding_shape

    lengths, encoders = set(), set()
    try:
        data = (yaml.safe_load((Path(run_dir) / "config.yaml").read_text()) or {}).get("data") or {}
        for root in data.get("paths") or []:
            for emb in [Path(root) / "text_embeddings.safetensors", *sorted(Path(root).glob("*/text_embeddings.safetensors"))]:
                if emb.is_file():
                    lengths.add(read_text_embedding_shape(emb)[1])
                    meta = emb.parent / "dataset.json"
                    info = json.loads(meta.read_text()) if meta.is_file() else {}
                    encoders.add(info.get("text_encoder") if isinstance(info, dict) else None)
    except Exception:  # noqa: BLE001 - best effort: the flags and the encoder default remain
        return None, None
    encoders.discard(None)
    return (lengths.pop() if len(lengths) == 1 else None), (encoders.pop() if len(encoders) == 1 else None)


def _run(args) -> int:
    given = dict(vars(args))
    if args.batch_input_path is not None:
        given["input_image_or_video_path"] = args.batch_input_path
    missing = [f"--{name}" for name in _AR_REQUIRED if given.get(name) is None]
    if missing:  # argparse's own message and exit status (the flags are not `required` so that `diffusion` parses)
        args._generate_parser.error(f"the following arguments are required: {', '.join(missing)}")
    try:
        return _generate(args)
    except _InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _generate(args) -> int:
    import numpy as np

    from cosmos_nemo import parallel
    from cosmos_nemo.checkpoint.run import read_model_config
    from cosmos_nemo.data_prep.clips import apply_geometry, geometry
    from cosmos_nemo.inference import ar
    from cosmos_nemo.inference.loading import load_trained_model
    from cosmos_nemo.inference.media import contact_sheet
    from cosmos_nemo.io.video import VideoDecodeError, read_frames, write_mp4
    from cosmos_nemo.tokenizers import load_video_tokenizer
    from cosmos_nemo.tokenizers.grid import Compression, GridError, check_frames
    from cosmos_nemo.tokenizers.text import TextEncoderNotAvailableError

    if args.decoder_path and args.decoder_path != args.encoder_path:
        raise _InputError("--decoder_path must name the same tokenizer as --encoder_path")
    if args.batch_input_path is not None:
        if args.input_image_or_video_path is not None or args.prompt is not None:
            raise _InputError("--batch_input_path replaces --input_image_or_video_path and --prompt: give one or the other")
        records = _read_batch_input(args.batch_input_path)
        outputs = [Path(args.video_save_folder) / f"{k}.mp4" for k in range(len(records))]
    else:
        records = [(args.prompt, args.input_image_or_video_path)]
        outputs = [Path(args.video_save_name)]
    try:
        _, cfg = read_model_config(args.ar_model_dir)
    except (OSError, ValueError) as e:
        raise _InputError(str(e)) from None
    if getattr(cfg, "family", "ar") != "ar":
        raise _InputError(f"{args.ar_model_dir} is a {cfg.family} run; use `cosmos-nemo generate diffusion`")
    prompts = [p for p, _ in records]
    _check_prompts(cfg, prompts, args.ar_model_dir)
    try:
        tokenizer = load_video_tokenizer(args.encoder_path)
        if args.tokenizer_compression_factor and Compression.parse(args.tokenizer_compression_factor) != Compression.parse(tokenizer.compression):
            raise GridError(f"--tokenizer_compression_factor {args.tokenizer_compression_factor} does not match the "
                            f"tokenizer's {tokenizer.compression}")
        num_input = 1 if args.input_type == "image" else args.num_input_frames
        check_frames(args.num_context_frames, tokenizer.compression)
        check_frames(num_input, tokenizer.compression)
        clips = []
        for _, path in records:
            if args.input_type == "image":
                from PIL import Image

                frames = np.asarray(Image.open(path).convert("RGB"))[None]
            else:
                frames = read_frames(path)
            frames = apply_geometry(frames, geometry(frames.shape[1], frames.shape[2], args.height, args.width, "crop"))
            frames = frames[-num_input:]
            pad = args.num_context_frames - frames.shape[0]
            if pad > 0:
                frames = np.concatenate([frames, np.repeat(frames[-1:], pad, axis=0)])
            clips.append(frames[: args.num_context_frames])
    except (GridError, VideoDecodeError, OSError, ValueError) as e:
        raise _InputError(str(e)) from None
    context = context_mask = None
    if cfg.video2world:
        # The text first, then the encoder is freed (as the reference frees T5 before the AR model).
        trained_length, trained_encoder = _training_text(args.ar_model_dir)
        length = args.prompt_length or trained_length
        try:
            encoder = ar.load_text_encoder_for(cfg, args.text_encoder or trained_encoder, max_length=length)
        except (TextEncoderNotAvailableError, ValueError, OSError) as e:
            raise _InputError(str(e)) from None
        context, context_mask = ar.encode_text(encoder, prompts)
        del encoder
        if args.no_text_mask:
            context_mask = None
    sampling = ar.SamplingConfig(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, seed=args.seed)
    size = args.batch_size or len(clips)
    if size < 1:
        raise _InputError(f"--batch-size must be >= 1, got {args.batch_size}")
    parallel.setup()
    try:
        model, _, ckpt = load_trained_model(args.ar_model_dir, args.weights)
        generated = []
        for start in range(0, len(clips), size):
            part = slice(start, start + size)
            result = ar.continue_clips(
                model, tokenizer, np.stack(clips[part]), num_input, sampling,
                context=None if context is None else context[part],
                context_mask=None if context_mask is None else context_mask[part],
                seeds=[args.seed + k for k in range(start, min(start + size, len(clips)))], progress=True)
            generated.extend(result.generated)
    except (ValueError, OSError) as e:
        raise _InputError(str(e)) from None
    finally:
        parallel.teardown()
    grid, prompt_len = result.grid, result.prompt_len
    batches = -(-len(clips) // size)
    print(f"checkpoint {ckpt}; latent grid {tuple(grid)}: {prompt_len} context tokens, "
          f"{grid.num_tokens - prompt_len} generated per clip, {len(clips)} clip(s) in "
          + ("one batch" if batches == 1 else f"{batches} batches of up to {size}"))
    for k, out_path in enumerate(outputs):
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out = write_mp4(out_path, generated[k], fps=args.fps)
        sheet = contact_sheet({"input": clips[k], "generated": generated[k]}, Path(out).with_suffix(".png"))
        print(f"wrote {out}" + (f"  ({prompts[k][:60]!r})" if prompts[k] else "") + f"\nwrote {sheet}")
    return 0
