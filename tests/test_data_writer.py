"""AR token dataset writer: the files it writes read back with megatron-core's own IndexedDataset and are
exactly what was given; atomic, idempotent and refusing bad input with clear errors."""

from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest

from cosmos_nemo.data.ar_dataset import (
    ARDatasetError,
    ARDatasetMeta,
    DatasetExistsError,
    write_ar_dataset,
    write_text_embeddings,
)
from cosmos_nemo.data.synthetic import write_pattern_dataset

GRID = (2, 3, 4)  # 9 frames, 48x64 at 8x16x16


def _record(k: int, grid=GRID, **extra) -> dict:
    rec = {
        "source": f"clips/v{k // 2}.mp4",
        "start_frame": 4 * (k % 2),
        "num_frames": 1 + (grid[0] - 1) * 8,
        "fps": 30,
        "height": grid[1] * 16,
        "width": grid[2] * 16,
        "grid": list(grid),
    }
    rec.update(extra)
    return rec


def _meta(**kw) -> ARDatasetMeta:
    args = dict(tokenizer="Cosmos-1.0-Tokenizer-DV8x16x16", compression=(8, 16, 16), vocab_size=64000,
                frames=9, height=48, width=64)
    args.update(kw)
    return ARDatasetMeta(**args)


def _docs(n: int, seed: int = 0, grid=GRID, vocab: int = 64000):
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, vocab, size=int(np.prod(grid))), _record(k, grid, caption=f"cap {k}")) for k in range(n)]


_OPEN = []  # megatron returns views into its mmap: keep readers alive for the test session


def _indexed(path):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    ds = IndexedDataset(str(path / "tokens"))
    _OPEN.append(ds)
    return ds


def test_base_roundtrip_with_megatron_reader(tmp_path):
    docs = _docs(5)
    out = write_ar_dataset(tmp_path / "ds", docs, _meta(skipped=[{"source": "bad.mp4", "reason": "0 frames"}]))
    ds = _indexed(out)
    assert len(ds) == 5
    assert ds.index.dtype == np.uint16  # 64000 ids fit uint16 (megatron's < 65500 rule)
    for k, (tokens, _) in enumerate(docs):
        np.testing.assert_array_equal(ds[k].astype(np.int64), tokens)
    # one sequence per document
    np.testing.assert_array_equal(ds.document_indices, np.arange(6))
    lines = (out / "manifest.jsonl").read_text().splitlines()
    assert len(lines) == 5
    for k, line in enumerate(lines):
        rec = json.loads(line)
        want = dict(_record(k, caption=f"cap {k}"), doc=k)
        assert rec == {**want, "fps": 30.0}
        assert list(rec)[:8] == ["doc", "source", "start_frame", "num_frames", "fps", "height", "width", "grid"]
    info = json.loads((out / "dataset.json").read_text())
    assert info["num_documents"] == 5 and info["grids"] == {"2x3x4": 5}
    assert info["tokenizer"] == {"name": "Cosmos-1.0-Tokenizer-DV8x16x16", "compression": [8, 16, 16]}
    assert info["skipped"] == [{"source": "bad.mp4", "reason": "0 frames"}]
    assert info["dtype"] == "uint16" and info["task"] == "base"


def test_idx_header_is_megatron_mmap_format(tmp_path):
    """Checked against the .idx layout of ar_models.md §4.1, read by hand."""
    docs = _docs(3)
    out = write_ar_dataset(tmp_path / "ds", docs, _meta())
    raw = (out / "tokens.idx").read_bytes()
    assert raw[:9] == b"MMIDIDX\x00\x00"
    version, = struct.unpack("<Q", raw[9:17])
    dtype_code, = struct.unpack("<B", raw[17:18])
    n_seq, n_doc = struct.unpack("<QQ", raw[18:34])
    assert (version, n_seq, n_doc) == (1, 3, 4)
    assert dtype_code == 8  # uint16 in megatron's DType enum
    sizes = np.frombuffer(raw[34 : 34 + 4 * 3], dtype=np.int32)
    np.testing.assert_array_equal(sizes, [24, 24, 24])
    body = np.frombuffer((out / "tokens.bin").read_bytes(), dtype=np.uint16)
    np.testing.assert_array_equal(body, np.concatenate([t for t, _ in docs]))


