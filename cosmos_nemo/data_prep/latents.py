"""`prepare latents`: a reference diffusion dataset folder -> the DiT latent dataset (`cosmos_nemo.data.dit_dataset`).

Input: `DATASET/videos/*` + `DATASET/metas/*.txt` (or Predict2.5's `captions/*.json`) [+ `t5_xxl/*.pickle`],
read by `text_embeddings.read_layout`. Output: the contract folder (latents-*.safetensors with `doc.{i}`
`[C, T, H, W]`, manifest.jsonl, text_embeddings.safetensors with one row per distinct caption actually
used, dataset.json with the VAE, text encoder and skip report).

Clips, with the reference's meanings: a clip is `--num_frames` frames taken every `--sequence_interval`
source frames, a new clip starts every `--start_frame_interval` source frames (default: back to back),
each resized to `--video_size` (H W) by `--resize-mode`. `--num_frames` must be 1 + k*t for the VAE's
temporal compression t and the size a multiple of its spatial compression: both are checked before any
work, with the nearest valid values in the message. Latents: `vae.py` (Wan2.1 through diffusers, or the
Cosmos CV tokenizer with mean_std).

The engine is `prepare ar-tokens`' (engine.py): work is split per source video, each worker encodes one
video's clips in batches of that video's clips only, with a fixed number of torch threads, and commits a
part under `DIR/.parts/` (`00000012.latents`, raw little-endian latents window after window, renamed into
place before its `00000012.json` commit marker). A kill loses at most the videos in flight; a rerun with
the same fingerprint keeps the complete parts. The merge streams the parts in source order into
`write_dit_dataset_streaming` (dataset.json last), so the dataset is byte-identical for any worker count
and after any kill and rerun. Bad videos are skipped with a reason (listed in dataset.json and the
report); captions, text embeddings and the VAE are checked before any video is read.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from cosmos_nemo.data_prep.clips import geometry, iter_windows
from cosmos_nemo.data_prep.engine import (
    PARTS_DIR,
    PREPARE_RECORD,
    PrepareError,
    Report,
    SourceItem,
    _skip,
    _strip_path,
    abandon,
    begin_writing,
    finish,
    inspect_output,
    input_listing,
    part_paths,
    prepare_parts_dir,
    read_prepare_record,
    run_jobs,
)
from cosmos_nemo.data_prep.engine import check_output_dir as engine_check_output_dir
from cosmos_nemo.data_prep.settings import LatentsConfig, compute_dtype, resolve_device
from cosmos_nemo.io.atomic import atomic_path, atomic_write_bytes, remove_tree_atomically
from cosmos_nemo.io.video import VideoDecodeError, probe

LATENT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
DEFAULT_VIDEO_SIZE = (704, 1280)


@dataclass(frozen=True)
class LatentSettings:
    """What the workers need; every field but `decode_threads` is part of the parts' fingerprint."""

    vae: str
    vae_path: str | None
    mean_std: str | None
    latent_scale: float | None
    frames: int
    height: int
    width: int
    frame_step: int
    stride: int
    resize_mode: str
    allow_upscale: bool
    batch_size: int
    device: str
    dtype: str
    latent_dtype: str
    threads_per_worker: int
    decode_threads: int

    @property
    def span(self) -> int:
        return (self.frames - 1) * self.frame_step + 1


