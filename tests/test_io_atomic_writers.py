"""The writers that go through io/atomic.py: a writer that fails mid-file leaves the old content (or
nothing) under the final name and no temporary beside it; leftovers of a killed write are recognised."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from cosmos_nemo.io.atomic import is_temporary, temporary_name


def _names(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _chunks_then_crash(n: int = 2):
    yield np.zeros((n, 16, 16, 3), np.uint8)
    raise RuntimeError("killed mid-write")


def test_save_tensors_failing_mid_write_keeps_the_old_file(tmp_path, monkeypatch):
    import safetensors.torch

    from cosmos_nemo.io.tensors import load_tensors, save_tensors

    target = tmp_path / "w.safetensors"
    save_tensors(target, {"a": torch.ones(2)})

    def half_write(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"\x00" * 7)
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", half_write)
    with pytest.raises(OSError, match="disk full"):
        save_tensors(target, {"a": torch.zeros(2)})
    assert torch.equal(load_tensors(target)["a"], torch.ones(2))
    assert _names(tmp_path) == ["w.safetensors"]


def test_write_mp4_failing_mid_write_leaves_nothing(tmp_path):
    from cosmos_nemo.io.video import read_frames, write_mp4

    with pytest.raises(RuntimeError, match="killed mid-write"):
        write_mp4(tmp_path / "v.mp4", _chunks_then_crash(), fps=10)
    assert _names(tmp_path) == []
    write_mp4(tmp_path / "v.mp4", np.full((3, 16, 16, 3), 200, np.uint8), fps=10)  # the muxer still picks mp4
    assert _names(tmp_path) == ["v.mp4"] and read_frames(tmp_path / "v.mp4").shape == (3, 16, 16, 3)


def test_encode_like_mediapy_failing_mid_write_leaves_nothing(tmp_path):
    from cosmos_nemo.eval.sources import encode_like_mediapy

    with pytest.raises(RuntimeError, match="killed mid-write"):
        encode_like_mediapy(tmp_path / "e.mp4", _chunks_then_crash(), fps=10)
    assert _names(tmp_path) == []
    encode_like_mediapy(tmp_path / "e.mp4", iter([np.zeros((2, 16, 16, 3), np.uint8)]), fps=10)
    assert _names(tmp_path) == ["e.mp4"]


def test_png_writers(tmp_path):
    from PIL import Image

    from cosmos_nemo.eval.contact_sheet import WorstFrame, write_contact_sheet
    from cosmos_nemo.inference.media import contact_sheet

    clip = np.zeros((4, 8, 8, 3), np.uint8)
    contact_sheet({"a": clip, "b": clip + 9}, tmp_path / "gen.png")
    thumb = np.zeros((8, 8, 3), np.uint8)
    write_contact_sheet(tmp_path / "eval.png", [("pair", WorstFrame(0, 1.0, thumb, thumb, thumb))])
    assert _names(tmp_path) == ["eval.png", "gen.png"]
    for name in ("eval.png", "gen.png"):
        assert Image.open(tmp_path / name).format == "PNG"


def test_tokenbench_json_with_nan_is_never_written(tmp_path):
    from cosmos_nemo.eval.tokenbench import _atomic_write_json

    _atomic_write_json(tmp_path / "r.json", {"psnr": 30.0})
    with pytest.raises(ValueError):
        _atomic_write_json(tmp_path / "r.json", {"psnr": math.nan})
    assert json.loads((tmp_path / "r.json").read_text()) == {"psnr": 30.0}
    assert _names(tmp_path) == ["r.json"]


def test_tokenizer_save_leaves_only_final_names(tmp_path):
    from cosmos_nemo.tokenizers import load_video_tokenizer

    tok = load_video_tokenizer("tiny", seed=0)
    tok.save(tmp_path / "tok")
    tok.save(tmp_path / "tok")  # again over itself
    assert _names(tmp_path / "tok") == ["decoder.safetensors", "encoder.safetensors", "tokenizer_config.json"]
    again = load_video_tokenizer(str(tmp_path / "tok"))
    assert all(torch.equal(a, b) for a, b in zip(tok.encoder.state_dict().values(), again.encoder.state_dict().values()))


def test_prepare_recognises_leftovers_of_a_killed_write(tmp_path):
    from cosmos_nemo.data_prep.engine import PrepareError, check_output_dir, prepare_parts_dir

    out = tmp_path / "ds"
    parts, _ = prepare_parts_dir(out, "fp1")
    (parts / "00000000.json").write_text("{}")
    half = temporary_name(parts / "00000001.tokens")
    half.write_bytes(b"\x01\x02")
    assert is_temporary(half)
    parts, reused = prepare_parts_dir(out, "fp1")  # a rerun with the same fingerprint
    assert reused and _names(parts) == ["00000000.json", "fingerprint.json"]  # the half-written part is gone

    temporary_name(out / ".prepare.json").write_text("{")  # a killed record write in the output folder
    check_output_dir(out)  # ours: accepted
    (out / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(PrepareError, match="holiday.jpg"):
        check_output_dir(out)


def test_dataset_writer_temporaries(tmp_path):
    from cosmos_nemo.data.ar_dataset import write_text_embeddings
    from cosmos_nemo.data.synthetic import write_pattern_dataset

    out = write_pattern_dataset(tmp_path / "ds", 3, grid=(1, 2, 3), vocab_size=64, seed=0)
    stale = temporary_name(out / "dataset.json")
    stale.write_text("{")  # a dataset.json write killed before its rename
    assert _names(out)[0] == stale.name
    write_pattern_dataset(out, 4, grid=(1, 2, 3), vocab_size=64, seed=1, overwrite=True)  # write_ar_dataset cleans up
    assert _names(out) == ["dataset.json", "manifest.jsonl", "tokens.bin", "tokens.idx"]

    emb = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    path = write_text_embeddings(tmp_path / "v", emb, np.ones((2, 3), bool))
    before = path.stat().st_mtime_ns, path.stat().st_ino
    write_text_embeddings(tmp_path / "v", emb, np.ones((2, 3), bool))  # identical: not even renamed over
    assert (path.stat().st_mtime_ns, path.stat().st_ino) == before
    assert _names(tmp_path / "v") == ["text_embeddings.safetensors"]
