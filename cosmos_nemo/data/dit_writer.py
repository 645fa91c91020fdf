"""A streaming writer of the DiT latent dataset contract (`cosmos_nemo.data.dit_dataset`).

`write_dit_dataset` takes every latent at once, which does not fit a real dataset in memory (a 121-frame
720p CV8x8x8 latent is 14 MB in float32). `write_dit_dataset_streaming` takes the documents as an iterator
and holds at most one shard: a shard closes after `DOCS_PER_SHARD` documents or once it holds
`max_shard_bytes`, whichever comes first. The files are the same contract; for shards that close at
`DOCS_PER_SHARD` (every shard, while 256 documents stay under the byte cap) they are byte-identical to
`write_dit_dataset`'s, `content_hash` included (tests/test_data_prep_dit.py checks this).

Atomicity, as the AR writer (`write_ar_dataset`): the files are written into a hidden staging folder in
`out` (`.dit_write.<random>`), moved into place, and `dataset.json` is written last, so a kill leaves no
`dataset.json` (the reader refuses the folder) and the next call cleans the staging folder up. Other files
in `out` (the `prepare latents` parts folder) are left alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Iterable, Mapping, Optional

import torch

from cosmos_nemo.data.dit_dataset import DOCS_PER_SHARD, FORMAT, DiTDatasetError, _shard_name
from cosmos_nemo.io.atomic import fsync_dir, fsync_file, kill_point

STAGING_PREFIX = ".dit_write."
MANIFEST = "manifest.jsonl"
TEXT_FILE = "text_embeddings.safetensors"
META = "dataset.json"
CONTRACT_NAMES = (META, MANIFEST, TEXT_FILE)


def is_contract_file(name: str) -> bool:
    """Whether `name` is a file the contract puts in a dataset folder (or this writer's staging folder)."""
    return name in CONTRACT_NAMES or name.startswith(STAGING_PREFIX) or (
        name.startswith("latents-") and name.endswith(".safetensors"))


def _sha256_update(digest, path: Path) -> None:
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)






def write_dit_dataset_streaming(
    out: str | os.PathLike,
    documents: Iterable[tuple[torch.Tensor, Mapping]],
    embeddings: torch.Tensor,
    mask: torch.Tensor,
    *,
    vae: Optional[dict] = None,
    text: Optional[dict] = None,
    overwrite: bool = False,
    max_shard_bytes: int = 1 << 30,
    extra_info: Optional[dict] = None,
) -> Path:
    """Write the contract to `out` from `(latent [C,T,H,W], record)` pairs in document order.

    `record` holds `fps` and `prompt_id` (a row of `embeddings`) and any other manifest fields (`source`,
    `start_frame`, `num_frames`, `height`, `width`, `caption`); `doc`, `shard` and `latent_shape` are set
    here. `extra_info` adds keys to dataset.json (e.g. the skip report); the contract's keys win.
    """
    from safetensors.torch import save_file

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DiTDatasetError(f"{out} exists and is not a directory")
    if embeddings.dim() != 3 or tuple(mask.shape) != tuple(embeddings.shape[:2]):
        raise DiTDatasetError(f"embeddings must be [P, L, D] with a [P, L] mask, got {tuple(embeddings.shape)} and "
                              f"{tuple(mask.shape)}")
    out.mkdir(parents=True, exist_ok=True)
    if (out / META).is_file() and not overwrite:
        raise DiTDatasetError(f"{out} already holds a complete DiT latent dataset; pass overwrite=True (--overwrite)")
    for stale in out.iterdir():
        if stale.name.startswith(STAGING_PREFIX):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = out / f"{STAGING_PREFIX}{os.getpid()}-{secrets.token_hex(3)}"
    tmp.mkdir()
    num_prompts = int(embeddings.shape[0])
    try:
        digest = hashlib.sha256()
        shard_names: list[str] = []
        pending: dict[str, torch.Tensor] = {}
        pending_bytes = 0
        channels: set[int] = set()
        n = 0

        def flush() -> None:
            nonlocal pending, pending_bytes
            if not pending:
                return
            name = _shard_name(len(shard_names))
            save_file(pending, str(tmp / name))
            _sha256_update(digest, tmp / name)
            shard_names.append(name)
            pending, pending_bytes = {}, 0

        with open(tmp / MANIFEST, "w", encoding="utf-8", newline="\n") as manifest:
            for latent, record in documents:
                if not isinstance(latent, torch.Tensor) or latent.dim() != 4:
                    raise DiTDatasetError(f"document {n}: a latent must be a [C, T, H, W] tensor")
                if latent.dtype not in (torch.float32, torch.bfloat16):
                    raise DiTDatasetError(f"document {n}: latents are float32 or bfloat16, got {latent.dtype}")
                channels.add(int(latent.shape[0]))
                if len(channels) != 1:
                    raise DiTDatasetError(f"document {n}: {latent.shape[0]} latent channels, earlier documents have "
                                          f"{sorted(channels - {int(latent.shape[0])})}")
                pid = int(record["prompt_id"])
                if not 0 <= pid < num_prompts:
                    raise DiTDatasetError(f"document {n}: prompt_id {pid} is not in [0, {num_prompts})")
                size = latent.numel() * latent.element_size()
                if pending and (len(pending) >= DOCS_PER_SHARD or pending_bytes + size > max_shard_bytes):
                    flush()
                pending[f"doc.{n}"] = latent.detach().cpu().contiguous()
                pending_bytes += size
                rec = dict(record)
                rec.update(doc=n, shard=len(shard_names), latent_shape=list(latent.shape), fps=float(rec.get("fps", 24.0)),
                           prompt_id=pid)
                manifest.write(json.dumps(rec, sort_keys=True) + "\n")
                n += 1
            flush()
        if n == 0:
            raise DiTDatasetError("no documents to write")
        save_file({"embeddings": embeddings.contiguous(), "mask": mask.to(torch.bool).contiguous()}, str(tmp / TEXT_FILE))
        _sha256_update(digest, tmp / MANIFEST)
        _sha256_update(digest, tmp / TEXT_FILE)
        info = dict(extra_info or {})
        info.update({"format": FORMAT, "version": 1, "documents": n, "latent_channels": channels.pop(),
                     "vae": vae or {}, "text": text or {"length": int(embeddings.shape[1]), "dim": int(embeddings.shape[2])},
                     "content_hash": digest.hexdigest()})
        names = shard_names + [MANIFEST, TEXT_FILE]
        for name in names:
            fsync_file(tmp / name)
        # From here the folder is incomplete until dataset.json lands.
        if (out / META).exists():
            (out / META).unlink()
        for old in out.iterdir():
            if old.name.startswith("latents-") and old.name.endswith(".safetensors") and old.name not in names:
                old.unlink()  # a shard of an overwritten, larger dataset
        for name in names:
            os.replace(tmp / name, out / name)
            kill_point("merge:moved")  # test hook: a kill with the dataset's files half moved in
        fsync_dir(out)
        from cosmos_nemo.io.atomic import atomic_write_text

        atomic_write_text(out / META, json.dumps(info, indent=2, sort_keys=True) + "\n")
        fsync_dir(out)
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


__all__ = ["STAGING_PREFIX", "is_contract_file", "write_dit_dataset_streaming"]