@pytest.mark.parametrize("dtype", [np.uint16, np.int32])
def test_token_files_are_byte_identical_to_megatrons_builder(tmp_path, dtype):
    """Our .bin/.idx writer (no megatron import at data-prep time) against megatron's IndexedDatasetBuilder."""
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    from cosmos_nemo.data.ar_dataset import _IndexedWriter

    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 60000, size=n).astype(dtype) for n in (7, 1, 300, 64)]
    ours = _IndexedWriter(tmp_path / "ours.bin", np.dtype(dtype))
    theirs = IndexedDatasetBuilder(str(tmp_path / "theirs.bin"), dtype=dtype)
    for d in docs:
        ours.add_document(d)
        theirs.add_item(torch.from_numpy(d))
        theirs.end_document()
    ours.finalize(tmp_path / "ours.idx")
    theirs.finalize(str(tmp_path / "theirs.idx"))
    for ext in ("bin", "idx"):
        assert (tmp_path / f"ours.{ext}").read_bytes() == (tmp_path / f"theirs.{ext}").read_bytes(), ext


def test_int32_when_vocab_does_not_fit_uint16(tmp_path):
    docs = _docs(2, vocab=100_000)
    out = write_ar_dataset(tmp_path / "ds", docs, _meta(vocab_size=100_000))
    ds = _indexed(out)
    assert ds.index.dtype == np.int32
    np.testing.assert_array_equal(ds[1], docs[1][0])


def test_video2world_storage_matches_reference_layout(tmp_path):
    grid = (5, 40, 64)  # the reference clip: 12800 ids -> 12865 stored
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 64000, size=12800)
    emb = rng.standard_normal((2, 6, 8)).astype(np.float32)
    mask = np.ones((2, 6), dtype=bool)
    rec = {"source": "a.mp4", "start_frame": 0, "num_frames": 33, "fps": 24, "height": 640, "width": 1024,
           "grid": list(grid), "prompt_id": 1}
    meta = _meta(frames=33, height=640, width=1024, task="video2world")
    out = write_ar_dataset(tmp_path / "v2w", [(ids, rec)], meta, text_embeddings=(emb, mask))
    stored = _indexed(out)[0].astype(np.int64)
    expected = np.concatenate([[64000], ids, np.full(64, 64002)])
    assert stored.shape == (12865,)
    np.testing.assert_array_equal(stored, expected)
    info = json.loads((out / "dataset.json").read_text())
    assert info["special_tokens"] == {"bov": 64000, "eov": 64001, "pad": 64002}
    assert info["text_embeddings"] == {"num_prompts": 2, "length": 6, "dim": 8}

    from safetensors.torch import load_file
    import torch

    loaded = load_file(str(out / "text_embeddings.safetensors"))
    assert loaded["embeddings"].dtype == torch.bfloat16
    torch.testing.assert_close(loaded["embeddings"], torch.from_numpy(emb).to(torch.bfloat16))
    assert loaded["mask"].dtype == torch.bool and bool(loaded["mask"].all())


def test_v2w_needs_embeddings_and_prompt_ids(tmp_path):
    meta = _meta(task="video2world")
    with pytest.raises(ARDatasetError, match="needs text embeddings"):
        write_ar_dataset(tmp_path / "a", _docs(1), meta)
    write_text_embeddings(tmp_path / "b", np.zeros((2, 3, 4), np.float32), np.ones((2, 3)))
    with pytest.raises(ARDatasetError, match="need a 'prompt_id'"):
        write_ar_dataset(tmp_path / "b", _docs(1), meta)
    ids = np.zeros(24, dtype=np.int64)
    with pytest.raises(ARDatasetError, match="prompt_id 5 has no row"):
        write_ar_dataset(tmp_path / "b", [(ids, _record(0, prompt_id=5))], meta)
    out = write_ar_dataset(tmp_path / "b", [(ids, _record(0, prompt_id=1))], meta)
    assert (out / "dataset.json").is_file()


