"""Video I/O: upright frames for every display matrix, VFR as decoded, 10-bit, containers, and every way a
file can be bad (each must raise `VideoDecodeError` with its reason, never return partial data)."""

from __future__ import annotations

import os
import subprocess
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from conftest import ffmpeg_cli

from cosmos_nemo.io import synthetic as syn
from cosmos_nemo.io.video import (
    VideoDecodeError,
    count_frames,
    display_transform,
    iter_frames,
    list_videos,
    probe,
    read_frames,
    write_mp4,
)

H, W, T = 32, 48, 12
FFMPEG = ffmpeg_cli()


@pytest.fixture(scope="module")
def src():
    return syn.pattern_frames(T, H, W)


def _mae(a, b) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def test_write_mp4_roundtrip_and_odd_sizes(tmp_path, src):
    path = write_mp4(tmp_path / "a.mp4", src, fps=10)
    out = read_frames(path)
    assert out.shape == src.shape and out.dtype == np.uint8
    assert _mae(out, src) < 6
    odd = syn.pattern_frames(5, 33, 47)
    out = read_frames(write_mp4(tmp_path / "odd.mp4", odd, fps=10))
    assert out.shape == (5, 33, 47, 3)
    assert probe(tmp_path / "odd.mp4").pix_fmt == "yuv444p"
    assert _mae(out, odd) < 6
    # Chunked input gives the same file as one array.
    chunked = write_mp4(tmp_path / "c.mp4", iter([src[:5], src[5:]]), fps=10, deterministic=True)
    whole = write_mp4(tmp_path / "w.mp4", src, fps=10, deterministic=True)
    assert chunked.read_bytes() == whole.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4", "c.mp4", "odd.mp4", "w.mp4"]


