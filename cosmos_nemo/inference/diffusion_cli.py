"""`cosmos-nemo generate diffusion`: Text2World / Image2World / Video2World with a Cosmos DiT.

Specs are the reference `examples/inference.py` JSON (Predict2.5; diffusion_models.md §10): one object or a
list, each `{"inference_type": "text2world|image2world|video2world", "name", "prompt" | "prompt_path",
"input_path", "num_output_frames"?, "seed"?, "guidance"?, "num_steps"?, "negative_prompt"?}`; relative
paths are read from the JSON file's folder (else the working directory). The mode follows the input when
`inference_type` is absent: no input -> text2world, an image -> image2world, a video -> video2world. The
Predict1 `video2world.py` flags (`--prompt`, `--input_image_or_video_path`, ...) describe one spec instead.

Per spec (diffusion_models.md §2, §4): the prompt is encoded with the text encoder (T5-XXL for the released
Predict1/2 models, zero-padded past the prompt; for Predict2.5 Cosmos-Reason1 computed online: the
chat-templated prompt padded with the pad token to 512 tokens, its 28 layers normalised and concatenated,
100352-d); the input is resized and center-cropped to the output size; its last frames are the conditional
frames (1 latent frame for an image, 2 for a video: `1 + t` pixel frames, the last frame repeated when the
video is shorter), encoded with the VAE; the latents are generated (inference/diffusion.py: EDM or flow
sampler, zero-context CFG), decoded, and written as `OUT/<name>.mp4` plus `OUT/<name>.png`, a contact sheet
with labelled rows (input / generated; the conditional frames are framed in blue, the boundary to the
generated ones is a red line).

Everything is checked (specs, inputs, model, VAE, text width, frame counts) before any work, and every output
is staged under a temporary name and renamed only once all specs are done: a failure leaves nothing.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional


MODES = {"text2world": 0, "image2world": 1, "video2world": 2}  # conditional latent frames
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
SPEC_KEYS = {"inference_type", "name", "prompt", "prompt_path", "input_path", "num_output_frames", "seed", "guidance",
             "num_steps", "negative_prompt", "resolution"}
VAE_ALIASES = {"wan2.1": "wan2.1", "wan": "wan2.1", "cosmos-cv": "cosmos-cv", "cosmos-cv8x8x8": "cosmos-cv",
               "cv8x8x8": "cosmos-cv"}


class GenerateError(ValueError):
    """A spec, input, model or flag that cannot be used (the message says why and what to do)."""


# ------------------------------------------------------------------------------------------------------
# Specs


@dataclass
class Spec:
    name: str
    prompt: str
    mode: str  # text2world | image2world | video2world
    input_path: Optional[Path] = None
    num_output_frames: Optional[int] = None
    seed: Optional[int] = None
    guidance: Optional[float] = None
    num_steps: Optional[int] = None
    negative_prompt: Optional[str] = None
    resolution: Optional[str] = None
    frames: Optional[np.ndarray] = field(default=None, repr=False)  # conditional pixel frames, after geometry


def _resolve(path: str, base: Optional[Path]) -> Path:
    p = Path(os.path.expanduser(path))
    if p.is_absolute() or base is None:
        return p
    return base / p if (base / p).exists() or not p.exists() else p


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def spec_from_dict(obj: dict, where: str, base: Optional[Path], mode_override: Optional[str] = None) -> Spec:
    if not isinstance(obj, dict):
        raise GenerateError(f"{where}: a spec must be a JSON object, got {type(obj).__name__}")
    if obj.get("enable_autoregressive"):
        raise GenerateError(f"{where}: enable_autoregressive (sliding-window long videos) is not supported; generate "
                            "one window (num_output_frames) and continue it with a video2world spec")
    unknown = sorted(set(obj) - SPEC_KEYS - {"enable_autoregressive"})
    if unknown:
        print(f"warning: {where}: ignoring spec keys {unknown}", file=sys.stderr)
    name = obj.get("name")
    if not isinstance(name, str) or not name.strip():
        raise GenerateError(f'{where}: every spec needs a "name" (the output is OUT/<name>.mp4)')
    if "/" in name or "\\" in name or name in (".", "..") or name.startswith("."):
        raise GenerateError(f"{where}: name {name!r} must be a plain file name (no folders, not hidden)")
    if "prompt" in obj and "prompt_path" in obj:
        raise GenerateError(f'{where} ({name}): give "prompt" or "prompt_path", not both')
    if "prompt_path" in obj:
        ppath = _resolve(str(obj["prompt_path"]), base)
        if not ppath.is_file():
            raise GenerateError(f"{where} ({name}): prompt_path {ppath} does not exist")
        prompt = ppath.read_text(encoding="utf-8").strip()
    else:
        prompt = obj.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise GenerateError(f'{where} ({name}): no prompt (give "prompt" or "prompt_path")')
    input_path = None
    if obj.get("input_path"):
        input_path = _resolve(str(obj["input_path"]), base)
    mode = mode_override or obj.get("inference_type")
    if mode is None:
        mode = "text2world" if input_path is None else ("image2world" if _is_image(input_path) else "video2world")
    if mode not in MODES:
        raise GenerateError(f"{where} ({name}): unknown inference_type {mode!r}; choose one of {sorted(MODES)}")
    if MODES[mode] and input_path is None:
        raise GenerateError(f'{where} ({name}): {mode} needs an "input_path" (an image or a video)')
    if MODES[mode] and not input_path.is_file():
        raise GenerateError(f"{where} ({name}): input_path {input_path} does not exist")
    if mode == "text2world":
        input_path = None  # the reference ignores the input of a text2world spec

    def num(key, kind):
        v = obj.get(key)
        if v is None:
            return None
        try:
            return kind(v)
        except (TypeError, ValueError):
            raise GenerateError(f"{where} ({name}): {key} must be a number, got {v!r}") from None

    return Spec(name=name, prompt=prompt.strip(), mode=mode, input_path=input_path,
                num_output_frames=num("num_output_frames", int), seed=num("seed", int),
                guidance=num("guidance", float), num_steps=num("num_steps", int),
                negative_prompt=obj.get("negative_prompt") or None, resolution=obj.get("resolution") or None)


def load_specs(paths, mode_override: Optional[str] = None) -> list[Spec]:
    specs: list[Spec] = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise GenerateError(f"-i {path}: no such spec file")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as e:
            raise GenerateError(f"{path}: not valid JSON ({e})") from None
        items = data if isinstance(data, list) else [data]
        if not items:
            raise GenerateError(f"{path}: an empty list of specs")
        for i, obj in enumerate(items):
            where = f"{path}" + (f"[{i}]" if isinstance(data, list) else "")
            specs.append(spec_from_dict(obj, where, path.parent, mode_override))
    return specs


def check_names(specs: list[Spec]) -> None:
    seen: set[str] = set()
    for s in specs:
        if s.name in seen:
            raise GenerateError(f"two specs are named {s.name!r}; each writes OUT/<name>.mp4, so names must be unique")
        seen.add(s.name)


# ------------------------------------------------------------------------------------------------------
# Model


def is_run_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.yaml").is_file() and (path / "checkpoints").is_dir()


def _diffusers_config(path: Path) -> Optional[dict]:
    for folder in (path, path / "transformer"):
        cfg = folder / "config.json"
        if folder.is_dir() and cfg.is_file():
            try:
                data = json.loads(cfg.read_text())
            except ValueError:
                return None
            if data.get("_class_name", "CosmosTransformer3DModel") == "CosmosTransformer3DModel":
                return data
    return None


def resolve_model_config(checkpoint: Path, model: Optional[str]):
    """(kind 'run' | 'released', DiTModelConfig) without loading weights."""
    from cosmos_nemo.models.dit.config import NAMED_CONFIGS, dit_config

    if not checkpoint.exists():
        raise GenerateError(f"--checkpoint-path {checkpoint} does not exist")
    if is_run_folder(checkpoint):
        from cosmos_nemo.checkpoint import run as run_folder

        family, cfg = run_folder.read_model_config(checkpoint)
        if family.name != "dit":
            raise GenerateError(f"{checkpoint} is a training run of the {family.name!r} family; `generate diffusion` "
                                "needs a DiT (use `cosmos-nemo generate` for AR models)")
        if model:
            print(f"note: --model {model} ignored: the run folder's config.yaml defines the model", file=sys.stderr)
        return "run", cfg
    if model:
        try:
            return "released", dit_config(model)
        except KeyError as e:
            raise GenerateError(str(e.args[0])) from None
    dconf = _diffusers_config(checkpoint) if checkpoint.is_dir() else None
    if dconf is not None:
        from cosmos_nemo.models.dit.convert import config_from_diffusers

        try:
            return "released", config_from_diffusers(dconf, name=checkpoint.name)
        except (KeyError, ValueError) as e:
            raise GenerateError(f"{checkpoint}: cannot read its diffusers config: {e}") from None
    for guess in (checkpoint.name, checkpoint.name.split("_")[0], checkpoint.parent.name):
        try:  # a Predict1 folder named after its model (Cosmos-Predict1-7B-Video2World[_post-trained])
            return "released", dit_config(guess)
        except KeyError:
            pass
    raise GenerateError(f"--checkpoint-path {checkpoint} is a released checkpoint: name its architecture with --model "
                        f"(one of {sorted(NAMED_CONFIGS)} or an NVIDIA model name)")


def load_model(kind: str, cfg, checkpoint: Path, weights: str, dtype: torch.dtype):
    """The DiT in eval mode (parallel state must be set up). Returns (model, a note for the log)."""
    import torch

    if kind == "run":
        from cosmos_nemo.inference.loading import load_trained_model

        model, cfg, latest = load_trained_model(checkpoint, weights, dtype=dtype)
        return model, f"run checkpoint {latest} ({weights} weights)"
    from cosmos_nemo.models.dit import convert
    from cosmos_nemo.models.dit.model import build_dit_model

    model = build_dit_model(cfg, dtype=dtype)
    if torch.cuda.is_available():
        model.cuda(torch.cuda.current_device())
    report = convert.load_released(model, cfg, checkpoint, ema=weights == "ema")
    return model.eval(), f"{report['layout']} checkpoint {checkpoint} ({report.get('weights', 'weights')})"


# ------------------------------------------------------------------------------------------------------
# Inputs


def parse_resolution(text: str) -> tuple[int, int]:
    for sep in (",", "x", "X"):
        if sep in str(text):
            h, w = str(text).split(sep, 1)
            try:
                return int(h), int(w)
            except ValueError:
                break
    raise GenerateError(f"resolution {text!r}: give HEIGHT,WIDTH (e.g. 704,1280)")


def read_input(path: Path) -> np.ndarray:
    """uint8 [T, H, W, 3] of an image (T = 1) or a video."""
    import numpy as np

    from cosmos_nemo.io.video import VideoDecodeError, read_frames

    if _is_image(path):
        from PIL import Image, UnidentifiedImageError

        try:
            return np.asarray(Image.open(path).convert("RGB"))[None]
        except (OSError, UnidentifiedImageError) as e:
            raise GenerateError(f"{path}: not a readable image ({e})") from None
    try:
        frames = read_frames(path)
    except (VideoDecodeError, OSError, ValueError) as e:
        raise GenerateError(f"{path}: not a readable video ({e})") from None
    if frames.shape[0] == 0:
        raise GenerateError(f"{path}: a video without frames")
    return frames


def conditional_frames(frames: np.ndarray, n_px: int, height: int, width: int) -> np.ndarray:
    """The last `n_px` frames (the last repeated when there are fewer), resized and center-cropped."""
    import numpy as np

    from cosmos_nemo.data_prep.clips import apply_geometry, geometry

    frames = frames[-n_px:]
    if frames.shape[0] < n_px:
        frames = np.concatenate([frames, np.repeat(frames[-1:], n_px - frames.shape[0], axis=0)])
    return apply_geometry(frames, geometry(frames.shape[1], frames.shape[2], height, width, "crop"))


# ------------------------------------------------------------------------------------------------------
# The contact sheet


def labelled_sheet(rows: list[tuple[str, dict[int, np.ndarray]]], columns: list[int], boundary: Optional[int],
                   title: str, path: Path, cond_frames: int = 0) -> Path:
    """A PNG: a title line, then one row per (label, {frame index: uint8 [H, W, 3]}) over `columns` (frame
    indices; a missing index is left blank), each column captioned with its index; frames before
    `cond_frames` are framed in blue and a red line marks `boundary` (the first generated column)."""
    from PIL import Image, ImageDraw

    from cosmos_nemo.io.atomic import atomic_path

    h, w = next(iter(next(r for _, r in rows if r).values())).shape[:2]
    gap, margin, top, cap = 6, 84, (30 if cond_frames else 18), 12
    width = max(margin + len(columns) * (w + gap), 460 if cond_frames else 0)
    height = top + len(rows) * (h + gap + cap)
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((4, 3), title[: max(8, width // 6)], fill="black")
    if cond_frames:
        draw.text((4, 15), "blue: conditional frames (from the input); red line: generated from here", fill=(90, 90, 90))
    for r, (label, frames) in enumerate(rows):
        y = top + r * (h + gap + cap)
        draw.text((4, y + h // 2 - 5), label, fill="black")
        for c, idx in enumerate(columns):
            x = margin + c * (w + gap)
            draw.text((x, y + h + 1), str(idx), fill="gray")
            if idx not in frames:
                continue
            sheet.paste(Image.fromarray(frames[idx]), (x, y))
            if idx < cond_frames:
                draw.rectangle([x - 2, y - 2, x + w + 1, y + h + 1], outline=(40, 90, 255), width=2)
    if boundary is not None and boundary in columns:
        x = margin + columns.index(boundary) * (w + gap) - gap // 2 - 1
        draw.line([(x, top - 2), (x, height - 1)], fill=(230, 20, 20), width=2)
    with atomic_path(path, suffix=".png") as tmp:
        sheet.save(tmp)
    return path


def sheet_columns(total: int, cond: int, max_frames: int = 9) -> list[int]:
    import numpy as np

    cols = set(np.linspace(0, total - 1, min(max_frames, total)).round().astype(int).tolist())
    if cond:
        cols |= {cond - 1, min(cond, total - 1)}
    return sorted(cols)


# ------------------------------------------------------------------------------------------------------
# The command


@dataclass
class Job:
    spec: Spec
    n_cond: int  # conditional latent frames
    n_px: int  # conditional pixel frames
    frames_out: int
    height: int
    width: int
    steps: int
    guidance: float
    seed: int

    def batch_key(self) -> tuple:
        return (self.n_cond, self.frames_out, self.height, self.width, self.steps, self.guidance, self.seed)


def _specs_from_args(args) -> list[Spec]:
    if args.input_files and args.prompt:
        raise GenerateError("give specs with -i or one spec with --prompt, not both")
    if args.input_files:
        if args.input_image_or_video_path:
            raise GenerateError("--input_image_or_video_path describes a --prompt spec; with -i each spec has its input_path")
        return load_specs(args.input_files, args.inference_type)
    if not args.prompt:
        raise GenerateError("nothing to generate: give -i SPECS.json or --prompt TEXT")
    name = Path(args.video_save_name).stem if args.video_save_name else "output"
    obj = {"name": name, "prompt": args.prompt}
    if args.input_image_or_video_path:
        obj["input_path"] = args.input_image_or_video_path
    if args.negative_prompt:
        obj["negative_prompt"] = args.negative_prompt
    return [spec_from_dict(obj, "--prompt", None, args.inference_type)]


def _plan(specs: list[Spec], args, cfg, vae) -> list[Job]:
    t, s, _ = vae.compression
    patch = cfg.patch_spatial
    default_frames = args.num_output_frames or (121 if vae.kind == "cosmos-cv" else 93)
    jobs = []
    for spec in specs:
        res = spec.resolution or args.resolution
        if res:
            height, width = parse_resolution(res)
        else:
            height, width = args.height, args.width
        unit = s * patch
        if height % unit or width % unit or height < unit or width < unit:
            raise GenerateError(f"{spec.name}: {height}x{width} is not a multiple of {unit} (VAE {s}x spatial x DiT patch "
                                f"{patch}); use e.g. {max(unit, round(height / unit) * unit)}x"
                                f"{max(unit, round(width / unit) * unit)}")
        frames_out = spec.num_output_frames or default_frames
        if frames_out < 1 or (frames_out - 1) % t:
            raise GenerateError(f"{spec.name}: num_output_frames {frames_out} is not 1 + k*{t} (the VAE's temporal "
                                f"compression); use {1 + max(1, round((frames_out - 1) / t)) * t}")
        n_cond = MODES[spec.mode]
        if spec.mode == "video2world" and args.num_input_frames is not None:
            if args.num_input_frames not in (1, 1 + t):
                raise GenerateError(f"--num_input_frames {args.num_input_frames}: use 1 or {1 + t} (1 or 2 latent frames "
                                    f"of the {vae.name} VAE)")
            n_cond = 1 + (args.num_input_frames - 1) // t
        n_px = 1 + (n_cond - 1) * t if n_cond else 0
        latent_t = 1 + (frames_out - 1) // t
        if n_cond and not cfg.video2world:
            raise GenerateError(f"{spec.name}: {spec.mode} needs a Video2World DiT; {cfg.name!r} is a Text2World model "
                                "(use a text2world spec, or a Video2World checkpoint)")
        if n_cond >= latent_t:
            raise GenerateError(f"{spec.name}: {n_px} conditional frames fill all {frames_out} output frames; raise "
                                f"num_output_frames above {n_px}")
        if vae.kind == "cosmos-cv":
            vae.check_clip(frames_out, height, width)
        lt, lh, lw = latent_t // cfg.patch_temporal, height // s // patch, width // s // patch
        if lt > cfg.max_size[0] or lh > cfg.max_size[1] or lw > cfg.max_size[2]:
            raise GenerateError(f"{spec.name}: {frames_out}x{height}x{width} gives {lt}x{lh}x{lw} tokens, more than the "
                                f"DiT's max_size {tuple(cfg.max_size)}")
        if n_cond:
            spec.frames = conditional_frames(read_input(spec.input_path), n_px, height, width)
        jobs.append(Job(spec, n_cond, n_px, frames_out, height, width,
                        steps=spec.num_steps or args.num_steps,
                        guidance=args.guidance if spec.guidance is None else spec.guidance,
                        seed=args.seed if spec.seed is None else spec.seed))
        if jobs[-1].steps < 1:
            raise GenerateError(f"{spec.name}: num_steps must be >= 1")
    return jobs


def _batches(jobs: list[Job], size: int) -> list[list[Job]]:
    groups: dict[tuple, list[Job]] = {}
    for job in jobs:
        groups.setdefault(job.batch_key(), []).append(job)
    out = []
    for group in groups.values():
        out += [group[i: i + size] for i in range(0, len(group), size)]
    return out


def text_encoder_spec(args, cfg) -> str:
    """The text encoder of this run: --text-encoder (default reason1 for a Predict2.5 DiT, whose text is
    projected from crossattn_proj_in, else t5-11b), with --text-encoder-path for reason1; checked before any work."""
    from cosmos_nemo.data_prep import reason1

    name = args.text_encoder or ("reason1" if cfg.crossattn_proj_in else "t5-11b")
    try:
        return reason1.resolve_spec(name, getattr(args, "text_encoder_path", None), path_flag="--text-encoder-path",
                                    encoder_flag="--text-encoder")
    except reason1.Reason1Error as e:
        raise GenerateError(str(e)) from None


def run(args) -> int:
    from cosmos_nemo.data_prep.engine import PrepareError
    from cosmos_nemo.io.tensors import TensorFileError
    from cosmos_nemo.models.common.keymap import CheckpointMismatchError
    from cosmos_nemo.tokenizers.text import TextEncoderNotAvailableError

    try:
        return _run(args)
    except (GenerateError, PrepareError, TextEncoderNotAvailableError, TensorFileError, CheckpointMismatchError,
            FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _run(args) -> int:
    import torch

    from cosmos_nemo import parallel
    from cosmos_nemo.data_prep import reason1
    from cosmos_nemo.data_prep.vae import decode_latents, load_latent_encoder
    from cosmos_nemo.inference.diffusion import GenerationSettings, generate_latents
    from cosmos_nemo.io.atomic import temporary_name
    from cosmos_nemo.io.video import write_mp4
    from cosmos_nemo.tokenizers.text import load_text_encoder

    out_dir = Path(args.output_dir or args.video_save_folder or "outputs")
    if out_dir.exists() and not out_dir.is_dir():
        raise GenerateError(f"-o {out_dir} is a file; give a folder")
    specs = _specs_from_args(args)
    check_names(specs)
    if args.batch_size < 1:
        raise GenerateError("--batch-size must be >= 1")
    if args.checkpoint_path:
        checkpoint = Path(args.checkpoint_path)
    elif args.checkpoint_dir or args.diffusion_transformer_dir:
        checkpoint = Path(args.checkpoint_dir or ".") / (args.diffusion_transformer_dir or "")
    else:
        raise GenerateError("no model: give --checkpoint-path (a training run folder or a released checkpoint), or the "
                            "Predict1 spelling --checkpoint_dir DIR --diffusion_transformer_dir NAME")
    kind, cfg = resolve_model_config(checkpoint, args.model)
    text_spec = text_encoder_spec(args, cfg)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype or ("bfloat16" if device == "cuda" else "float32")]
    vae_kind = VAE_ALIASES.get((args.vae or ("cosmos-cv" if cfg.generation == "predict1" else "wan2.1")).lower())
    if vae_kind is None:
        raise GenerateError(f"--vae {args.vae!r}: choose wan2.1 or cosmos-cv8x8x8")
    vae_path = args.vae_path
    if vae_path and args.checkpoint_dir and not Path(vae_path).exists() and (Path(args.checkpoint_dir) / vae_path).exists():
        vae_path = str(Path(args.checkpoint_dir) / vae_path)  # Predict1: --tokenizer_dir names a folder in --checkpoint_dir
    vae = load_latent_encoder(vae_kind, vae_path, device=device, latent_scale=args.latent_scale,
                              mean_std=args.mean_std)
    if vae.channels != cfg.out_channels:
        raise GenerateError(f"the {vae.name} VAE has {vae.channels} latent channels, the DiT {cfg.name!r} "
                            f"{cfg.out_channels}")
    jobs = _plan(specs, args, cfg, vae)

    # text: every distinct prompt once
    width_needed = cfg.crossattn_proj_in or cfg.context_dim
    if reason1.is_reason1(text_spec):  # computed online as the reference, in the DiT's dtype (bf16 on a GPU)
        encoder = reason1.load_encoder(text_spec, device=device, dtype=dtype, max_length=args.prompt_length)
    else:
        encoder = load_text_encoder(text_spec, device=device, max_length=args.prompt_length)
    if encoder.dim != width_needed:
        what = (" (Predict2.5: Cosmos-Reason1 embeddings; --text-encoder reason1 --text-encoder-path FOLDER)"
                if cfg.crossattn_proj_in else "")
        raise GenerateError(f"the text encoder {encoder.name!r} gives {encoder.dim}-d embeddings, but the DiT "
                            f"{cfg.name!r} reads {width_needed}-d text tokens{what}; pass a matching --text-encoder")
    prompts = list(dict.fromkeys([j.spec.prompt for j in jobs] + [j.spec.negative_prompt for j in jobs
                                                                      if j.spec.negative_prompt]))
    enc = encoder.encode(prompts).embeddings
    text = {p: enc[i] for i, p in enumerate(prompts)}
    del encoder, enc
    if device == "cuda":
        torch.cuda.empty_cache()  # the text encoder (Reason1: 8B parameters) is gone before the DiT loads

    # conditional latents
    cond = {}
    for job in jobs:
        if job.n_cond:
            z = vae.encode(job.spec.frames[None])
            if z.shape[2] != job.n_cond:
                raise GenerateError(f"{job.spec.name}: {job.n_px} frames encode to {z.shape[2]} latent frames, "
                                    f"expected {job.n_cond}")
            cond[job.spec.name] = z[0]

    parallel.setup()
    staged: list[tuple[Path, Path]] = []
    created = not out_dir.exists()
    try:
        model, note = load_model(kind, cfg, checkpoint, args.weights, dtype)
        print(f"model {cfg.name} ({cfg.generation}, {cfg.objective.kind}) from {note}; VAE {vae.name}; "
              f"{len(jobs)} video(s)", file=sys.stderr)
        out_dir.mkdir(parents=True, exist_ok=True)
        t, s, _ = vae.compression
        for batch in _batches(jobs, args.batch_size):
            j0 = batch[0]
            shape = (len(batch), vae.channels, 1 + (j0.frames_out - 1) // t, j0.height // s, j0.width // s)
            settings = GenerationSettings(steps=j0.steps, guidance=j0.guidance, seed=j0.seed, solver=args.solver,
                                          shift=args.shift, karras=args.karras)
            context = torch.stack([text[j.spec.prompt] for j in batch])
            condition = torch.stack([cond[j.spec.name] for j in batch]) if j0.n_cond else None
            # guidance's unconditional branch: a spec's negative prompt, else the zero context (the references')
            uncond = torch.stack([text[j.spec.negative_prompt] if j.spec.negative_prompt
                                  else torch.zeros_like(text[j.spec.prompt]) for j in batch])
            latents = generate_latents(model, context, shape, settings, condition=condition, fps=args.fps,
                                       uncond_context=uncond)
            videos = decode_latents(vae, latents)
            for job, video in zip(batch, videos):
                video = video[: job.frames_out]
                mp4, png = out_dir / f"{job.spec.name}.mp4", out_dir / f"{job.spec.name}.png"
                tmp_mp4, tmp_png = temporary_name(mp4, ".mp4"), temporary_name(png, ".png")
                staged += [(tmp_mp4, mp4), (tmp_png, png)]
                write_mp4(tmp_mp4, video, fps=args.fps, deterministic=True,
                          **({"crf": 0, "pix_fmt": "yuv444p"} if args.lossless else {}))
                cols = sheet_columns(video.shape[0], job.n_px)
                rows = [("generated", {i: video[i] for i in cols})]
                if job.n_cond:
                    rows.insert(0, ("input", {i: job.spec.frames[i] for i in cols if i < job.n_px}))
                labelled_sheet(rows, cols, job.n_px if job.n_cond else None,
                               f"{job.spec.name} [{job.spec.mode}, seed {job.seed}, {job.steps} steps, guidance "
                               f"{job.guidance:g}]: {job.spec.prompt}", tmp_png, cond_frames=job.n_px)
        for tmp, final in staged:
            os.replace(tmp, final)
        staged = []
    finally:
        for tmp, _ in staged:
            if tmp.exists():
                tmp.unlink()
        if created and out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()
        parallel.teardown()
    for job in jobs:
        print(f"wrote {out_dir / (job.spec.name + '.mp4')} ({job.spec.mode}, {job.frames_out} frames "
              f"{job.height}x{job.width}) and {out_dir / (job.spec.name + '.png')}")
    return 0


# ------------------------------------------------------------------------------------------------------
# The parser


def register_diffusion(modes) -> None:
    """Add `diffusion` to the `generate` parser's sub-commands."""
    import argparse

    p = modes.add_parser(
        "diffusion",
        help="Text/Image/Video2World with a Cosmos DiT: specs JSON in, mp4s + contact sheets out",
        description=__doc__.split("\n\n", 1)[1].strip() if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = p.add_argument_group("specs and outputs (Predict2.5 examples/inference.py)")
    g.add_argument("-i", "--input-files", dest="input_files", nargs="+", default=None, metavar="SPECS.json",
                   help="spec JSON file(s): one object or a list each")
    g.add_argument("-o", "--output-dir", dest="output_dir", default=None, metavar="OUT",
                   help="output folder: OUT/<name>.mp4 and OUT/<name>.png (default: --video_save_folder, else outputs)")
    g.add_argument("--inference-type", dest="inference_type", choices=sorted(MODES), default=None,
                   help="force the mode of every spec (default: the spec's inference_type, else from its input)")
    g.add_argument("--batch-size", dest="batch_size", type=int, default=4,
                   help="specs of the same shape, steps, guidance and seed are generated together, this many at a time "
                        "(default 4; the noise of a batch comes from its one seed, so use 1 for videos that depend "
                        "only on their own spec)")
    m = p.add_argument_group("model")
    m.add_argument("--checkpoint-path", dest="checkpoint_path", default=None, metavar="PATH",
                   help="a `cosmos-nemo train` run folder (latest checkpoint), or a released DiT: Cosmos model.pt / "
                        "consolidated .pt / .safetensors, a Predict2.5 DCP folder, or a diffusers folder")
    m.add_argument("--model", default=None, metavar="NAME",
                   help="the architecture of a released checkpoint: a DiT config name (predict1_7b_v2w, predict25_2b, "
                        "tiny_predict25, ...) or an NVIDIA model name; not needed for run folders or diffusers folders "
                        "(their config.json defines it)")
    m.add_argument("--weights", choices=("model", "ema"), default="model",
                   help="regular or EMA weights (run folders: model/ or ema/; Cosmos files: net. or net_ema.; default model)")
    m.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                   help="DiT compute dtype (default bfloat16 on a GPU, float32 on a CPU)")
    m.add_argument("--checkpoint_dir", default=None,
                   help="Predict1 spelling: the checkpoints root; the DiT is --checkpoint_dir/--diffusion_transformer_dir")
    m.add_argument("--diffusion_transformer_dir", default=None,
                   help="Predict1 spelling: the model folder under --checkpoint_dir (e.g. Cosmos-Predict1-7B-Video2World; "
                        "its name also selects the architecture when --model is not given)")
    v = p.add_argument_group("VAE and text encoder")
    v.add_argument("--vae", default=None, metavar="{wan2.1,cosmos-cv8x8x8}",
                   help="the VAE the DiT was trained with (default: cosmos-cv8x8x8 for Predict1 models, wan2.1 otherwise)")
    v.add_argument("--vae-path", "--tokenizer_dir", dest="vae_path", default=None, metavar="PATH",
                   help="its weights (with --checkpoint_dir, a folder name inside it is found there too): a diffusers AutoencoderKLWan folder / hub id (default "
                        "Wan-AI/Wan2.1-T2V-1.3B-Diffusers), or a Cosmos CV tokenizer folder / name (default "
                        "nvidia/Cosmos-Tokenize1-CV8x8x8-720p)")
    v.add_argument("--mean-std", dest="mean_std", default=None, metavar="FILE",
                   help="cosmos-cv8x8x8: the latent statistics (default: mean_std.pt beside the tokenizer)")
    v.add_argument("--latent-scale", dest="latent_scale", type=float, default=None,
                   help="the factor the normalised latents were multiplied by in training (default: 0.5 for "
                        "cosmos-cv8x8x8, 1 for wan2.1, as `prepare latents`)")
    v.add_argument("--text-encoder", dest="text_encoder", default=None, metavar="NAME_OR_PATH",
                   help="t5-11b (the released Predict1/2 models; default for them), reason1 (Predict2.5: "
                        "Cosmos-Reason1 computed online, 28 normalised layers concatenated, 100352-d; default for "
                        "Predict2.5 models; needs --text-encoder-path), reason1-tiny (a random 512-d Reason1 for "
                        "tiny_predict25 on a CPU), minilm (offline, 384-d), or a transformers encoder folder (a "
                        "Qwen2.5-VL one is Reason1); its width must be the DiT's text width")
    v.add_argument("--text-encoder-path", dest="text_encoder_path", default=None, metavar="FOLDER",
                   help="reason1: the local Cosmos-Reason1-7B checkpoint (a download of nvidia/Cosmos-Reason1-7B, or "
                        "a diffusers Cosmos-Predict2.5 folder with text_encoder/ and tokenizer/)")
    v.add_argument("--prompt-length", dest="prompt_length", type=int, default=None,
                   help="text tokens per prompt (default: the encoder's, 512 for T5 and Reason1)")
    s = p.add_argument_group("sampling")
    s.add_argument("--num_steps", "--num-steps", dest="num_steps", type=int, default=35,
                   help="sampler steps where a spec has no num_steps (default 35)")
    s.add_argument("--guidance", type=float, default=7.0,
                   help="classifier-free guidance w in cond + w (cond - uncond), where a spec has none (default 7; 0 = off)")
    s.add_argument("--seed", type=int, default=1, help="noise seed where a spec has none (default 1)")
    s.add_argument("--solver", choices=("euler", "heun", "unipc"), default=None,
                   help="EDM (Predict1): euler (default) or heun; flow (Predict2/2.5): unipc (default) or euler")
    s.add_argument("--shift", type=float, default=5.0, help="flow: the schedule shift (default 5)")
    s.add_argument("--karras", action="store_true",
                   help="flow: Karras sigmas in [0.01, 200] (Predict2.5's use_kerras_sigma_at_inference)")
    s.add_argument("--fps", type=float, default=24.0,
                   help="frame rate of the mp4s and of the DiT's fps conditioning (Predict1 RoPE; default 24)")
    s.add_argument("--height", type=int, default=704, help="output height (default 704)")
    s.add_argument("--width", type=int, default=1280, help="output width (default 1280)")
    s.add_argument("--resolution", default=None, metavar="H,W",
                   help="output size as HEIGHT,WIDTH (overrides --height/--width; a spec's resolution overrides it)")
    s.add_argument("--num_output_frames", "--num-output-frames", "--num_video_frames", dest="num_output_frames", type=int,
                   default=None, help="frames per video, 1 + k*t, where a spec has none (default 93 for wan2.1, 121 "
                                      "for cosmos-cv8x8x8)")
    g.add_argument("--lossless", action="store_true",
                   help="write the mp4s near-lossless (H.264 crf 0, yuv444p: only the RGB/YUV rounding, a few levels) "
                        "instead of crf 18 yuv420p, e.g. to compare frames")
    r = p.add_argument_group("Predict1 video2world.py flags (one spec from flags instead of -i)")
    r.add_argument("--prompt", default=None, help="the prompt of the one spec")
    r.add_argument("--negative_prompt", default=None,
                   help="the text of guidance's unconditional branch (default: the zero text context, the references' "
                        "convention); also a spec's \"negative_prompt\"")
    r.add_argument("--input_image_or_video_path", default=None,
                   help="the spec's input: an image (image2world) or a video (video2world); none: text2world")
    r.add_argument("--num_input_frames", type=int, default=None,
                   help="conditional frames taken from a video input: 1 or 1 + t (9 for cosmos-cv8x8x8, 5 for wan2.1; "
                        "default 1 + t, i.e. 2 latent frames)")
    r.add_argument("--video_save_name", default=None,
                   help="the spec's output name (its stem names OUT/<stem>.mp4; default output)")
    r.add_argument("--video_save_folder", default=None, help="the output folder (same as -o)")
    p.set_defaults(func=run)
