"""`cosmos-nemo prepare videophy2`: a downloaded copy of VideoPhy-2 -> the Cosmos3 Reasoner SFT layout.

NVIDIA's Cosmos3 Reasoner alignment SFT (1-5 physical-plausibility scoring) materialises the public Hugging Face
datasets `videophysics/videophy2_train` and `videophysics/videophy2_test` (renamed to the val split) with

    python -m cosmos_framework.scripts.vlm.prepare_videophy2_from_hf --out_root examples/data/videophysics --split both

This module does the same from local copies (what `hf download --repo-type dataset videophysics/videophy2_train
--local-dir DIR` writes), with no network and no `datasets` dependency. It writes

    OUT_ROOT/videophy2_train/meta.json        JSON list, one record per kept row, in the input's row order
    OUT_ROOT/videophy2_train/media/<id>.mp4   the video (hard link when on the same file system, else a copy)
    OUT_ROOT/videophy2_train/text/<id>.txt    the caption, UTF-8, no trailing newline
    OUT_ROOT/videophy2_val/...                the same, from the test split

    record = {"id", "video": "media/<id>.mp4", "text": "text/<id>.txt", "caption", "pc" (int 1-5),
              "sa" (int 1-5, when the row has one), "source" (the row's video_url), ...other scalar columns}

Paths in meta.json are relative to the split folder. The id is the video file's stem, with `-1`, `-2`, ... added
to a stem already used in the split. A column whose name is one of the record's own keys (`id`, `video`, `text`,
`source`) is kept as `hf_<name>`; columns holding lists or objects are not kept (the report names them).

Input: the data files of the downloaded folder (csv, json, jsonl; parquet when `pyarrow` is importable), read in
sorted path order, with at least the columns `video_url`, `caption` and `pc`. A row's video is `video_url` itself
when that is a local path (absolute, or relative to the data file's folder), else the file named like the URL's
last component under the videos folder (`videos_dir`, by default the downloaded folder; searched recursively).

A row is skipped, with the reason in the report, when its video is missing or does not decode (its first frame,
with the project's PyAV reader; an MP4 cut short is caught from its box headers), when it is not an MP4, when its
caption is empty, or when `pc` (or a given `sa`) is not an integer 1-5. Each split folder is written into a
temporary folder and renamed into place (`io/atomic.py`'s `atomic_dir`), and only when every requested split
keeps at least one row: a kill or an error never leaves a half-written split.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
from collections import Counter
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import unquote, urlparse

REFERENCE_COMMAND = ("python -m cosmos_framework.scripts.vlm.prepare_videophy2_from_hf "
                     "--out_root examples/data/videophysics --split both")
HF_REPOS = {"train": "videophysics/videophy2_train", "val": "videophysics/videophy2_test"}
SPLIT_DIRS = {"train": "videophy2_train", "val": "videophy2_val"}
SPLIT_FLAGS = {"train": "--train-dir", "val": "--test-dir"}
SPLITS = ("train", "val", "both")
REQUIRED_COLUMNS = ("video_url", "caption", "pc")
RESERVED_KEYS = ("id", "video", "text", "caption", "pc", "sa", "source")
DATA_EXTENSIONS = (".csv", ".json", ".jsonl", ".parquet")
# JSON files a Hugging Face download can hold that are not rows.
NOT_DATA_FILES = {"dataset_infos.json", "dataset_info.json", "dataset_dict.json", "state.json"}
SHOWN_SKIPS = 5


class VideoPhy2Error(RuntimeError):
    """Bad flags or input found before writing (`report` is set when rows were read: e.g. nothing kept)."""

    def __init__(self, message: str, report: dict | None = None):
        super().__init__(message)
        self.report = report


# ------------------------------------------------------------------------------------------------------
# Reading the data files


def _hf_hint(split: str) -> str:
    return f"the folder `hf download --repo-type dataset {HF_REPOS[split]} --local-dir DIR` wrote"


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
        return True
    except ValueError:
        return False


def find_data_files(root: Path, exclude: Iterable[Path] = ()) -> list[Path]:
    """The data files of a downloaded dataset folder (or `root` itself when it is one file), sorted by path.
    Hidden files and folders (`.cache/`, `.git/`, temporaries) and the folders in `exclude` are left out."""
    if root.is_file():
        return [root]
    exclude = [Path(e).resolve() for e in exclude]
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames
                             if not d.startswith(".") and not any(_inside((here / d).resolve(), e) for e in exclude))
        for name in filenames:
            if name.startswith(".") or name in NOT_DATA_FILES or not name.lower().endswith(DATA_EXTENSIONS):
                continue
            found.append(here / name)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


_INT = re.compile(r"-?(?:0|[1-9][0-9]*)")
_FLOAT = re.compile(r"-?(?:0|[1-9][0-9]*)?\.[0-9]+(?:[eE][-+]?[0-9]+)?|-?(?:0|[1-9][0-9]*)[eE][-+]?[0-9]+")


def _csv_value(text: str | None) -> Any:
    """A CSV cell as the scalar it spells: '' -> None, integers, decimals, True/False; other text as is."""
    if text is None or text == "":
        return None
    if _INT.fullmatch(text):
        return int(text)
    if _FLOAT.fullmatch(text):
        return float(text)
    if text in ("True", "true", "False", "false"):
        return text.lower() == "true"
    return text


def _read_csv(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = [c for c in (reader.fieldnames or []) if c]
        rows = [{k: v for k, v in row.items() if k} for row in reader]
    return columns, rows


def _read_jsonl(path: Path) -> tuple[list[str], list[dict]]:
    rows = []
    with open(path, encoding="utf-8-sig") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise VideoPhy2Error(f"{path}: line {number} is not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise VideoPhy2Error(f"{path}: line {number} is not a JSON object (one row per line expected)")
            rows.append(row)
    return _columns_of(rows), rows


def _read_json(path: Path) -> tuple[list[str], list[dict]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as e:
        raise VideoPhy2Error(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if isinstance(data, list) and all(isinstance(r, dict) for r in data):
        return _columns_of(data), data
    if isinstance(data, dict) and data and all(isinstance(v, list) for v in data.values()):
        lengths = {len(v) for v in data.values()}
        if len(lengths) == 1:  # columnar: {"column": [values...]}
            n = lengths.pop()
            return list(data), [{k: v[i] for k, v in data.items()} for i in range(n)]
    raise VideoPhy2Error(f"{path}: expected a JSON list of row objects (or {{column: [values]}}); convert it to "
                         "jsonl with one row object per line")


def _read_parquet(path: Path) -> tuple[list[str], list[dict]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise VideoPhy2Error(
            f"{path}: reading parquet needs pyarrow, which is not installed: `pip install pyarrow`, or convert the "
            "file to csv or jsonl (e.g. with pandas or duckdb elsewhere) and rerun"
        ) from None
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow's errors for damaged files (ArrowInvalid, OSError)
        raise VideoPhy2Error(f"{path}: not a readable parquet file ({e})") from None
    return list(table.column_names), table.to_pylist()


_READERS = {".csv": _read_csv, ".jsonl": _read_jsonl, ".json": _read_json, ".parquet": _read_parquet}


def _columns_of(rows: list[dict]) -> list[str]:
    seen: dict[str, None] = {}
    for row in rows:
        for k in row:
            seen.setdefault(str(k), None)
    return list(seen)


def read_rows(path: Path) -> tuple[list[str], list[dict], bool]:
    """(columns, rows, from_csv) of one data file; an unreadable file or missing columns is a VideoPhy2Error."""
    reader = _READERS[path.suffix.lower()]
    try:
        columns, rows = reader(path)
    except UnicodeDecodeError as e:
        raise VideoPhy2Error(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except csv.Error as e:
        raise VideoPhy2Error(f"{path}: not a readable CSV file ({e})") from None
    except OSError as e:
        raise VideoPhy2Error(f"{path}: cannot be read ({e.strerror or e})") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        found = ", ".join(columns) if columns else "none"
        raise VideoPhy2Error(f"{path}: missing column(s) {', '.join(missing)} (columns found: {found}); VideoPhy-2 "
                             f"rows need {', '.join(REQUIRED_COLUMNS)}")
    return columns, rows, reader is _read_csv


# ------------------------------------------------------------------------------------------------------
# Rows -> records


def _score(value: Any) -> int | None:
    """An integer 1..5 from an int, an integral float or their text; None otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        value = _csv_value(value.strip())
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and 1 <= value <= 5:
        return value
    return None