def settings_of(cfg: LatentsConfig) -> LatentSettings:
    from cosmos_nemo.data_prep.vae import DEFAULT_FRAMES, VAE_KINDS

    if cfg.vae not in VAE_KINDS:
        raise PrepareError(f"--vae must be one of {VAE_KINDS}, got {cfg.vae!r}")
    size = list(cfg.video_size) if cfg.video_size is not None else list(DEFAULT_VIDEO_SIZE)
    if len(size) != 2:
        raise PrepareError(f"--video_size takes two numbers, H W; got {size}")
    frames = int(cfg.num_frames if cfg.num_frames is not None else DEFAULT_FRAMES[cfg.vae])
    step = int(cfg.sequence_interval)
    for flag, value in (("--num_frames", frames), ("--sequence_interval", step), ("--video_size height", size[0]),
                        ("--video_size width", size[1]), ("--workers", cfg.workers), ("--batch-size", cfg.batch_size),
                        ("--threads-per-worker", cfg.threads_per_worker)):
        if int(value) < 1:
            raise PrepareError(f"{flag} must be >= 1, got {value}")
    if cfg.start_frame_interval is not None and cfg.start_frame_interval < 1:
        raise PrepareError(f"--start_frame_interval must be >= 1, got {cfg.start_frame_interval}")
    device = resolve_device(cfg.device)
    return LatentSettings(
        vae=cfg.vae, vae_path=cfg.vae_path, mean_std=cfg.mean_std, latent_scale=cfg.latent_scale, frames=frames,
        height=int(size[0]), width=int(size[1]), frame_step=step,
        stride=int(cfg.start_frame_interval or (frames - 1) * step + 1), resize_mode=cfg.resize_mode,
        allow_upscale=bool(cfg.allow_upscale), batch_size=int(cfg.batch_size), device=device,
        dtype=compute_dtype(device, cfg.dtype), latent_dtype=cfg.latent_dtype,
        threads_per_worker=int(cfg.threads_per_worker),
        decode_threads=int(cfg.decode_threads if cfg.decode_threads is not None else (0 if cfg.workers <= 1 else 1)),
    )


def load_encoder(settings: LatentSettings):
    from cosmos_nemo.data_prep.vae import load_latent_encoder

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[settings.dtype]
    return load_latent_encoder(settings.vae, settings.vae_path, device=settings.device, dtype=dtype,
                               latent_scale=settings.latent_scale, mean_std=settings.mean_std)


# ------------------------------------------------------------------------------------------------------
# The output folder


def _is_own(name: str) -> bool:
    from cosmos_nemo.data.dit_writer import is_contract_file

    return is_contract_file(name) or name in (PARTS_DIR, PREPARE_RECORD)


def check_output_dir(out: Path) -> None:
    engine_check_output_dir(out, flag="--output_dir", own=_is_own, command="cosmos-nemo prepare latents")


# ------------------------------------------------------------------------------------------------------
# Per-video work


def latent_part_path(parts: Path, index: int) -> Path:
    return parts / f"{index:08d}.latents"


def _to_bytes(latents: torch.Tensor, dtype: str) -> bytes:
    x = latents.to(LATENT_DTYPES[dtype]).contiguous()
    if dtype == "bfloat16":
        return x.view(torch.int16).numpy().astype("<i2").tobytes()
    return x.numpy().astype("<f4").tobytes()


def _from_bytes(path: Path, dtype: str, shape: Sequence[int]) -> torch.Tensor:
    if dtype == "bfloat16":
        return torch.from_numpy(np.fromfile(path, dtype="<i2").astype(np.int16)).view(torch.bfloat16).reshape(*shape)
    return torch.from_numpy(np.fromfile(path, dtype="<f4").astype(np.float32)).reshape(*shape)


def process_video(index: int, item: SourceItem, settings: LatentSettings, encoder, parts: Path) -> dict:
    """Encode every clip of one video and commit its part; returns the part's json content."""
    meta_path = part_paths(parts, index)[0]
    latents_path = latent_part_path(parts, index)
    try:
        result = _encode_video(item, settings, encoder, latents_path)
    except VideoDecodeError as e:
        result = _skip(item.source, _strip_path(str(e), item.path))
    result.update({"index": index, "source": item.source})
    if result["status"] != "ok":
        latents_path.unlink(missing_ok=True)
    atomic_write_bytes(meta_path, json.dumps(result, sort_keys=True).encode())
    return result


def _encode_video(item: SourceItem, settings: LatentSettings, encoder, latents_path: Path) -> dict:
    info = probe(item.path)
    span = settings.span
    if info.num_frames and info.num_frames < span:
        return _skip(item.source, f"fewer frames than one clip: {info.num_frames} < {span} "
                                  f"({settings.frames} frames every {settings.frame_step})")
    geo = geometry(info.height, info.width, settings.height, settings.width, settings.resize_mode)
    if geo.upscale and not settings.allow_upscale:
        return _skip(item.source, f"smaller than the target: {info.width}x{info.height} would be upscaled "
                                  f"x{geo.scale:.2f} to {settings.width}x{settings.height} ({settings.resize_mode}); pass "
                                  "--allow-upscale to use it")
    starts: list[int] = []
    shape = None
    with atomic_path(latents_path) as tmp, open(tmp, "wb") as sink:
        batch: list[np.ndarray] = []

        def flush() -> None:
            nonlocal shape
            z = encoder.encode(np.stack(batch))
            if not bool(torch.isfinite(z).all()):
                raise RuntimeError(f"the VAE returned non-finite latents for {item.source}")
            shape = list(z.shape[1:])
            sink.write(_to_bytes(z, settings.latent_dtype))
            batch.clear()

        for start, clip in iter_windows(item.path, geo, settings.frames, settings.stride, settings.decode_threads,
                                        frame_step=settings.frame_step):
            starts.append(start)
            batch.append(clip)
            if len(batch) == settings.batch_size:
                flush()
        if batch:
            flush()
    if not starts:
        return _skip(item.source, f"fewer frames than one clip of {span} source frames (decoded fewer)")
    fps = info.fps
    if fps <= 0:
        fps = info.num_frames / info.duration if info.num_frames and info.duration else 24.0
    return {"status": "ok", "windows": starts, "fps": float(fps), "caption": item.caption, "prompt_id": item.prompt_id,
            "latent_shape": shape}