def test_rewrite_is_idempotent_and_byte_identical(tmp_path):
    a = write_pattern_dataset(tmp_path / "a", 6, grid=[(2, 2, 2), (1, 2, 3)], task="video2world", seed=3)
    b = write_pattern_dataset(tmp_path / "b", 6, grid=[(2, 2, 2), (1, 2, 3)], task="video2world", seed=3)
    for name in ("tokens.bin", "tokens.idx", "manifest.jsonl", "text_embeddings.safetensors", "dataset.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    before = {p.name: p.stat().st_mtime_ns for p in a.iterdir()}
    write_pattern_dataset(a, 6, grid=[(2, 2, 2), (1, 2, 3)], task="video2world", seed=3, overwrite=False)
    assert {p.name: p.stat().st_mtime_ns for p in a.iterdir()} == before  # identical content: untouched


def test_different_content_refused_unless_overwrite(tmp_path):
    out = write_ar_dataset(tmp_path / "ds", _docs(3, seed=0), _meta())
    old = (out / "dataset.json").read_bytes()
    with pytest.raises(DatasetExistsError, match="overwrite=True"):
        write_ar_dataset(out, _docs(3, seed=1), _meta())
    assert (out / "dataset.json").read_bytes() == old
    assert not [p for p in out.iterdir() if p.name.startswith(".ar_write")]
    write_ar_dataset(out, _docs(3, seed=1), _meta(), overwrite=True)
    np.testing.assert_array_equal(_indexed(out)[2], _docs(3, seed=1)[2][0])


def test_crash_mid_write_leaves_no_final_files(tmp_path):
    out = tmp_path / "ds"

    def exploding():
        yield from _docs(2)
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        write_ar_dataset(out, exploding(), _meta())
    assert sorted(p.name for p in out.iterdir()) == []  # neither final names nor temp folders


def test_crash_while_overwriting_marks_directory_incomplete(tmp_path, monkeypatch):
    """A kill between the renames must not leave an old dataset.json describing new files."""
    out = write_ar_dataset(tmp_path / "ds", _docs(2, seed=0), _meta())
    real_replace = os.replace
    calls = []

    def replace(src, dst):
        calls.append(str(dst))
        if str(dst).endswith("tokens.idx"):
            raise OSError("simulated crash")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="simulated crash"):
        write_ar_dataset(out, _docs(2, seed=5), _meta(), overwrite=True)
    assert not (out / "dataset.json").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".ar_write")]


def test_other_files_in_output_dir_are_kept(tmp_path):
    parts = tmp_path / "ds" / ".parts"
    parts.mkdir(parents=True)
    (parts / "part-0000.npy").write_bytes(b"x")
    write_ar_dataset(tmp_path / "ds", _docs(1), _meta())
    assert (parts / "part-0000.npy").read_bytes() == b"x"


@pytest.mark.parametrize(
    "tokens, record, message",
    [
        (np.zeros(23, np.int64), _record(0), "holds 24 tokens, got 23"),
        (np.zeros((4, 6), np.int64), _record(0), "must be 1-D"),
        (np.zeros(24, np.float32), _record(0), "must be integers"),
        (np.full(24, 64000), _record(0), r"clip codes in \[0, 64000\)"),
        (np.zeros(24, np.int64), {**_record(0), "grid": [2, 3, 5]}, r"does not match its clip 9x48x64"),
        (np.zeros(24, np.int64), {**_record(0), "num_frames": 10}, "frames must be 1 \\+ 8k"),
        (np.zeros(24, np.int64), {**_record(0), "source": "/abs/v.mp4"}, "is absolute"),
        (np.zeros(24, np.int64), {**_record(0), "source": "../v.mp4"}, "climbs out"),
        (np.zeros(24, np.int64), {**_record(0), "extra": 1}, "unknown manifest fields \\['extra'\\]"),
        (np.zeros(24, np.int64), {k: v for k, v in _record(0).items() if k != "fps"}, "missing \\['fps'\\]"),
        (np.zeros(24, np.int64), {**_record(0), "fps": 0}, "'fps' must be a positive number"),
    ],
)
def test_bad_documents_are_refused_without_output(tmp_path, tokens, record, message):
    with pytest.raises(ARDatasetError, match=message):
        write_ar_dataset(tmp_path / "ds", [(tokens, record)], _meta())
    assert not (tmp_path / "ds" / "dataset.json").exists()
    assert sorted(p.name for p in (tmp_path / "ds").iterdir()) == []


