"""Reader of the AR token dataset (format: see ar_dataset.py): `ARTokenDataset` opens a directory and
validates it completely before anything reads a token, so every data problem is a clear error before a
model is built."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from cosmos_nemo.data.ar_dataset import (
    _TMP_PREFIX,
    BIN_NAME,
    FORMAT_NAME,
    FORMAT_VERSION,
    IDX_NAME,
    MANIFEST_NAME,
    META_NAME,
    TEXT_EMB_NAME,
    TOKENS_STEM,
    ARDatasetError,
    ARDatasetMeta,
    IncompleteDatasetError,
    _content_hash,
    _is_int,
    _sha256_file,
    read_text_embedding_shape,
)
from cosmos_nemo.data.layout import TASK_VIDEO2WORLD, layout_for


@dataclass(frozen=True)
class ARDocument:
    """One stored document: `tokens` as stored (int64; Video2World: ``[BOV] + clip + PADs``), its latent
    `grid` (T, H, W) and its manifest `record` (with "doc")."""

    tokens: np.ndarray
    grid: tuple[int, int, int]
    record: dict


def _prepare_hint(path: Path) -> str:
    return f"write it with `cosmos-nemo prepare ar-tokens ... --output_prefix {path}`"


def read_dataset_info(path: str | os.PathLike) -> dict:
    """`dataset.json` of the dataset at `path`, after the cheap completeness checks (directory, marker,
    format, files present with their recorded sizes). Raises ARDatasetError subclasses that say what to do."""
    root = Path(path)
    if not root.exists():
        raise ARDatasetError(f"AR dataset {root} does not exist; {_prepare_hint(root)}")
    if not root.is_dir():
        raise ARDatasetError(f"AR dataset path {root} is not a directory (expected the --output_prefix directory)")
    meta_path = root / META_NAME
    if not meta_path.is_file():
        partial = [p.name for p in root.iterdir() if p.name in (BIN_NAME, IDX_NAME, MANIFEST_NAME) or p.name.startswith(_TMP_PREFIX)]
        if partial:
            raise IncompleteDatasetError(
                f"AR dataset {root} is incomplete: it has no {META_NAME} (found {sorted(partial)}), so writing was "
                "interrupted or is still running. Re-run the prepare command with the same --output_prefix; it "
                "resumes and finishes the dataset."
            )
        raise IncompleteDatasetError(f"{root} is not an AR token dataset (no {META_NAME}); {_prepare_hint(root)}")
    try:
        info = json.loads(meta_path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ARDatasetError(f"{meta_path} is not valid JSON ({exc}); re-run the prepare command with --overwrite") from exc
    if not isinstance(info, dict) or info.get("format") != FORMAT_NAME:
        raise ARDatasetError(f"{meta_path} does not describe a {FORMAT_NAME} (format={info.get('format') if isinstance(info, dict) else None!r})")
    if int(info.get("format_version", -1)) > FORMAT_VERSION:
        raise ARDatasetError(
            f"{meta_path} has format_version {info.get('format_version')}, newer than this library reads "
            f"({FORMAT_VERSION}); upgrade cosmos_nemo"
        )
    files = info.get("files") or {}
    required = [BIN_NAME, IDX_NAME, MANIFEST_NAME] + ([TEXT_EMB_NAME] if info.get("task") == TASK_VIDEO2WORLD else [])
    for name in required:
        if name not in files:
            raise ARDatasetError(f"{meta_path} does not list {name}; the dataset is damaged, re-run prepare with --overwrite")
    for name in sorted(files):
        fpath = root / name
        if not fpath.is_file():
            raise ARDatasetError(
                f"AR dataset {root} is missing {name} (listed in {META_NAME}); the dataset is damaged, re-run the "
                "prepare command with --overwrite"
            )
        size = fpath.stat().st_size
        if size != files[name]["bytes"]:
            raise ARDatasetError(
                f"{fpath} has {size} bytes but {META_NAME} recorded {files[name]['bytes']}: it changed after the "
                "dataset was written; re-run the prepare command with --overwrite"
            )
    return info


def verify_dataset_hash(path: str | os.PathLike, info: Mapping[str, Any] | None = None) -> None:
    """Recompute the per-file sha256 and the content hash of the dataset; ARDatasetError on any mismatch."""
    root = Path(path)
    info = info if info is not None else read_dataset_info(root)
    files = info["files"]
    for name in sorted(files):
        digest = _sha256_file(root / name)
        if digest != files[name]["sha256"]:
            raise ARDatasetError(
                f"{root / name} does not match the sha256 recorded in {META_NAME} (content changed after writing or "
                "the copy is corrupt); re-copy the dataset or re-run the prepare command with --overwrite"
            )
    if _content_hash(files) != info.get("content_hash"):
        raise ARDatasetError(f"{root / META_NAME}: content_hash does not match its file list; the file was edited by hand")


class ARTokenDataset:
    """Read-only view of one AR token dataset directory.

    Everything is validated when it is opened, before any model exists: completeness (dataset.json is the
    last file written), every listed file present with its recorded size, the content hash (unless
    ``verify_hash=False``), the idx document count against dataset.json and manifest.jsonl, the manifest's
    doc numbering, and every document's stored length against its grid.

    ``ds[i]`` is an :class:`ARDocument`. ``ds.grids`` is an ``[N, 3]`` int array, ``ds.prompt_ids`` ``[N]``
    (-1 without a prompt). Documents are copied out of the mmap, so they stay valid after the dataset
    is closed. Picklable (reopens lazily in DataLoader workers).
    """

    def __init__(self, path: str | os.PathLike, verify_hash: bool = True) -> None:
        self.path = Path(path)
        self.info = read_dataset_info(self.path)
        if verify_hash:
            verify_dataset_hash(self.path, self.info)
        try:
            self.meta = ARDatasetMeta.from_json(self.info)
        except (KeyError, TypeError, ARDatasetError) as exc:
            raise ARDatasetError(f"{self.path / META_NAME} has invalid metadata ({exc}); re-run prepare with --overwrite") from exc
        self.num_documents = int(self.info["num_documents"])
        self._indexed = None
        self._emb_file = None
        self._manifest_file = None
        # Only grids, prompt ids and line offsets stay in memory; records are read on demand, so a
        # manifest of millions of windows costs a few arrays per rank and worker.
        self.grids, self.prompt_ids, self._line_offsets = self._read_manifest()
        self._check_index()
        self.text_embedding_shape = None
        if self.meta.task == TASK_VIDEO2WORLD:
            self.text_embedding_shape = read_text_embedding_shape(self.path / TEXT_EMB_NAME)
            n = self.text_embedding_shape[0]
            bad = np.nonzero((self.prompt_ids < 0) | (self.prompt_ids >= n))[0]
            if bad.size:
                raise ARDatasetError(
                    f"{self.path / MANIFEST_NAME}: document {int(bad[0])} has prompt_id {int(self.prompt_ids[bad[0]])} "
                    f"outside the {n} rows of {TEXT_EMB_NAME}; re-run prepare with --overwrite"
                )

    # -- validation ------------------------------------------------------------------------------

    def _read_manifest(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(grids [N, 3], prompt_ids [N], byte offset of each line [N]) after checking every line."""
        path = self.path / MANIFEST_NAME
        grids, prompt_ids, offsets = [], [], []
        offset = 0
        with open(path, "rb") as f:
            for line_no, raw in enumerate(f):
                offsets.append(offset)
                offset += len(raw)
                try:
                    rec = json.loads(raw.decode("utf-8"))
                except ValueError as exc:
                    raise ARDatasetError(f"{path} line {line_no + 1} is not JSON ({exc}); re-run prepare with --overwrite") from exc
                if not isinstance(rec, dict) or rec.get("doc") != line_no:
                    raise ARDatasetError(
                        f"{path} line {line_no + 1} should describe document {line_no}, got doc={rec.get('doc') if isinstance(rec, dict) else rec!r}"
                    )
                grid = rec.get("grid")
                if not isinstance(grid, list) or len(grid) != 3 or not all(_is_int(g) and g >= 1 for g in grid):
                    raise ARDatasetError(f"{path} line {line_no + 1}: bad grid {grid!r}")
                grids.append(grid)
                prompt_id = rec.get("prompt_id", -1)
                prompt_ids.append(prompt_id if _is_int(prompt_id) else -1)
        if len(grids) != self.num_documents:
            raise ARDatasetError(
                f"{path} has {len(grids)} records but {META_NAME} says {self.num_documents} documents; the dataset is "
                "damaged, re-run prepare with --overwrite"
            )
        return (np.asarray(grids, dtype=np.int64).reshape(-1, 3), np.asarray(prompt_ids, dtype=np.int64),
                np.asarray(offsets, dtype=np.int64))

    def record(self, i: int) -> dict:
        """Manifest record of document `i` (read from disk on demand)."""
        i = int(i)
        if self._manifest_file is None:
            self._manifest_file = open(self.path / MANIFEST_NAME, "rb")
        self._manifest_file.seek(int(self._line_offsets[i]))
        return json.loads(self._manifest_file.readline().decode("utf-8"))

    def _check_idx_header(self) -> None:
        """Structural check of tokens.idx (megatron mmap layout, ar_models.md §4.1) before megatron opens it:
        a corrupt index would otherwise fail deep inside megatron with a bare assertion."""
        import struct

        path = self.path / IDX_NAME
        raw = path.read_bytes()[:34]
        problem = None
        if len(raw) < 34 or raw[:9] != b"MMIDIDX\x00\x00":
            problem = "it does not start with the MMIDIDX header"
        else:
            version, = struct.unpack("<Q", raw[9:17])
            n_seq, n_doc = struct.unpack("<QQ", raw[18:34])
            expected = 34 + 4 * n_seq + 8 * n_seq + 8 * n_doc
            if version != 1:
                problem = f"it has index version {version}, expected 1"
            elif path.stat().st_size != expected:
                problem = f"its size {path.stat().st_size} does not match {n_seq} sequences / {n_doc - 1} documents ({expected} bytes)"
        if problem:
            raise ARDatasetError(
                f"{path} is not a readable megatron index ({problem}); the dataset is damaged, re-run prepare with --overwrite"
            )

    def _check_index(self) -> None:
        self._check_idx_header()
        try:
            indexed = self._open_indexed()
        except Exception as exc:  # megatron asserts / struct errors on a corrupt index
            raise ARDatasetError(
                f"{self.path / IDX_NAME} is not a readable megatron index ({type(exc).__name__}: {exc}); the dataset "
                "is damaged, re-run prepare with --overwrite"
            ) from exc
        n_idx = len(indexed)
        if n_idx != self.num_documents or len(indexed.document_indices) != n_idx + 1:
            raise ARDatasetError(
                f"{self.path / IDX_NAME} holds {n_idx} sequences / {len(indexed.document_indices) - 1} documents but "
                f"{MANIFEST_NAME} and {META_NAME} have {self.num_documents}; the dataset is damaged, re-run prepare "
                "with --overwrite"
            )
        if not np.array_equal(np.asarray(indexed.document_indices), np.arange(n_idx + 1)):
            raise ARDatasetError(f"{self.path / IDX_NAME}: every document must be exactly one sequence (one clip)")
        lengths = np.asarray(indexed.sequence_lengths, dtype=np.int64)
        unique, inverse = np.unique(self.grids, axis=0, return_inverse=True)
        expected_per_grid = np.asarray(
            [layout_for(g, self.meta.task, self.meta.pad_to_multiple_of).stored_length for g in unique], dtype=np.int64
        )
        expected = expected_per_grid[inverse.reshape(-1)]
        bad = np.nonzero(lengths != expected)[0]
        if bad.size:
            i = int(bad[0])
            raise ARDatasetError(
                f"document {i} ({self.record(i).get('source')}) stores {int(lengths[i])} tokens but its grid "
                f"{self.grids[i].tolist()} needs {int(expected[i])} ({self.meta.task} layout); the dataset is damaged, "
                "re-run prepare with --overwrite"
            )

    # -- access ----------------------------------------------------------------------------------

    def _open_indexed(self):
        if self._indexed is None:
            from megatron.core.datasets.indexed_dataset import IndexedDataset

            self._indexed = IndexedDataset(str(self.path / TOKENS_STEM))
        return self._indexed

    def __len__(self) -> int:
        return self.num_documents

    def __getitem__(self, i: int) -> ARDocument:
        i = int(i)
        if not 0 <= i < self.num_documents:
            raise IndexError(f"document {i} out of range for {self.num_documents} documents in {self.path}")
        tokens = np.array(self._open_indexed()[i], dtype=np.int64)  # copy out of the mmap
        return ARDocument(tokens=tokens, grid=tuple(int(g) for g in self.grids[i]), record=self.record(i))

    def stored_tokens(self, i: int) -> np.ndarray:
        """The stored ids of document `i` (int64 copy)."""
        return np.array(self._open_indexed()[int(i)], dtype=np.int64)

    def clip_tokens(self, i: int) -> np.ndarray:
        """Document `i`'s raw clip ids (Video2World framing removed)."""
        stored = self.stored_tokens(i)
        if self.meta.task == TASK_VIDEO2WORLD:
            n = int(np.prod(self.grids[int(i)]))
            return stored[1 : 1 + n]
        return stored

    def text_embeddings(self, prompt_ids: Sequence[int]):
        """``(embeddings float32 [B, L, D], mask bool [B, L])`` for the given prompt rows (Video2World)."""
        import torch

        if self.meta.task != TASK_VIDEO2WORLD:
            raise ARDatasetError(f"{self.path} is a {self.meta.task} dataset; it has no text embeddings")
        if self._emb_file is None:
            from safetensors import safe_open

            self._emb_file = safe_open(str(self.path / TEXT_EMB_NAME), framework="pt")
        emb_slice = self._emb_file.get_slice("embeddings")
        mask_slice = self._emb_file.get_slice("mask")
        embs, masks = [], []
        for pid in prompt_ids:
            p = int(pid)
            embs.append(emb_slice[p : p + 1])
            masks.append(mask_slice[p : p + 1])
        return torch.cat(embs).float(), torch.cat(masks).bool()

    def close(self) -> None:
        """Release the open files (the dataset reopens them if used again)."""
        if self._manifest_file is not None:
            self._manifest_file.close()
        self._manifest_file = self._emb_file = self._indexed = None

    def __enter__(self) -> "ARTokenDataset":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        manifest = getattr(self, "_manifest_file", None)
        if manifest is not None:
            manifest.close()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_indexed"] = None
        state["_emb_file"] = None
        state["_manifest_file"] = None
        return state

    def __repr__(self) -> str:
        return (
            f"ARTokenDataset({str(self.path)!r}, task={self.meta.task}, documents={self.num_documents}, "
            f"tokenizer={self.meta.tokenizer!r}, grids={self.info.get('grids')})"
        )
