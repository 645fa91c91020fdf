"""The AR token dataset (DESIGN.md, "AR token dataset"): format, metadata and writer (reader: reader.py).

A dataset is a directory ``DIR`` holding

- ``tokens.bin`` / ``tokens.idx``: a megatron-core ``IndexedDataset`` (path stem ``DIR/tokens``), one
  document = one sequence = one clip window, uint16 when every id fits (< 65500) else int32;
- ``manifest.jsonl``: one JSON object per document, in document order, ``{"doc", "source", "start_frame",
  "num_frames", "fps", "height", "width", "grid": [T, H, W], "caption"?, "prompt_id"?}``;
- ``text_embeddings.safetensors`` (Video2World only): ``embeddings`` bf16 ``[N, L, D]`` and ``mask`` bool
  ``[N, L]``, one row per distinct prompt, referred to by ``prompt_id``;
- ``dataset.json``: tokenizer, compression, vocabulary, special tokens, frames/height/width, task, the
  skip report, the document count, per-file sizes and sha256, and a content hash over them.

``dataset.json`` is written last and only after every other file has been renamed into place: a
directory without it is an incomplete dataset and the reader refuses it. Nothing in ``dataset.json``
depends on time or worker count, so rewriting the same documents gives byte-identical files.

Stored tokens (see layout.py): base documents are the raw clip ids; Video2World documents are
``[BOV] + clip ids + [PAD] * k`` as NVIDIA's V2W data. The writer takes raw clip ids for both tasks and
applies the framing itself.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import struct
import uuid
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Mapping

import numpy as np

from cosmos_nemo.data.layout import (
    TASK_BASE,
    TASK_VIDEO2WORLD,
    TASKS,
    V2W_PAD_TO_MULTIPLE_OF,
    GridError,
    frame_document,
    latent_grid_tuple,
)
from cosmos_nemo.io.atomic import (
    atomic_path,
    atomic_write_bytes,
    fsync_dir,
    fsync_file,
    is_temporary,
    kill_point,
    pid_alive,
)

FORMAT_NAME = "cosmos_nemo.ar_token_dataset"
FORMAT_VERSION = 1

TOKENS_STEM = "tokens"
BIN_NAME = "tokens.bin"
IDX_NAME = "tokens.idx"
MANIFEST_NAME = "manifest.jsonl"
META_NAME = "dataset.json"
TEXT_EMB_NAME = "text_embeddings.safetensors"
_TMP_PREFIX = ".ar_write."

# megatron's IndexedDataset uses uint16 below this cardinality (DType.optimal_dtype).
_UINT16_CARDINALITY_LIMIT = 65500

_REQUIRED_RECORD_FIELDS = ("source", "start_frame", "num_frames", "fps", "height", "width", "grid")
_OPTIONAL_RECORD_FIELDS = ("caption", "prompt_id")
MANIFEST_FIELDS = ("doc",) + _REQUIRED_RECORD_FIELDS + _OPTIONAL_RECORD_FIELDS


class ARDatasetError(ValueError):
    """An AR token dataset that cannot be written or read as it is; the message says what to do."""


class IncompleteDatasetError(ARDatasetError):
    """The directory has no dataset.json: writing was interrupted or never finished."""


class DatasetExistsError(ARDatasetError, FileExistsError):
    """A complete dataset with different content is already in the output directory."""


# --------------------------------------------------------------------------------------------------
# meta


@dataclass
class ARDatasetMeta:
    """What `dataset.json` records about how the tokens were made.

    `vocab_size` is the tokenizer's codebook size (64,000 for Cosmos FSQ): clip ids are in
    ``[0, vocab_size)``. Special ids sit outside the codebook; Video2World needs `bov_id` and `pad_id`
    and defaults them to the reference's 64000 / 64002 pattern (``vocab_size + 0`` / ``+ 2``).
    `frames`, `height`, `width` are the clip size the tokenizer saw (after resize/crop).
    `skipped` is the skip report: a list of ``{"source": ..., "reason": ...}``.
    """

    tokenizer: str
    compression: tuple[int, int, int]
    vocab_size: int
    frames: int
    height: int
    width: int
    task: str = TASK_BASE
    bov_id: int | None = None
    eov_id: int | None = None
    pad_id: int | None = None
    pad_to_multiple_of: int = V2W_PAD_TO_MULTIPLE_OF
    skipped: list[dict] = field(default_factory=list)
    text_encoder: str | None = None  # Video2World: the encoder of its text embeddings (`prepare v2w --text_encoder`)

    def __post_init__(self) -> None:
        self.compression = tuple(int(c) for c in self.compression)  # type: ignore[assignment]
        if len(self.compression) != 3 or min(self.compression) < 1:
            raise ARDatasetError(f"meta.compression must be three positive ints [t, h, w], got {self.compression}")
        if self.task not in TASKS:
            raise ARDatasetError(f"meta.task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if not isinstance(self.tokenizer, str) or not self.tokenizer:
            raise ARDatasetError("meta.tokenizer must be a non-empty tokenizer name (e.g. 'Cosmos-1.0-Tokenizer-DV8x16x16')")
        if int(self.vocab_size) < 1:
            raise ARDatasetError(f"meta.vocab_size must be positive, got {self.vocab_size}")
        self.vocab_size = int(self.vocab_size)
        if self.task == TASK_VIDEO2WORLD:
            if self.bov_id is None:
                self.bov_id = self.vocab_size
            if self.pad_id is None:
                self.pad_id = self.vocab_size + 2
            if self.eov_id is None:
                self.eov_id = self.vocab_size + 1
        for name in ("bov_id", "eov_id", "pad_id"):
            value = getattr(self, name)
            if value is not None and int(value) < self.vocab_size:
                raise ARDatasetError(
                    f"meta.{name}={value} collides with the codebook ids [0, {self.vocab_size}); special tokens "
                    f"must be >= vocab_size (reference: BOV {self.vocab_size}, EOV {self.vocab_size + 1}, "
                    f"PAD {self.vocab_size + 2})"
                )
        if self.text_encoder is not None and (self.task != TASK_VIDEO2WORLD or not isinstance(self.text_encoder, str)
                                              or not self.text_encoder):
            raise ARDatasetError("meta.text_encoder names the text encoder of a Video2World dataset (a non-empty "
                                 f"string); got {self.text_encoder!r} for task {self.task!r}")
        if self.pad_to_multiple_of < 1:
            raise ARDatasetError(f"meta.pad_to_multiple_of must be >= 1, got {self.pad_to_multiple_of}")
        self.skipped = [_check_skip(i, s) for i, s in enumerate(self.skipped or [])]
        try:
            latent_grid_tuple(self.frames, self.height, self.width, self.compression)
        except GridError as exc:
            raise ARDatasetError(f"meta frames/height/width do not fit the tokenizer compression: {exc}") from exc

    @property
    def max_token_id(self) -> int:
        specials = [v for v in (self.bov_id, self.eov_id, self.pad_id) if v is not None]
        return max([self.vocab_size - 1] + [int(v) for v in specials])

    @property
    def storage_dtype(self) -> np.dtype:
        """uint16 when every id (specials included) fits, else int32 (megatron's optimal_dtype rule)."""
        return np.dtype(np.uint16 if self.max_token_id + 1 < _UINT16_CARDINALITY_LIMIT else np.int32)

    @property
    def grid(self) -> tuple[int, int, int]:
        """The latent grid of the meta's frames/height/width."""
        return latent_grid_tuple(self.frames, self.height, self.width, self.compression)

    def to_json(self) -> dict:
        return {
            "tokenizer": {"name": self.tokenizer, "compression": list(self.compression)},
            "vocab_size": self.vocab_size,
            "special_tokens": {"bov": self.bov_id, "eov": self.eov_id, "pad": self.pad_id},
            "frames": int(self.frames),
            "height": int(self.height),
            "width": int(self.width),
            "task": self.task,
            "pad_to_multiple_of": int(self.pad_to_multiple_of),
            "skipped": self.skipped,
            **({"text_encoder": self.text_encoder} if self.text_encoder is not None else {}),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "ARDatasetMeta":
        tok = data["tokenizer"]
        special = data.get("special_tokens") or {}
        return cls(
            tokenizer=tok["name"],
            compression=tuple(tok["compression"]),
            vocab_size=data["vocab_size"],
            frames=data["frames"],
            height=data["height"],
            width=data["width"],
            task=data["task"],
            bov_id=special.get("bov"),
            eov_id=special.get("eov"),
            pad_id=special.get("pad"),
            pad_to_multiple_of=data.get("pad_to_multiple_of", V2W_PAD_TO_MULTIPLE_OF),
            skipped=list(data.get("skipped") or []),
            text_encoder=data.get("text_encoder"),
        )

    @classmethod
    def coerce(cls, meta: "ARDatasetMeta | Mapping[str, Any]") -> "ARDatasetMeta":
        """An ARDatasetMeta from itself or a flat dict of its field names (``skip_report`` is accepted as
        a synonym of ``skipped``; ``special_tokens: {bov, eov, pad}`` as a synonym of the ``*_id`` keys)."""
        if isinstance(meta, cls):
            return meta
        if not isinstance(meta, Mapping):
            raise ARDatasetError(f"meta must be an ARDatasetMeta or a dict, got {type(meta).__name__}")
        data = dict(meta)
        if "skip_report" in data:
            data["skipped"] = data.pop("skip_report")
        special = data.pop("special_tokens", None)
        if special:
            for key in ("bov", "eov", "pad"):
                if key in special:
                    data.setdefault(f"{key}_id", special[key])
        if isinstance(data.get("tokenizer"), Mapping):  # the dataset.json shape
            return cls.from_json(meta)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ARDatasetError(f"unknown meta keys {unknown}; allowed: {sorted(names)}")
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in data and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]  # type: ignore[misc]
        if missing:
            raise ARDatasetError(f"meta is missing {missing}")
        return cls(**data)


def _check_skip(i: int, entry: Any) -> dict:
    if not isinstance(entry, Mapping) or "source" not in entry or "reason" not in entry:
        raise ARDatasetError(f"skip report entry {i} must be {{'source': ..., 'reason': ...}}, got {entry!r}")
    return {"source": str(entry["source"]), "reason": str(entry["reason"])}


# --------------------------------------------------------------------------------------------------
# records


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_source(where: str, source: Any) -> str:
    if not isinstance(source, str) or not source:
        raise ARDatasetError(f"{where}: 'source' must be a non-empty path relative to the input root, got {source!r}")
    p = PurePosixPath(source.replace("\\", "/"))
    if p.is_absolute() or source.startswith(("/", "\\")) or (len(source) > 1 and source[1] == ":"):
        raise ARDatasetError(f"{where}: 'source' {source!r} is absolute; record it relative to the input root")
    if ".." in p.parts:
        raise ARDatasetError(f"{where}: 'source' {source!r} climbs out of the input root ('..'); record it relative to the root")
    return source


def normalize_record(doc: int, record: Mapping[str, Any], meta: ARDatasetMeta, num_prompts: int | None) -> dict:
    """Validate one manifest record (without "doc") and return it in canonical field order with "doc"."""
    where = f"document {doc}"
    if not isinstance(record, Mapping):
        raise ARDatasetError(f"{where}: record must be a dict, got {type(record).__name__}")
    src = record.get("source")
    if isinstance(src, str):
        where = f"document {doc} ({src})"
    unknown = sorted(set(record) - set(_REQUIRED_RECORD_FIELDS) - set(_OPTIONAL_RECORD_FIELDS))
    if unknown:
        raise ARDatasetError(
            f"{where}: unknown manifest fields {unknown}; the contract allows "
            f"{list(_REQUIRED_RECORD_FIELDS) + list(_OPTIONAL_RECORD_FIELDS)} ('doc' is added by the writer)"
        )
    missing = [k for k in _REQUIRED_RECORD_FIELDS if k not in record]
    if missing:
        raise ARDatasetError(f"{where}: manifest record is missing {missing}")
    out: dict[str, Any] = {"doc": doc, "source": _check_source(where, record["source"])}
    for key, minimum in (("start_frame", 0), ("num_frames", 1), ("fps", None), ("height", 1), ("width", 1)):
        value = record[key]
        if key == "fps":
            if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) \
                    or not math.isfinite(value) or value <= 0:
                raise ARDatasetError(f"{where}: 'fps' must be a positive number, got {value!r}")
            out[key] = float(value)
            continue
        if not _is_int(value) or value < minimum:
            raise ARDatasetError(f"{where}: '{key}' must be an integer >= {minimum}, got {value!r}")
        out[key] = int(value)
    grid = record["grid"]
    if isinstance(grid, np.ndarray):
        grid = grid.tolist()
    if not isinstance(grid, (list, tuple)) or len(grid) != 3 or not all(_is_int(g) and g >= 1 for g in grid):
        raise ARDatasetError(f"{where}: 'grid' must be [T, H, W] positive integers, got {grid!r}")
    grid = [int(g) for g in grid]
    try:
        expected = list(latent_grid_tuple(out["num_frames"], out["height"], out["width"], meta.compression))
    except GridError as exc:
        raise ARDatasetError(f"{where}: {exc}") from exc
    if grid != expected:
        c = meta.compression
        raise ARDatasetError(
            f"{where}: grid {grid} does not match its clip {out['num_frames']}x{out['height']}x{out['width']} at "
            f"compression {c[0]}x{c[1]}x{c[2]}: expected [({out['num_frames']}-1)/{c[0]}+1, {out['height']}/{c[1]}, "
            f"{out['width']}/{c[2]}] = {expected}"
        )
    out["grid"] = grid
    if "caption" in record and record["caption"] is not None:
        if not isinstance(record["caption"], str):
            raise ARDatasetError(f"{where}: 'caption' must be a string, got {type(record['caption']).__name__}")
        out["caption"] = record["caption"]
    prompt_id = record.get("prompt_id")
    if prompt_id is not None:
        if not _is_int(prompt_id) or prompt_id < 0:
            raise ARDatasetError(f"{where}: 'prompt_id' must be an integer >= 0, got {prompt_id!r}")
        if num_prompts is not None and prompt_id >= num_prompts:
            raise ARDatasetError(
                f"{where}: prompt_id {prompt_id} has no row in {TEXT_EMB_NAME} ({num_prompts} prompts)"
            )
        out["prompt_id"] = int(prompt_id)
    elif meta.task == TASK_VIDEO2WORLD:
        raise ARDatasetError(f"{where}: Video2World documents need a 'prompt_id' (row of {TEXT_EMB_NAME})")
    return out