def test_bad_meta_and_empty_input(tmp_path):
    with pytest.raises(ARDatasetError, match="frames must be 1 \\+ 8k"):
        _meta(frames=32)
    with pytest.raises(ARDatasetError, match="collides with the codebook"):
        _meta(task="video2world", bov_id=5)
    with pytest.raises(ARDatasetError, match="unknown meta keys \\['colour'\\]"):
        write_ar_dataset(tmp_path / "x", [], {**_meta().__dict__, "colour": 1})
    with pytest.raises(ARDatasetError, match="no documents to write \\(1 inputs skipped: a.mp4: broken"):
        write_ar_dataset(tmp_path / "x", [], _meta(skipped=[{"source": "a.mp4", "reason": "broken"}]))


def test_meta_accepts_plain_dict(tmp_path):
    meta = {"tokenizer": "DV4x8x8", "compression": [4, 8, 8], "vocab_size": 64000, "frames": 5, "height": 16,
            "width": 24, "skip_report": [], "special_tokens": {"bov": 64000, "pad": 64002}}
    rec = {"source": "v.mp4", "start_frame": 0, "num_frames": 5, "fps": 8, "height": 16, "width": 24, "grid": [2, 2, 3]}
    out = write_ar_dataset(tmp_path / "ds", [(np.arange(12), rec)], meta)
    info = json.loads((out / "dataset.json").read_text())
    assert info["special_tokens"] == {"bov": 64000, "eov": None, "pad": 64002}
    assert info["tokenizer"]["compression"] == [4, 8, 8]


def test_pattern_dataset_patterns(tmp_path):
    out = write_pattern_dataset(tmp_path / "ramp", 4, grid=(2, 2, 3), vocab_size=16, seed=0, pattern="ramp")
    ds = _indexed(out)
    for k in range(4):
        d = ds[k].astype(np.int64)
        np.testing.assert_array_equal(np.diff(d) % 16, np.ones(11))
    out = write_pattern_dataset(tmp_path / "fc", 2, grid=(3, 2, 2), vocab_size=50, pattern="frame_copy")
    d = _indexed(out)[0].reshape(3, 4)
    assert (d == d[0]).all()


def test_rerun_repairs_damaged_files_of_the_same_content(tmp_path):
    docs = _docs(3)
    out = write_ar_dataset(tmp_path / "ds", docs, _meta())
    good = (out / "tokens.bin").read_bytes()
    (out / "tokens.bin").write_bytes(b"\0" * len(good))  # same size, wrong bytes
    write_ar_dataset(out, docs, _meta())  # same content: no overwrite needed, files repaired
    assert (out / "tokens.bin").read_bytes() == good


def test_stale_temp_folders_of_dead_writers_are_removed(tmp_path):
    out = tmp_path / "ds"
    out.mkdir()
    dead = out / ".ar_write.999999999.deadbeef"  # no such pid
    dead.mkdir()
    (dead / "tokens.bin").write_bytes(b"partial")
    (out / ".ar_write.999999999.cafe.text_embeddings.safetensors").write_bytes(b"partial")
    write_ar_dataset(out, _docs(1), _meta())
    assert not [p for p in out.iterdir() if p.name.startswith(".ar_write")]


