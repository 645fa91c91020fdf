"""The resumable, parallel video → token engine behind `prepare ar-tokens` and `prepare v2w`.

Work is split per source video. A worker decodes one video (streaming), cuts windows, resizes, tokenizes
them in batches and commits a *part* under `DIR/.parts/`:

    .parts/fingerprint.json     what the parts were made from (settings, tokenizer, input listing)
    .parts/00000012.tokens      int32 ids of every window of source 12, raster order, window after window
    .parts/00000012.json        the commit marker: source, windows, fps, or the reason it was skipped

The `.tokens` file is renamed into place before the `.json`, so a part exists only when complete; a kill
at any moment loses at most the videos in flight. A rerun with the same fingerprint keeps the complete
parts and does the rest; a different fingerprint discards them. When every part exists, the merge
streams them in source order into `cosmos_nemo.data.ar_dataset.write_ar_dataset` (atomic, dataset.json
last), so the dataset is byte-identical for any worker count and after any kill and rerun. Each video's
windows are tokenized in batches of that video's windows only and every worker uses the same number of
torch threads, so a clip's ids never depend on which worker made it or what else was in flight.

Crash windows. `DIR/.prepare.json` (the state file: the fingerprint and the report) is written after
`dataset.json` and removed just before a merge changes the dataset, so it only ever vouches for the
dataset beside it; a rerun that finds it with its own fingerprint is done (it removes parts a kill left).
The parts' `fingerprint.json` marks an interrupted run of the same command, which a rerun continues, with
or without `--overwrite`. Every temporary a killed writer leaves (`io.atomic`'s `.<name>.tmp-<pid>-...`,
the dataset writers' `.ar_write.*` / `.dit_write.*` folders, a `.parts` folder renamed aside for removal)
is recognised as ours and removed by the next run, so a kill at any moment and the same command give the
uninterrupted run's folder byte for byte. The `COSMOS_NEMO_KILL_AT` points that tests kill at:
`write:<file>` (every atomic write), `merge:moved`, `prepare:recorded`, `remove:.parts`. A run in which
every input is skipped writes nothing: its parts (and the folder, when the run made it) are removed.

Ctrl-C and a killed parent: pool workers ignore SIGINT (the terminal sends it to the whole group; the
parent leaves the pool, which terminates them) and get SIGTERM from the kernel when their parent dies, so
no worker is left behind or prints a traceback; `cosmos-nemo` prints one "interrupted:" line.

A video that cannot be used is *skipped with a reason* (and the run continues): unreadable, zero-byte,
not a video, audio-only, truncated or damaged (a decode error anywhere discards the whole file's clips:
the frames before the damage are not passed off as the video), fewer frames than one window, smaller
than the target without `--allow-upscale`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from cosmos_nemo.data_prep.clips import RESIZE_MODES, frames_to_tokenizer_input, geometry, iter_windows
from cosmos_nemo.io.atomic import (
    atomic_path,
    atomic_write_bytes,
    fsync_dir,
    is_stale,
    is_temporary,
    kill_point,
    remove_path,
    remove_tree_atomically,
)
from cosmos_nemo.io.video import VideoDecodeError, probe

PARTS_DIR = ".parts"
PREPARE_RECORD = ".prepare.json"
FINGERPRINT = "fingerprint.json"
# Files the contract puts in DIR plus our own bookkeeping (and the temporaries of an interrupted write:
# the dataset writer's staging folder, `io.atomic` temporaries); anything else means DIR is not ours.
_OWN_NAMES = {"tokens.bin", "tokens.idx", "manifest.jsonl", "dataset.json", "text_embeddings.safetensors", PARTS_DIR, PREPARE_RECORD}
# The dataset writers' staging folders (data/ar_dataset.py, data/dit_writer.py): `.<kind>_write.<pid>...`.
_OWN_PREFIXES = (".ar_write.", ".dit_write.")
_STAGING_OWNER = re.compile(r"^\.(?:ar|dit)_write\.(\d+)")


class PrepareError(RuntimeError):
    """A problem found before any work: bad flags, tokenizer mismatch, impossible grid, foreign output."""


@dataclass(frozen=True)
class SourceItem:
    source: str  # POSIX path relative to the input root (recorded in the manifest)
    path: str  # absolute path read
    caption: str | None = None
    prompt_id: int | None = None


@dataclass(frozen=True)
class EngineSettings:
    """What the engine works with, resolved from a command's config by `TokenizeConfig.settings()`
    (data_prep/settings.py, where the defaults live): every field but `decode_threads` is part of the
    parts' fingerprint, since it may change the ids."""

    tokenizer: str  # name, hub id or folder given to load_video_tokenizer
    frames: int
    height: int
    width: int
    stride: int
    resize_mode: str
    allow_upscale: bool
    batch_size: int
    device: str
    dtype: str
    threads_per_worker: int
    decode_threads: int

    def __post_init__(self) -> None:
        if self.resize_mode not in RESIZE_MODES:
            raise PrepareError(f"--resize-mode must be one of {RESIZE_MODES}, got {self.resize_mode!r}")
        for name in ("frames", "height", "width", "stride", "batch_size", "threads_per_worker"):
            if int(getattr(self, name)) < 1:
                raise PrepareError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")

    @property
    def torch_dtype(self) -> torch.dtype:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[self.dtype]


