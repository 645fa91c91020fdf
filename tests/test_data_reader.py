"""ARTokenDataset: reads back exactly what the writer was given (checked against megatron's own reader and
the inputs), and refuses missing, incomplete, tampered or inconsistent directories with clear errors."""

from __future__ import annotations

import copy
import json
import os
import shutil

import numpy as np
import pytest
import torch

from cosmos_nemo.data.ar_dataset import ARDatasetError, ARDatasetMeta, IncompleteDatasetError, write_ar_dataset
from cosmos_nemo.data.reader import ARTokenDataset
from cosmos_nemo.data.loader import resolve_dataset_paths

GRIDS = [(2, 3, 4), (1, 2, 2), (3, 1, 2)]


def _docs(n, seed=0, vocab=64000, v2w=False):
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        g = GRIDS[k % len(GRIDS)]
        rec = {"source": f"d/v{k:03d}.mp4", "start_frame": 8 * k, "num_frames": 1 + (g[0] - 1) * 8, "fps": 29.97,
               "height": 16 * g[1], "width": 16 * g[2], "grid": list(g)}
        if k % 2:
            rec["caption"] = f"a clip with ünïcode {k}"
        if v2w:
            rec["prompt_id"] = k % 3
        out.append((rng.integers(0, vocab, size=int(np.prod(g))), rec))
    return out


def _meta(task="base"):
    return ARDatasetMeta(tokenizer="DV8x16x16", compression=(8, 16, 16), vocab_size=64000, frames=9, height=48,
                         width=64, task=task)


@pytest.fixture
def base_ds(tmp_path):
    docs = _docs(7)
    return write_ar_dataset(tmp_path / "base", docs, _meta()), docs


def test_roundtrip_tokens_grids_records(base_ds):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    path, docs = base_ds
    ds = ARTokenDataset(path)
    mega = IndexedDataset(str(path / "tokens"))
    assert len(ds) == len(docs) == len(mega)
    for k, (tokens, rec) in enumerate(docs):
        item = ds[k]
        np.testing.assert_array_equal(item.tokens, tokens)
        np.testing.assert_array_equal(item.tokens, mega[k])
        assert item.grid == tuple(rec["grid"])
        assert item.record == {**rec, "doc": k, "fps": float(rec["fps"])}
        np.testing.assert_array_equal(ds.clip_tokens(k), tokens)
    assert ds.meta == _meta()
    with pytest.raises(IndexError):
        ds[7]


def test_documents_survive_closing_the_mmap(base_ds):
    path, docs = base_ds
    ds = ARTokenDataset(path)
    item = ds[3]
    del ds
    np.testing.assert_array_equal(item.tokens, docs[3][0])


