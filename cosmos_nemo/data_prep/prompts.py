"""`prepare prompts`: write a caption file per video (the reference `create_prompts_for_nemo_assets`).

For `DATASET/videos/<stem>.<ext>` it writes `DATASET/metas/<stem>.txt` holding `--prompt`, the layout the
Cosmos post-training examples read. Existing captions are kept unless `--overwrite` (they may be real
per-video captions). With `--jsonl` it also writes `DATASET/prompts.jsonl`, one
`{"prompt", "visual_input"}` per video (paths relative to DATASET), the input of `prepare v2w`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from cosmos_nemo.data_prep.engine import PrepareError
from cosmos_nemo.data_prep.settings import PromptsConfig
from cosmos_nemo.io.atomic import atomic_path
from cosmos_nemo.io.video import list_videos


@dataclass
class PromptsReport:
    written: int
    kept: int
    jsonl: Path | None


def _atomic_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def create_prompts(dataset_path: Path, prompt: str, overwrite: bool = False, jsonl: bool = False) -> PromptsReport:
    dataset_path = Path(dataset_path)
    videos_dir = dataset_path / "videos"
    if not videos_dir.is_dir():
        raise PrepareError(f"{dataset_path} has no videos/ folder (expected DATASET/videos/*.mp4)")
    if not prompt.strip():
        raise PrepareError("--prompt is empty")
    videos = list_videos(videos_dir)
    if not videos:
        raise PrepareError(f"no videos in {videos_dir}")
    stems = [v.stem for v in videos]
    dupes = sorted({s for s in stems if stems.count(s) > 1})
    if dupes:
        raise PrepareError(f"videos share a stem, so their metas/<stem>.txt would collide: {', '.join(dupes[:5])}")
    metas = dataset_path / "metas"
    metas.mkdir(exist_ok=True)
    written = kept = 0
    records = []
    for video in videos:
        target = metas / f"{video.stem}.txt"
        if target.is_file() and target.read_text(encoding="utf-8").strip() and not overwrite:
            kept += 1
        else:
            _atomic_text(target, prompt.strip() + "\n")
            written += 1
        records.append({"prompt": target.read_text(encoding="utf-8").strip(), "visual_input": video.relative_to(dataset_path).as_posix()})
    out = None
    if jsonl:
        out = dataset_path / "prompts.jsonl"
        _atomic_text(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return PromptsReport(written=written, kept=kept, jsonl=out)
