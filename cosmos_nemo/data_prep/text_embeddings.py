"""`prepare text-embeddings`, and the text side of `prepare latents` (diffusion_models.md §2, §8).

The reference dataset layout (Predict1/Predict2, and Predict2.5's text-caption variant):

    DATASET/videos/<stem>.mp4        any FFmpeg-readable container
    DATASET/metas/<stem>.txt         the caption
    DATASET/t5_xxl/<stem>.pickle     optional: pickle.dump([np.ndarray[n_tokens, 1024] float16], f)

Predict2.5's JSON layout is read too: `DATASET/captions/<stem>.json` holding `{"<captioner>": {"long": ...,
"medium": ..., "short": ...}}` (`--prompt_type` picks the length, `--captioner` the captioner; by default
the first one in the file), with `DATASET` = `datasets/<name>_json/train` (or `validation`).

Embeddings are T5-XXL's by default (`google-t5/t5-11b` encoder, 512 tokens, padded to 512 with the
positions past each prompt's true length set to zero, as the reference's `CosmosT5TextEncoder`). Any
`transformers` encoder is accepted by hub id or folder (`cosmos_nemo.tokenizers.text.load_text_encoder`);
`minilm` is the bundled offline MiniLM-L6 (384-d) for CPU runs. Predict2.5's text is Cosmos-Reason1's
(`--encoder reason1 --encoder-path FOLDER`: 28 normalised Qwen2.5-VL layers concatenated, [512, 100352], the
padding positions the pad token's real states, not zeros; `reason1-tiny` is a random 512-d one for CPU runs):
see `cosmos_nemo.data_prep.reason1`.

The output is one safetensors file keyed by prompt: `embeddings` `[P, L, D]` and `mask` `[P, L]`, one row
per *distinct* caption (identical captions are stored once), with the metadata `prompts` (JSON list: row
i embeds prompts[i]), `sources` (JSON object: stem -> row), `encoder`, `length`, `dim`. Its tensors are
exactly the `text_embeddings.safetensors` of the DiT latent dataset, and `prepare latents
--text-source FILE` reads it.

Legacy pickles: reading `t5_xxl/*.pickle` needs `--trust-pickle`, because unpickling can run arbitrary code
chosen by whoever wrote the file. Even then only numpy arrays are accepted (a restricted unpickler refuses
any other class). `--write-pickles` writes that layout (trimmed to each prompt's true length, float16, a
one-element list), which the reference training code reads.

Resumable: computed batches are committed as parts (`.parts/text-XXXXX.safetensors` beside the output, or
in `prepare latents`' parts folder), so a rerun after a kill encodes only the rest; the output is written
atomically. The result does not depend on how often the run was interrupted.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from cosmos_nemo.data_prep.engine import PrepareError, read_json
from cosmos_nemo.io.video import VIDEO_EXTENSIONS, list_videos

FORMAT = "cosmos-nemo-text-embeddings"
TEXT_SOURCES = ("auto", "compute", "pickles")
DEFAULT_FILE = "text_embeddings.safetensors"
TEXT_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
PICKLE_WHY = (
    "a .pickle file is a Python pickle: loading it can run arbitrary code chosen by whoever wrote it. Pass "
    "--trust-pickle only for files you made yourself or got from a source you trust; otherwise recompute the "
    "embeddings with --text-source compute (and keep them as safetensors, which hold only tensors)"
)


# ------------------------------------------------------------------------------------------------------
# The dataset layout


@dataclass(frozen=True)
class LayoutItem:
    stem: str
    video: str | None  # absolute path
    caption: str | None
    pickle: str | None  # absolute path of t5_xxl/<stem>.pickle when present


def _json_caption(path: Path, prompt_type: str, captioner: str | None) -> str | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise PrepareError(f"{path}: not a readable JSON caption file ({e})") from None
    if not isinstance(data, dict) or not data:
        raise PrepareError(f'{path}: expected {{"<captioner>": {{"long": ..., "short": ..., "medium": ...}}}}')
    key = captioner if captioner is not None else next(iter(data))
    if key not in data or not isinstance(data[key], dict):
        raise PrepareError(f"{path}: no captioner {key!r} (the file has {sorted(data)}); choose one with --captioner")
    text = data[key].get(prompt_type)
    if not isinstance(text, str):
        raise PrepareError(f"{path}: captioner {key!r} has no {prompt_type!r} caption (it has {sorted(data[key])}); "
                           "choose one with --prompt_type")
    return text.strip() or None


def read_layout(root: str | Path, prompt_type: str = "long", captioner: str | None = None,
                need_videos: bool = True) -> list[LayoutItem]:
    """The items of a reference dataset folder, sorted by stem (see the module docstring)."""
    root = Path(root)
    if not root.is_dir():
        raise PrepareError(f"--dataset_path {root} is not a directory")
    videos: dict[str, Path] = {}
    if (root / "videos").is_dir():
        for v in list_videos(root / "videos"):
            if v.stem in videos:
                raise PrepareError(f"videos {videos[v.stem].name} and {v.name} share the stem {v.stem!r}, so their "
                                   "metas/t5_xxl files would be the same; rename one")
            videos[v.stem] = v
    if need_videos and not videos:
        raise PrepareError(f"no videos in {root / 'videos'} (extensions: {' '.join(VIDEO_EXTENSIONS)}); the layout is "
                           "DATASET/videos/*.mp4 + DATASET/metas/*.txt")
    captions: dict[str, str | None] = {}
    if (root / "metas").is_dir():
        for p in sorted((root / "metas").glob("*.txt")):
            captions[p.stem] = p.read_text(encoding="utf-8", errors="replace").strip() or None
    if (root / "captions").is_dir():
        for p in sorted((root / "captions").glob("*.json")):
            if p.stem not in captions:
                captions[p.stem] = _json_caption(p, prompt_type, captioner)
    pickles = {p.stem: p for p in (root / "t5_xxl").glob("*.pickle")} if (root / "t5_xxl").is_dir() else {}
    stems = sorted(set(videos) | (set(captions) if not need_videos else set()))
    if not stems:
        raise PrepareError(f"{root} holds no videos/ and no metas/*.txt or captions/*.json")
    return [LayoutItem(stem=s, video=str(videos[s].resolve()) if s in videos else None, caption=captions.get(s),
                       pickle=str(pickles[s].resolve()) if s in pickles else None) for s in stems]


def check_captions(items: Sequence[LayoutItem], root: Path) -> None:
    missing = [it.stem for it in items if not it.caption]
    if missing:
        shown = ", ".join(missing[:8]) + (f" ... ({len(missing)} in all)" if len(missing) > 8 else "")
        raise PrepareError(
            f"no caption for {shown}: each video needs {root}/metas/<stem>.txt (or captions/<stem>.json). Write one "
            f"caption for every video with `cosmos-nemo prepare prompts --dataset_path {root} --prompt \"...\"`"
        )


# ------------------------------------------------------------------------------------------------------
# Legacy pickles


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays (and lists of them) and nothing else."""

    ALLOWED = {
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    }

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it refers to {module}.{name}, which is not part of a numpy array")


