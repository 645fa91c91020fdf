"""`prepare v2w`: a jsonl of `{"prompt", "visual_input"}` → a Video2World AR token dataset.

The reference is NVIDIA's `video2world_prepare_dataset.py`. Like it, documents are stored as
`[BOV] + clip ids + [PAD] * k` (the dataset writer applies the framing) and each clip is conditioned on
its prompt's text embeddings. Unlike it: text embeddings are computed once per *distinct* prompt and
stored in one bf16 `text_embeddings.safetensors` (documents refer to rows by `prompt_id`) instead of a
2 MiB fp32 `.pt` per sample; the output directory is never `rmtree`'d; the train/val/test split is taken
at read time (deterministically, from the recipe's `split_string`) instead of an unseeded shuffle here.

Prompts are embedded before any video is read, so a text encoder that cannot be loaded stops the run
before the expensive part; the prompt of a video that is later skipped keeps its (unused) row.

`visual_input` may be absolute or relative to the jsonl's folder. Manifest `source` paths are relative to
the input root: the jsonl's folder, or the deepest folder holding every video when some lie outside it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from cosmos_nemo.data_prep.ar_tokens import run_prepare
from cosmos_nemo.data_prep.engine import PrepareError, Report, SourceItem, tokenizer_identity
from cosmos_nemo.data_prep.settings import V2WConfig

TEXT_CACHE = "text_embeddings.cache.safetensors"


def read_jsonl(path: Path) -> list[tuple[str, Path]]:
    """`(prompt, absolute video path)` per line; malformed lines are an error naming the line."""
    if not path.is_file():
        raise PrepareError(f"--input_jsonl {path} does not exist")
    base = path.resolve().parent
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError as e:
            raise PrepareError(f"{path}:{n}: not valid JSON ({e})") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("prompt"), str) or not isinstance(rec.get("visual_input"), str):
            raise PrepareError(f'{path}:{n}: each line needs string fields "prompt" and "visual_input", got {line[:120]!r}')
        video = Path(rec["visual_input"])
        out.append((rec["prompt"], video if video.is_absolute() else base / video))
    if not out:
        raise PrepareError(f"--input_jsonl {path} holds no records")
    return out


def build_items(path: Path) -> tuple[list[SourceItem], list[str]]:
    """Items sorted by source (then line), and the distinct prompts in first-use order of that sort."""
    records = read_jsonl(path)
    base = path.resolve().parent
    resolved = [(prompt, Path(os.path.normpath(video))) for prompt, video in records]
    root = base
    if any(base not in v.parents for _, v in resolved):
        root = Path(os.path.commonpath([str(base)] + [str(v.parent) for _, v in resolved]))
    rows = sorted(((v.relative_to(root).as_posix(), line, prompt, v) for line, (prompt, v) in enumerate(resolved)))
    prompts: dict[str, int] = {}
    items = []
    for source, _, prompt, video in rows:
        pid = prompts.setdefault(prompt, len(prompts))
        items.append(SourceItem(source=source, path=str(video), caption=prompt, prompt_id=pid))
    return items, list(prompts)


def _embedder(prompts: list[str], cfg: V2WConfig, device: str):
    def compute(parts: Path):
        from cosmos_nemo.io.tensors import load_tensors, save_tensors

        cache = parts / TEXT_CACHE
        if cache.is_file():
            t = load_tensors(cache, expected=("embeddings", "mask"))
            return t["embeddings"], t["mask"]
        from cosmos_nemo.tokenizers.text import TextEncoderNotAvailableError, load_text_encoder

        try:
            encoder = load_text_encoder(cfg.text_encoder, device=device, max_length=cfg.prompt_length)
        except TextEncoderNotAvailableError as e:
            raise PrepareError(str(e)) from None
        embs, masks = [], []
        starts = range(0, len(prompts), cfg.text_batch_size)
        if cfg.progress:
            from tqdm import tqdm

            starts = tqdm(starts, desc=f"text embeddings ({encoder.name})", unit="batch", dynamic_ncols=True)
        for i in starts:
            enc = encoder.encode(prompts[i : i + cfg.text_batch_size])
            embs.append(enc.embeddings)
            masks.append(enc.mask)
        embeddings = torch.cat(embs).to(torch.bfloat16).contiguous()
        mask = torch.cat(masks).contiguous()
        save_tensors(cache, {"embeddings": embeddings, "mask": mask})
        return embeddings, mask

    return compute


def prepare_v2w(cfg: V2WConfig) -> Report:
    settings = cfg.settings()
    items, prompts = build_items(Path(cfg.input_jsonl))
    return run_prepare(
        items, settings, Path(cfg.output_dir), workers=int(cfg.workers), overwrite=cfg.overwrite,
        compression_flag=cfg.tokenizer_compression_factor, task="video2world", progress=cfg.progress,
        text_embeddings=_embedder(prompts, cfg, settings.device),
        extra_fingerprint={"text_encoder": tokenizer_identity(cfg.text_encoder), "prompt_length": cfg.prompt_length, "prompts": prompts},
        # recorded in dataset.json, so `generate` encodes prompts with the same encoder by default
        text_encoder=str(Path(cfg.text_encoder).resolve()) if Path(cfg.text_encoder).exists() else cfg.text_encoder,
    )


__all__ = ["V2WConfig", "build_items", "prepare_v2w", "read_jsonl"]
