"""The DiT latent dataset (precomputed VAE latents + text embeddings) and its resumable loader.

Contract (what a latent writer produces and the DiT family reads): a directory `DIR` with
- `DIR/dataset.json`: `{"format": "cosmos-nemo-dit-latents", "version": 1, "documents": N, "latent_channels": C,
  "vae": {...} (name, compression, normalisation), "text": {"encoder", "length", "dim"}, "content_hash"}`;
- `DIR/latents-00000.safetensors`, ...: tensor `doc.{i}` = the clean, normalised latent `[C, T, H, W]` of
  document i (float32 or bfloat16), up to `DOCS_PER_SHARD` documents per file, in document order;
- `DIR/manifest.jsonl`: one line per document in order, `{"doc", "shard", "latent_shape": [C, T, H, W], "fps",
  "prompt_id", "source"?, "start_frame"?, "num_frames"?, "height"?, "width"?, "caption"?}`;
- `DIR/text_embeddings.safetensors`: `embeddings` `[P, L, D]` (one row per distinct prompt; positions past a
  prompt's length are zero, as T5 embeddings are) and `mask` `[P, L]`; documents refer to rows by `prompt_id`.

Splits come from `split_string` over documents at read time; a batch holds documents of one latent grid
(the shared `GridBatchSampler`), never packed. `write_dit_dataset` writes the contract atomically.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from cosmos_nemo.data.sampler import (
    BlendSource,
    GridBatchSampler,
    SamplerError,
    SamplerLoader,
    parse_split_string,
    split_ranges,
)

FORMAT = "cosmos-nemo-dit-latents"
DOCS_PER_SHARD = 256


class DiTDatasetError(ValueError):
    """A DiT latent dataset that is missing, incomplete, or does not fit the model."""


@dataclass
class DiTDataConfig:
    """Data settings of a DiT training run.

    paths: latent dataset directories (`write_dit_dataset` / `prepare latents` outputs), blended.
    split_string: train/valid/test weights over each dataset's documents ("98,1,1"); 0 disables a split.
    micro_batch_size, global_batch_size: global = micro x DP x grad-accum.
    seed: sampling seed; epoch e is shuffled from (seed, e).
    """

    paths: list[str] = field(default_factory=list)
    weights: Optional[list[float]] = None
    split_string: str = "98,1,1"
    micro_batch_size: int = 1
    global_batch_size: int = 1
    seed: int = 1234


def _shard_name(shard: int) -> str:
    return f"latents-{shard:05d}.safetensors"


def write_dit_dataset(out: str | Path, latents: Sequence[torch.Tensor], prompt_ids: Sequence[int],
                      embeddings: torch.Tensor, mask: torch.Tensor, fps: Sequence[float] | float = 24.0,
                      vae: Optional[dict] = None, text: Optional[dict] = None, records: Optional[Sequence[dict]] = None,
                      overwrite: bool = False) -> Path:
    """Write the contract above (into a temporary folder renamed when complete)."""
    from safetensors.torch import save_file

    from cosmos_nemo.io.atomic import atomic_dir

    n = len(latents)
    if len(prompt_ids) != n:
        raise DiTDatasetError(f"{len(prompt_ids)} prompt ids for {n} latents")
    fps_list = [float(fps)] * n if isinstance(fps, (int, float)) else [float(f) for f in fps]
    channels = {int(x.shape[0]) for x in latents}
    if len(channels) != 1 or any(x.dim() != 4 for x in latents):
        raise DiTDatasetError("every latent must be [C, T, H, W] with one channel count")
    if embeddings.dim() != 3 or mask.shape != embeddings.shape[:2]:
        raise DiTDatasetError(f"embeddings must be [P, L, D] with a [P, L] mask, got {tuple(embeddings.shape)} and "
                              f"{tuple(mask.shape)}")
    if n and (min(prompt_ids) < 0 or max(prompt_ids) >= embeddings.shape[0]):
        raise DiTDatasetError(f"prompt ids must lie in [0, {embeddings.shape[0]})")
    digest = hashlib.sha256()
    with atomic_dir(Path(out), overwrite=overwrite) as tmp:
        tmp = Path(tmp)
        lines = []
        for shard_start in range(0, n, DOCS_PER_SHARD):
            shard = shard_start // DOCS_PER_SHARD
            tensors = {f"doc.{i}": latents[i].contiguous() for i in range(shard_start, min(n, shard_start + DOCS_PER_SHARD))}
            save_file(tensors, str(tmp / _shard_name(shard)))
            digest.update((tmp / _shard_name(shard)).read_bytes())
            for i in range(shard_start, min(n, shard_start + DOCS_PER_SHARD)):
                record = dict(records[i]) if records else {}
                record.update(doc=i, shard=shard, latent_shape=list(latents[i].shape), fps=fps_list[i],
                              prompt_id=int(prompt_ids[i]))
                lines.append(json.dumps(record, sort_keys=True))
        (tmp / "manifest.jsonl").write_text("\n".join(lines) + ("\n" if lines else ""))
        save_file({"embeddings": embeddings.contiguous(), "mask": mask.to(torch.bool).contiguous()},
                  str(tmp / "text_embeddings.safetensors"))
        digest.update((tmp / "manifest.jsonl").read_bytes())
        digest.update((tmp / "text_embeddings.safetensors").read_bytes())
        info = {"format": FORMAT, "version": 1, "documents": n, "latent_channels": channels.pop() if n else None,
                "vae": vae or {}, "text": text or {"length": int(embeddings.shape[1]), "dim": int(embeddings.shape[2])},
                "content_hash": digest.hexdigest()}
        (tmp / "dataset.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return Path(out)


class DiTLatentDataset:
    """Read access to one latent dataset directory (see the module docstring)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        meta = self.path / "dataset.json"
        if not meta.is_file():
            raise DiTDatasetError(f"{self.path} is not a DiT latent dataset (no dataset.json); write one with "
                                  "write_dit_dataset / prepare latents")
        self.info = json.loads(meta.read_text())
        if self.info.get("format") != FORMAT:
            raise DiTDatasetError(f"{self.path}: dataset.json names format {self.info.get('format')!r}, not {FORMAT!r} "
                                  "(an AR token dataset is read by the AR family)")
        lines = (self.path / "manifest.jsonl").read_text().splitlines()
        self.records = [json.loads(line) for line in lines if line.strip()]
        if len(self.records) != self.info["documents"]:
            raise DiTDatasetError(f"{self.path}: manifest.jsonl has {len(self.records)} documents, dataset.json says "
                                  f"{self.info['documents']} (an interrupted write?)")
        missing = sorted({_shard_name(r["shard"]) for r in self.records if not (self.path / _shard_name(r["shard"])).is_file()})
        if missing or not (self.path / "text_embeddings.safetensors").is_file():
            raise DiTDatasetError(f"{self.path}: missing files {missing or ['text_embeddings.safetensors']}")
        from safetensors.torch import load_file

        text = load_file(str(self.path / "text_embeddings.safetensors"))
        self.embeddings, self.mask = text["embeddings"], text["mask"]
        self.grids = np.array([r["latent_shape"][1:] for r in self.records], dtype=np.int64).reshape(-1, 3)
        self.channels = self.info.get("latent_channels")
        self._shards: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self.records)

    def latent(self, doc: int) -> torch.Tensor:
        from safetensors import safe_open

        shard = self.records[doc]["shard"]
        if shard not in self._shards:
            self._shards[shard] = safe_open(str(self.path / _shard_name(shard)), framework="pt")
        return self._shards[shard].get_tensor(f"doc.{doc}")

    def sample(self, doc: int) -> dict:
        record = self.records[doc]
        pid = int(record["prompt_id"])
        return {"latents": self.latent(doc).float(), "context": self.embeddings[pid].float(), "context_mask": self.mask[pid],
                "fps": float(record.get("fps", 24.0))}