def _is_empty(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip()) or (
        isinstance(value, float) and math.isnan(value))


def _scalar(value: Any) -> tuple[bool, Any]:
    """(keepable, JSON value) for an extra column's value: scalars only; NaN/inf become null."""
    if value is None or isinstance(value, (bool, int, str)):
        return True, value
    if isinstance(value, float):
        return True, value if math.isfinite(value) else None
    if hasattr(value, "isoformat"):  # dates and times from parquet
        return True, value.isoformat()
    return False, None


_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _url_parts(url: str) -> list[str]:
    """The path components of a URL or a path, percent-decoded (the last one is the file name)."""
    path = unquote(urlparse(url).path) if _URL.match(url) else url
    return [p for p in re.split(r"[\\/]+", path) if p]


def _safe_stem(name: str) -> str:
    stem = _UNSAFE.sub("_", Path(name).stem).strip("._") or "video"
    return stem


class VideoIndex:
    """File name -> paths under a videos folder, walked once (hidden names and excluded folders left out)."""

    def __init__(self, root: Path, exclude: Iterable[Path] = ()):
        self.root = root
        self.by_name: dict[str, list[Path]] = {}
        exclude = [Path(e).resolve() for e in exclude]
        for dirpath, dirnames, filenames in os.walk(root):
            here = Path(dirpath)
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                                 and not any(_inside((here / d).resolve(), e) for e in exclude))
            for name in filenames:
                if not name.startswith("."):
                    self.by_name.setdefault(name, []).append(here / name)

    def find(self, parts: list[str]) -> tuple[Path | None, str]:
        """The file whose path ends like `parts` (at least the file name), or (None, why)."""
        found = self.by_name.get(parts[-1], [])
        if len(found) == 1:
            return found[0], ""
        if not found:
            return None, f"video file {parts[-1]} not found under {self.root}"

        def matching_tail(p: Path) -> int:
            n = 0
            for a, b in zip(reversed(p.parts), reversed(parts)):
                if a != b:
                    break
                n += 1
            return n

        best = max(matching_tail(p) for p in found)
        top = [p for p in found if matching_tail(p) == best]
        if len(top) == 1:
            return top[0], ""
        return None, (f"{len(top)} files named {parts[-1]} under {self.root} match its video_url equally "
                      f"({', '.join(str(p) for p in top[:3])}); pass --videos with the folder that holds it")


