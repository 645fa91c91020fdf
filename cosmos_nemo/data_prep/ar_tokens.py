"""`prepare ar-tokens`: a folder of videos → the AR token dataset (DESIGN.md, "AR token dataset").

The reference is NVIDIA's `nemo/post_training/prepare_dataset.py`; its flags keep their meaning. What
differs on purpose: every FFmpeg-readable container (not only `*.mp4`), no 10,000-video cap, sliding
windows over the whole video (`--stride`) instead of only the first N frames, bad files skipped with a
reason instead of an error log, parallel workers with output independent of their number, resumable,
and one contract directory instead of hidden `.bin`/`.idx` chunk files.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Sequence

from cosmos_nemo.data_prep.engine import (
    PARTS_DIR,
    EngineSettings,
    PrepareError,
    Report,
    SourceItem,
    abandon,
    begin_writing,
    check_output_dir,
    fingerprint,
    finish,
    iter_documents,
    inspect_output,
    load_tokenizer,
    prepare_parts_dir,
    read_parts,
    read_prepare_record,
    run_parts,
)
from cosmos_nemo.data_prep.settings import ARTokensConfig
from cosmos_nemo.io.atomic import remove_tree_atomically
from cosmos_nemo.io.video import VIDEO_EXTENSIONS, list_videos


def find_caption(video: Path) -> str | None:
    """The caption of `.../videos/x.mp4`: `.../metas/x.txt` (the reference layout), else `x.txt` beside it."""
    for candidate in (video.parent.parent / "metas" / f"{video.stem}.txt", video.with_suffix(".txt")):
        if candidate.is_file():
            text = candidate.read_text(encoding="utf-8", errors="replace").strip()
            return text or None
    return None


def list_inputs(root: Path, recursive: bool = True, captions: bool = True) -> list[SourceItem]:
    if not root.is_dir():
        raise PrepareError(f"--input_videos_dir {root} is not a directory")
    videos = [p for p in list_videos(root, recursive=recursive) if not any(part.startswith(".") for part in p.relative_to(root).parts)]
    return [
        SourceItem(
            source=p.relative_to(root).as_posix(),
            path=str(p.resolve()),
            caption=find_caption(p) if captions else None,
        )
        for p in videos
    ]


def _check_tokenizer(tok, compression_flag: str | None, settings: EngineSettings, need_discrete: bool = True):
    from cosmos_nemo.tokenizers.grid import Compression, GridError, latent_grid

    if need_discrete and not tok.discrete:
        raise PrepareError(
            f"tokenizer {tok.name} is continuous (CV); AR token datasets need a discrete (DV) tokenizer"
        )
    actual = tuple(int(c) for c in tok.compression)
    if compression_flag is not None:
        try:
            wanted = Compression.parse(compression_flag)
        except GridError as e:
            raise PrepareError(f"--tokenizer_compression_factor: {e}") from None
        if (wanted.t, wanted.h, wanted.w) != actual:
            raise PrepareError(
                f"--tokenizer_compression_factor {compression_flag} does not match the tokenizer {tok.name}, which "
                f"compresses {actual[0]}x{actual[1]}x{actual[2]} (t,h,w); pass "
                f"--tokenizer_compression_factor {actual[0]},{actual[1]},{actual[2]} or another --encoder_path"
            )
    try:
        grid = latent_grid(settings.frames, settings.height, settings.width, actual)
    except GridError as e:
        raise PrepareError(
            f"cannot tokenize {settings.frames} frames at {settings.width}x{settings.height} (WxH) with {tok.name} "
            f"({actual[0]}x{actual[1]}x{actual[2]}): {e}"
        ) from None
    return list(grid.as_tuple())


def torch_cuda_in_use(device: str) -> bool:
    return str(device).startswith("cuda")


def run_prepare(
    items: Sequence[SourceItem],
    settings: EngineSettings,
    out: Path,
    *,
    workers: int,
    overwrite: bool,
    compression_flag: str | None,
    task: str = "base",
    progress: bool = True,
    text_embeddings: Callable[[Path], tuple] | None = None,
    extra_fingerprint: dict | None = None,
    text_encoder: str | None = None,
) -> Report:
    """Shared driver of `ar-tokens` and `v2w`: checks, parts, merge, report. See engine.py."""
    from cosmos_nemo.data.ar_dataset import ARDatasetError, ARDatasetMeta, write_ar_dataset

    t0 = time.perf_counter()
    out = Path(out)
    if workers < 1:
        raise PrepareError(f"--workers must be >= 1, got {workers}")
    check_output_dir(out)
    try:
        tok = load_tokenizer(settings)
    except (FileNotFoundError, OSError, ValueError, RuntimeError) as e:
        raise PrepareError(f"cannot load the tokenizer {settings.tokenizer!r}: {e}") from None
    grid = _check_tokenizer(tok, compression_flag, settings)
    tok_name, tok_compression, tok_vocab = tok.name, tuple(tok.compression), int(tok.vocab_size)
    if workers > 1:
        # Each worker loads its own copy; do not hold a third one (GPU memory) in the parent.
        del tok
        tok = None
        if torch_cuda_in_use(settings.device):
            import torch

            torch.cuda.empty_cache()
    fp = fingerprint(settings, items, extra_fingerprint)
    created = not out.exists()
    state = inspect_output(out, fp)
    if state.recorded:
        # Complete and made by this very command (a run killed while it removed its parts leaves them).
        remove_tree_atomically(out / PARTS_DIR)
        rep = Report(output_dir=str(out), already_complete=True, **read_prepare_record(out)["report"])
        rep.num_documents = int(state.info.get("num_documents", rep.num_documents))
        return rep
    if state.complete and not state.ours and not overwrite:
        info = state.info
        tok_info = info.get("tokenizer") if isinstance(info.get("tokenizer"), dict) else {}
        raise PrepareError(
            f"--output_prefix {out} already holds a different dataset ({info.get('num_documents')} clips, tokenizer "
            f"{tok_info.get('name')} {tok_info.get('compression')}, {info.get('frames')}x{info.get('height')}x"
            f"{info.get('width')}, made from other inputs or settings); choose another directory or pass --overwrite"
        )
    if not items:
        raise PrepareError("no input videos found (extensions: " + " ".join(VIDEO_EXTENSIONS) + ")")

    parts, _ = prepare_parts_dir(out, fp)
    # Text embeddings first: a text encoder that cannot be loaded is an error before any video work.
    emb = text_embeddings(parts) if text_embeddings is not None else None
    done_before = run_parts(items, settings, parts, workers, tokenizer=tok, progress=progress)
    part_meta = read_parts(parts, len(items))
    skipped = [{"source": m["source"], "reason": m["reason"]} for m in part_meta if m["status"] != "ok"]
    report = Report(
        output_dir=str(out),
        num_sources=len(items),
        num_used=sum(m["status"] == "ok" for m in part_meta),
        skipped=skipped,
        resumed_parts=done_before,
    )
    if report.num_used == 0:
        abandon(out, created)
        raise PrepareError("no usable clips in any input video; nothing was written.\n" + report.summary())
    meta = ARDatasetMeta(
        tokenizer=tok_name,
        compression=tok_compression,
        vocab_size=tok_vocab,
        frames=settings.frames,
        height=settings.height,
        width=settings.width,
        task=task,
        skipped=skipped,
        text_encoder=text_encoder,
    )
    begin_writing(out)
    try:
        write_ar_dataset(
            out, iter_documents(parts, part_meta, settings, grid), meta,
            overwrite=overwrite or state.ours, text_embeddings=emb, progress=progress,
        )
    except ARDatasetError as e:
        raise PrepareError(str(e)) from None
    info = json.loads((out / "dataset.json").read_text())
    report.num_documents = int(info["num_documents"])
    report.num_tokens = int(info["num_tokens"])
    report.seconds = time.perf_counter() - t0
    finish(out, fp, report)
    return report


def prepare_ar_tokens(cfg: ARTokensConfig) -> Report:
    settings = cfg.settings()
    items = list_inputs(Path(cfg.input_videos_dir), recursive=cfg.recursive, captions=cfg.captions)
    return run_prepare(
        items, settings, Path(cfg.output_prefix), workers=int(cfg.workers), overwrite=cfg.overwrite,
        compression_flag=cfg.tokenizer_compression_factor, task="base", progress=cfg.progress,
    )


__all__ = ["ARTokensConfig", "find_caption", "list_inputs", "prepare_ar_tokens", "run_prepare"]