def test_text_embeddings_written_first_are_used_in_place(tmp_path):
    out = tmp_path / "v"
    emb = np.random.default_rng(0).standard_normal((3, 5, 4)).astype(np.float32)
    path = write_text_embeddings(out, emb, np.ones((3, 5), bool))
    inode = path.stat().st_ino
    ids = np.arange(24)
    write_ar_dataset(out, [(ids, _record(0, prompt_id=2))], _meta(task="video2world"))
    assert path.stat().st_ino == inode  # not copied or rewritten
    info = json.loads((out / "dataset.json").read_text())
    assert info["text_embeddings"] == {"num_prompts": 3, "length": 5, "dim": 4}
    assert "text_embeddings.safetensors" in info["files"]
    # same embeddings again: no-op; different ones: refused while a complete dataset uses the file
    write_text_embeddings(out, emb, np.ones((3, 5), bool))
    with pytest.raises(DatasetExistsError, match="text_embeddings.safetensors differs"):
        write_text_embeddings(out, emb + 1, np.ones((3, 5), bool))
    write_text_embeddings(out, emb + 1, np.ones((3, 5), bool), overwrite=True)
    assert not (out / "dataset.json").exists()  # incomplete until the dataset is rewritten
    write_ar_dataset(out, [(ids, _record(0, prompt_id=2))], _meta(task="video2world"), overwrite=True)
    assert (out / "dataset.json").exists()


def test_text_embedding_errors(tmp_path):
    with pytest.raises(ARDatasetError, match=r"must be \[N, L, D\]"):
        write_text_embeddings(tmp_path, np.zeros((3, 4)), np.ones((3, 4)))
    with pytest.raises(ARDatasetError, match=r"mask must be \[N, L\] = \[3, 4\]"):
        write_text_embeddings(tmp_path, np.zeros((3, 4, 2)), np.ones((3, 5)))
    with pytest.raises(ARDatasetError, match="NaN or Inf"):
        write_text_embeddings(tmp_path, np.full((1, 1, 1), np.nan), np.ones((1, 1)))
    assert sorted(p.name for p in tmp_path.iterdir()) == []


_KILLED_WRITER = r"""
import sys, time
import numpy as np
from cosmos_nemo.data.ar_dataset import ARDatasetMeta, write_ar_dataset

out, flag = sys.argv[1], sys.argv[2]
meta = ARDatasetMeta(tokenizer="DV8x16x16", compression=(8, 16, 16), vocab_size=64000, frames=9, height=48, width=64)

def docs():
    for k in range(1000):
        if k == 3:
            open(flag, "w").close()  # three documents are in the temp files: now kill me
            time.sleep(60)
        yield np.arange(24), {"source": f"v{k}.mp4", "start_frame": 0, "num_frames": 9, "fps": 24, "height": 48,
                              "width": 64, "grid": [2, 3, 4]}

write_ar_dataset(out, docs(), meta)
"""


@pytest.mark.medium
def test_sigkill_mid_write(tmp_path):
    """A writer killed with SIGKILL (no cleanup code runs) leaves only its hidden temp folder: no
    final-named file, the reader refuses the directory, and the next write removes the leftovers."""
    import signal
    import subprocess
    import sys
    import time

    from cosmos_nemo.data.reader import ARTokenDataset
    from cosmos_nemo.data.ar_dataset import IncompleteDatasetError

    out, flag = tmp_path / "ds", tmp_path / "flag"
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(out), str(flag)])
    try:
        deadline = time.time() + 120
        while not flag.exists():
            assert proc.poll() is None, "writer exited early"
            assert time.time() < deadline, "writer never reached document 3"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    left = sorted(p.name for p in out.iterdir())
    assert len(left) == 1 and left[0].startswith(".ar_write.")  # only the temp folder
    with pytest.raises(IncompleteDatasetError, match="incomplete: it has no dataset.json"):
        ARTokenDataset(out)
    write_ar_dataset(out, _docs(2), _meta())
    assert sorted(p.name for p in out.iterdir()) == ["dataset.json", "manifest.jsonl", "tokens.bin", "tokens.idx"]
    assert len(ARTokenDataset(out)) == 2