def check_video(path: Path) -> str | None:
    """Why `path` is not a decodable MP4 (None when it is): PyAV opens it and decodes its first frame, and an
    MP4 whose top-level boxes run past the end of the file (an interrupted download) is refused."""
    import av

    from cosmos_nemo.io import video as video_io

    try:
        video_io.probe(path)
    except video_io.VideoDecodeError as e:
        return f"video does not decode: {str(e).replace(str(path) + ': ', '')}"
    truncated = video_io._iso_truncation(path)  # cheap: reads the box headers only
    if truncated is not None:
        return f"video does not decode: truncated: {truncated}"
    try:
        with av.open(str(path)) as container:
            fmt = container.format.name or ""
    except (av.error.FFmpegError, OSError, ValueError) as e:  # probe opened it; kept for safety
        return f"video does not decode: {e}"
    if "mp4" not in fmt.split(","):
        return f"not an MP4 file (container format {fmt!r}); convert it, e.g. `ffmpeg -i IN -c copy OUT.mp4`"
    return None


def _link_or_copy(src: Path, dst: Path) -> str:
    """Hard-link `src` to `dst` when they share a file system, else copy it (flushed to disk)."""
    try:
        os.link(src, dst)
        return "link"
    except OSError:
        shutil.copyfile(src, dst)
        from cosmos_nemo.io.atomic import fsync_file

        fsync_file(dst)
        return "copy"


def _progress(items, progress: bool, desc: str, total: int | None = None, unit: str = "row"):
    if not progress:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, total=total, unit=unit, dynamic_ncols=True)


