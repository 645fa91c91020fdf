"""Bad weight files give a clear error naming the file and what is wrong (truncated, not a safetensors
file, empty, a missing tensor), through `cosmos_nemo.io.tensors` and every loader that reads weights
(tokenizers, released checkpoints, LoRA files, LPIPS, latent statistics), and through the CLI: an
`error:` line and exit status 2, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cosmos_nemo.cli import main as cli_main
from cosmos_nemo.io.tensors import (
    LazyTensors,
    TensorFileError,
    check_safetensors,
    read_safetensors,
    read_state_dict,
    read_weights,
    save_tensors,
)

# kind -> (how to damage a good file's bytes, what the message must say)
DAMAGE = {
    "truncated": (lambda b: b[: len(b) * 2 // 3], "truncated"),
    "truncated-header": (lambda b: b[:20], "truncated"),
    "garbage": (lambda b: os.urandom(4096), "not a safetensors file"),
    "text": (lambda b: b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n", "not a safetensors file"),
    "empty": (lambda b: b"", "empty file"),
}


def _good(path: Path) -> Path:
    save_tensors(path, {"a": torch.arange(1000, dtype=torch.float32), "b": torch.ones(3, 4)})
    return path


def _damage(path: Path, kind: str) -> Path:
    path.write_bytes(DAMAGE[kind][0](path.read_bytes()))
    return path


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_every_reader_names_the_file_and_the_problem(kind, tmp_path):
    path = _damage(_good(tmp_path / "w.safetensors"), kind)
    fragment = DAMAGE[kind][1]
    for read in (check_safetensors, read_safetensors, read_weights, read_state_dict,
                 lambda p: read_state_dict(p, lazy=True), LazyTensors):
        with pytest.raises(TensorFileError) as info:
            read(path)
        assert str(path) in str(info.value) and fragment in str(info.value), (read, str(info.value))


def test_good_file_and_missing_tensor(tmp_path):
    path = _good(tmp_path / "w.safetensors")
    assert check_safetensors(path)["b"]["shape"] == [3, 4]
    assert torch.equal(read_safetensors(path)["a"], torch.arange(1000, dtype=torch.float32))
    assert LazyTensors(path).shape("a") == (1000,)
    with pytest.raises(TensorFileError, match=r"w\.safetensors: missing tensor\(s\) c "):
        read_safetensors(path, required=["a", "c"])
    with pytest.raises(TensorFileError, match=r"missing keys \['c'\], unexpected keys \['b'\]"):
        read_safetensors(path, expected=["a", "c"])
    path.write_bytes(path.read_bytes() + b"\0" * 10)
    with pytest.raises(TensorFileError, match="10 bytes after the last tensor"):
        read_safetensors(path)


def test_torch_weights_files(tmp_path):
    good = tmp_path / "w.pt"
    torch.save({"state_dict": {"x": torch.ones(2)}}, good)
    assert torch.equal(read_weights(good)["x"], torch.ones(2))
    for kind in ("truncated", "garbage", "empty"):
        bad = tmp_path / f"{kind}.pt"
        bad.write_bytes(DAMAGE[kind][0](good.read_bytes()))
        with pytest.raises(TensorFileError, match=rf"{kind}\.pt: (empty file|not a readable weights-only torch file)"):
            read_weights(bad)
    with pytest.raises(TensorFileError, match="no such file"):
        read_weights(tmp_path / "missing.pt")


# ------------------------------------------------------------------------------------------------------
# Through the loaders


@pytest.fixture(scope="module")
def tokenizer_folder(tmp_path_factory) -> Path:
    from cosmos_nemo.tokenizers import load_video_tokenizer

    folder = tmp_path_factory.mktemp("tok")
    load_video_tokenizer("tiny").save(folder)
    assert (folder / "encoder.safetensors").is_file()
    return folder


def _bad_copy(src: Path, dst: Path, kind: str) -> Path:
    import shutil

    shutil.copytree(src, dst)
    if kind == "missing":  # a tensor dropped from the encoder
        tensors = read_safetensors(dst / "encoder.safetensors")
        dropped = sorted(tensors)[0]
        del tensors[dropped]
        save_tensors(dst / "encoder.safetensors", tensors)
        return dst
    _damage(dst / "encoder.safetensors", kind)
    return dst


@pytest.mark.parametrize("kind", ["truncated", "garbage", "empty", "missing"])
def test_tokenizer_folder(kind, tokenizer_folder, tmp_path, capsys):
    from cosmos_nemo.tokenizers import load_video_tokenizer

    folder = _bad_copy(tokenizer_folder, tmp_path / "tok", kind)
    with pytest.raises((TensorFileError, RuntimeError)) as info:
        load_video_tokenizer(str(folder))
    message = str(info.value)
    expected = {"truncated": "truncated", "garbage": "not a safetensors file", "empty": "empty file",
                "missing": "do not fit this tokenizer"}[kind]
    assert expected in message and str(folder / "encoder.safetensors") in message, message
    if kind == "missing":
        assert "missing keys (1)" in message

    videos = tmp_path / "videos"
    videos.mkdir()
    rc = cli_main(["prepare", "ar-tokens", "--input_videos_dir", str(videos), "--output_prefix", str(tmp_path / "out"),
                   "--encoder_path", str(folder), "--width", "32", "--height", "24", "--num_context_frames", "5",
                   "--no-progress"])
    out = capsys.readouterr()
    assert rc == 2 and "error: cannot load the tokenizer" in out.out and expected in out.out, out
    assert not (tmp_path / "out").exists()


def test_lpips_weights(tmp_path):
    from cosmos_nemo.eval.lpips import lpips_state_from_files

    bad = _damage(_good(tmp_path / "vgg.safetensors"), "truncated")
    with pytest.raises(TensorFileError, match=r"vgg\.safetensors: truncated"):
        lpips_state_from_files([bad])
    empty = tmp_path / "lin.pth"
    empty.write_bytes(b"")
    with pytest.raises(TensorFileError, match=r"lin\.pth: empty file"):
        lpips_state_from_files([empty])


def test_latent_statistics(tmp_path):
    from cosmos_nemo.data_prep.engine import PrepareError
    from cosmos_nemo.data_prep.vae import read_mean_std

    path = tmp_path / "mean_std.safetensors"
    save_tensors(path, {"mean": torch.zeros(4)})
    with pytest.raises(PrepareError, match=r"mean_std\.safetensors: missing tensor\(s\) std"):
        read_mean_std(path, 4)
    _damage(path, "truncated")
    with pytest.raises(PrepareError, match=r"mean_std\.safetensors: truncated"):
        read_mean_std(path, 4)


def test_lora_file(tmp_path):
    from cosmos_nemo.peft.export import LoRAError, read_diffusers_lora

    bad = _damage(_good(tmp_path / "pytorch_lora_weights.safetensors"), "garbage")
    with pytest.raises(LoRAError, match=r"pytorch_lora_weights\.safetensors: not a safetensors file"):
        read_diffusers_lora(bad)


def test_released_checkpoint_through_the_cli(tmp_path, capsys):
    bad = _damage(_good(tmp_path / "model.safetensors"), "truncated")
    rc = cli_main(["convert", "shard-tp", "--checkpoint_path", str(bad), "--model_size", "4b",
                   "--tensor_parallel_size", "2"])
    out = capsys.readouterr()
    assert rc == 2 and f"error: {bad}: truncated" in out.out, out


@pytest.mark.medium
def test_cli_subprocess_prints_no_traceback(tokenizer_folder, tmp_path):
    folder = _bad_copy(tokenizer_folder, tmp_path / "tok", "truncated")
    (tmp_path / "videos").mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "cosmos_nemo", "prepare", "ar-tokens", "--input_videos_dir", str(tmp_path / "videos"),
         "--output_prefix", str(tmp_path / "out"), "--encoder_path", str(folder), "--no-progress"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "truncated" in proc.stdout and str(folder / "encoder.safetensors") in proc.stdout


@pytest.fixture(scope="module")
def tiny_t5(tiny_byt5_encoder) -> Path:
    return tiny_byt5_encoder


@pytest.mark.parametrize("kind", ["truncated", "garbage"])
def test_text_encoder_folder(kind, tiny_t5, tmp_path, capsys):
    import shutil

    from cosmos_nemo.tokenizers.text import TextEncoderNotAvailableError, load_text_encoder

    folder = tmp_path / "t5"
    shutil.copytree(tiny_t5, folder)
    weights = folder / "model.safetensors"
    _damage(weights, kind)
    with pytest.raises(TextEncoderNotAvailableError, match=rf"{weights}: {DAMAGE[kind][1]}"):
        load_text_encoder(str(folder))
    # Through `prepare v2w`: the text encoder is loaded before any video is read.
    (tmp_path / "in.jsonl").write_text('{"prompt": "a", "visual_input": "a.mp4"}\n')
    (tmp_path / "a.mp4").write_bytes(b"")
    rc = cli_main(["prepare", "v2w", "--input_jsonl", str(tmp_path / "in.jsonl"), "--output_dir", str(tmp_path / "out"),
                   "--encoder_path", "tiny", "--text_encoder", str(folder), "--width", "32", "--height", "24",
                   "--num_context_frames", "5", "--no-progress"])
    out = capsys.readouterr()
    assert rc == 2 and f"{weights}: {DAMAGE[kind][1]}" in out.out, out


def test_wan_vae_folder(tmp_path):
    from cosmos_nemo.data_prep.engine import PrepareError
    from cosmos_nemo.data_prep.vae import WanLatentEncoder, import_autoencoder_kl_wan

    folder = tmp_path / "wan"
    import_autoencoder_kl_wan()(base_dim=8, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                                temperal_downsample=[False, True, True]).save_pretrained(folder)
    weights = sorted(folder.glob("*.safetensors"))[0]
    _damage(weights, "truncated")
    with pytest.raises(PrepareError, match=rf"{weights}: truncated"):
        WanLatentEncoder(str(folder))


@pytest.mark.parametrize("kind", ["truncated", "garbage", "empty"])
def test_fvd_i3d_file(kind, tmp_path):
    from cosmos_nemo.eval.fvd import load_i3d

    good = tmp_path / "good.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(64, 64)), str(good))
    bad = tmp_path / "i3d_torchscript.pt"
    bad.write_bytes(DAMAGE[kind][0](good.read_bytes()))
    with pytest.raises(TensorFileError, match=rf"i3d_torchscript\.pt: (empty file|not a TorchScript archive, or a truncated)"):
        load_i3d(bad)


def test_saved_metadata_order_is_canonical(tmp_path):
    """safetensors writes metadata in hash-map order; save_tensors sorts it, so equal content is equal bytes."""
    meta = {f"key{i}": f"value {i} é" for i in range(12)}
    tensors = {"x": torch.ones(3), "y": torch.zeros(2, dtype=torch.bool)}
    files = [save_tensors(tmp_path / f"{i}.safetensors", tensors, metadata=dict(reversed(meta.items()) if i % 2 else meta.items()))
             for i in range(6)]
    assert len({f.read_bytes() for f in files}) == 1
    header = check_safetensors(files[0])
    assert list(header["__metadata__"]) == sorted(meta) and header["__metadata__"] == meta
    assert torch.equal(read_safetensors(files[0])["x"], torch.ones(3))
