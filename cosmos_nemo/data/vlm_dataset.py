"""The Reasoner's training data: video/image + text conversations, read from local files, and its resumable loader.

Two sources (`VLMDataConfig.kind`):
- `"videophy2"`: VideoPhy-2 in the reference's local layout (what `cosmos-nemo prepare videophy2` writes):
  `ROOT/videophy2_train/{meta.json, media/, text/}` and `ROOT/videophy2_val/...`; `meta.json` is a list of
  `{"id", "video": "media/<id>.mp4", "text": "text/<id>.txt", "caption", "pc", "sa"?, ...}` with paths relative to
  the split folder. Each record becomes the scoring conversation (`videophy2_conversation`): the video and its
  generation prompt, and the score (`label`: "pc", physical commonsense, the reference's target; or "sa") as the
  assistant's answer. `paths` name roots (train from `videophy2_train/`, validation from `videophy2_val/`) or
  split folders (train only).
- `"llava_ov"`: LLaVA-OneVision-style records, local `.json` (a list) or `.jsonl` files (or folders of them):
  `{"id", "conversations": [{"from": "system"|"human"|"gpt", "value"}], "image": path | [paths]?, "video": path?}`,
  `<image>` / `<video>` in a human turn marking where the media go (at the start when absent); media paths are
  relative to the record file's folder. With `hub_dataset` (`lmms-lab/LLaVA-OneVision-Data`, `hub_subset` a
  config name) the records are streamed with `datasets` where the hub can be reached (images arrive decoded).

Records that cannot be used (missing file, label outside 1..5, path leaving its folder, no assistant turn) are
skipped with a reason at start-up (the run log lists them); no usable record is an error.

The loader: each epoch a permutation of the records (seeded by `seed` and the epoch); global batch g takes
positions g*G .. g*G+G-1 and DP rank r its contiguous share, in micro-batches; an epoch's last partial global
batch is dropped. Its position (epoch, global batch, micro-batch) is the resumable state, so a resumed run sees
exactly the batches an uninterrupted one would. The validation loader reads the validation records in order.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

VIDEOPHY2_SYSTEM = "You are a helpful assistant that judges generated videos."
VIDEOPHY2_PROMPT = ("This video was generated from the prompt: \"{caption}\". How well does it follow physical "
                    "commonsense (objects, motion, collisions, fluids, gravity)? Rate it from 1 (it breaks physics) "
                    "to 5 (fully plausible). Answer with a single digit.")


class DataError(ValueError):
    """The data cannot give a run (no usable record, a bad layout); the message says what to do."""


@dataclass
class VLMDataConfig:
    paths: list[str] = field(default_factory=list)
    kind: str = "videophy2"  # "videophy2" | "llava_ov"
    label: str = "pc"  # videophy2: the score the assistant answers ("pc" physical commonsense, or "sa")
    system_prompt: str = VIDEOPHY2_SYSTEM
    prompt: str = VIDEOPHY2_PROMPT  # videophy2: the user's question; {caption} is the video's generation prompt
    hub_dataset: Optional[str] = None  # llava_ov: stream this hub dataset instead of local files
    hub_subset: Optional[str] = None
    micro_batch_size: int = 1
    global_batch_size: int = 8
    seed: int = 1234
    cache_samples: int = 64  # encoded samples kept in memory (decoding a video is the slow part)


# --------------------------------------------------------------------------------------------------
# records -> conversations


def videophy2_conversation(record: dict, data: VLMDataConfig, with_answer: bool = True) -> dict:
    """The scoring conversation of one VideoPhy-2 record (its `video` path relative to the split folder)."""
    messages = [{"role": "system", "content": data.system_prompt},
                {"role": "user", "content": [{"type": "video"},
                                             {"type": "text", "text": data.prompt.format(caption=record["caption"])}]}]
    if with_answer:
        messages.append({"role": "assistant", "content": str(int(record[data.label]))})
    return {"messages": messages, "videos": [record["video"]], "images": []}


def read_videophy2_split(split_dir, label: str = "pc") -> tuple[list[dict], list[str]]:
    """(records, skip reasons) of one `videophy2_*` folder; each record gets `video` as a path inside it."""
    from cosmos_nemo.io.paths import safe_join

    split_dir = Path(split_dir)
    meta = split_dir / "meta.json"
    if not meta.is_file():
        raise DataError(f"{split_dir} has no meta.json: it is not a VideoPhy-2 split folder (write one with "
                        "`cosmos-nemo prepare videophy2 --out_root ROOT`, then pass ROOT)")
    try:
        rows = json.loads(meta.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{meta} is not valid JSON ({err})") from None
    if not isinstance(rows, list):
        raise DataError(f"{meta} must hold a JSON list of records, found {type(rows).__name__}")
    records, skipped = [], []
    for n, row in enumerate(rows):
        where = f"{meta} record {n}"
        if not isinstance(row, dict) or "video" not in row:
            skipped.append(f"{where}: no `video` field")
            continue
        try:
            video = safe_join(split_dir, row["video"])
        except ValueError as err:
            skipped.append(f"{where}: {err}")
            continue
        caption = row.get("caption")
        if caption is None and row.get("text"):
            try:
                caption = safe_join(split_dir, row["text"]).read_text()
            except (ValueError, OSError) as err:
                skipped.append(f"{where}: caption file: {err}")
                continue
        score = row.get(label)
        if not video.is_file():
            skipped.append(f"{where}: video {video} not found")
        elif not caption or not str(caption).strip():
            skipped.append(f"{where}: empty caption")
        elif isinstance(score, bool) or not isinstance(score, (int, float)) or score != int(score) \
                or not 1 <= int(score) <= 5:
            skipped.append(f"{where}: {label}={score!r} is not a score 1..5")
        else:
            records.append({**row, "video": str(video), "caption": str(caption), label: int(score),
                            "id": str(row.get("id", n))})
    return records, skipped


def _llava_turns(row: dict, base: Path) -> dict:
    """A LLaVA-OV record -> conversation (media paths resolved under `base`, or decoded images as given)."""
    from cosmos_nemo.io.paths import safe_join

    roles = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
    images = row.get("image")
    images = [] if images is None else images if isinstance(images, list) else [images]
    videos = [row["video"]] if row.get("video") else []
    resolve = (lambda p: str(safe_join(base, p)) if isinstance(p, str) else p)
    images, videos = [resolve(p) for p in images], [resolve(p) for p in videos]
    messages, placed = [], {"image": 0, "video": 0}
    for turn in row.get("conversations") or []:
        role = roles.get(str(turn.get("from", turn.get("role", ""))).lower())
        value = str(turn.get("value", turn.get("content", "")))
        if role is None:
            raise ValueError(f"unknown speaker {turn.get('from')!r}")
        if role != "user":
            messages.append({"role": role, "content": value})
            continue
        parts, text = [], value
        for kind in ("image", "video"):
            tag = f"<{kind}>"
            while tag in text and placed[kind] < len(images if kind == "image" else videos):
                before, _, text = text.partition(tag)
                if before.strip():
                    parts.append({"type": "text", "text": before.strip()})
                parts.append({"type": kind})
                placed[kind] += 1
        if text.strip():
            parts.append({"type": "text", "text": text.strip()})
        messages.append({"role": "user", "content": parts})
    first_user = next((m for m in messages if m["role"] == "user"), None)
    for kind, media in (("video", videos), ("image", images)):  # media without a tag go first in the first turn
        missing = len(media) - placed[kind]
        if missing and first_user is not None:
            first_user["content"][:0] = [{"type": kind}] * missing
    return {"messages": messages, "videos": videos, "images": images}


def read_llava_records(path) -> tuple[list[dict], list[str]]:
    """(conversations, skip reasons) of LLaVA-OV records in a .json/.jsonl file or a folder of them."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.suffix in (".json", ".jsonl")) if path.is_dir() else [path]
    if not files or not all(f.is_file() for f in files):
        raise DataError(f"{path}: no LLaVA-OV record files (.json list or .jsonl) found")
    out, skipped = [], []
    for f in files:
        text = f.read_text()
        try:
            rows = json.loads(text) if f.suffix == ".json" else [json.loads(line) for line in text.splitlines()
                                                                 if line.strip()]
        except json.JSONDecodeError as err:
            raise DataError(f"{f} is not valid {'JSON' if f.suffix == '.json' else 'JSON lines'} ({err})") from None
        for n, row in enumerate(rows if isinstance(rows, list) else [rows]):
            try:
                conv = _llava_turns(row, f.parent)
            except (ValueError, TypeError, AttributeError) as err:
                skipped.append(f"{f} record {n}: {err}")
                continue
            if not any(m["role"] == "assistant" for m in conv["messages"]):
                skipped.append(f"{f} record {n}: no assistant (gpt) turn")
                continue
            missing = [p for p in conv["videos"] + conv["images"] if isinstance(p, str) and not Path(p).is_file()]
            if missing:
                skipped.append(f"{f} record {n}: media not found: {missing[0]}")
                continue
            out.append({**conv, "id": str(row.get("id", f"{f.name}:{n}"))})
    return out, skipped