def read_t5_pickle(path: str | Path, trust_pickle: bool) -> np.ndarray:
    """The float32 `[n_tokens, D]` embedding of one reference `t5_xxl/<stem>.pickle`."""
    path = Path(path)
    if not trust_pickle:
        raise PrepareError(f"refusing to read {path} without --trust-pickle: {PICKLE_WHY}")
    try:
        with open(path, "rb") as f:
            obj = _NumpyOnlyUnpickler(f).load()
    except (pickle.UnpicklingError, EOFError, OSError, ValueError, AttributeError, ImportError) as e:
        raise PrepareError(f"{path}: not a reference T5 pickle ([np.ndarray[n_tokens, D]]): {e}") from None
    if isinstance(obj, (list, tuple)) and len(obj) == 1:
        obj = obj[0]
    if not isinstance(obj, np.ndarray) or obj.ndim != 2 or obj.dtype.kind != "f" or obj.shape[0] < 1:
        what = f"{type(obj).__name__} {getattr(obj, 'shape', '')} {getattr(obj, 'dtype', '')}".strip()
        raise PrepareError(f"{path}: expected [np.ndarray[n_tokens, D] float], found {what}")
    return obj.astype(np.float32)


def write_t5_pickle(path: str | Path, embedding: torch.Tensor, length: int) -> None:
    """The reference layout: `pickle.dump([np.ndarray[length, D] float16], f)` (trimmed to the true length)."""
    from cosmos_nemo.io.atomic import atomic_path

    arr = embedding[:length].float().numpy().astype(np.float16)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        pickle.dump([arr], f)