def _check_tokens(where: str, tokens: Any, meta: ARDatasetMeta) -> np.ndarray:
    arr = tokens.detach().cpu().numpy() if hasattr(tokens, "detach") else np.asarray(tokens)
    if arr.ndim != 1:
        raise ARDatasetError(f"{where}: tokens must be 1-D (raster-order ids), got shape {tuple(arr.shape)}")
    if arr.size == 0:
        raise ARDatasetError(f"{where}: tokens are empty")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ARDatasetError(f"{where}: tokens must be integers, got dtype {arr.dtype}")
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= meta.vocab_size:
        raise ARDatasetError(
            f"{where}: token ids must be clip codes in [0, {meta.vocab_size}) (special tokens are added by the "
            f"writer), got range [{lo}, {hi}]"
        )
    return arr


# --------------------------------------------------------------------------------------------------
# hashing and atomic file helpers


def _sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def _content_hash(files: Mapping[str, Mapping[str, Any]]) -> str:
    """One hash over the per-file hashes, in name order (the dataset's identity)."""
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(f"{name}\t{files[name]['bytes']}\t{files[name]['sha256']}\n".encode())
    return "sha256:" + h.hexdigest()






def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False) + "\n").encode("utf-8")


def _new_tmp_dir(out_dir: Path) -> Path:
    tmp = out_dir / f"{_TMP_PREFIX}{os.getpid()}.{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    return tmp


