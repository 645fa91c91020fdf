"""validate_for_model: every data/model mismatch is a clear error raised from metadata alone, i.e. before
any model is built (no model object appears in these tests; the token files are not even opened)."""

from __future__ import annotations

import json

import pytest

from cosmos_nemo.data import ARDatasetMeta, DataModelMismatch, validate_for_model, write_pattern_dataset
from cosmos_nemo.data.ar_dataset import ARDatasetError


def _info(task="base", vocab=64000, grids=None, tokenizer="Cosmos-1.0-Tokenizer-DV8x16x16", docs=100):
    meta = ARDatasetMeta(tokenizer=tokenizer, compression=(8, 16, 16), vocab_size=vocab, frames=33, height=640,
                         width=1024, task=task)
    info = {"format": "cosmos_nemo.ar_token_dataset", "format_version": 1, **meta.to_json()}
    info["num_documents"] = docs
    info["grids"] = grids or {"5x40x64": docs}
    return info


def test_same_vocabulary_passes_and_notes_tokenizer_swap():
    assert validate_for_model(_info(), 64000, expected_tokenizer="DV8x16x16", max_seq_length=12800) == []
    notes = validate_for_model(_info(tokenizer="Cosmos-0.1-Tokenizer-DV4x8x8"), 64000, expected_tokenizer="DV8x16x16")
    assert len(notes) == 1 and "tokenizer swap" in notes[0] and "same vocabulary, no resize" in notes[0]


def test_vocabulary_mismatch_needs_resize():
    with pytest.raises(DataModelMismatch, match="vocabulary of 65536 ids but the model has 64000.*model.resize_vocab=true"):
        validate_for_model(_info(vocab=65536), 64000)
    notes = validate_for_model(_info(vocab=65536), 64000, resize_vocab=True)
    assert notes == ["dataset: vocabulary will be resized from 64000 to 65536 (model.resize_vocab=true)"]


def test_sequence_too_long_shows_arithmetic():
    with pytest.raises(DataModelMismatch, match=r"grid 5x40x64: 5·40·64 = 12800"):
        validate_for_model(_info(), 64000, max_seq_length=12799)
    v2w = _info(task="video2world")
    assert validate_for_model(v2w, 64000, max_seq_length=12864) == []
    with pytest.raises(DataModelMismatch, match=r"1 \+ 5·40·64 = 12801, padded to a multiple of 64 = 12864"):
        validate_for_model(v2w, 64000, max_seq_length=12800)
    mixed = _info(grids={"5x40x64": 10, "3x20x32": 5})
    with pytest.raises(DataModelMismatch, match="grid 5x40x64") as err:
        validate_for_model(mixed, 64000, max_seq_length=4096)
    assert "3x20x32" not in str(err.value)  # 1920 tokens fit


def test_empty_split():
    with pytest.raises(DataModelMismatch, match="split 'valid' of split_string '98,1,1' is empty .* 10 documents"):
        validate_for_model(_info(docs=10), 64000, split_string="98,1,1")
    validate_for_model(_info(docs=10), 64000, split_string="8,1,1")


def test_task_and_embedding_rows():
    with pytest.raises(DataModelMismatch, match="prepared for 'base' but the model is a 'video2world' model"):
        validate_for_model(_info(), 64000, model_task="video2world")
    with pytest.raises(DataModelMismatch, match="ids up to 64002 .* embedding has 64000 rows"):
        validate_for_model(_info(task="video2world"), 64000, model_embedding_rows=64000)
    validate_for_model(_info(task="video2world"), 64000, model_embedding_rows=64064, model_task="video2world")


def test_reads_only_metadata_from_a_path(tmp_path):
    path = write_pattern_dataset(tmp_path / "ds", 4, grid=(2, 3, 4), vocab_size=50)
    # tamper with the tokens (same size): validation reads dataset.json only, so it still answers quickly
    (path / "tokens.bin").write_bytes(b"\xff" * (path / "tokens.bin").stat().st_size)
    with pytest.raises(DataModelMismatch, match="vocabulary of 50 ids"):
        validate_for_model(str(path), 64000)
    assert validate_for_model([str(path), json.loads((path / "dataset.json").read_text())], 50, max_seq_length=24) == []
    with pytest.raises(ARDatasetError, match="does not exist"):
        validate_for_model(str(tmp_path / "missing"), 64000)
