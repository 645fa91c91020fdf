"""Splits, blends and the deterministic, resumable, grid-grouped batch sampler.

Splits: ``split_string`` ("98,1,1") is read as relative weights of train/valid/test and cut into
contiguous document ranges in document order (sorted source, then window start), so windows of one
video mostly stay in one split. Deterministic: it depends only on the document count.

Blends: several datasets with weights. One epoch holds ``M = Σ n_k`` samples (n_k = documents of dataset
k in the split); dataset k contributes ``m_k`` of them, ``m_k ∝ w_k`` (largest remainder; without
weights ``m_k = n_k``, i.e. every document once). Dataset k's samples are drawn from concatenated
permutations of its documents, seeded by (seed, epoch, k).

Batches: all samples of an epoch are grouped by latent grid; each group is shuffled (seeded by
(seed, epoch)) and cut into global batches of ``G = micro × DP × grad-accum`` samples, so a global
batch never mixes grids and clips are never packed together. The leftover of a group (< G) is dropped
for training (a different leftover each epoch) or filled by repeating the group's first samples for
evaluation. The order of the global batches is shuffled once more.

Within global batch b, micro-step j, DP rank r reads samples ``[j·mbs·DP + r·mbs, j·mbs·DP + (r+1)·mbs)``:
the DP ranks' micro-batches are disjoint and together form the 1-rank batch of the same global batch.

Position (`state_dict`): (epoch, global batch in the epoch, micro-step). Restoring it continues with
exactly the micro-batches an uninterrupted run would have produced.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

SPLIT_NAMES = ("train", "valid", "test")
_SALT_BLEND = 0x5EED_B1E0
_SALT_GRID = 0x5EED_6A1D
_SALT_ORDER = 0x5EED_0DE5
STATE_VERSION = 1


class SamplerError(ValueError):
    """A sampler configuration or saved position that cannot be used; the message says what to do."""


# --------------------------------------------------------------------------------------------------
# splits


def parse_split_string(split_string: str | Sequence[float]) -> tuple[float, float, float]:
    """"98,1,1" → (0.98, 0.01, 0.01). One or two numbers mean the missing splits get 0."""
    if isinstance(split_string, str):
        parts = [p for p in re.split(r"[,/ ]+", split_string.strip()) if p]
        try:
            values = [float(p) for p in parts]
        except ValueError:
            raise SamplerError(f"split_string {split_string!r} must be comma-separated numbers such as '98,1,1'") from None
    else:
        values = [float(v) for v in split_string]
    if not 1 <= len(values) <= 3:
        raise SamplerError(f"split_string {split_string!r} needs 1 to 3 weights (train,valid,test), e.g. '98,1,1'")
    if any(not math.isfinite(v) or v < 0 for v in values):
        raise SamplerError(f"split_string {split_string!r}: weights must be finite and >= 0")
    values += [0.0] * (3 - len(values))
    total = sum(values)
    if total <= 0:
        raise SamplerError(f"split_string {split_string!r}: at least one weight must be > 0")
    return tuple(v / total for v in values)  # type: ignore[return-value]


def split_ranges(num_documents: int, split_string: str | Sequence[float], where: str = "dataset") -> dict[str, range]:
    """Contiguous document ranges of the train/valid/test splits.

    Boundaries are ``round(cumsum(weights) · N)``. A split with a weight > 0 that gets no document is an
    error naming it; a split with weight 0 is an empty range.
    """
    weights = parse_split_string(split_string)
    cum = np.cumsum(weights)
    bounds = [0] + [int(round(c * num_documents)) for c in cum]
    bounds[-1] = num_documents
    out = {}
    for name, w, lo, hi in zip(SPLIT_NAMES, weights, bounds[:-1], bounds[1:]):
        if w > 0 and hi <= lo:
            raise SamplerError(
                f"split '{name}' of split_string {split_string!r} is empty for {where} with {num_documents} documents "
                f"({w:.4g} × {num_documents} = {w * num_documents:.3g} documents rounds to 0); give it a larger weight, "
                f"set its weight to 0 to disable it, or add documents"
            )
        out[name] = range(lo, hi)
    return out


# --------------------------------------------------------------------------------------------------
# blend + grid-grouped global batches


@dataclass(frozen=True)
class BlendSource:
    """One dataset's documents in one split: their ids in the dataset and their grids [n, 3]."""

    doc_ids: np.ndarray
    grids: np.ndarray
    fingerprint: str = ""