# ------------------------------------------------------------------------------------------------------
# The table: one row per distinct prompt


@dataclass
class TextTable:
    prompts: list[str]
    embeddings: torch.Tensor  # [P, L, D], zero past each prompt's length
    mask: torch.Tensor  # bool [P, L]
    encoder: str

    @property
    def length(self) -> int:
        return int(self.embeddings.shape[1])

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[2])

    def row(self) -> dict[str, int]:
        return {p: i for i, p in enumerate(self.prompts)}

    def info(self) -> dict:
        return {"encoder": self.encoder, "length": self.length, "dim": self.dim, "prompts": len(self.prompts)}

    def subset(self, rows: Sequence[int]) -> "TextTable":
        idx = torch.tensor(list(rows), dtype=torch.long)
        return TextTable([self.prompts[i] for i in rows], self.embeddings[idx].contiguous(), self.mask[idx].contiguous(),
                         self.encoder)

    def save(self, path: str | Path, sources: dict[str, int] | None = None) -> Path:
        from cosmos_nemo.io.tensors import save_tensors

        meta = {"format": FORMAT, "prompts": json.dumps(self.prompts, ensure_ascii=False),
                "sources": json.dumps(sources or {}, sort_keys=True, ensure_ascii=False), "encoder": self.encoder,
                "length": str(self.length), "dim": str(self.dim)}
        return save_tensors(path, {"embeddings": self.embeddings, "mask": self.mask.to(torch.bool)}, metadata=meta)


def load_text_table(path: str | Path) -> tuple[TextTable, dict[str, int]]:
    """A file written by `TextTable.save` (`prepare text-embeddings`): the table and its stem -> row map."""
    from safetensors import safe_open

    from cosmos_nemo.io.tensors import load_tensors

    path = Path(path)
    tensors = load_tensors(path, expected=("embeddings", "mask"))
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != FORMAT or "prompts" not in meta:
        raise PrepareError(f"{path} is not a text-embeddings file written by `cosmos-nemo prepare text-embeddings` "
                           "(no prompts in its metadata)")
    prompts = json.loads(meta["prompts"])
    if len(prompts) != tensors["embeddings"].shape[0]:
        raise PrepareError(f"{path}: {len(prompts)} prompts for {tensors['embeddings'].shape[0]} embedding rows")
    table = TextTable(prompts, tensors["embeddings"], tensors["mask"].to(torch.bool), meta.get("encoder", "unknown"))
    return table, json.loads(meta.get("sources") or "{}")


def distinct(prompts: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(prompts))