@dataclass
class Report:
    """What a prepare run wrote and skipped (printed at the end; the skip list is in dataset.json)."""

    output_dir: str
    num_sources: int = 0
    num_used: int = 0
    num_documents: int = 0
    num_tokens: int = 0
    skipped: list[dict] = field(default_factory=list)
    resumed_parts: int = 0
    seconds: float = 0.0
    already_complete: bool = False

    def summary(self) -> str:
        lines = [
            f"output: {self.output_dir}",
            f"videos: {self.num_sources} found, {self.num_used} used, {len(self.skipped)} skipped"
            + (f" ({self.resumed_parts} reused from an interrupted run)" if self.resumed_parts else ""),
            f"written: {self.num_documents} clips, {self.num_tokens} tokens"
            + (" (already complete; nothing to do)" if self.already_complete else f" in {self.seconds:.1f}s"),
        ]
        if self.skipped:
            kinds = Counter(_reason_kind(s["reason"]) for s in self.skipped)
            lines.append("skipped by reason: " + ", ".join(f"{k}: {n}" for k, n in kinds.most_common()))
            for s in self.skipped[:20]:
                lines.append(f"  - {s['source']}: {s['reason']}")
            if len(self.skipped) > 20:
                lines.append(f"  ... and {len(self.skipped) - 20} more (all listed in dataset.json)")
        return "\n".join(lines)


def _reason_kind(reason: str) -> str:
    for key in ("zero-byte", "no video stream", "not a readable media file", "truncated", "corrupt", "decoding failed",
                "fewer frames", "smaller than", "no such file", "display matrix"):
        if key in reason:
            return key
    return "other"


# ------------------------------------------------------------------------------------------------------
# Fingerprints and the output directory


def tokenizer_identity(spec: str) -> dict:
    """A cheap identity of the tokenizer weights: the name, or a folder's file names, sizes and mtimes."""
    path = Path(spec)
    if path.is_file():
        path = path.parent
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file())
        return {"folder": str(path.resolve()), "files": [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]}
    return {"name": spec}


def input_listing(items: Sequence[SourceItem]) -> list:
    out = []
    for it in items:
        try:
            st = os.stat(it.path)
            out.append([it.source, st.st_size, st.st_mtime_ns, it.caption, it.prompt_id])
        except OSError:
            out.append([it.source, None, None, it.caption, it.prompt_id])
    return out