def apportion(total: int, weights: Sequence[float]) -> list[int]:
    """Integers proportional to `weights` summing to `total` (largest remainder, ties to the lower index)."""
    w = np.asarray(weights, dtype=np.float64)
    quotas = w / w.sum() * total
    base = np.floor(quotas).astype(np.int64)
    rest = total - int(base.sum())
    order = sorted(range(len(w)), key=lambda i: (-(quotas[i] - base[i]), i))
    for i in order[:rest]:
        base[i] += 1
    return [int(b) for b in base]


@dataclass
class EpochPlan:
    """The samples of one epoch grouped into global batches.

    `batches` is ``[num_batches, G]`` indices into `source` / `doc` (dataset index in the blend and
    document id in that dataset); `batch_grids` ``[num_batches, 3]``."""

    source: np.ndarray
    doc: np.ndarray
    batches: np.ndarray
    batch_grids: np.ndarray
    dropped: int


class GridBatchSampler:
    """Deterministic, resumable sampler of grid-homogeneous global batches, sharded over DP ranks.

    Iterating yields, for this rank, micro-batches as ``(grid, [(dataset_index, doc_id), ...])`` of
    `micro_batch_size` samples, forever (epoch after epoch), unless ``num_epochs`` is given.
    """

    def __init__(
        self,
        sources: Sequence[BlendSource],
        micro_batch_size: int,
        global_batch_size: int,
        dp_rank: int = 0,
        dp_size: int = 1,
        seed: int = 1234,
        weights: Sequence[float] | None = None,
        shuffle: bool = True,
        drop_last: bool = True,
        num_epochs: int | None = None,
        name: str = "train",
    ) -> None:
        if micro_batch_size < 1 or global_batch_size < 1 or dp_size < 1:
            raise SamplerError(
                f"micro_batch_size ({micro_batch_size}), global_batch_size ({global_batch_size}) and DP size ({dp_size}) "
                "must be >= 1"
            )
        if not 0 <= dp_rank < dp_size:
            raise SamplerError(f"DP rank {dp_rank} is outside [0, {dp_size})")
        if global_batch_size % (micro_batch_size * dp_size):
            raise SamplerError(
                f"global_batch_size {global_batch_size} must be a multiple of micro_batch_size × DP = "
                f"{micro_batch_size} × {dp_size} = {micro_batch_size * dp_size} (global = micro × DP × grad-accum); "
                f"e.g. {max(1, global_batch_size // (micro_batch_size * dp_size)) * micro_batch_size * dp_size}"
            )
        if not sources:
            raise SamplerError(f"{name}: no datasets to sample from")
        if weights is not None:
            if len(weights) != len(sources):
                raise SamplerError(f"{name}: {len(weights)} blend weights for {len(sources)} datasets")
            if any(not math.isfinite(float(w)) or float(w) < 0 for w in weights) or sum(float(w) for w in weights) <= 0:
                raise SamplerError(f"{name}: blend weights must be >= 0 with a positive sum, got {list(weights)}")
        self.sources = list(sources)
        for k, s in enumerate(self.sources):
            if len(s.doc_ids) == 0 and (weights is None or float(weights[k]) > 0):
                raise SamplerError(f"{name}: dataset {k} has no documents in this split")
        self.micro_batch_size = int(micro_batch_size)
        self.global_batch_size = int(global_batch_size)
        self.dp_rank = int(dp_rank)
        self.dp_size = int(dp_size)
        self.num_micro_batches = self.global_batch_size // (self.micro_batch_size * self.dp_size)
        self.seed = int(seed)
        self.weights = None if weights is None else [float(w) for w in weights]
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.num_epochs = num_epochs
        self.name = name
        self._plan_cache: tuple[int, EpochPlan] | None = None
        self.epoch = 0
        self.batch_in_epoch = 0
        self.micro_step = 0
        plan = self.plan(0)
        if len(plan.batches) == 0:
            counts = self._grid_counts(0)
            raise SamplerError(
                f"{name}: no latent grid has enough documents for one global batch of {self.global_batch_size} "
                f"(documents per grid: {counts}); lower global_batch_size or add documents"
            )

    # -- planning --------------------------------------------------------------------------------

    def _epoch_samples(self, epoch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(dataset index, doc id, grid) of every sample of `epoch`, datasets in blend order."""
        sizes = [len(s.doc_ids) for s in self.sources]
        counts = sizes if self.weights is None else apportion(sum(sizes), self.weights)
        src, doc, grids = [], [], []
        for k, (source, m) in enumerate(zip(self.sources, counts)):
            n = len(source.doc_ids)
            if m == 0 or n == 0:
                continue
            if self.shuffle:
                rng = np.random.default_rng([self.seed, epoch, k, _SALT_BLEND])
                reps = -(-m // n)
                local = np.concatenate([rng.permutation(n) for _ in range(reps)])[:m]
            else:
                local = np.arange(m) % n
            src.append(np.full(m, k, dtype=np.int64))
            doc.append(np.asarray(source.doc_ids, dtype=np.int64)[local])
            grids.append(np.asarray(source.grids, dtype=np.int64).reshape(-1, 3)[local])
        return np.concatenate(src), np.concatenate(doc), np.concatenate(grids)

    def _grid_counts(self, epoch: int) -> dict[str, int]:
        _, _, grids = self._epoch_samples(epoch)
        keys, counts = np.unique(grids, axis=0, return_counts=True)
        return {"x".join(map(str, k)): int(c) for k, c in zip(keys, counts)}

    def plan(self, epoch: int) -> EpochPlan:
        """The global batches of `epoch` (cached for the current epoch)."""
        if self._plan_cache is not None and self._plan_cache[0] == epoch:
            return self._plan_cache[1]
        src, doc, grids = self._epoch_samples(epoch)
        keys, inverse = np.unique(grids, axis=0, return_inverse=True)
        inverse = inverse.reshape(-1)
        G = self.global_batch_size
        batches, batch_grids, dropped = [], [], 0
        for g, key in enumerate(keys):
            members = np.nonzero(inverse == g)[0]
            if self.shuffle:
                rng = np.random.default_rng([self.seed, epoch, _SALT_GRID, *key.tolist()])
                members = members[rng.permutation(len(members))]
            full = len(members) // G
            rest = len(members) - full * G
            if rest and not self.drop_last:
                members = np.concatenate([members, np.resize(members, G - rest)])
                full += 1
            else:
                dropped += rest
            if full:
                batches.append(members[: full * G].reshape(full, G))
                batch_grids.append(np.repeat(key[None, :], full, axis=0))
        if batches:
            all_batches = np.concatenate(batches)
            all_grids = np.concatenate(batch_grids)
            if self.shuffle:
                order = np.random.default_rng([self.seed, epoch, _SALT_ORDER]).permutation(len(all_batches))
                all_batches, all_grids = all_batches[order], all_grids[order]
        else:
            all_batches = np.zeros((0, G), dtype=np.int64)
            all_grids = np.zeros((0, 3), dtype=np.int64)
        plan = EpochPlan(source=src, doc=doc, batches=all_batches, batch_grids=all_grids, dropped=dropped)
        self._plan_cache = (epoch, plan)
        return plan

    def global_batches_in_epoch(self, epoch: int) -> int:
        return len(self.plan(epoch).batches)

    def micro_batches_per_epoch(self, epoch: int = 0) -> int:
        """Micro-batches this rank reads in `epoch` (global batches × grad-accum steps)."""
        return self.global_batches_in_epoch(epoch) * self.num_micro_batches

    # -- iteration -------------------------------------------------------------------------------

    def _normalize_position(self) -> None:
        empty = 0
        while self.batch_in_epoch >= self.global_batches_in_epoch(self.epoch):
            self.epoch += 1
            self.batch_in_epoch = 0
            empty += 1
            if empty > 1000:
                raise SamplerError(f"{self.name}: 1000 consecutive epochs without a full global batch; lower global_batch_size")

    def peek(self) -> tuple[tuple[int, int, int], list[tuple[int, int]]]:
        """The next micro-batch for this rank without consuming it."""
        if self.num_epochs is not None and self.epoch >= self.num_epochs:
            raise StopIteration
        self._normalize_position()
        if self.num_epochs is not None and self.epoch >= self.num_epochs:
            raise StopIteration
        plan = self.plan(self.epoch)
        row = plan.batches[self.batch_in_epoch]
        start = self.micro_step * self.micro_batch_size * self.dp_size + self.dp_rank * self.micro_batch_size
        picks = row[start : start + self.micro_batch_size]
        grid = tuple(int(g) for g in plan.batch_grids[self.batch_in_epoch])
        return grid, [(int(plan.source[i]), int(plan.doc[i])) for i in picks]

    def advance(self) -> None:
        self.micro_step += 1
        if self.micro_step == self.num_micro_batches:
            self.micro_step = 0
            self.batch_in_epoch += 1
            self._normalize_position()

    def __next__(self) -> tuple[tuple[int, int, int], list[tuple[int, int]]]:
        item = self.peek()
        self.advance()
        return item

    def __iter__(self) -> Iterator[tuple[tuple[int, int, int], list[tuple[int, int]]]]:
        return self

    # -- state -----------------------------------------------------------------------------------

    def fingerprint(self) -> str:
        """Identity of what is sampled (datasets, split documents, weights, seed, global batch, policy)."""
        h = hashlib.sha256()
        h.update(json.dumps([self.seed, self.global_batch_size, self.weights, self.shuffle, self.drop_last]).encode())
        for s in self.sources:
            h.update(s.fingerprint.encode())
            h.update(np.asarray(s.doc_ids, dtype=np.int64).tobytes())
        return h.hexdigest()[:32]

    def state_dict(self) -> dict:
        """JSON-serialisable data position of this rank."""
        return {
            "version": STATE_VERSION,
            "name": self.name,
            "epoch": self.epoch,
            "global_batch_in_epoch": self.batch_in_epoch,
            "micro_step": self.micro_step,
            "micro_batch_size": self.micro_batch_size,
            "global_batch_size": self.global_batch_size,
            "dp_rank": self.dp_rank,
            "dp_size": self.dp_size,
            "seed": self.seed,
            "fingerprint": self.fingerprint(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a position saved by `state_dict`.

        Refused when the data, seed, global batch size or sampling policy differ (the continuation would
        not be the same data order). A position on a global-batch boundary may be loaded at another DP
        size or micro batch size; a mid-global-batch position needs the same ones.
        """
        if int(state.get("version", -1)) != STATE_VERSION:
            raise SamplerError(f"{self.name}: data position has version {state.get('version')}, expected {STATE_VERSION}")
        for key, mine in (("seed", self.seed), ("global_batch_size", self.global_batch_size)):
            if int(state[key]) != mine:
                raise SamplerError(
                    f"{self.name}: the saved data position was taken with {key}={state[key]}, this run has {mine}; "
                    "resume with the same value (or start a new run)"
                )
        if state["fingerprint"] != self.fingerprint():
            raise SamplerError(
                f"{self.name}: the saved data position belongs to different data (datasets, split, blend weights or "
                "sampling policy changed since the checkpoint); resume with the same data configuration"
            )
        if int(state["micro_step"]) and (
            int(state["dp_size"]) != self.dp_size or int(state["micro_batch_size"]) != self.micro_batch_size
        ):
            raise SamplerError(
                f"{self.name}: the saved position is inside a global batch (micro step {state['micro_step']}) with "
                f"DP={state['dp_size']}, micro batch {state['micro_batch_size']}; resume with the same DP size and micro "
                "batch size"
            )
        self.epoch = int(state["epoch"])
        self.batch_in_epoch = int(state["global_batch_in_epoch"])
        self.micro_step = int(state["micro_step"])
        if self.micro_step >= self.num_micro_batches:
            raise SamplerError(f"{self.name}: saved micro step {self.micro_step} >= {self.num_micro_batches} per global batch")
        if self.batch_in_epoch > self.global_batches_in_epoch(self.epoch):
            raise SamplerError(f"{self.name}: saved position is past the end of epoch {self.epoch}")
        self._normalize_position()


class SamplerLoader:
    """What the trainer reads from a loader (models/family.py), for loaders whose position is a
    `GridBatchSampler` (`self.sampler`): batch sizes, the next grid, and an exact, resumable position."""

    sampler: GridBatchSampler

    @property
    def num_micro_batches(self) -> int:
        """Micro-batches per global batch on this rank (gradient-accumulation steps)."""
        return self.sampler.num_micro_batches

    @property
    def micro_batch_size(self) -> int:
        return self.sampler.micro_batch_size

    @property
    def global_batch_size(self) -> int:
        return self.sampler.global_batch_size

    def micro_batches_per_epoch(self, epoch: int | None = None) -> int:
        return self.sampler.micro_batches_per_epoch(self.sampler.epoch if epoch is None else epoch)

    def peek_grid(self) -> tuple[int, int, int]:
        """Grid of the next micro-batch (the same for the rest of its global batch)."""
        return self.sampler.peek()[0]

    def __iter__(self):
        return self

    def state_dict(self) -> dict:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)