def _remove_stale_tmp(out_dir: Path) -> None:
    """Staging folders of writers that died (one writer per directory is the contract), and the
    temporaries a killed `atomic_path` write left (dataset.json, text embeddings)."""
    for stale in out_dir.glob(f"{_TMP_PREFIX}*"):
        try:
            pid = int(stale.name[len(_TMP_PREFIX):].split(".")[0])
        except ValueError:
            pid = -1
        if pid != os.getpid() and pid_alive(pid):
            continue
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)
    for stale in out_dir.iterdir():
        if is_temporary(stale) and stale.is_file():
            stale.unlink(missing_ok=True)


def _read_existing_meta(out_dir: Path) -> dict | None:
    path = out_dir / META_NAME
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------------------------------
# text embeddings


def _text_embedding_tensors(embeddings: Any, mask: Any):
    import torch

    emb = embeddings if isinstance(embeddings, torch.Tensor) else torch.as_tensor(np.asarray(embeddings))
    msk = mask if isinstance(mask, torch.Tensor) else torch.as_tensor(np.asarray(mask))
    if emb.ndim != 3:
        raise ARDatasetError(f"text embeddings must be [N, L, D], got shape {tuple(emb.shape)}")
    if emb.shape[0] < 1 or emb.shape[1] < 1 or emb.shape[2] < 1:
        raise ARDatasetError(f"text embeddings must have at least one prompt, position and channel, got {tuple(emb.shape)}")
    if tuple(msk.shape) != tuple(emb.shape[:2]):
        raise ARDatasetError(f"text embedding mask must be [N, L] = {list(emb.shape[:2])}, got {list(msk.shape)}")
    if not emb.is_floating_point():
        raise ARDatasetError(f"text embeddings must be floating point, got {emb.dtype}")
    if not bool(torch.isfinite(emb).all()):
        raise ARDatasetError("text embeddings contain NaN or Inf; re-run the text encoder on these prompts")
    return emb.detach().cpu().to(torch.bfloat16).contiguous(), (msk.detach().cpu() != 0).contiguous()