def fingerprint(settings: EngineSettings, items: Sequence[SourceItem], extra: dict | None = None) -> str:
    # Decode threads do not change decoded frames; everything else may change the ids (batch size can
    # change a convolution's float reduction order), so parts made with other values are not reused.
    payload = {
        "settings": {k: v for k, v in asdict(settings).items() if k != "decode_threads"},
        "tokenizer": tokenizer_identity(settings.tokenizer),
        "inputs": input_listing(items),
        "extra": extra or {},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def is_own_temporary(path: Path) -> bool:
    """Whether `path` is a temporary one of our writers makes (and a kill may leave): an `io.atomic`
    temporary (`.<name>.tmp-<pid>-...`: parts, records, dataset.json, a folder being removed) or a dataset
    writer's staging folder."""
    return path.name.startswith(_OWN_PREFIXES) or is_temporary(path)


def remove_stale_temporaries(folder: Path) -> list[str]:
    """Remove the temporaries killed writers left in `folder` (those of a writer still running are kept);
    returns their names."""
    removed = []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        if not is_own_temporary(p):
            continue
        m = _STAGING_OWNER.match(p.name)
        if is_stale(p, int(m.group(1)) if m else None):
            remove_path(p)
            removed.append(p.name)
    return removed


def check_output_dir(out: Path, flag: str = "--output_prefix", own: Callable[[str], bool] | None = None,
                     command: str = "cosmos-nemo prepare") -> None:
    """Refuse an output directory that holds anything but a dataset (or an interrupted one) of ours:
    the contract's files (`own(name)`, default: the AR token dataset's), our bookkeeping and temporaries."""
    if out.exists() and not out.is_dir():
        raise PrepareError(f"{flag} {out} exists and is a file; give a directory path")
    if not out.is_dir():
        return
    own = own or (lambda name: name in _OWN_NAMES)
    foreign = sorted(
        p.name for p in out.iterdir()
        if not own(p.name) and p.name not in (PARTS_DIR, PREPARE_RECORD) and not is_own_temporary(p)
    )
    if foreign:
        shown = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
        raise PrepareError(
            f"{flag} {out} already holds other files ({shown}); it must be a new or empty directory, or a "
            f"dataset written by `{command}`"
        )


def read_json(path: Path) -> dict | None:
    """A json object file's content, or None when it is missing or damaged."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def read_prepare_record(out: Path) -> dict | None:
    return read_json(out / PREPARE_RECORD)


@dataclass(frozen=True)
class OutputState:
    """What a rerun finds in the output folder (see `inspect_output`)."""

    complete: bool  # dataset.json is there and readable
    recorded: bool  # ... and the state file says this very command made it (a finished run)
    ours: bool  # this command's run made or was making it (finished, or its parts are there)
    info: dict | None  # dataset.json


def inspect_output(out: Path, fp: str) -> OutputState:
    """Clean the temporaries killed writers left in `out`, then say what is there.

    The state file `.prepare.json` is written after `dataset.json` and removed (`begin_writing`) before a
    merge changes the dataset, so when it names `fp` the dataset beside it is this command's, complete. The
    parts' fingerprint names the command whose run was interrupted: a rerun of it continues (the first
    run passed the checks, `--overwrite` included), so a kill between the dataset and the state file, or
    during the merge, never turns the folder into "a different dataset"."""
    remove_stale_temporaries(out)
    remove_stale_temporaries(out / PARTS_DIR)
    info = read_json(out / "dataset.json")
    record = read_prepare_record(out)
    recorded = info is not None and record is not None and record.get("fingerprint") == fp
    parts = read_json(out / PARTS_DIR / FINGERPRINT)
    ours = recorded or (parts is not None and parts.get("fingerprint") == fp) or (
        record is not None and record.get("fingerprint") == fp)
    return OutputState(complete=info is not None, recorded=recorded, ours=ours, info=info)


def begin_writing(out: Path) -> None:
    """Before the merge changes the dataset: drop the state file, so that it never vouches for a
    dataset.json that a kill leaves half replaced (until then it keeps vouching for the old dataset, so a
    run that fails or is killed before its merge leaves that one as it was)."""
    record = out / PREPARE_RECORD
    if record.exists():
        record.unlink()
        fsync_dir(out)


def abandon(out: Path, created: bool) -> None:
    """A run that wrote nothing (every input skipped): remove its parts, and the folder when this run made
    it and it is empty now."""
    remove_tree_atomically(out / PARTS_DIR)
    if created and out.is_dir() and not any(out.iterdir()):
        out.rmdir()


def prepare_parts_dir(out: Path, fp: str) -> tuple[Path, bool]:
    """`DIR/.parts` for fingerprint `fp`; stale parts of other settings/inputs are removed. Returns (dir, reused)."""
    parts = out / PARTS_DIR
    marker = parts / FINGERPRINT
    if parts.is_dir():
        old = (read_json(marker) or {}).get("fingerprint")
        if old != fp:
            remove_tree_atomically(parts)
    reused = parts.is_dir()
    parts.mkdir(parents=True, exist_ok=True)
    for stale in parts.iterdir():
        if is_temporary(stale):
            stale.unlink(missing_ok=True)  # a killed worker's half-written file
    if not marker.is_file():
        atomic_write_bytes(marker, json.dumps({"fingerprint": fp}).encode())
    return parts, reused


def part_paths(parts: Path, index: int) -> tuple[Path, Path]:
    return parts / f"{index:08d}.json", parts / f"{index:08d}.tokens"


# ------------------------------------------------------------------------------------------------------
# Per-video work


def _skip(source: str, reason: str) -> dict:
    return {"status": "skipped", "source": source, "reason": reason}


def process_source(index: int, item: SourceItem, settings: EngineSettings, tokenizer, parts: Path) -> dict:
    """Tokenize every window of one video and commit its part; returns the part's json content."""
    meta_path, tokens_path = part_paths(parts, index)
    try:
        result = _tokenize_source(item, settings, tokenizer, tokens_path)
    except VideoDecodeError as e:
        result = _skip(item.source, _strip_path(str(e), item.path))
    result.update({"index": index, "source": item.source})
    if result["status"] != "ok":
        tokens_path.unlink(missing_ok=True)
    atomic_write_bytes(meta_path, json.dumps(result, sort_keys=True).encode())
    return result