def stream_hub_records(data: VLMDataConfig, limit: Optional[int] = None) -> list[dict]:
    """LLaVA-OV records streamed from the hub (`datasets`), as conversations; needs network and `pip install
    datasets`."""
    try:
        import datasets
    except ImportError:
        raise DataError(f"data.hub_dataset={data.hub_dataset!r} streams records with the `datasets` package: "
                        "`pip install datasets`, or download the records and pass them as data.paths") from None
    try:
        stream = datasets.load_dataset(data.hub_dataset, data.hub_subset, split="train", streaming=True)
    except Exception as err:  # offline, unknown dataset/subset
        raise DataError(f"cannot stream {data.hub_dataset!r} ({data.hub_subset}) from the hub: "
                        f"{type(err).__name__}: {str(err).splitlines()[0][:200]}") from None
    out = []
    for n, row in enumerate(stream):
        if limit is not None and n >= limit:
            break
        conv = _llava_turns(row, Path("."))
        if any(m["role"] == "assistant" for m in conv["messages"]):
            out.append({**conv, "id": str(row.get("id", n))})
    return out


def load_records(data: VLMDataConfig) -> tuple[list[dict], list[dict], list[str]]:
    """(train conversations, validation conversations, notes) for `data`."""
    if data.kind not in ("videophy2", "llava_ov"):
        raise DataError(f"data.kind must be 'videophy2' or 'llava_ov', got {data.kind!r}")
    train, valid, notes, skipped = [], [], [], []
    if data.kind == "videophy2":
        if data.label not in ("pc", "sa"):
            raise DataError(f"data.label must be 'pc' (physical commonsense) or 'sa' (semantic adherence), got "
                            f"{data.label!r}")
        if not data.paths:
            raise DataError("data.paths is empty: pass the VideoPhy-2 root (holding videophy2_train/ and "
                            "videophy2_val/), e.g. data.paths=[$VIDEOPHYSICS_ROOT]")
        for root in map(Path, data.paths):
            splits = [(root / "videophy2_train", train), (root / "videophy2_val", valid)] \
                if (root / "videophy2_train").is_dir() else [(root, train)]
            for folder, into in splits:
                if folder.name == "videophy2_val" and not folder.is_dir():
                    continue
                records, skip = read_videophy2_split(folder, data.label)
                skipped += skip
                into.extend({**videophy2_conversation(r, data), "id": r["id"], "score": r[data.label]}
                            for r in records)
                notes.append(f"VideoPhy-2 {folder}: {len(records)} records ({len(skip)} skipped), label {data.label}")
    else:
        if data.hub_dataset:
            train = stream_hub_records(data)
            notes.append(f"LLaVA-OV {data.hub_dataset} ({data.hub_subset}): {len(train)} records streamed")
        for path in data.paths:
            records, skip = read_llava_records(path)
            skipped += skip
            train += records
            notes.append(f"LLaVA-OV records {path}: {len(records)} ({len(skip)} skipped)")
    if skipped:
        more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        notes.append(f"skipped {len(skipped)} records: " + "; ".join(skipped[:5]) + more)
    if not train:
        raise DataError("no usable training record in " + ", ".join(map(str, data.paths or [data.hub_dataset]))
                        + (": " + "; ".join(skipped[:5]) if skipped else ""))
    return train, valid, notes


