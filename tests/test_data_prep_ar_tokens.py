"""`prepare ar-tokens` / `v2w` / `prompts`: every input case, read-back, equality with a direct encode,
worker-count and kill/rerun byte-identity, and the errors raised before any work."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from cosmos_nemo.cli import main as cli_main
from cosmos_nemo.data_prep.ar_tokens import ARTokensConfig, prepare_ar_tokens
from cosmos_nemo.data_prep.clips import apply_geometry, frames_to_tokenizer_input, geometry, iter_windows, window_starts
from cosmos_nemo.data_prep.engine import PrepareError
from cosmos_nemo.io import synthetic as syn
from cosmos_nemo.io.video import read_frames, write_mp4

H, W, FRAMES = 24, 32, 5  # target clip: tiny tokenizer (4x8x8) -> grid 2x3x4

# source name -> expected skip-reason fragment
BAD = {
    "corrupt.mp4": "decoding failed",
    "trunc.mp4": "not a readable media file",
    "empty.mp4": "zero-byte",
    "text.mp4": "not a readable media file",
    "sound.mp4": "no video stream",
    "short.mp4": "fewer frames than one window",
    "small.mp4": "smaller than the target",
}
GOOD = ["exact.mp4", "j.avi", "m1.mpg", "odd.mp4", "rot.mp4", "sub/a.mp4", "ten.mkv", "v.webm", "vfr.mkv"]


def _make_inputs(root: Path) -> None:
    src = syn.pattern_frames(12, 32, 48, seed=1)
    write_mp4(root / "sub" / "a.mp4", src, fps=10)
    (root / "sub" / "a.txt").write_text("pattern a caption\n")
    write_mp4(root / "exact.mp4", syn.pattern_frames(10, H, W, seed=2), fps=10)
    stored = np.ascontiguousarray(np.rot90(src, k=-1, axes=(1, 2)))  # shown upright after a 90° ccw display turn
    syn.write_video(root / "rot.mp4", stored, rotation=90)
    pts = [0, 30, 50, 160, 170, 300, 420, 450, 480, 600, 610, 700]
    syn.write_video(root / "vfr.mkv", src, pts=pts, time_base=Fraction(1, 1000))
    syn.write_video(root / "ten.mkv", src, pix_fmt="yuv420p10le")
    write_mp4(root / "odd.mp4", syn.pattern_frames(7, 33, 47, seed=3), fps=10)
    syn.write_video(root / "m1.mpg", src, codec="mpeg1video", fps=25, options={"b": "4M"})
    syn.write_video(root / "v.webm", src, codec="libvpx")
    syn.write_video(root / "j.avi", src, codec="mjpeg", pix_fmt="yuvj420p")
    syn.write_video(root / "corrupt.mp4", syn.pattern_frames(12, 32, 48, seed=4))
    syn.corrupt_packet(root / "corrupt.mp4")
    syn.write_video(root / "trunc.mp4", src)
    syn.truncate(root / "trunc.mp4", 0.6)
    (root / "empty.mp4").write_bytes(b"")
    (root / "text.mp4").write_text("not a video\n" * 40)
    syn.write_audio_only(root / "sound.mp4")
    write_mp4(root / "short.mp4", src[:3], fps=10)
    write_mp4(root / "small.mp4", syn.pattern_frames(6, 16, 16), fps=10)
    (root / "notes.md").write_text("ignored: not a video extension\n")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("videos")
    _make_inputs(root)
    return root


def _cfg(inputs: Path, out: Path, **kw) -> ARTokensConfig:
    # On the CPU in float32 on any machine: the tests compare against encodes made here on the CPU.
    base = dict(input_videos_dir=inputs, output_prefix=out, encoder_path="tiny", width=W, height=H,
                num_context_frames=FRAMES, progress=False, decode_threads=1, device="cpu", dtype="float32")
    base.update(kw)
    return ARTokensConfig(**base)


def _files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def prepared(inputs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("out") / "ds"
    prepare_ar_tokens(_cfg(inputs, out))
    return out


def test_every_input_case(prepared):
    info = json.loads((prepared / "dataset.json").read_text())
    reasons = {s["source"]: s["reason"] for s in info["skipped"]}
    assert set(reasons) == set(BAD), reasons
    for name, fragment in BAD.items():
        assert fragment in reasons[name], (name, reasons[name])
    records = [json.loads(line) for line in (prepared / "manifest.jsonl").read_text().splitlines()]
    assert sorted({r["source"] for r in records}) == sorted(GOOD)
    # Document order: sorted source, then window start; non-overlapping windows over the whole video.
    keys = [(r["source"], r["start_frame"]) for r in records]
    assert keys == sorted(keys)
    starts = {s: [r["start_frame"] for r in records if r["source"] == s] for s in GOOD}
    assert starts["sub/a.mp4"] == [0, 5] and starts["exact.mp4"] == [0, 5] and starts["odd.mp4"] == [0]
    assert starts["vfr.mkv"] == [0, 5], "VFR: windows by frame index, every decoded frame counted once"
    for r in records:
        assert (r["num_frames"], r["height"], r["width"], r["grid"]) == (FRAMES, H, W, [2, 3, 4])
    assert [r.get("caption") for r in records if r["source"] == "sub/a.mp4"] == ["pattern a caption"] * 2
    assert info["num_documents"] == len(records) == 2 * 8 + 1
    # Never left behind: parts, temporary files.
    assert sorted(p.name for p in prepared.iterdir()) == [
        ".prepare.json", "dataset.json", "manifest.jsonl", "tokens.bin", "tokens.idx"]


def test_reads_back_and_equals_direct_encode(prepared, inputs):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from cosmos_nemo.data.reader import ARTokenDataset
    from cosmos_nemo.tokenizers import load_video_tokenizer

    ours = ARTokenDataset(prepared)
    megatron = IndexedDataset(str(prepared / "tokens"))
    assert len(ours) == len(megatron) == 17
    records = [json.loads(line) for line in (prepared / "manifest.jsonl").read_text().splitlines()]
    tok = load_video_tokenizer("tiny")
    torch.set_num_threads(1)
    for source in ("exact.mp4", "sub/a.mp4", "rot.mp4"):
        frames = read_frames(inputs / source)
        geo = geometry(frames.shape[1], frames.shape[2], H, W)
        clips = [apply_geometry(frames[s : s + FRAMES], geo) for s in (0, 5)]
        if source == "exact.mp4":
            assert geo.identity and np.array_equal(clips[0], frames[:FRAMES])
        expected = tok.encode(frames_to_tokenizer_input(clips)).reshape(2, -1).numpy()
        docs = [r["doc"] for r in records if r["source"] == source]
        for k, d in enumerate(docs):
            assert np.array_equal(ours.clip_tokens(d), expected[k])
            assert np.array_equal(np.asarray(megatron[d], dtype=np.int64), expected[k])
    assert megatron[0].dtype == np.uint16


def test_rotated_clip_is_upright(inputs):
    frames = read_frames(inputs / "rot.mp4")
    assert frames.shape[1:3] == (32, 48)
    assert frames[:, :6, :10].mean() > 225  # the pattern's white block sits top-left


@pytest.mark.slow
def test_workers_and_kill_rerun_are_byte_identical(inputs, prepared, tmp_path):
    reference = _files(prepared)
    out2 = tmp_path / "two"
    prepare_ar_tokens(_cfg(inputs, out2, workers=2))
    assert _files(out2) == reference

    out3 = tmp_path / "killed"
    cmd = [sys.executable, "-m", "cosmos_nemo", "prepare", "ar-tokens", "--input_videos_dir", str(inputs),
           "--output_prefix", str(out3), "--encoder_path", "tiny", "--width", str(W), "--height", str(H),
           "--num_context_frames", str(FRAMES), "--no-progress", "--decode-threads", "1"]
    target = random.Random(os.getpid()).randint(1, len(GOOD) + len(BAD) - 2)  # parts done before the kill
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if len(list((out3 / ".parts").glob("*.json"))) >= target + 1:  # + fingerprint.json
            break
        time.sleep(0.02)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    assert not (out3 / "dataset.json").exists(), "killed before the merge"
    report = prepare_ar_tokens(_cfg(inputs, out3))
    assert report.resumed_parts >= target
    assert _files(out3) == reference


def test_rerun_is_a_noop_and_other_settings_are_refused(prepared, inputs):
    before = _files(prepared)
    report = prepare_ar_tokens(_cfg(inputs, prepared))
    assert report.already_complete and _files(prepared) == before
    with pytest.raises(PrepareError, match="already holds a different dataset.*--overwrite"):
        prepare_ar_tokens(_cfg(inputs, prepared, stride=2))
    assert _files(prepared) == before and not (prepared / ".parts").exists()


def test_errors_before_any_work(inputs, tmp_path):
    out = tmp_path / "o"
    with pytest.raises(PrepareError, match=r"8,16,16 does not match the tokenizer tiny, which compresses 4x8x8"):
        prepare_ar_tokens(_cfg(inputs, out, tokenizer_compression_factor="8,16,16"))
    with pytest.raises(PrepareError, match=r"frames must be 1 \+ 4k.*got 6; 5 or 9 would work"):
        prepare_ar_tokens(_cfg(inputs, out, num_context_frames=6))
    with pytest.raises(PrepareError, match=r"width must be a multiple of 8.*got 30"):
        prepare_ar_tokens(_cfg(inputs, out, width=30))
    with pytest.raises(PrepareError, match="continuous"):
        prepare_ar_tokens(_cfg(inputs, out, encoder_path="tiny-cv"))
    assert not out.exists()
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(PrepareError, match="already holds other files"):
        prepare_ar_tokens(_cfg(inputs, out))
    assert sorted(p.name for p in out.iterdir()) == ["holiday.jpg"]


def test_allow_upscale_and_pad_mode(tmp_path):
    root = tmp_path / "in"
    write_mp4(root / "small.mp4", syn.pattern_frames(6, 16, 16), fps=10)
    with pytest.raises(PrepareError, match="(?s)no usable clips.*smaller than the target"):
        prepare_ar_tokens(_cfg(root, tmp_path / "a"))
    report = prepare_ar_tokens(_cfg(root, tmp_path / "b", allow_upscale=True, resize_mode="pad"))
    assert report.num_documents == 1 and not report.skipped


def test_all_skipped_writes_nothing(tmp_path):
    root = tmp_path / "in"
    root.mkdir()
    (root / "empty.mp4").write_bytes(b"")
    out = tmp_path / "out"
    with pytest.raises(PrepareError, match="(?s)nothing was written.*zero-byte"):
        prepare_ar_tokens(_cfg(root, out))
    assert not out.exists(), "the folder this run made is removed again, parts and all"
    out.mkdir()  # a folder the user made is kept, empty: no .parts/ left behind
    with pytest.raises(PrepareError, match="nothing was written"):
        prepare_ar_tokens(_cfg(root, out))
    assert out.is_dir() and list(out.iterdir()) == []


# ---------------------------------------------------------------------------------------------------
# Geometry and windows against independent computations


def test_geometry_numbers():
    g = geometry(1080, 1920, 640, 1024, "crop")  # reference: scale so both sides >= target (ceil), centre crop
    assert (g.resized_h, g.resized_w, g.top, g.left) == (640, 1138, 0, 57)
    g = geometry(720, 1280, 640, 1024, "pad")
    assert (g.resized_h, g.resized_w, g.top, g.left) == (576, 1024, 32, 0)
    assert geometry(100, 100, 200, 200).upscale and not geometry(400, 300, 200, 200).upscale


def test_apply_geometry_against_numpy():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (2, 24, 64, 3), dtype=np.uint8)
    # Crop only (scale 1): the centre columns.
    assert np.array_equal(apply_geometry(frames, geometry(24, 64, 24, 32, "crop")), frames[:, :, 16:48])
    # Pad only (scale 1): centred on black.
    small = frames[:, :12, :32]
    padded = apply_geometry(small, geometry(12, 32, 24, 32, "pad"))
    assert np.array_equal(padded[:, 6:18], small) and padded[:, :6].max() == 0 and padded[:, 18:].max() == 0
    # Resampling: antialiased bilinear is PIL's BILINEAR resize (a triangle filter widened by the scale).
    Image = pytest.importorskip("PIL.Image")
    for (sh, sw) in [(24, 64), (37, 53), (50, 41)]:
        src = rng.integers(0, 256, (1, sh, sw, 3), dtype=np.uint8)
        g = geometry(sh, sw, 12, 16, "crop")
        ref = np.asarray(Image.fromarray(src[0]).resize((g.resized_w, g.resized_h), Image.BILINEAR))
        ref = ref[g.top : g.top + 12, g.left : g.left + 16]
        assert np.abs(apply_geometry(src, g)[0].astype(int) - ref).max() <= 1


def test_windows_stream_like_slicing(tmp_path):
    frames = syn.pattern_frames(13, 16, 24)
    path = write_mp4(tmp_path / "a.mp4", frames, fps=10)
    decoded = read_frames(path)
    geo = geometry(16, 24, 16, 24)
    for window, stride in [(5, 5), (5, 2), (5, 7), (13, 1), (14, 1)]:
        got = list(iter_windows(path, geo, window, stride, chunk_size=3))
        assert [s for s, _ in got] == window_starts(13, window, stride)
        for s, clip in got:
            assert np.array_equal(clip, decoded[s : s + window])


# ---------------------------------------------------------------------------------------------------
# v2w and prompts


@pytest.fixture(scope="module")
def tiny_text_encoder(tiny_byt5_encoder) -> Path:
    return tiny_byt5_encoder


def test_v2w(tmp_path, tiny_text_encoder):
    from cosmos_nemo.data.reader import ARTokenDataset
    from cosmos_nemo.data_prep.v2w import V2WConfig, prepare_v2w
    from cosmos_nemo.tokenizers.text import load_text_encoder

    root = tmp_path / "data"
    for i in range(3):
        write_mp4(root / "videos" / f"c{i}.mp4", syn.pattern_frames(5, H, W, seed=i), fps=10)
    (root / "videos" / "bad.mp4").write_bytes(b"")
    lines = [("a ball falls", "videos/c2.mp4"), ("two balls collide", "videos/c0.mp4"),
             ("a ball falls", str((root / "videos/c1.mp4").resolve())), ("x", "videos/bad.mp4")]
    (root / "in.jsonl").write_text("".join(json.dumps({"prompt": p, "visual_input": v}) + "\n" for p, v in lines))
    cfg = V2WConfig(input_jsonl=root / "in.jsonl", output_dir=tmp_path / "out", encoder_path="tiny", width=W,
                    height=H, num_context_frames=FRAMES, text_encoder=str(tiny_text_encoder), prompt_length=24,
                    progress=False)
    report = prepare_v2w(cfg)
    assert report.num_documents == 3 and [s["source"] for s in report.skipped] == ["videos/bad.mp4"]
    ds = ARTokenDataset(tmp_path / "out")
    recs = [ds[i].record for i in range(len(ds))]
    assert [r["source"] for r in recs] == ["videos/c0.mp4", "videos/c1.mp4", "videos/c2.mp4"]
    # Prompts de-duplicated and numbered in source order; they are embedded before the videos are read
    # (so a missing text encoder stops the run early), hence the skipped video's prompt "x" has row 0.
    assert [r["prompt_id"] for r in recs] == [1, 2, 2]
    assert ds.info["text_embeddings"]["num_prompts"] == 3
    # The encoder is recorded (a folder as its absolute path), so `generate` defaults to it.
    assert ds.info["text_encoder"] == str(Path(tiny_text_encoder).resolve())
    stored = ds.stored_tokens(0)
    assert stored[0] == 64000 and (stored[1 + 24 :] == 64002).all()
    emb, mask = ds.text_embeddings([1, 2])
    enc = load_text_encoder(tiny_text_encoder, max_length=24).encode(["two balls collide", "a ball falls"])
    torch.testing.assert_close(emb, enc.embeddings.to(torch.bfloat16).float())
    assert torch.equal(mask, enc.mask)


def test_v2w_bad_jsonl(tmp_path):
    from cosmos_nemo.data_prep.v2w import V2WConfig, prepare_v2w

    (tmp_path / "in.jsonl").write_text('{"prompt": "a"}\n')
    with pytest.raises(PrepareError, match=r"in.jsonl:1: .*visual_input"):
        prepare_v2w(V2WConfig(input_jsonl=tmp_path / "in.jsonl", output_dir=tmp_path / "o", encoder_path="tiny"))


def test_prompts_command(tmp_path, capsys):
    root = tmp_path / "assets"
    for i in range(2):
        write_mp4(root / "videos" / f"v{i}.mp4", syn.pattern_frames(2, 16, 16), fps=10)
    (root / "metas").mkdir()
    (root / "metas" / "v1.txt").write_text("a real caption\n")
    assert cli_main(["prepare", "prompts", "--dataset_path", str(root), "--prompt", "A video of sks teal robot.", "--jsonl"]) == 0
    assert (root / "metas/v0.txt").read_text() == "A video of sks teal robot.\n"
    assert (root / "metas/v1.txt").read_text() == "a real caption\n"
    recs = [json.loads(x) for x in (root / "prompts.jsonl").read_text().splitlines()]
    assert recs == [{"prompt": "A video of sks teal robot.", "visual_input": "videos/v0.mp4"},
                    {"prompt": "a real caption", "visual_input": "videos/v1.mp4"}]
    assert cli_main(["prepare", "prompts", "--dataset-path", str(root), "--prompt", "new", "--overwrite"]) == 0
    assert (root / "metas/v1.txt").read_text() == "new\n"
    assert cli_main(["prepare", "prompts", "--dataset_path", str(tmp_path / "nope"), "--prompt", "x"]) == 2


def test_cli_reference_flags(tmp_path, capsys):
    root = tmp_path / "in"
    write_mp4(root / "a.mp4", syn.pattern_frames(9, H, W), fps=10)
    out = tmp_path / "out"
    rc = cli_main(["prepare", "ar-tokens", "--input_videos_dir", str(root), "--output_prefix", str(out),
                   "--encoder_path", "tiny", "--decoder_path", "tiny", "--width", str(W), "--height", str(H),
                   "--num_context_frames", "5", "--tokenizer_compression_factor", "4,8,8", "--stride", "2",
                   "--no-progress"])
    assert rc == 0
    assert "3 clips" in capsys.readouterr().out
    rc = cli_main(["prepare", "ar-tokens", "--input-videos-dir", str(root), "--output-prefix", str(tmp_path / "o2"),
                   "--encoder-path", "tiny", "--tokenizer-compression-factor", "8,16,16", "--no-progress"])
    assert rc == 2 and "does not match" in capsys.readouterr().out