def encode_prompts(prompts: Sequence[str], encoder_spec: str, *, parts: Path, batch_size: int, device: str,
                   dtype: str, max_length: int | None, store_dtype: str, progress: bool) -> TextTable:
    """Embed `prompts` in batches of `batch_size`, each batch committed as a part in `parts` (resumable)."""
    from cosmos_nemo.io.tensors import load_tensors, save_tensors

    parts.mkdir(parents=True, exist_ok=True)
    starts = list(range(0, len(prompts), batch_size))
    name_of = lambda i: parts / f"text-{i // batch_size:05d}.safetensors"  # noqa: E731
    todo = [i for i in starts if not name_of(i).is_file()]
    encoder = None
    if todo or not starts:
        from cosmos_nemo.data_prep.reason1 import load_encoder
        from cosmos_nemo.tokenizers.text import TextEncoderNotAvailableError

        try:
            encoder = load_encoder(encoder_spec, device=device, dtype=TEXT_DTYPES[dtype], max_length=max_length)
        except TextEncoderNotAvailableError as e:
            raise PrepareError(str(e)) from None
    it = todo
    if progress and todo:
        from tqdm import tqdm

        it = tqdm(todo, desc=f"text embeddings ({encoder.name})", unit="batch", dynamic_ncols=True)
    old = torch.get_num_threads()
    for i in it:
        enc = encoder.encode(list(prompts[i : i + batch_size]))
        save_tensors(name_of(i), {"embeddings": enc.embeddings.to(TEXT_DTYPES[store_dtype]).contiguous(),
                                  "mask": enc.mask.contiguous()})
    torch.set_num_threads(old)
    embs, masks = [], []
    for i in starts:
        t = load_tensors(name_of(i), expected=("embeddings", "mask"))
        embs.append(t["embeddings"])
        masks.append(t["mask"].to(torch.bool))
    name = encoder.name if encoder is not None else encoder_name(encoder_spec)
    if not starts:
        return TextTable([], torch.zeros(0, encoder.max_length, encoder.dim, dtype=TEXT_DTYPES[store_dtype]),
                         torch.zeros(0, encoder.max_length, dtype=torch.bool), name)
    return TextTable(list(prompts), torch.cat(embs).contiguous(), torch.cat(masks).contiguous(), name)


def encoder_name(spec: str) -> str:
    from cosmos_nemo.data_prep import reason1
    from cosmos_nemo.tokenizers import text as te

    key = str(spec).lower()
    if reason1.is_tiny(spec):
        return reason1.TINY_NAME
    if Path(spec).is_dir():
        return Path(spec).name
    if key in te._MINILM_ALIASES or key == te.MINILM_NAME.lower():
        return te.MINILM_NAME
    if key in te._T5_ALIASES:
        return "t5-11b"
    return str(spec)


def table_from_pickles(items: Sequence[LayoutItem], length: int, store_dtype: str, trust_pickle: bool) -> TextTable:
    """Rows from the reference pickles, one per distinct caption (the first item's pickle, in stem order),
    re-padded with zeros to `length` tokens, with the mask of the stored length."""
    if not trust_pickle:
        n = sum(it.pickle is not None for it in items)
        raise PrepareError(f"the dataset's t5_xxl/ holds {n} .pickle files, and reading them needs --trust-pickle: {PICKLE_WHY}")
    missing = [it.stem for it in items if it.pickle is None]
    if missing:
        raise PrepareError(f"--text-source pickles: no t5_xxl/<stem>.pickle for {', '.join(missing[:8])}"
                           + (f" ... ({len(missing)} in all)" if len(missing) > 8 else "")
                           + "; compute the embeddings instead with --text-source compute")
    prompts, rows, masks, dim = [], [], [], None
    seen: set[str] = set()
    for it in items:
        if it.caption in seen:
            continue
        seen.add(it.caption)
        arr = read_t5_pickle(it.pickle, trust_pickle=True)
        n, d = arr.shape
        if dim is None:
            dim = d
        if d != dim:
            raise PrepareError(f"{it.pickle}: {d}-d embeddings, earlier pickles are {dim}-d")
        if n > length:
            raise PrepareError(f"{it.pickle}: {n} tokens, more than --prompt_length {length}")
        emb = torch.zeros(length, d)
        emb[:n] = torch.from_numpy(arr)
        mask = torch.zeros(length, dtype=torch.bool)
        mask[:n] = True
        prompts.append(it.caption)
        rows.append(emb)
        masks.append(mask)
    return TextTable(prompts, torch.stack(rows).to(TEXT_DTYPES[store_dtype]).contiguous(), torch.stack(masks), "t5_xxl pickles")