# ------------------------------------------------------------------------------------------------------
# Worker pool (as engine.run_parts)

_WORKER: dict[str, Any] = {}


def _init_worker(settings: LatentSettings, items: list[SourceItem], parts: str) -> None:
    import multiprocessing as mp

    torch.set_num_threads(settings.threads_per_worker)
    if settings.device.startswith("cuda") and torch.cuda.device_count() > 1:
        rank = (mp.current_process()._identity or (1,))[0] - 1
        settings = dataclasses.replace(settings, device=f"cuda:{rank % torch.cuda.device_count()}")
        _WORKER.pop("encoder", None)
    encoder = _WORKER.get("encoder") or load_encoder(settings)  # fork: the parent's copy
    _WORKER.update(settings=settings, items=items, parts=Path(parts), encoder=encoder)


def _work(index: int) -> dict:
    w = _WORKER
    return process_video(index, w["items"][index], w["settings"], w["encoder"], w["parts"])


def run_parts(items: Sequence[SourceItem], settings: LatentSettings, parts: Path, workers: int, encoder,
              progress: bool = True) -> int:
    """Make every missing part; returns how many already existed."""
    pending = [i for i in range(len(items)) if not part_paths(parts, i)[0].is_file()]

    def before_fork() -> None:
        _WORKER["encoder"] = encoder  # inherited by the forked workers, not loaded again

    run_jobs(len(items), pending, workers, "latents", settings.threads_per_worker, settings.device,
             lambda i: process_video(i, items[i], settings, encoder, parts), _init_worker,
             (settings, list(items), str(parts)), _work, progress, before_fork=before_fork,
             after_pool=_WORKER.clear)
    return len(items) - len(pending)


# ------------------------------------------------------------------------------------------------------
# Driver


@dataclass
class LatentsReport(Report):
    latent_shapes: list = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        lines = super().summary().splitlines()
        for i, line in enumerate(lines):
            if line.startswith("written: "):
                grids = ", ".join("x".join(map(str, s)) for s in self.latent_shapes)
                lines[i] = line.replace(f", {self.num_tokens} tokens", f" (latents {grids})" if grids else "")
        return "\n".join(lines)