class DiTDataLoader(SamplerLoader):
    """Micro-batches of one DP rank with an exact, resumable position (the AR loader's interface)."""

    def __init__(self, datasets: Sequence[DiTLatentDataset], sampler: GridBatchSampler, patch: tuple[int, int, int]):
        self.datasets, self.sampler, self.patch = list(datasets), sampler, patch

    def seq_length(self) -> int:
        """Tokens per sample of the next micro-batch (T/pt x H/ps x W/ps)."""
        t, h, w = self.peek_grid()
        return (t // self.patch[0]) * (h // self.patch[1]) * (w // self.patch[2])

    def __next__(self) -> dict:
        _, keys = self.sampler.peek()
        samples = [self.datasets[k].sample(doc) for k, doc in keys]
        self.sampler.advance()
        return {"latents": torch.stack([s["latents"] for s in samples]),
                "context": torch.stack([s["context"] for s in samples]),
                "context_mask": torch.stack([s["context_mask"] for s in samples]),
                "fps": torch.tensor([s["fps"] for s in samples], dtype=torch.float32),
                "sample_ids": torch.tensor(keys, dtype=torch.long)}



def build_dit_dataloaders(cfg: DiTDataConfig, model_cfg, dp_rank: int = 0, dp_size: int = 1):
    """(train, valid, notes) loaders of this DP rank; every data-vs-model mismatch is raised here."""
    if not cfg.paths:
        raise DiTDatasetError("data.paths is empty: give at least one DiT latent dataset directory")
    parse_split_string(cfg.split_string)
    datasets = [DiTLatentDataset(p) for p in cfg.paths]
    problems = []
    for ds in datasets:
        if ds.channels is not None and ds.channels != model_cfg.latent_channels:
            problems.append(f"{ds.path}: latents have {ds.channels} channels, the model takes {model_cfg.latent_channels}")
        width = model_cfg.crossattn_proj_in or model_cfg.context_dim
        if ds.embeddings.shape[-1] != width:
            problems.append(f"{ds.path}: text embeddings are {ds.embeddings.shape[-1]}-d, the model reads {width}-d")
        bad = sorted({tuple(g) for g in ds.grids.tolist()
                      if g[0] % model_cfg.patch_temporal or g[1] % model_cfg.patch_spatial or g[2] % model_cfg.patch_spatial})
        if bad:
            problems.append(f"{ds.path}: latent grids {bad} are not divisible by the patch size")
    if problems:
        raise DiTDatasetError("the data do not fit the model:\n  " + "\n  ".join(problems))
    ranges = [split_ranges(len(ds), cfg.split_string, where=f"dataset {ds.path}") for ds in datasets]
    patch = (model_cfg.patch_temporal, model_cfg.patch_spatial, model_cfg.patch_spatial)
    loaders = []
    for split in ("train", "valid"):
        if all(len(r[split]) == 0 for r in ranges):
            if split == "train":
                raise SamplerError(f"split 'train' of split_string {cfg.split_string!r} is empty")
            loaders.append(None)
            continue
        sources = [BlendSource(doc_ids=np.arange(r[split].start, r[split].stop, dtype=np.int64),
                               grids=ds.grids[r[split].start:r[split].stop], fingerprint=str(ds.info.get("content_hash")))
                   for ds, r in zip(datasets, ranges)]
        train = split == "train"
        sampler = GridBatchSampler(sources, micro_batch_size=cfg.micro_batch_size,
                                   global_batch_size=cfg.global_batch_size, dp_rank=dp_rank, dp_size=dp_size,
                                   seed=cfg.seed, weights=cfg.weights if train else None, shuffle=train,
                                   drop_last=train, name=split)
        loaders.append(DiTDataLoader(datasets, sampler, patch))
    notes = [f"{len(ds)} latent clips in {ds.path} (grids {sorted({tuple(g) for g in ds.grids.tolist()})})"
             for ds in datasets]
    return loaders[0], loaders[1], notes