def resolve_source(source: str, items: Sequence[LayoutItem], root: Path | None = None) -> str:
    """`auto`: `ROOT/text_embeddings.safetensors` when it exists (written by `prepare text-embeddings`), else
    `pickles` when the layout holds any t5_xxl pickle, else `compute`. A file path stays a path."""
    if source == "auto":
        if root is not None and (Path(root) / DEFAULT_FILE).is_file():
            return str(Path(root) / DEFAULT_FILE)
        return "pickles" if any(it.pickle for it in items) else "compute"
    if source in TEXT_SOURCES:
        return source
    if not Path(source).is_file():
        raise PrepareError(f"--text-source must be one of {TEXT_SOURCES} or a file written by `prepare text-embeddings`; "
                           f"{source} is neither")
    return source


def text_encoder_spec(cfg) -> str:
    """The one encoder spec of `cfg.text_encoder` and `cfg.encoder_path` (`reason1` + a folder -> the folder;
    `reason1` without one is an error naming the checkpoint to download)."""
    from cosmos_nemo.data_prep.reason1 import Reason1Error, resolve_spec

    try:
        return resolve_spec(cfg.text_encoder, getattr(cfg, "encoder_path", None))
    except Reason1Error as e:
        raise PrepareError(str(e)) from None


def text_table_for(items: Sequence[LayoutItem], cfg, parts: Path, device: str, root: Path | None = None) -> TextTable:
    """The table of the items' distinct captions, by `cfg.text_source` (see the module docstring).
    `cfg` has text_source, trust_pickle, text_encoder, prompt_length, text_batch_size, text_dtype, dtype,
    progress."""
    source = resolve_source(cfg.text_source, items, root)
    if source == "pickles":
        return table_from_pickles(items, int(cfg.prompt_length or 512), cfg.text_dtype, cfg.trust_pickle)
    if source == "compute":
        from cosmos_nemo.data_prep.settings import compute_dtype

        return encode_prompts(distinct(it.caption for it in items), text_encoder_spec(cfg), parts=parts,
                              batch_size=int(cfg.text_batch_size), device=device, dtype=compute_dtype(device, cfg.dtype),
                              max_length=cfg.prompt_length, store_dtype=cfg.text_dtype, progress=cfg.progress)
    table, _ = load_text_table(source)
    rows = table.row()
    missing = [it.stem for it in items if it.caption not in rows]
    if missing:
        raise PrepareError(f"{source} has no embedding for the captions of {', '.join(missing[:8])}"
                           + (f" ... ({len(missing)} in all)" if len(missing) > 8 else "")
                           + "; rerun `cosmos-nemo prepare text-embeddings` on this dataset")
    return table


def text_identity(cfg, items: Sequence[LayoutItem], root: Path | None = None) -> dict:
    """What the text rows depend on (part of a run's fingerprint)."""
    from cosmos_nemo.data_prep.vae import identity_of

    source = resolve_source(cfg.text_source, items, root)
    out = {"source": source, "prompt_length": cfg.prompt_length, "text_dtype": cfg.text_dtype}
    if source == "pickles":
        out["pickles"] = [[it.stem, Path(it.pickle).stat().st_size, Path(it.pickle).stat().st_mtime_ns]
                          for it in items if it.pickle]
    elif source == "compute":
        out.update(encoder=identity_of(text_encoder_spec(cfg)), batch=int(cfg.text_batch_size), dtype=cfg.dtype)
    else:
        st = Path(source).stat()
        out["file"] = [str(Path(source).resolve()), st.st_size, st.st_mtime_ns]
    return out


# ------------------------------------------------------------------------------------------------------
# The command


@dataclass
class TextReport:
    output: str
    prompts: int
    captions: int
    pickles_written: int
    source: str
    already_complete: bool = False

    def summary(self) -> str:
        lines = [f"output: {self.output}",
                 f"{self.captions} captions, {self.prompts} distinct prompts embedded ({self.source})"
                 + (" (already complete; nothing to do)" if self.already_complete else "")]
        if self.pickles_written:
            lines.append(f"wrote {self.pickles_written} t5_xxl/*.pickle files (reference layout)")
        return "\n".join(lines)