# --------------------------------------------------------------------------------------------------
# the loader


class VLMLoader:
    """Micro-batches of this DP rank (see the module docstring); `shuffle=False` reads records in order."""

    def __init__(self, records: list[dict], processor, model_cfg, data: VLMDataConfig, dp_rank: int, dp_size: int,
                 shuffle: bool = True):
        if data.global_batch_size % (data.micro_batch_size * dp_size):
            raise DataError(f"data.global_batch_size={data.global_batch_size} must be a multiple of "
                            f"data.micro_batch_size={data.micro_batch_size} x data-parallel size {dp_size}")
        if len(records) < data.global_batch_size:
            raise DataError(f"{len(records)} records cannot fill one global batch of {data.global_batch_size}: "
                            "lower data.global_batch_size or add data")
        self.records, self.processor, self.model_cfg, self.data = records, processor, model_cfg, data
        self.shuffle, self.dp_rank = shuffle, dp_rank
        self.per_rank = data.global_batch_size // dp_size
        self.num_micro_batches = self.per_rank // data.micro_batch_size
        self.batches_per_epoch = len(records) // data.global_batch_size
        self.position = {"epoch": 0, "global_batch": 0, "micro": 0}
        self._order_epoch, self._order = None, None
        self._cache: OrderedDict[int, Any] = OrderedDict()
        self._lengths: list[int] = []
        self.pad_id = processor.tokenizer.pad_token_id if processor.tokenizer.pad_token_id is not None else 0

    def order(self, epoch: int) -> np.ndarray:
        if self._order_epoch != epoch:
            n = len(self.records)
            self._order = np.random.default_rng([self.data.seed, epoch]).permutation(n) if self.shuffle \
                else np.arange(n)
            self._order_epoch = epoch
        return self._order

    def indices(self) -> list[int]:
        """Record indices of the next micro-batch (does not move)."""
        e, g, m = self.position["epoch"], self.position["global_batch"], self.position["micro"]
        start = g * self.data.global_batch_size + self.dp_rank * self.per_rank + m * self.data.micro_batch_size
        return [int(i) for i in self.order(e)[start:start + self.data.micro_batch_size]]

    def sample(self, index: int):
        from cosmos_nemo.models.vlm.processor import SampleError, encode

        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        record = self.records[index]
        try:
            item = encode(record, self.processor, self.model_cfg)
        except SampleError as err:
            raise DataError(f"record {record.get('id', index)}: {err}. Fix or remove it (a VideoPhy-2 folder from "
                            "`cosmos-nemo prepare videophy2` has only decodable videos), or raise model.max_tokens / "
                            "lower model.num_frames or model.max_pixels if it is too long") from None
        if self.data.cache_samples > 0:
            self._cache[index] = item
            while len(self._cache) > self.data.cache_samples:
                self._cache.popitem(last=False)
        return item

    def seq_length(self) -> int:
        """Mean tokens per sample of the next micro-batch (encoded now, kept in the cache for the step), or of the
        last ones seen without a cache: for the throughput log (no pipeline stage sizes messages by it)."""
        if self.data.cache_samples >= self.data.micro_batch_size:
            return int(np.mean([len(self.sample(i)) for i in self.indices()]))
        return int(np.mean(self._lengths[-64:])) if self._lengths else self.model_cfg.max_tokens

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        from cosmos_nemo.models.vlm.processor import collate

        items = [self.sample(i) for i in self.indices()]
        self._lengths.extend(len(e) for e in items)
        e, g, m = self.position["epoch"], self.position["global_batch"], self.position["micro"] + 1
        if m == self.num_micro_batches:
            g, m = g + 1, 0
            if g == self.batches_per_epoch:
                e, g = e + 1, 0
        self.position = {"epoch": e, "global_batch": g, "micro": m}
        return collate(items, self.pad_id)

    def state_dict(self) -> dict:
        return dict(self.position)

    def load_state_dict(self, state: dict) -> None:
        self.position = {k: int(state[k]) for k in ("epoch", "global_batch", "micro")}


def build_vlm_dataloaders(data: VLMDataConfig, model_cfg, processor, dp_rank: int, dp_size: int):
    """(train loader, validation loader or None, notes)."""
    train, valid, notes = load_records(data)
    train_loader = VLMLoader(train, processor, model_cfg, data, dp_rank, dp_size, shuffle=True)
    valid_loader = None
    if valid:
        if len(valid) < data.global_batch_size:
            notes.append(f"validation: {len(valid)} records cannot fill a global batch of {data.global_batch_size}; "
                         "no validation")
        else:
            valid_loader = VLMLoader(valid, processor, model_cfg, data, dp_rank, dp_size, shuffle=False)
    return train_loader, valid_loader, notes