def test_write_mp4_leaves_nothing_on_error(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        write_mp4(tmp_path / "bad.mp4", np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="zero frames"):
        write_mp4(tmp_path / "empty.mp4", iter([]))
    assert list(tmp_path.iterdir()) == []


# (ccw degrees, hflip, vflip) as PyAV writes them. PyAV documents that a player shows
# `flip(rot_ccw(stored, degrees))`, so we store the inverse of that applied to the upright frames.
ORIENTATIONS = [(0, False, False), (90, False, False), (180, False, False), (-90, False, False),
                (0, True, False), (90, True, False), (0, False, True), (-90, True, False)]


def _stored_from_upright(upright: np.ndarray, degrees: int, hflip: bool, vflip: bool) -> np.ndarray:
    x = upright
    if vflip:
        x = x[:, ::-1]
    if hflip:
        x = x[:, :, ::-1]
    return np.ascontiguousarray(np.rot90(x, k=-(degrees // 90), axes=(1, 2)))


@pytest.mark.parametrize("degrees,hflip,vflip", ORIENTATIONS)
def test_rotation_and_flips_come_out_upright(tmp_path, src, degrees, hflip, vflip):
    stored = _stored_from_upright(src, degrees, hflip, vflip)
    path = syn.write_video(tmp_path / "r.mp4", stored, rotation=degrees, hflip=hflip, vflip=vflip)
    out = read_frames(path)
    assert out.shape == src.shape, "width/height must follow the rotation"
    assert _mae(out, src) < 6
    # The white block is in the top-left corner of the upright picture.
    assert out[:, : H // 4 - 1, : W // 4 - 1].mean() > 225
    info = probe(path)
    assert (info.height, info.width) == (H, W)
    assert info.rotation in (0, 90, 180, 270) and isinstance(info.flipped, bool)


@pytest.mark.skipif(FFMPEG is None, reason="no ffmpeg CLI (PATH or imageio-ffmpeg) for the independent autorotate check")
@pytest.mark.parametrize("degrees,hflip,vflip", ORIENTATIONS)
def test_rotation_matches_ffmpeg_cli(tmp_path, src, degrees, hflip, vflip):
    stored = _stored_from_upright(src, degrees, hflip, vflip)
    path = syn.write_video(tmp_path / "r.mp4", stored, rotation=degrees, hflip=hflip, vflip=vflip)
    ours = read_frames(path)
    raw = subprocess.run(
        [FFMPEG, "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-fps_mode", "passthrough", "-"],
        check=True, capture_output=True,
    ).stdout
    theirs = np.frombuffer(raw, np.uint8).reshape(ours.shape)
    assert np.array_equal(ours, theirs)


@pytest.mark.skipif(FFMPEG is None, reason="no ffmpeg CLI (PATH or imageio-ffmpeg) for the independent decode check")
def test_frames_equal_ffmpeg_cli_pipe(tmp_path, src):
    """8-bit sources decode bit-identically to `ffmpeg -f rawvideo -pix_fmt rgb24 -fps_mode passthrough`,
    VFR included (every decoded frame once, no CFR duplication or dropping)."""
    cases = {
        "vfr.mkv": dict(pts=[0, 30, 50, 160, 170, 300, 420, 450, 480, 600, 610, 700], time_base=Fraction(1, 1000)),
        "m2.mpg": dict(codec="mpeg2video", fps=25),
        "v.webm": dict(codec="libvpx"),
        "j.avi": dict(codec="mjpeg", pix_fmt="yuvj420p"),
        "h.mov": dict(),
    }
    for name, kw in cases.items():
        path = syn.write_video(tmp_path / name, src, **kw)
        ours = read_frames(path)
        raw = subprocess.run(
            [FFMPEG, "-v", "error", "-i", str(path), "-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
            check=True, capture_output=True,
        ).stdout
        assert np.array_equal(ours, np.frombuffer(raw, np.uint8).reshape(ours.shape)), name


def test_display_transform_formula():
    """FFmpeg's layout: m = [a b u; c d v; x y w], 16.16 fixed point; rotation θ = atan2(b, a) (clockwise)."""
    one = 1 << 16

    def m(a, b, c, d):
        return np.array([[a, b, 0], [c, d, 0], [0, 0, 1 << 30]], np.int32)

    assert display_transform(None) == ("none", 0, False)
    assert display_transform(m(one, 0, 0, one)) == ("none", 0, False)
    assert display_transform(m(0, one, -one, 0)) == ("clock", 90, False)
    assert display_transform(m(0, -one, one, 0)) == ("cclock", 270, False)
    assert display_transform(m(-one, 0, 0, -one)) == ("rot180", 180, False)
    assert display_transform(m(-one, 0, 0, one)) == ("hflip", 0, True)
    assert display_transform(m(one, 0, 0, -one)) == ("vflip", 0, True)
    c, s = int(one * np.cos(np.pi / 6)), int(one * np.sin(np.pi / 6))
    with pytest.raises(VideoDecodeError, match="multiple of 90"):
        display_transform(m(c, s, -s, c))


def test_vfr_frames_as_decoded(tmp_path, src):
    """Irregular timestamps: every encoded frame comes out once, in order; nothing is duplicated or dropped."""
    tb = Fraction(1, 1000)
    pts = [0, 40, 60, 200, 210, 400, 650, 700, 720, 900, 1000, 1333]
    ramp = np.stack([np.full((H, W, 3), 10 + 20 * i, np.uint8) for i in range(T)])
    path = syn.write_video(tmp_path / "vfr.mkv", ramp, pts=pts, time_base=tb, fps=10)
    out = read_frames(path)
    assert out.shape[0] == T
    np.testing.assert_allclose(out[:, H // 2, W // 2].mean(1), 10 + 20 * np.arange(T), atol=3)
    # Windows are by frame index.
    assert np.array_equal(read_frames(path, start=4, num_frames=3), out[4:7])


def test_ten_bit(tmp_path, src):
    path = syn.write_video(tmp_path / "ten.mkv", src, pix_fmt="yuv420p10le")
    assert probe(path).pix_fmt == "yuv420p10le"
    out = read_frames(path)
    assert out.dtype == np.uint8 and out.shape == src.shape
    assert _mae(out, src) < 6


@pytest.mark.parametrize(
    "name,codec,pix_fmt,fps",
    [("m1.mpg", "mpeg1video", "yuv420p", 25), ("m2.mpg", "mpeg2video", "yuv420p", 25),
     ("v.webm", "libvpx", "yuv420p", 10), ("j.avi", "mjpeg", "yuvj420p", 10),
     ("p.avi", "mpeg4", "yuv420p", 10), ("h.mkv", "libx264", "yuv420p", 10), ("h.mov", "libx264", "yuv420p", 10)],
)
def test_containers_and_codecs(tmp_path, src, name, codec, pix_fmt, fps):
    # The MPEG encoders' default bitrate (200 kb/s) is too low for a fair closeness check.
    path = syn.write_video(tmp_path / name, src, codec=codec, pix_fmt=pix_fmt, fps=fps, options={"b": "4M"})
    out = read_frames(path)
    assert out.shape == src.shape
    assert _mae(out, src) < 8
    assert count_frames(path) == T
    assert path in list_videos(tmp_path)


def test_iter_frames_chunks_and_ranges(tmp_path, src):
    path = write_mp4(tmp_path / "a.mp4", src, fps=10)
    full = read_frames(path)
    chunks = list(iter_frames(path, chunk_size=5))
    assert [len(c) for c in chunks] == [5, 5, 2]
    assert np.array_equal(np.concatenate(chunks), full)
    assert np.array_equal(read_frames(path, start=3, num_frames=4), full[3:7])
    half = list(iter_frames(path, chunk_size=64, transform=lambda f: f[::2, ::2]))[0]
    assert np.array_equal(half, full[:, ::2, ::2])
    assert np.array_equal(read_frames(path, threads=1), full)
    with pytest.raises(VideoDecodeError, match="no frames in range"):
        read_frames(path, start=50, num_frames=2)


# ---------------------------------------------------------------------------------------------------
# Bad inputs


def test_zero_byte_non_video_and_missing(tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "text.mp4").write_text("this is not a video\n" * 50)
    for name, reason in [("empty.mp4", "zero-byte"), ("text.mp4", "not a readable media file"), ("nope.mp4", "no such file")]:
        with pytest.raises(VideoDecodeError, match=reason):
            read_frames(tmp_path / name)
        with pytest.raises(VideoDecodeError, match=reason):
            probe(tmp_path / name)


def test_audio_only(tmp_path):
    path = syn.write_audio_only(tmp_path / "sound.mp4")
    with pytest.raises(VideoDecodeError, match="no video stream"):
        read_frames(path)


def test_truncated_mp4(tmp_path, src):
    # Index at the end (the default): the cut file has no index and does not open.
    path = syn.write_video(tmp_path / "a.mp4", src)
    syn.truncate(path, 0.6)
    with pytest.raises(VideoDecodeError, match="not a readable media file"):
        read_frames(path)
    # Index at the front: it opens, but decodes fewer frames than it lists.
    path = syn.write_video(tmp_path / "b.mp4", src, container_options={"movflags": "+faststart"})
    syn.truncate(path, 0.8)
    with pytest.raises(VideoDecodeError, match="truncated|decoding failed"):
        read_frames(path)


def test_truncated_webm_is_caught_by_duration(tmp_path, src):
    path = syn.write_video(tmp_path / "a.webm", src, codec="libvpx")
    syn.truncate(path, 0.6)
    with pytest.raises(VideoDecodeError, match="truncated"):
        read_frames(path)


def test_corrupt_middle_is_an_error_not_a_short_video(tmp_path, src):
    path = syn.write_video(tmp_path / "a.mp4", src)
    before = read_frames(path)
    syn.corrupt_packet(path)
    seen = []
    with pytest.raises(VideoDecodeError, match="decoding failed|corrupt|truncated"):
        for chunk in iter_frames(path, chunk_size=1):
            seen.append(chunk)
    assert 0 < len(seen) < len(before), "frames before the damage were decoded, then the error surfaced"


def test_safe_join(tmp_path):
    from cosmos_nemo.io.paths import UnsafePathError, safe_join

    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    assert safe_join(root, "sub/a.mp4") == (root / "sub/a.mp4").resolve()
    for bad in ["../x.mp4", "sub/../../x.mp4", "/etc/passwd"]:
        with pytest.raises(UnsafePathError):
            safe_join(root, bad)
    (tmp_path / "outside").mkdir()
    (root / "link").symlink_to(tmp_path / "outside")
    with pytest.raises(UnsafePathError, match="outside"):
        safe_join(root, "link/x.mp4")


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads through Linux /proc")
def test_single_threaded_decode_starts_no_threads(tmp_path, src):
    """threads=1 decodes and converts to RGB on the calling thread: no swscale/decoder threads are started
    (PyAV's default per-frame conversion started one per CPU for every frame, which halved data-prep
    throughput with parallel workers)."""
    path = syn.write_video(tmp_path / "t.mp4", np.repeat(src, 3, axis=0))  # yuv420p: needs a conversion
    before = len(os.listdir("/proc/self/task"))
    frames = sum(len(chunk) for chunk in iter_frames(path, chunk_size=4, threads=1))
    assert frames == 3 * T
    assert len(os.listdir("/proc/self/task")) == before