def prepare_text_embeddings(cfg) -> TextReport:
    """`cosmos-nemo prepare text-embeddings` (cfg: settings.TextEmbeddingsConfig)."""
    from cosmos_nemo.data_prep.settings import resolve_device

    root = Path(cfg.dataset_path)
    if cfg.prompt is not None:
        from cosmos_nemo.data_prep.prompts import create_prompts

        create_prompts(root, cfg.prompt, overwrite=True)
    items = read_layout(root, prompt_type=cfg.prompt_type, captioner=cfg.captioner, need_videos=False)
    items = [it for it in items if it.caption or it.video]
    check_captions(items, root)
    out = Path(cfg.output) if cfg.output else root / DEFAULT_FILE
    if out.exists() and out.is_dir():
        raise PrepareError(f"--output {out} is a directory; give a .safetensors file path")
    if cfg.text_source not in ("compute", "pickles"):
        raise PrepareError(f"--text-source {cfg.text_source!r}: here choose compute or pickles")
    source = cfg.text_source
    if source == "compute" and cfg.write_pickles:
        from cosmos_nemo.data_prep.reason1 import is_reason1

        if is_reason1(text_encoder_spec(cfg)):
            raise PrepareError("--write-pickles writes the T5 layout (t5_xxl/*.pickle, trimmed to the prompt); Reason1 "
                               "embeddings are [512, layers x hidden] with the pad token's states, and Predict2.5 "
                               "computes them online: keep the safetensors file")
    device = resolve_device(cfg.device)
    fp = hashlib.sha256(json.dumps({"text": text_identity(cfg, items), "captions": [[it.stem, it.caption] for it in items]},
                                   sort_keys=True).encode()).hexdigest()
    parts = out.parent / f".{out.name}.parts"
    record = out.parent / f".{out.name}.prepare.json"
    # Crash windows as in engine.py: temporaries of killed writes are removed; the record is dropped before the
    # output changes (so it only vouches for the file beside it); the parts' fingerprint marks an interrupted
    # run of this same command, which a rerun continues without --overwrite.
    from cosmos_nemo.io.atomic import atomic_write_text, is_stale, is_temporary, remove_path, remove_tree_atomically

    for stale in [*out.parent.glob(f".{out.name}.*"), *out.parent.glob(f"..{out.name}.*")]:
        if is_temporary(stale) and is_stale(stale):
            remove_path(stale)  # of the output, its record, its parts renamed aside
    recorded = (read_json(record) or {}).get("fingerprint") == fp
    done = out.is_file() and recorded
    ours = recorded or (read_json(parts / "fingerprint.json") or {}).get("fingerprint") == fp
    if out.is_file() and not done and not ours and not cfg.overwrite:
        raise PrepareError(f"{out} exists and was made from other captions or settings; pass --overwrite to replace it "
                           "or choose another --output")
    if done:
        remove_tree_atomically(parts)  # a finished run killed while it removed them
    else:
        if parts.is_dir() and (read_json(parts / "fingerprint.json") or {}).get("fingerprint") != fp:
            remove_tree_atomically(parts)
        parts.mkdir(parents=True, exist_ok=True)
        for stale in parts.iterdir():
            if is_temporary(stale):
                remove_path(stale)
        atomic_write_text(parts / "fingerprint.json", json.dumps({"fingerprint": fp}))
        table = text_table_for(items, cfg, parts, device)
        rows = table.row()
        if record.exists():
            record.unlink()
        table.save(out, sources={it.stem: rows[it.caption] for it in items})
        atomic_write_text(record, json.dumps({"fingerprint": fp}))
        remove_tree_atomically(parts)
    table, sources = load_text_table(out)
    written = 0
    if cfg.write_pickles:
        lengths = table.mask.sum(1).tolist()
        for it in items:
            r = sources[it.stem]
            write_t5_pickle(root / "t5_xxl" / f"{it.stem}.pickle", table.embeddings[r].float(), int(lengths[r]))
            written += 1
    return TextReport(output=str(out), prompts=len(table.prompts), captions=len(items), pickles_written=written,
                      source=source, already_complete=done)


__all__ = ["FORMAT", "LayoutItem", "TextTable", "load_text_table", "prepare_text_embeddings", "read_layout",
           "read_t5_pickle", "table_from_pickles", "text_table_for", "write_t5_pickle"]
