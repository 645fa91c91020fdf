"""safetensors helpers: atomic save, strict key checks, clear errors."""

from __future__ import annotations

import pytest
import torch

from cosmos_nemo.io.tensors import TensorFileError, load_tensors, save_tensors


def test_roundtrip_and_strict_keys(tmp_path):
    t = {"a": torch.arange(6, dtype=torch.int32).reshape(2, 3), "b": torch.randn(4, dtype=torch.bfloat16)}
    path = save_tensors(tmp_path / "x.safetensors", t, metadata={"k": "v"})
    out = load_tensors(path, expected=["a", "b"])
    assert torch.equal(out["a"], t["a"]) and torch.equal(out["b"], t["b"]) and out["b"].dtype == torch.bfloat16
    with pytest.raises(TensorFileError, match=r"missing keys \['c'\], unexpected keys \['b'\]"):
        load_tensors(path, expected=["a", "c"])
    assert [p.name for p in tmp_path.iterdir()] == ["x.safetensors"]


def test_bad_files(tmp_path):
    with pytest.raises(TensorFileError, match="no such file"):
        load_tensors(tmp_path / "nope.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(TensorFileError, match="bad.safetensors: not a safetensors file"):
        load_tensors(tmp_path / "bad.safetensors")
    with pytest.raises(Exception):
        save_tensors(tmp_path / "y.safetensors", {"a": "not a tensor"})
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