def _strip_path(message: str, path: str) -> str:
    return message.replace(f"{path}: ", "").replace(str(path), "<file>")


def _tokenize_source(item: SourceItem, settings: EngineSettings, tokenizer, tokens_path: Path) -> dict:
    info = probe(item.path)
    if info.num_frames and info.num_frames < settings.frames:
        return _skip(item.source, f"fewer frames than one window: {info.num_frames} < {settings.frames}")
    geo = geometry(info.height, info.width, settings.height, settings.width, settings.resize_mode)
    if geo.upscale and not settings.allow_upscale:
        return _skip(
            item.source,
            f"smaller than the target: {info.width}x{info.height} would be upscaled x{geo.scale:.2f} to fill "
            f"{settings.width}x{settings.height} ({settings.resize_mode}); pass --allow-upscale to use it",
        )
    starts: list[int] = []
    vocab = int(tokenizer.vocab_size)
    with atomic_path(tokens_path) as tmp, open(tmp, "wb") as sink:
        batch: list[np.ndarray] = []

        def flush() -> None:
            x = frames_to_tokenizer_input(batch, dtype=settings.torch_dtype, device=settings.device)
            ids = tokenizer.encode(x).reshape(len(batch), -1).cpu().numpy()
            if ids.min() < 0 or ids.max() >= vocab:
                raise RuntimeError(f"tokenizer returned ids outside [0, {vocab}): [{ids.min()}, {ids.max()}]")
            sink.write(ids.astype("<i4").tobytes())
            batch.clear()

        for start, clip in iter_windows(item.path, geo, settings.frames, settings.stride, settings.decode_threads):
            starts.append(start)
            batch.append(clip)
            if len(batch) == settings.batch_size:
                flush()
        if batch:
            flush()
    if not starts:  # the empty file is not a part: process_source removes it and records the skip
        return _skip(item.source, f"fewer frames than one window of {settings.frames} (decoded fewer)")
    fps = info.fps
    if fps <= 0:  # no average rate in the container: frames per second of the declared duration, else 24
        fps = info.num_frames / info.duration if info.num_frames and info.duration else 24.0
    return {
        "status": "ok",
        "windows": starts,
        "fps": float(fps),
        "caption": item.caption,
        "prompt_id": item.prompt_id,
    }