def _scan_split(split: str, data_root: Path, videos_root: Path, exclude: list[Path], limit: int | None,
                progress: bool) -> dict:
    """Read a split's rows and decide, row by row, what is kept (records, with their source files) and why
    the rest is skipped. Writes nothing."""
    files = find_data_files(data_root, exclude)
    if not files:
        raise VideoPhy2Error(f"no data files ({', '.join(e.lstrip('.') for e in DATA_EXTENSIONS)}) under {data_root}; "
                             f"{SPLIT_FLAGS[split]} takes {_hf_hint(split)}")
    rows: list[tuple[Path, int, dict, bool]] = []
    for f in files:
        _, file_rows, from_csv = read_rows(f)
        rows.extend((f, i + 1, r, from_csv) for i, r in enumerate(file_rows))
        if limit is not None and len(rows) >= limit:
            break
    if limit is not None:
        rows = rows[:limit]

    index: VideoIndex | None = None
    checked: dict[Path, str | None] = {}
    used_ids: set[str] = set()
    kept: list[tuple[dict, Path]] = []
    skipped: list[dict] = []
    dropped: dict[str, None] = {}
    base = data_root if data_root.is_dir() else data_root.parent

    for position, (f, number, row, from_csv) in enumerate(
            _progress(rows, progress, f"videophy2 {split}", total=len(rows))):
        where = f.relative_to(base).as_posix() if _inside(f, base) else str(f)
        url = row.get("video_url")
        url = "" if _is_empty(url) else str(url).strip()

        def skip(reason: str) -> None:
            skipped.append({"row": position, "file": where, "line": number, "source": url, "reason": reason})

        if not url:
            skip("empty video_url")
            continue
        caption = row.get("caption")
        if _is_empty(caption) or not isinstance(caption, str):
            skip("empty caption" if _is_empty(caption) else f"caption is not text ({type(caption).__name__})")
            continue
        pc = _score(row.get("pc"))
        if pc is None:
            skip(f"pc {row.get('pc')!r} is not an integer 1-5")
            continue
        sa = None
        if not _is_empty(row.get("sa")):
            sa = _score(row.get("sa"))
            if sa is None:
                skip(f"sa {row.get('sa')!r} is not an integer 1-5")
                continue
        parts = _url_parts(url)
        if not parts:
            skip("video_url has no file name")
            continue
        video = None
        if not _URL.match(url) or url.startswith("file://"):
            local = Path(unquote(urlparse(url).path)) if url.startswith("file://") else Path(url)
            local = local if local.is_absolute() else f.parent / local
            if local.is_file():
                video = local
        if video is None:
            if index is None:
                index = VideoIndex(videos_root, exclude)
            video, why = index.find(parts)
            if video is None:
                skip(why)
                continue
        video = video.resolve()
        if video not in checked:
            checked[video] = check_video(video)
        if checked[video] is not None:
            skip(checked[video])
            continue

        stem = _safe_stem(parts[-1])
        vid, n = stem, 0
        while vid in used_ids:
            n += 1
            vid = f"{stem}-{n}"
        used_ids.add(vid)
        record: dict[str, Any] = {"id": vid, "video": f"media/{vid}.mp4", "text": f"text/{vid}.txt",
                                  "caption": caption.strip(), "pc": pc}
        if sa is not None:
            record["sa"] = sa
        record["source"] = url
        for key, value in row.items():
            if key in REQUIRED_COLUMNS or key == "sa":
                continue
            if from_csv and isinstance(value, str):
                value = _csv_value(value)
            ok, value = _scalar(value)
            if not ok:
                dropped.setdefault(key, None)
                continue
            record[f"hf_{key}" if key in RESERVED_KEYS else key] = value
        kept.append((record, video))

    return {"split": split, "data_files": [str(f) for f in files], "videos_dir": str(videos_root),
            "rows": len(rows), "kept": len(kept), "skipped": skipped, "dropped_columns": list(dropped),
            "_kept": kept}


def _write_split(target: Path, kept: list[tuple[dict, Path]], overwrite: bool, progress: bool, desc: str) -> dict:
    from cosmos_nemo.io.atomic import atomic_dir, fsync_file

    how = Counter()
    with atomic_dir(target, overwrite=overwrite) as tmp:
        (tmp / "media").mkdir()
        (tmp / "text").mkdir()
        for record, video in _progress(kept, progress, desc, total=len(kept), unit="video"):
            how[_link_or_copy(video, tmp / record["video"])] += 1
            text = tmp / record["text"]
            text.write_text(record["caption"], encoding="utf-8")
        meta = tmp / "meta.json"
        meta.write_text(json.dumps([r for r, _ in kept], indent=2, ensure_ascii=False), encoding="utf-8")
        fsync_file(meta)
    return {"linked": how["link"], "copied": how["copy"]}


# ------------------------------------------------------------------------------------------------------
# The command