def _save_text_embeddings(path: Path, embeddings: Any, mask: Any) -> tuple[int, int, int]:
    from safetensors.torch import save_file

    emb, msk = _text_embedding_tensors(embeddings, mask)
    n, length, dim = (int(s) for s in emb.shape)
    save_file(
        {"embeddings": emb, "mask": msk},
        str(path),
        # One metadata key only: safetensors writes metadata from a hash map in random order, and the
        # file must be byte-identical across reruns for the content hash.
        metadata={"format": "cosmos_nemo.text_embeddings"},
    )
    return n, length, dim


def read_text_embedding_shape(path: Path) -> tuple[int, int, int]:
    """(N, L, D) of a text_embeddings.safetensors file, checking its two tensors."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            keys = set(f.keys())
            if keys != {"embeddings", "mask"}:
                raise ARDatasetError(f"{path} must hold exactly 'embeddings' and 'mask', found {sorted(keys)}")
            shape = f.get_slice("embeddings").get_shape()
            mshape = f.get_slice("mask").get_shape()
    except ARDatasetError:
        raise
    except Exception as exc:  # safetensors raises its own error types for a corrupt header
        raise ARDatasetError(f"{path} is not a readable safetensors file ({exc}); re-run the text-embedding step") from exc
    if len(shape) != 3 or list(mshape) != list(shape[:2]):
        raise ARDatasetError(f"{path}: embeddings {shape} / mask {mshape} are not [N, L, D] / [N, L]")
    return int(shape[0]), int(shape[1]), int(shape[2])


class _Unchanged(Exception):
    """Ends an atomic write early when the target already holds the same bytes."""


def write_text_embeddings(out_dir: str | os.PathLike, embeddings: Any, mask: Any, overwrite: bool = False) -> Path:
    """Write ``DIR/text_embeddings.safetensors`` (bf16 ``embeddings [N, L, D]``, bool ``mask [N, L]``),
    one row per distinct prompt; documents refer to rows by ``prompt_id``.

    Call it before `write_ar_dataset` for a Video2World dataset (or pass ``text_embeddings=`` to that
    function instead): the dataset's content hash covers this file. Written under a temporary name and
    renamed (`io.atomic`). Identical content is a no-op. If a complete dataset already uses a different
    embeddings file, this refuses unless ``overwrite=True``, which also removes ``dataset.json`` so the
    directory reads as incomplete until `write_ar_dataset` finishes again.
    """
    out = Path(out_dir)
    final = out / TEXT_EMB_NAME
    try:
        with atomic_path(final) as tmp:
            _save_text_embeddings(tmp, embeddings, mask)
            if final.is_file() and _sha256_file(final) == _sha256_file(tmp):
                raise _Unchanged  # leaves the file as it is (not even renamed over): the temporary is dropped
            existing = _read_existing_meta(out)
            if existing is not None and TEXT_EMB_NAME in (existing.get("files") or {}):
                if not overwrite:
                    raise DatasetExistsError(
                        f"{out} holds a complete dataset whose {TEXT_EMB_NAME} differs from the new embeddings; pass "
                        "overwrite=True (--overwrite) to replace it, or write to a new directory"
                    )
                (out / META_NAME).unlink()
    except _Unchanged:
        return final
    fsync_dir(out)
    return final



# --------------------------------------------------------------------------------------------------
# writer

# megatron-core's IndexedDataset files (megatron/core/datasets/indexed_dataset.py): `.bin` holds the
# sequences back to back; `.idx` = magic, version 1 (<Q), dtype code (<B), sequence count (<Q), document
# count (<Q), then int32 sequence lengths, int64 byte offsets, int64 document boundaries (sequence
# indices, starting with 0). One sequence per document here.
_IDX_MAGIC = b"MMIDIDX\x00\x00"
_IDX_DTYPE_CODES = {np.dtype(np.uint16): 8, np.dtype(np.int32): 4}


class _IndexedWriter:
    """Writes the `.bin`/`.idx` pair byte for byte as megatron's `IndexedDatasetBuilder` does (a test
    compares both), without importing megatron-core: that import costs seconds, which data preparation
    would otherwise spend serially at its merge step."""

    def __init__(self, bin_path: Path, dtype: np.dtype):
        self.dtype = np.dtype(dtype)
        if self.dtype not in _IDX_DTYPE_CODES:
            raise ValueError(f"token storage dtype must be uint16 or int32, got {self.dtype}")
        self._bin = open(bin_path, "wb")
        self._lengths: list[int] = []

    def add_document(self, ids: np.ndarray) -> None:
        self._bin.write(np.ascontiguousarray(ids, dtype=self.dtype).tobytes())
        self._lengths.append(int(ids.shape[0]))

    def finalize(self, idx_path: Path) -> None:
        self._bin.close()
        lengths = np.asarray(self._lengths, dtype=np.int64)
        pointers = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64) * self.dtype.itemsize
        documents = np.arange(len(lengths) + 1, dtype=np.int64)
        with open(idx_path, "wb") as f:
            f.write(_IDX_MAGIC + struct.pack("<Q", 1) + struct.pack("<B", _IDX_DTYPE_CODES[self.dtype]))
            f.write(struct.pack("<Q", len(lengths)) + struct.pack("<Q", len(documents)))
            f.write(lengths.astype(np.int32).tobytes())
            f.write(pointers[: len(lengths)].tobytes())
            f.write(documents.tobytes())

    def close(self) -> None:
        self._bin.close()


def write_ar_dataset(
    out_dir: str | os.PathLike,
    documents: Iterable[tuple[Any, Mapping[str, Any]]],
    meta: ARDatasetMeta | Mapping[str, Any],
    *,
    overwrite: bool = False,
    text_embeddings: tuple[Any, Any] | None = None,
    progress: bool = False,
) -> Path:
    """Write an AR token dataset to `out_dir` and return its path.

    `documents`: ``(tokens, record)`` pairs in document order. `tokens` are the clip's raw ids (1-D ints in
    ``[0, meta.vocab_size)``, raster order); for Video2World the writer stores ``[BOV] + ids + [PAD]*k``.
    `record` holds the manifest fields except "doc": source (relative to the input root), start_frame,
    num_frames, fps, height, width (the tokenized clip size), grid [T, H, W], optional caption and
    prompt_id (required for Video2World). The grid is checked against num_frames/height/width and the
    compression, and the token count against the grid.

    `text_embeddings`: optional ``(embeddings [N, L, D], mask [N, L])`` for Video2World; otherwise a
    ``DIR/text_embeddings.safetensors`` written before by `write_text_embeddings` is used.

    Atomic: the files are written in a hidden temporary folder in `out_dir`, moved into place, and
    ``dataset.json`` is written last. A crash leaves no dataset.json (readers refuse the directory) and
    the next call cleans up. Rewriting identical content is a no-op; a complete dataset with different
    content is refused unless ``overwrite=True``. Other files in `out_dir` (e.g. ``.parts/``) are kept.
    """
    meta = ARDatasetMeta.coerce(meta)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ARDatasetError(f"output {out} exists and is not a directory; choose a directory path for --output_prefix")
    out.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(out)
    tmp = _new_tmp_dir(out)
    cleanup: list = []
    try:
        num_prompts = emb_shape = None
        if meta.task == TASK_VIDEO2WORLD:
            if text_embeddings is not None:
                emb_shape = _save_text_embeddings(tmp / TEXT_EMB_NAME, *text_embeddings)
            elif (out / TEXT_EMB_NAME).is_file():
                # written before by write_text_embeddings: used in place (it can be large), not copied
                emb_shape = read_text_embedding_shape(out / TEXT_EMB_NAME)
            else:
                raise ARDatasetError(
                    f"a Video2World dataset needs text embeddings: call write_text_embeddings({str(out)!r}, ...) "
                    "first or pass text_embeddings=(embeddings, mask)"
                )
            num_prompts = emb_shape[0]
        elif text_embeddings is not None:
            raise ARDatasetError("text_embeddings are only used by Video2World datasets (meta.task='video2world')")

        dtype = meta.storage_dtype
        builder = _IndexedWriter(tmp / BIN_NAME, dtype)
        cleanup.append(builder.close)
        grids: dict[str, int] = {}
        num_docs = num_tokens = 0
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(desc="writing AR documents", unit="doc")
        with open(tmp / MANIFEST_NAME, "w", encoding="utf-8", newline="\n") as manifest:
            for doc, item in enumerate(documents):
                if not isinstance(item, (tuple, list)) or len(item) != 2:
                    raise ARDatasetError(f"document {doc}: expected a (tokens, record) pair, got {type(item).__name__}")
                tokens, record = item
                rec = normalize_record(doc, record, meta, num_prompts)
                where = f"document {doc} ({rec['source']})"
                ids = _check_tokens(where, tokens, meta)
                try:
                    stored = frame_document(ids, rec["grid"], meta.task, meta.bov_id, meta.pad_id, meta.pad_to_multiple_of)
                except GridError as exc:
                    raise ARDatasetError(f"{where}: {exc}") from exc
                builder.add_document(stored)
                manifest.write(json.dumps(rec, ensure_ascii=False, separators=(", ", ": ")) + "\n")
                key = "x".join(str(g) for g in rec["grid"])
                grids[key] = grids.get(key, 0) + 1
                num_docs += 1
                num_tokens += int(stored.shape[0])
                if bar is not None:
                    bar.update(1)
        if bar is not None:
            bar.close()
        builder.finalize(tmp / IDX_NAME)
        if num_docs == 0:
            skipped = "; ".join(f"{s['source']}: {s['reason']}" for s in meta.skipped[:5])
            raise ARDatasetError(
                "no documents to write"
                + (f" ({len(meta.skipped)} inputs skipped: {skipped}{' ...' if len(meta.skipped) > 5 else ''})" if meta.skipped else "")
                + "; check the input folder and the clip settings"
            )

        names = [BIN_NAME, IDX_NAME, MANIFEST_NAME] + ([TEXT_EMB_NAME] if emb_shape is not None else [])
        # where each file is now: the temp folder, or (embeddings written earlier) already in place
        src = {name: (tmp / name if (tmp / name).exists() else out / name) for name in names}
        files = {}
        for name in names:
            fsync_file(src[name])
            files[name] = {"bytes": src[name].stat().st_size, "sha256": _sha256_file(src[name])}
        info = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION}
        info.update(meta.to_json())
        info.update(
            {
                "num_documents": num_docs,
                "num_tokens": num_tokens,
                "dtype": dtype.name,
                "grids": dict(sorted(grids.items())),
                "text_embeddings": (
                    None if emb_shape is None else {"num_prompts": emb_shape[0], "length": emb_shape[1], "dim": emb_shape[2]}
                ),
                "files": files,
                "content_hash": _content_hash(files),
            }
        )
        info_bytes = _json_bytes(info)

        existing = _read_existing_meta(out)
        if existing is not None:
            if existing == json.loads(info_bytes):
                if all(
                    (out / n).is_file() and (out / n).stat().st_size == files[n]["bytes"]
                    and _sha256_file(out / n) == files[n]["sha256"]
                    for n in names
                ):
                    return out  # identical dataset already complete: nothing to do (idempotent rerun)
                # same intended content but damaged files on disk: repair them below
            elif not overwrite:
                raise DatasetExistsError(
                    f"{out} already holds a complete AR dataset with different content "
                    f"({existing.get('content_hash')} vs new {info['content_hash']}); pass overwrite=True "
                    "(--overwrite) to replace it, or choose another output directory"
                )
        # From here on the directory is incomplete until dataset.json lands.
        if (out / META_NAME).exists():
            (out / META_NAME).unlink()
            fsync_dir(out)
        for name in names:
            if src[name] != out / name:
                os.replace(src[name], out / name)
                kill_point("merge:moved")  # test hook: a kill with the dataset's files half moved in
        fsync_dir(out)
        atomic_write_bytes(out / META_NAME, info_bytes)
        fsync_dir(out)
        return out
    finally:
        for close in cleanup:
            close()
        shutil.rmtree(tmp, ignore_errors=True)