# ------------------------------------------------------------------------------------------------------
# Worker pool

_WORKER: dict[str, Any] = {}


def load_tokenizer(settings: EngineSettings):
    from cosmos_nemo.tokenizers import load_video_tokenizer

    spec = Path(settings.tokenizer)
    name = str(spec.parent) if spec.is_file() else settings.tokenizer
    return load_video_tokenizer(name, device=settings.device, dtype=settings.torch_dtype)


def _init_worker(settings: EngineSettings, items: list[SourceItem], parts: str) -> None:
    import dataclasses
    import multiprocessing as mp

    torch.set_num_threads(settings.threads_per_worker)
    if settings.device == "cuda" and torch.cuda.device_count() > 1:
        # Spread workers over the visible GPUs (worker k -> GPU k mod n), like the reference's one rank per GPU.
        rank = (mp.current_process()._identity or (1,))[0] - 1
        settings = dataclasses.replace(settings, device=f"cuda:{rank % torch.cuda.device_count()}")
    _WORKER.update(settings=settings, items=items, parts=Path(parts), tokenizer=load_tokenizer(settings))


def _work(index: int) -> dict:
    w = _WORKER
    return process_source(index, w["items"][index], w["settings"], w["tokenizer"], w["parts"])


def _die_with_parent(parent: int) -> None:
    """Have the kernel SIGTERM this process when its parent dies (Linux), so a parent killed by SIGKILL
    leaves no worker running on; elsewhere nothing (the pool's own pipes end the workers)."""
    if sys.platform != "linux":
        return
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


@contextlib.contextmanager
def _sigint_ignored():
    """SIGINT ignored while the pool starts its workers: they inherit the disposition (a spawned Python
    keeps an ignored SIGINT), so a Ctrl-C while one still imports gives it no traceback."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def _init_pool_worker(parent: int, init: Callable, initargs: tuple) -> None:
    """Every pool worker: Ctrl-C is the parent's to handle (it reaches the whole process group; the parent
    then terminates the pool), and the worker ends quietly with its parent. Then the job's `init`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _die_with_parent(parent)
    init(*initargs)


def run_jobs(total: int, pending: Sequence[int], workers: int, desc: str, threads: int, device: str,
             run_one: Callable[[int], dict],
             init: Callable, initargs: tuple, work: Callable[[int], dict], progress: bool = True,
             before_fork: Optional[Callable[[], None]] = None, after_pool: Optional[Callable[[], None]] = None) -> None:
    """Run the pending part jobs, in this process (`run_one(i)`, when `workers` <= 1) or in a pool of `workers`
    processes (`init(*initargs)` per worker, then `work(i)`), with a progress bar of clips per second.

    `run_one` / `work` return a part's metadata (its `windows` count the clips). Workers are forked on Linux
    CPU runs (no re-import of torch and FFmpeg; `before_fork` may leave state for them to inherit) and
    spawned elsewhere; `after_pool` runs when the pool is done."""
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=total - len(pending), unit="video", desc=desc, dynamic_ncols=True)
    clips, t0 = 0, time.perf_counter()

    def tick(result: dict) -> None:
        nonlocal clips
        clips += len(result.get("windows") or [])
        if bar is not None:
            bar.set_postfix_str(f"{clips / max(1e-9, time.perf_counter() - t0):.2f} clips/s, {clips} clips")
            bar.update(1)

    try:
        if not pending:
            return
        if workers <= 1:
            old = torch.get_num_threads()
            torch.set_num_threads(threads)
            try:
                for i in pending:
                    tick(run_one(i))
            finally:
                torch.set_num_threads(old)
        else:
            import multiprocessing as mp

            # fork starts workers without re-importing torch/FFmpeg (seconds each), safe here because the
            # parent has not initialised CUDA and workers run torch single-threaded; spawn everywhere else.
            fork_ok = sys.platform == "linux" and not str(device).startswith("cuda")
            ctx = mp.get_context("fork" if fork_ok else "spawn")
            if fork_ok and before_fork is not None:
                before_fork()
            try:
                # Leaving the block (done, an error, Ctrl-C) terminates the workers; they ignore SIGINT and
                # die with the parent (see `_init_pool_worker`), so none is left behind or prints a traceback.
                with _sigint_ignored():  # inherited by the workers from their first instant (fork and spawn)
                    pool = ctx.Pool(workers, initializer=_init_pool_worker, initargs=(os.getpid(), init, initargs))
                with pool:
                    for result in pool.imap_unordered(work, pending, chunksize=1):
                        tick(result)
            finally:
                if after_pool is not None:
                    after_pool()
    finally:
        if bar is not None:
            bar.close()