def prepare_videophy2(
    out_root: str | os.PathLike,
    train_dir: str | os.PathLike | None = None,
    test_dir: str | os.PathLike | None = None,
    videos_dir: str | os.PathLike | None = None,
    split: str = "both",
    overwrite: bool = False,
    limit: int | None = None,
    progress: bool = True,
) -> dict:
    """Write `out_root/videophy2_{train,val}` (see the module docstring) from downloaded copies of VideoPhy-2.

    `train_dir` / `test_dir`: the downloaded `videophy2_train` / `videophy2_test` folders (or one data file);
    `videos_dir`: where the mp4s are (default: each split's downloaded folder); `split`: train, val or both;
    `limit`: only the first rows of each split. Returns the report: {"out_root", "splits": {split: {"dir",
    "data_files", "videos_dir", "rows", "kept", "skipped": [{"row", "file", "line", "source", "reason"}],
    "dropped_columns", "linked", "copied"}}}. Raises VideoPhy2Error for bad arguments or input, an existing
    split folder without `overwrite`, or a split that keeps no row (its `report` then says why; nothing is
    written for any split).
    """
    if split not in SPLITS:
        raise VideoPhy2Error(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    if limit is not None and (isinstance(limit, bool) or int(limit) < 1):
        raise VideoPhy2Error(f"--limit must be >= 1, got {limit}")
    out_root = Path(out_root)
    if out_root.exists() and not out_root.is_dir():
        raise VideoPhy2Error(f"--out_root {out_root} is a file, not a folder")
    splits = ["train", "val"] if split == "both" else [split]
    given = {"train": train_dir, "val": test_dir}
    targets = {s: out_root / SPLIT_DIRS[s] for s in splits}
    exclude = [out_root / SPLIT_DIRS[s] for s in SPLIT_DIRS]

    roots: dict[str, tuple[Path, Path]] = {}
    for s in splits:
        if given[s] is None:
            raise VideoPhy2Error(f"--split {split} needs {SPLIT_FLAGS[s]}: {_hf_hint(s)}")
        data_root = Path(given[s])
        if not data_root.exists():
            raise VideoPhy2Error(f"{SPLIT_FLAGS[s]} {data_root} does not exist; it takes {_hf_hint(s)}")
        videos_root = Path(videos_dir) if videos_dir is not None else (
            data_root if data_root.is_dir() else data_root.parent)
        if not videos_root.is_dir():
            raise VideoPhy2Error(f"--videos {videos_root} is not a folder")
        roots[s] = (data_root, videos_root)
    for s, target in targets.items():
        if target.exists() and not target.is_dir():
            raise VideoPhy2Error(f"{target} exists and is not a folder")
        if target.exists() and not overwrite:
            raise VideoPhy2Error(f"{target} exists; pass --overwrite to replace it")
        for t in exclude:
            for r in {p.resolve() for p in roots[s]}:
                if _inside(r, t.resolve()):
                    raise VideoPhy2Error(f"the input {r} is inside the output folder {t}; choose another --out_root")

    scans = {s: _scan_split(s, *roots[s], exclude, limit, progress) for s in splits}
    report = {"out_root": str(out_root), "splits": {}}
    for s in splits:
        info = {k: v for k, v in scans[s].items() if k != "_kept"}
        info["dir"] = str(targets[s])
        info["linked"] = info["copied"] = 0
        report["splits"][s] = info
    empty = [s for s in splits if not scans[s]["kept"]]
    if empty:
        names = ", ".join(SPLIT_DIRS[s] for s in empty)
        raise VideoPhy2Error(f"{names}: no row kept (see the reasons above); nothing was written", report)

    for s in splits:
        written = _write_split(targets[s], scans[s]["_kept"], overwrite, progress, f"write {SPLIT_DIRS[s]}")
        report["splits"][s].update(written)
    return report


def summary(report: dict) -> str:
    """The report as printed by the command: kept/skipped per split, the first reasons, a tally by kind."""
    lines = []
    for s, info in report["splits"].items():
        n_skip = len(info["skipped"])
        files = info.get("linked", 0) + info.get("copied", 0)
        wrote = (f" -> {info['dir']} ({info['linked']} videos hard-linked, {info['copied']} copied)" if files
                 else "")
        lines.append(f"{SPLIT_DIRS[s]}: {info['rows']} rows, {info['kept']} kept, {n_skip} skipped{wrote}")
        if info["skipped"]:
            kinds = Counter(_reason_kind(k["reason"]) for k in info["skipped"])
            lines.append("  skipped by reason: " + ", ".join(f"{k}: {n}" for k, n in kinds.most_common()))
            for k in info["skipped"][:SHOWN_SKIPS]:
                lines.append(f"  - {k['file']} row {k['line']} ({k['source'] or 'no video_url'}): {k['reason']}")
            if n_skip > SHOWN_SKIPS:
                lines.append(f"  ... and {n_skip - SHOWN_SKIPS} more")
        if info.get("dropped_columns"):
            lines.append("  columns not kept (not scalar): " + ", ".join(info["dropped_columns"]))
    return "\n".join(lines)


def _reason_kind(reason: str) -> str:
    for key, kind in (("not found", "missing video"), ("files named", "ambiguous video"),
                      ("does not decode", "video does not decode"), ("not an MP4", "not an MP4"),
                      ("empty caption", "empty caption"), ("caption is not", "bad caption"), ("pc ", "bad pc"),
                      ("sa ", "bad sa"), ("video_url", "no video_url")):
        if key in reason:
            return kind
    return "other"