def test_video2world_roundtrip_and_text_embeddings(tmp_path):
    docs = _docs(5, v2w=True)
    emb = torch.randn(3, 4, 6)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.bool)
    path = write_ar_dataset(tmp_path / "v2w", docs, _meta("video2world"), text_embeddings=(emb, mask))
    ds = ARTokenDataset(path)
    for k, (tokens, rec) in enumerate(docs):
        n = int(np.prod(rec["grid"]))
        stored = ds[k].tokens
        assert stored[0] == 64000 and (stored[1 + n :] == 64002).all()
        assert len(stored) == -(-(1 + n) // 64) * 64 + 1
        np.testing.assert_array_equal(ds.clip_tokens(k), tokens)
    got, got_mask = ds.text_embeddings([2, 0, 2])
    assert got.dtype == torch.float32 and got.shape == (3, 4, 6)
    torch.testing.assert_close(got, emb[[2, 0, 2]].to(torch.bfloat16).float(), rtol=0, atol=0)
    assert torch.equal(got_mask, mask[[2, 0, 2]])
    np.testing.assert_array_equal(ds.prompt_ids, [0, 1, 2, 0, 1])


def test_state_copy_reopens(base_ds):
    """DataLoader workers receive the dataset through its __getstate__ (open memmaps dropped, reopened
    lazily); copy.deepcopy takes the same __reduce_ex__ path without a pickle round trip."""
    path, docs = base_ds
    ds = ARTokenDataset(path)
    ds[0]
    state = ds.__getstate__()
    assert state["_indexed"] is None and state["_manifest_file"] is None  # no open handles travel
    clone = copy.deepcopy(ds)
    np.testing.assert_array_equal(clone[2].tokens, docs[2][0])


def test_missing_directory(tmp_path):
    with pytest.raises(ARDatasetError, match="does not exist; write it with `cosmos-nemo prepare ar-tokens"):
        ARTokenDataset(tmp_path / "nope")


def test_not_a_dataset(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(IncompleteDatasetError, match="not an AR token dataset"):
        ARTokenDataset(tmp_path / "empty")


def test_crash_before_dataset_json_is_refused(tmp_path, monkeypatch):
    real = os.replace

    def replace(src, dst):
        if str(dst).endswith("dataset.json"):
            raise KeyboardInterrupt("killed just before the marker")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        write_ar_dataset(tmp_path / "ds", _docs(3), _meta())
    monkeypatch.setattr(os, "replace", real)
    assert (tmp_path / "ds" / "tokens.bin").exists() and not (tmp_path / "ds" / "dataset.json").exists()
    with pytest.raises(IncompleteDatasetError, match="incomplete: it has no dataset.json .*Re-run the prepare command"):
        ARTokenDataset(tmp_path / "ds")
    # rerunning the writer completes it
    write_ar_dataset(tmp_path / "ds", _docs(3), _meta())
    assert len(ARTokenDataset(tmp_path / "ds")) == 3


def test_missing_file(base_ds):
    path, _ = base_ds
    (path / "manifest.jsonl").unlink()
    with pytest.raises(ARDatasetError, match="is missing manifest.jsonl"):
        ARTokenDataset(path)


def test_size_change_detected(base_ds):
    path, _ = base_ds
    with open(path / "tokens.bin", "ab") as f:
        f.write(b"\0\0")
    with pytest.raises(ARDatasetError, match="changed after the dataset was written"):
        ARTokenDataset(path)


def test_bad_hash_detected_and_skippable(base_ds):
    path, docs = base_ds
    raw = bytearray((path / "tokens.bin").read_bytes())
    raw[0] ^= 0xFF
    (path / "tokens.bin").write_bytes(bytes(raw))
    with pytest.raises(ARDatasetError, match="tokens.bin does not match the sha256"):
        ARTokenDataset(path)
    ds = ARTokenDataset(path, verify_hash=False)  # sizes still fine: opens, the flipped token differs
    assert ds[0].tokens[0] != docs[0][0][0]


def _rewrite_manifest(path, lines):
    text = "".join(json.dumps(line) + "\n" for line in lines)
    (path / "manifest.jsonl").write_text(text)
    info = json.loads((path / "dataset.json").read_text())
    info["files"]["manifest.jsonl"]["bytes"] = len(text.encode())
    (path / "dataset.json").write_text(json.dumps(info))
    return info


def test_manifest_count_mismatch(base_ds):
    path, _ = base_ds
    lines = [json.loads(l) for l in (path / "manifest.jsonl").read_text().splitlines()]
    _rewrite_manifest(path, lines[:-1])
    with pytest.raises(ARDatasetError, match="has 6 records but dataset.json says 7 documents"):
        ARTokenDataset(path, verify_hash=False)


def test_idx_count_mismatch(base_ds):
    path, _ = base_ds
    lines = [json.loads(l) for l in (path / "manifest.jsonl").read_text().splitlines()]
    extra = dict(lines[-1], doc=7)
    info = _rewrite_manifest(path, lines + [extra])
    info["num_documents"] = 8
    (path / "dataset.json").write_text(json.dumps(info))
    with pytest.raises(ARDatasetError, match="tokens.idx holds 7 sequences .* have 8"):
        ARTokenDataset(path, verify_hash=False)


def test_grid_length_mismatch(base_ds):
    path, _ = base_ds
    lines = [json.loads(l) for l in (path / "manifest.jsonl").read_text().splitlines()]
    lines[0]["grid"] = [1, 3, 4]
    _rewrite_manifest(path, lines)
    with pytest.raises(ARDatasetError, match=r"document 0 .* stores 24 tokens but its grid \[1, 3, 4\] needs 12"):
        ARTokenDataset(path, verify_hash=False)


def test_doc_numbering_checked(base_ds):
    path, _ = base_ds
    lines = [json.loads(l) for l in (path / "manifest.jsonl").read_text().splitlines()]
    lines[2]["doc"] = 5
    _rewrite_manifest(path, lines)
    with pytest.raises(ARDatasetError, match="line 3 should describe document 2"):
        ARTokenDataset(path, verify_hash=False)


def test_corrupt_index_is_a_clear_error(base_ds):
    path, _ = base_ds
    size = (path / "tokens.idx").stat().st_size
    (path / "tokens.idx").write_bytes(b"\0" * size)
    with pytest.raises(ARDatasetError, match="not a readable megatron index"):
        ARTokenDataset(path, verify_hash=False)


def test_parent_folder_expands_to_sub_datasets(tmp_path):
    for name in ("b", "a"):
        write_ar_dataset(tmp_path / "root" / name, _docs(2), _meta())
    (tmp_path / "root" / "notes").mkdir()
    assert resolve_dataset_paths([tmp_path / "root"]) == [tmp_path / "root" / "a", tmp_path / "root" / "b"]
    shutil.rmtree(tmp_path / "root" / "a" )
    assert resolve_dataset_paths([tmp_path / "root" / "b"]) == [tmp_path / "root" / "b"]
