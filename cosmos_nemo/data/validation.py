"""Checks that a dataset fits a model, run before any model is built.

`validate_for_model` reads only ``dataset.json`` (cheap, no hashing) and raises `DataModelMismatch` with
what to change, for:

- vocabulary (DESIGN "Vocabulary on a tokenizer swap"): the dataset's codebook size equal to the model's
  vocabulary is fine whatever the tokenizer name (DV8x16x16 → DV4x8x8 keeps 64,000 ids); otherwise the
  recipe must say ``model.resize_vocab=true``;
- special tokens: Video2World ids (BOV/PAD) must have embedding rows when the model's row count is given;
- task: Video2World data on a base model or the reverse, when the model's task is given;
- sequence length: every grid's input length (base T·H·W; Video2World 1 + T·H·W rounded up to the
  padding multiple) must fit ``max_seq_length``;
- splits: a split with a positive weight that gets no document.

It returns notes (strings) worth logging, e.g. a tokenizer swap with the same vocabulary.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

from cosmos_nemo.data.ar_dataset import ARDatasetError, ARDatasetMeta
from cosmos_nemo.data.reader import ARTokenDataset, read_dataset_info
from cosmos_nemo.data.layout import TASK_BASE, TASK_VIDEO2WORLD, layout_for
from cosmos_nemo.data.sampler import SamplerError, split_ranges


class DataModelMismatch(ARDatasetError):
    """The dataset does not fit the model configuration."""


DatasetLike = Union[ARTokenDataset, ARDatasetMeta, Mapping[str, Any], str, os.PathLike]


def _describe(item: DatasetLike) -> tuple[str, ARDatasetMeta, dict[tuple[int, int, int], int] | None, int | None]:
    """(label, meta, {grid: count} or None, num_documents or None) of one dataset-like item."""
    if isinstance(item, ARTokenDataset):
        info: Mapping[str, Any] = item.info
        label = str(item.path)
    elif isinstance(item, ARDatasetMeta):
        return "dataset", item, {item.grid: 1}, None
    elif isinstance(item, Mapping):
        info, label = item, "dataset"
    else:
        info, label = read_dataset_info(Path(item)), str(item)
    meta = ARDatasetMeta.from_json(info)
    grids = None
    if info.get("grids"):
        grids = {tuple(int(x) for x in key.split("x")): int(n) for key, n in info["grids"].items()}  # type: ignore[misc]
    return label, meta, grids, info.get("num_documents")


def _tokenizer_key(name: str) -> str:
    """Names compare by their tokenizer kind and factors: 'Cosmos-1.0-Tokenizer-DV8x16x16' ~ 'DV8x16x16'."""
    match = re.search(r"([CD][VI]\d+x\d+(?:x\d+)?)\s*$", name)
    return (match.group(1) if match else name).upper()


def validate_for_model(
    dataset_meta: DatasetLike | Sequence[DatasetLike],
    model_vocab_size: int,
    expected_tokenizer: str | None = None,
    resize_vocab: bool = False,
    max_seq_length: int | None = None,
    *,
    split_string: str | None = None,
    model_task: str | None = None,
    model_embedding_rows: int | None = None,
) -> list[str]:
    """Raise `DataModelMismatch` (or SamplerError for an empty split) when the data cannot train the model.

    `dataset_meta`: one or several of ARTokenDataset, ARDatasetMeta, a dataset.json dict or a dataset path.
    `model_vocab_size`: the model's token vocabulary (output rows; 64,000 for the released models).
    `expected_tokenizer`: the tokenizer the model was trained with; a different one with the same
    vocabulary is a tokenizer swap (allowed, noted). `max_seq_length`: the model config's sequence
    limit. `model_task`: "base" or "video2world". `model_embedding_rows`: input embedding rows (64,064 for
    the V2W models), checked against the special token ids.
    Returns notes to log.
    """
    items = list(dataset_meta) if isinstance(dataset_meta, (list, tuple)) else [dataset_meta]
    if not items:
        raise DataModelMismatch("no dataset given to validate")
    notes: list[str] = []
    for item in items:
        label, meta, grids, num_docs = _describe(item)

        if meta.vocab_size != model_vocab_size:
            if not resize_vocab:
                raise DataModelMismatch(
                    f"{label}: tokenizer {meta.tokenizer!r} has a vocabulary of {meta.vocab_size} ids but the model has "
                    f"{model_vocab_size}. Re-tokenize with a tokenizer of {model_vocab_size} ids, or set "
                    "model.resize_vocab=true to resize the embedding and output layer (new rows start from the mean "
                    "of the old ones)"
                )
            notes.append(f"{label}: vocabulary will be resized from {model_vocab_size} to {meta.vocab_size} (model.resize_vocab=true)")
        if expected_tokenizer is not None and _tokenizer_key(expected_tokenizer) != _tokenizer_key(meta.tokenizer):
            notes.append(
                f"{label}: tokenizer swap: the data was tokenized with {meta.tokenizer!r}, the model with "
                f"{expected_tokenizer!r}"
                + ("; same vocabulary, no resize" if meta.vocab_size == model_vocab_size else "")
                + "; decode generations with the data's tokenizer and keep the diffusion decoder off"
            )

        if model_task is not None and model_task != meta.task:
            raise DataModelMismatch(
                f"{label}: the data was prepared for {meta.task!r} but the model is a {model_task!r} model; "
                + ("prepare it with the video2world prepare command (prompts + text embeddings)"
                   if model_task == TASK_VIDEO2WORLD else "prepare it with `prepare ar-tokens` (no BOV/PAD framing)")
            )
        if meta.task == TASK_VIDEO2WORLD and model_embedding_rows is not None:
            highest = max(v for v in (meta.bov_id, meta.pad_id) if v is not None)
            if highest >= model_embedding_rows:
                raise DataModelMismatch(
                    f"{label}: Video2World tokens use ids up to {highest} (BOV {meta.bov_id}, PAD {meta.pad_id}) but the "
                    f"model's embedding has {model_embedding_rows} rows; build the model with the Video2World vocabulary "
                    f"(e.g. 64,064 rows for 64,000 codes)"
                )

        if max_seq_length is not None:
            too_long = []
            for grid in sorted(grids or {}):
                layout = layout_for(grid, meta.task, meta.pad_to_multiple_of)
                if layout.input_length > max_seq_length:
                    t, h, w = grid
                    if meta.task == TASK_BASE:
                        math_ = f"{t}·{h}·{w} = {layout.input_length}"
                    else:
                        math_ = (f"1 + {t}·{h}·{w} = {1 + t * h * w}, padded to a multiple of {meta.pad_to_multiple_of} "
                                 f"= {layout.input_length}")
                    too_long.append(f"grid {t}x{h}x{w}: {math_}")
            if too_long:
                raise DataModelMismatch(
                    f"{label}: sequences longer than the model's max_seq_length {max_seq_length}: "
                    + "; ".join(too_long)
                    + ". Raise model.seq_length (RoPE is computed from the grid), or prepare shorter clips / lower "
                    "resolution / a tokenizer with more compression"
                )

        if split_string is not None and num_docs is not None:
            try:
                split_ranges(int(num_docs), split_string, where=label)
            except SamplerError as exc:
                raise DataModelMismatch(str(exc)) from exc
    return notes
