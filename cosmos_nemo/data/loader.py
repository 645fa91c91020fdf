"""Training batches from AR token datasets: the config, the builder the trainer calls, and the batch layout.

Batch (a dict of torch tensors, one latent grid per batch):

- ``tokens``  LongTensor ``[B, L]``: base: the clip's N = T·H·W ids (L = N, RoPE positions 0..N-1 in raster
  order); Video2World: ``stored[:-1]`` = ``[BOV] + clip + PADs`` (L = ceil((1+N)/64)·64).
- ``labels``  LongTensor ``[B, L]``: ``labels[:, i] = tokens[:, i + 1]`` (Video2World: ``stored[1:]``). The
  last base position has no next token; its label is 0 and masked.
- ``loss_mask`` float ``[B, L]``: 1 where the label is a clip token; 0 where there is no label, on PAD
  targets, and (``exclude_first_frame``) on labels inside latent frame 0 (the native cosmos-predict1
  rule: base positions ``i < H·W − 1``, Video2World ``i < H·W``).
- ``grid``    ``(T, H, W)`` tuple shared by the whole batch.
- ``sample_ids`` LongTensor ``[B, 2]``: (dataset index in the blend, document id) of each row.
- Video2World: ``context`` float ``[B, Lc, D]`` (the prompt's text embedding, looked up by prompt_id) and
  ``context_mask`` bool ``[B, Lc]``.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from cosmos_nemo.data.ar_dataset import META_NAME, ARDatasetError
from cosmos_nemo.data.reader import ARTokenDataset
from cosmos_nemo.data.layout import TASK_VIDEO2WORLD, TASKS, layout_for
from cosmos_nemo.data.sampler import (
    BlendSource,
    GridBatchSampler,
    SamplerError,
    SamplerLoader,
    parse_split_string,
    split_ranges,
)

logger = logging.getLogger(__name__)


@dataclass
class ARDataConfig:
    """Data settings of an AR training run.

    paths: dataset directories (each a `prepare ar-tokens` output). A directory without dataset.json whose
        sub-directories are datasets stands for all of them (sorted), like the reference's --data_path.
    weights: blend weights, one per path (None: proportional to size, i.e. every document once an epoch).
        Validation and test always read every document of their split once.
    split_string: train/valid/test weights over each dataset's documents ("98,1,1"); a 0 disables a split.
    micro_batch_size, global_batch_size: global = micro × DP × grad-accum.
    seed: sampling seed; epoch e is shuffled from (seed, e).
    exclude_first_frame: no loss on labels inside latent frame 0 (native cosmos-predict1 training).
    num_workers: DataLoader worker processes (0: read in the training process).
    task: "base" or "video2world" expected of the data (None: take it from the datasets).
    verify_hash: check every file's sha256 when opening (reads the data once).
    """

    paths: list[str] = field(default_factory=list)
    weights: list[float] | None = None
    split_string: str = "98,1,1"
    micro_batch_size: int = 1
    global_batch_size: int = 1
    seed: int = 1234
    exclude_first_frame: bool = False
    num_workers: int = 0
    task: str | None = None
    verify_hash: bool = True


# --------------------------------------------------------------------------------------------------
# samples and collation


def make_sample(ds: ARTokenDataset, doc: int, exclude_first_frame: bool = False) -> dict[str, np.ndarray]:
    """tokens / labels / loss_mask (numpy, length L) of one document, in the layout of its dataset."""
    stored = ds.stored_tokens(doc)
    grid = tuple(int(g) for g in ds.grids[doc])
    meta = ds.meta
    layout = layout_for(grid, meta.task, meta.pad_to_multiple_of)
    n, per_frame = layout.num_video_tokens, grid[1] * grid[2]
    if meta.task == TASK_VIDEO2WORLD:
        tokens, labels = stored[:-1], stored[1:]
        loss_mask = (np.arange(layout.input_length) < n).astype(np.float32)
        first_frame_labels = per_frame  # labels[i] = clip[i]
    else:
        tokens = stored
        labels = np.zeros_like(stored)
        labels[:-1] = stored[1:]
        loss_mask = np.ones(n, dtype=np.float32)
        loss_mask[-1] = 0.0  # no next token inside this clip (clips are never packed)
        first_frame_labels = per_frame - 1  # labels[i] = clip[i + 1]
    if meta.pad_id is not None:
        loss_mask[labels == meta.pad_id] = 0.0
    if exclude_first_frame:
        loss_mask[:first_frame_labels] = 0.0
    return {"tokens": tokens, "labels": labels, "loss_mask": loss_mask}


class _BlendReader(torch.utils.data.Dataset):
    """Map-style view: item ``(dataset_index, doc)`` → one sample (numpy + prompt id)."""

    def __init__(self, datasets: Sequence[ARTokenDataset], exclude_first_frame: bool) -> None:
        self.datasets = list(datasets)
        self.exclude_first_frame = exclude_first_frame

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        k, doc = key
        ds = self.datasets[k]
        sample = make_sample(ds, doc, self.exclude_first_frame)
        sample["grid"] = tuple(int(g) for g in ds.grids[doc])
        sample["key"] = (k, doc)
        if ds.meta.task == TASK_VIDEO2WORLD:
            emb, mask = ds.text_embeddings([int(ds.prompt_ids[doc])])
            sample["context"], sample["context_mask"] = emb[0], mask[0]
        return sample

    def __len__(self) -> int:
        return sum(len(d) for d in self.datasets)


def collate_samples(samples: list[dict[str, Any]]) -> dict[str, Any]:
    grids = {s["grid"] for s in samples}
    if len(grids) != 1:
        raise SamplerError(f"a batch must hold one latent grid, got {sorted(grids)}")
    batch: dict[str, Any] = {
        "tokens": torch.from_numpy(np.stack([s["tokens"] for s in samples])).long(),
        "labels": torch.from_numpy(np.stack([s["labels"] for s in samples])).long(),
        "loss_mask": torch.from_numpy(np.stack([s["loss_mask"] for s in samples])).float(),
        "grid": samples[0]["grid"],
        "sample_ids": torch.tensor([s["key"] for s in samples], dtype=torch.long),
    }
    if "context" in samples[0]:
        batch["context"] = torch.stack([s["context"] for s in samples]).float()
        batch["context_mask"] = torch.stack([s["context_mask"] for s in samples]).bool()
    return batch


class _SamplerKeys:
    """Iterable of key lists for torch's DataLoader, from a private copy of the sampler's position."""

    def __init__(self, sampler: GridBatchSampler) -> None:
        self.sampler = sampler

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        while True:
            try:
                _, keys = next(self.sampler)
            except StopIteration:
                return
            yield keys


class ARDataLoader(SamplerLoader):
    """Iterator of micro-batches for one DP rank, with an exact, resumable data position.

    ``next(loader)`` gives the next micro-batch (see the module docstring for its keys). The trainer reads
    `num_micro_batches` of them per optimizer step (global = micro × DP × `num_micro_batches`); all
    micro-batches of one global batch share a grid, so `peek_grid()` / `seq_length()` before a step tell
    the sequence length of the whole step. `state_dict()` / `load_state_dict()` save and restore the
    position (what has been *returned*, not what workers prefetched).
    """

    def __init__(self, datasets: Sequence[ARTokenDataset], sampler: GridBatchSampler, exclude_first_frame: bool = False,
                 num_workers: int = 0) -> None:
        self.datasets = list(datasets)
        self.sampler = sampler
        self.reader = _BlendReader(self.datasets, exclude_first_frame)
        self.num_workers = int(num_workers)
        self.task = self.datasets[0].meta.task
        self.pad_to_multiple_of = self.datasets[0].meta.pad_to_multiple_of
        self._worker_iter: Iterator[dict[str, Any]] | None = None

    def seq_length(self) -> int:
        """Model input length L of the next micro-batch."""
        return layout_for(self.peek_grid(), self.task, self.pad_to_multiple_of).input_length

    def __next__(self) -> dict[str, Any]:
        if self.num_workers <= 0:
            _, keys = self.sampler.peek()
            batch = collate_samples([self.reader[key] for key in keys])
        else:
            if self._worker_iter is None:
                loader = torch.utils.data.DataLoader(
                    self.reader,
                    batch_sampler=_SamplerKeys(copy.deepcopy(self.sampler)),
                    collate_fn=collate_samples,
                    num_workers=self.num_workers,
                )
                self._worker_iter = iter(loader)
            batch = next(self._worker_iter)
        self.sampler.advance()
        return batch

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._worker_iter = None  # prefetched batches belong to the old position


# --------------------------------------------------------------------------------------------------
# building


def resolve_dataset_paths(paths: Sequence[str | Path]) -> list[Path]:
    """Each path as given, or, for a directory that is not a dataset but holds datasets in
    sub-directories, those sub-directories (sorted)."""
    out: list[Path] = []
    for p in paths:
        path = Path(p)
        if path.is_dir() and not (path / META_NAME).exists() and not (path / "tokens.bin").exists():
            subs = sorted(d for d in path.iterdir() if d.is_dir() and (d / META_NAME).is_file())
            if subs:
                out.extend(subs)
                continue
        out.append(path)
    return out


def check_blend_compatible(datasets: Sequence[ARTokenDataset]) -> None:
    """Datasets blended together must share task, vocabulary, special tokens, tokenizer and text embedding
    shape; otherwise ids or layouts would mean different things within one run."""
    first = datasets[0]
    for ds in datasets[1:]:
        for what, a, b in (
            ("task", first.meta.task, ds.meta.task),
            ("tokenizer", first.meta.tokenizer, ds.meta.tokenizer),
            ("vocab_size", first.meta.vocab_size, ds.meta.vocab_size),
            ("special tokens", (first.meta.bov_id, first.meta.pad_id), (ds.meta.bov_id, ds.meta.pad_id)),
            ("pad_to_multiple_of", first.meta.pad_to_multiple_of, ds.meta.pad_to_multiple_of),
            ("text embedding [L, D]",
             None if first.text_embedding_shape is None else first.text_embedding_shape[1:],
             None if ds.text_embedding_shape is None else ds.text_embedding_shape[1:]),
        ):
            if a != b:
                raise ARDatasetError(
                    f"cannot blend {first.path} and {ds.path}: {what} differs ({a} vs {b}); prepare all datasets of a run "
                    "with the same tokenizer and task"
                )


def build_ar_dataloaders(cfg: ARDataConfig, dp_rank: int = 0, dp_size: int = 1
                         ) -> tuple[ARDataLoader, ARDataLoader | None, ARDataLoader | None]:
    """Open and validate the datasets of `cfg` and return the (train, valid, test) loaders of this DP rank.

    valid / test are None when their split weight is 0. Every data error (missing or incomplete
    dataset, bad hash, empty split, incompatible blend, batch sizes) is raised here, before a model is
    built. Train is shuffled, drops each grid's leftover < global batch, and runs epoch after epoch;
    valid/test read their documents in order, fill a grid's last global batch by repeating its first
    documents, and also cycle (use `micro_batches_per_epoch()` for one full pass).
    """
    if not cfg.paths:
        raise ARDatasetError("data.paths is empty: give at least one AR token dataset directory")
    if cfg.task is not None and cfg.task not in TASKS:
        raise ARDatasetError(f"data.task must be one of {TASKS} or None, got {cfg.task!r}")
    paths = resolve_dataset_paths(cfg.paths)
    if cfg.weights is not None and len(cfg.weights) != len(paths):
        raise ARDatasetError(
            f"{len(cfg.weights)} blend weights for {len(paths)} datasets ({', '.join(map(str, paths))}); give one weight per path"
        )
    parse_split_string(cfg.split_string)
    datasets = [ARTokenDataset(p, verify_hash=cfg.verify_hash) for p in paths]
    check_blend_compatible(datasets)
    task = datasets[0].meta.task
    if cfg.task is not None and cfg.task != task:
        raise ARDatasetError(f"data.task is {cfg.task!r} but the datasets were prepared for {task!r}")

    ranges = [split_ranges(len(ds), cfg.split_string, where=f"dataset {ds.path}") for ds in datasets]
    weights_by_split = {"train": cfg.weights, "valid": None, "test": None}
    loaders: list[ARDataLoader | None] = []
    for split in ("train", "valid", "test"):
        if all(len(r[split]) == 0 for r in ranges):
            if split == "train":
                raise SamplerError(f"split 'train' of split_string {cfg.split_string!r} is empty; give it a weight > 0")
            loaders.append(None)
            continue
        sources = [
            BlendSource(
                doc_ids=np.arange(r[split].start, r[split].stop, dtype=np.int64),
                grids=ds.grids[r[split].start : r[split].stop],
                fingerprint=str(ds.info.get("content_hash")),
            )
            for ds, r in zip(datasets, ranges)
        ]
        train = split == "train"
        sampler = GridBatchSampler(
            sources,
            micro_batch_size=cfg.micro_batch_size,
            global_batch_size=cfg.global_batch_size,
            dp_rank=dp_rank,
            dp_size=dp_size,
            seed=cfg.seed,
            weights=weights_by_split[split],
            shuffle=train,
            drop_last=train,
            name=split,
        )
        if train and sampler.plan(0).dropped:
            logger.info(
                "train: %d of %d samples do not fill a global batch of %d within their grid and are left out of epoch 0 "
                "(a different subset each epoch)",
                sampler.plan(0).dropped, len(sampler.plan(0).source), cfg.global_batch_size,
            )
        loaders.append(ARDataLoader(datasets, sampler, cfg.exclude_first_frame, cfg.num_workers))
    return loaders[0], loaders[1], loaders[2]  # type: ignore[return-value]