def run_parts(
    items: Sequence[SourceItem],
    settings: EngineSettings,
    parts: Path,
    workers: int,
    tokenizer=None,
    progress: bool = True,
) -> int:
    """Make every missing part; returns how many parts already existed."""
    pending = [i for i in range(len(items)) if not part_paths(parts, i)[0].is_file()]
    state = {}

    def run_one(i: int) -> dict:
        if "tok" not in state:
            state["tok"] = tokenizer if tokenizer is not None else load_tokenizer(settings)
        return process_source(i, items[i], settings, state["tok"], parts)

    run_jobs(len(items), pending, workers, "prepare", settings.threads_per_worker, settings.device, run_one,
             _init_worker, (settings, list(items), str(parts)), _work, progress)
    return len(items) - len(pending)


def read_parts(parts: Path, count: int) -> list[dict]:
    out = []
    for i in range(count):
        meta_path, _ = part_paths(parts, i)
        out.append(json.loads(meta_path.read_text()))
    return out


def iter_documents(parts: Path, part_meta: list[dict], settings: EngineSettings, grid: Sequence[int]):
    """`(tokens, record)` pairs in document order (source order, then window start)."""
    per_window = int(np.prod(grid))
    for meta in part_meta:
        if meta["status"] != "ok":
            continue
        _, tokens_path = part_paths(parts, meta["index"])
        ids = np.fromfile(tokens_path, dtype="<i4")
        n = len(meta["windows"])
        if ids.size != n * per_window:
            raise RuntimeError(f"part {tokens_path} holds {ids.size} ids, expected {n} x {per_window}; delete {parts} and rerun")
        ids = ids.reshape(n, per_window)
        for k, start in enumerate(meta["windows"]):
            record = {
                "source": meta["source"],
                "start_frame": int(start),
                "num_frames": settings.frames,
                "fps": meta["fps"],
                "height": settings.height,
                "width": settings.width,
                "grid": list(grid),
            }
            if meta.get("caption") is not None:
                record["caption"] = meta["caption"]
            if meta.get("prompt_id") is not None:
                record["prompt_id"] = meta["prompt_id"]
            yield ids[k].astype(np.int64), record


def finish(out: Path, fp: str, report: Report) -> None:
    """Record what made the dataset and drop the parts (the dataset holds everything they held)."""
    # Only what depends on the inputs and settings, so this file too is identical across reruns/workers.
    stable = {k: v for k, v in asdict(report).items() if k not in ("output_dir", "seconds", "resumed_parts", "already_complete")}
    atomic_write_bytes(out / PREPARE_RECORD, json.dumps({"fingerprint": fp, "report": stable}, sort_keys=True, indent=1).encode())
    kill_point("prepare:recorded")
    remove_tree_atomically(out / PARTS_DIR)


__all__ = [
    "EngineSettings",
    "OutputState",
    "PrepareError",
    "Report",
    "SourceItem",
    "abandon",
    "begin_writing",
    "check_output_dir",
    "inspect_output",
    "remove_stale_temporaries",
    "fingerprint",
    "iter_documents",
    "prepare_parts_dir",
    "process_source",
    "read_parts",
    "run_parts",
]