def _fingerprint(settings: LatentSettings, items: Sequence[SourceItem], text: dict) -> str:
    from cosmos_nemo.data_prep.vae import vae_identity

    payload = {"settings": {k: v for k, v in asdict(settings).items() if k != "decode_threads"},
               "vae": vae_identity(settings.vae, settings.vae_path, settings.mean_std), "inputs": input_listing(items),
               "text": text}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def prepare_latents(cfg: LatentsConfig) -> LatentsReport:
    from cosmos_nemo.data.dit_dataset import DiTDatasetError
    from cosmos_nemo.data.dit_writer import write_dit_dataset_streaming
    from cosmos_nemo.data_prep.text_embeddings import check_captions, read_layout, text_identity, text_table_for

    t0 = time.perf_counter()
    settings = settings_of(cfg)
    out = Path(cfg.output_dir)
    root = Path(cfg.dataset_path)
    check_output_dir(out)
    layout = read_layout(root, prompt_type=cfg.prompt_type, captioner=cfg.captioner, need_videos=True)
    check_captions(layout, root)
    # The VAE first: a wrong frame count or size is an error before anything else is done.
    encoder = load_encoder(settings)
    grid = encoder.check_clip(settings.frames, settings.height, settings.width)
    text = text_identity(cfg, layout, root)
    draft = [SourceItem(source=f"videos/{Path(it.video).name}", path=it.video, caption=it.caption) for it in layout]
    fp = _fingerprint(settings, draft, text)
    created = not out.exists()
    state = inspect_output(out, fp)
    if state.recorded:
        # Complete and made by this very command (a run killed while it removed its parts leaves them).
        remove_tree_atomically(out / PARTS_DIR)
        record = read_prepare_record(out)
        rep = LatentsReport(output_dir=str(out), already_complete=True,
                            **{k: v for k, v in record["report"].items() if k != "already_complete"})
        rep.num_documents = int(state.info.get("documents", rep.num_documents))
        return rep
    if state.complete and not state.ours and not cfg.overwrite:
        info = state.info
        vae_info = info.get("vae") if isinstance(info.get("vae"), dict) else {}
        raise PrepareError(f"--output_dir {out} already holds a different dataset ({info.get('documents')} clips, VAE "
                           f"{vae_info.get('name')}, made from other inputs or settings); choose another "
                           "directory or pass --overwrite")
    from cosmos_nemo.data_prep.text_embeddings import resolve_source

    # Pickles and files are read (and refused) before anything is written; computed rows are resumable parts.
    computed = resolve_source(cfg.text_source, layout, root) == "compute"
    table = None if computed else text_table_for(layout, cfg, out / PARTS_DIR, settings.device, root)
    parts, _ = prepare_parts_dir(out, fp)
    if computed:
        table = text_table_for(layout, cfg, parts, settings.device, root)
    rows = table.row()
    items = [dataclasses.replace(d, prompt_id=rows[d.caption]) for d in draft]
    done_before = run_parts(items, settings, parts, int(cfg.workers), encoder, progress=cfg.progress)
    metas = [json.loads(part_paths(parts, i)[0].read_text()) for i in range(len(items))]
    skipped = [{"source": m["source"], "reason": m["reason"]} for m in metas if m["status"] != "ok"]
    report = LatentsReport(output_dir=str(out), num_sources=len(items), num_used=sum(m["status"] == "ok" for m in metas),
                           skipped=skipped, resumed_parts=done_before)
    if report.num_used == 0:
        abandon(out, created)
        raise PrepareError("no usable clips in any input video; nothing was written.\n" + report.summary())
    # Only the rows of captions whose videos gave clips, in first-use order.
    used: dict[int, int] = {}
    for m in metas:
        if m["status"] == "ok":
            used.setdefault(int(m["prompt_id"]), len(used))
    sub = table.subset(list(used))
    expected = [encoder.channels, *grid]

    def documents():
        for m in metas:
            if m["status"] != "ok":
                continue
            shape = list(m["latent_shape"])
            if shape != expected:
                raise PrepareError(f"part of {m['source']} holds latents {shape}, expected {expected}; delete {parts} and rerun")
            z = _from_bytes(latent_part_path(parts, m["index"]), settings.latent_dtype, [len(m["windows"]), *shape])
            for k, start in enumerate(m["windows"]):
                rec = {"source": m["source"], "start_frame": int(start), "num_frames": settings.frames,
                       "sequence_interval": settings.frame_step, "height": settings.height, "width": settings.width,
                       "fps": m["fps"], "prompt_id": used[int(m["prompt_id"])]}
                if m.get("caption") is not None:
                    rec["caption"] = m["caption"]
                yield z[k].clone(), rec

    extra = {"clips": {"num_frames": settings.frames, "height": settings.height, "width": settings.width,
                       "sequence_interval": settings.frame_step, "start_frame_interval": settings.stride,
                       "resize_mode": settings.resize_mode},
             "skipped": skipped}
    begin_writing(out)
    try:
        write_dit_dataset_streaming(out, documents(), sub.embeddings, sub.mask, vae=encoder.info(), text=sub.info(),
                                    overwrite=True, extra_info=extra)
    except DiTDatasetError as e:
        raise PrepareError(str(e)) from None
    info = json.loads((out / "dataset.json").read_text())
    report.num_documents = int(info["documents"])
    report.latent_shapes = [expected]
    report.seconds = time.perf_counter() - t0
    finish(out, fp, report)
    return report


__all__ = ["LatentSettings", "LatentsConfig", "LatentsReport", "prepare_latents", "process_video", "settings_of"]
