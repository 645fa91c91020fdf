"""Small synthetic media files for tests, benchmarks and bug reports.

Everything a data-prep pipeline must cope with can be made here with PyAV alone: any codec/container the
bundled FFmpeg encodes (H.264, MPEG-1/2, VP8, MJPEG, MPEG-4 part 2), display-matrix rotation and flips,
variable frame rate (custom timestamps), 10-bit pixel formats, audio-only files, truncated files and
files with a damaged packet in the middle.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import av
import numpy as np


def pattern_frames(num_frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """uint8 `[T, H, W, 3]` smooth, moving, orientation-revealing frames.

    A diagonal colour gradient that shifts with time (easy for lossy codecs, so decoded frames stay close
    to the source), a white block in the top-left corner and a dark bar along the left part of the top
    edge (so any rotation or mirror is obvious), and a per-frame brightness ramp so frames are distinct.
    """
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 2 * np.pi, 3)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    for t in range(num_frames):
        img = np.empty((height, width, 3), np.float32)
        for c in range(3):
            img[..., c] = 110 + 60 * np.sin(2 * np.pi * (xx / width + 0.7 * yy / height) + phase[c] + 0.3 * t)
        img += 40 * t / max(1, num_frames - 1) - 20
        bh, bw = max(2, height // 4), max(2, width // 4)
        img[:bh, :bw] = 245
        img[: max(1, height // 10), bw : bw + width // 2] = 10
        frames[t] = np.clip(img + 0.5, 0, 255).astype(np.uint8)
    return frames


def write_video(
    path: str | os.PathLike,
    frames: np.ndarray,
    codec: str = "libx264",
    fps: float = 10,
    pix_fmt: str = "yuv420p",
    rotation: int | None = None,
    hflip: bool = False,
    vflip: bool = False,
    pts: Sequence[int] | None = None,
    time_base: Fraction | None = None,
    options: dict | None = None,
    container_options: dict | None = None,
) -> Path:
    """Encode uint8 RGB `frames` `[T, H, W, 3]` with any PyAV encoder; the container follows the extension.

    `rotation` (counter-clockwise degrees, PyAV's convention), `hflip` and `vflip` set the stream's display
    matrix: a player shows `flip(rot_ccw(stored))`. `pts` (in `time_base` units) gives the frames' own
    timestamps, e.g. irregular gaps for a variable-frame-rate file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    container = av.open(str(path), mode="w", options=container_options or {})
    try:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = pix_fmt
        if options:
            stream.options = dict(options)
        if time_base is not None:
            stream.codec_context.time_base = time_base
        if rotation is not None or hflip or vflip:
            stream.set_display_rotation(rotation or 0, hflip=hflip, vflip=vflip)
        for i, f in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
            if pts is not None:
                frame.pts = int(pts[i])
                frame.time_base = time_base
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    finally:
        container.close()
    return path


def write_audio_only(path: str | os.PathLike, seconds: float = 0.5, codec: str = "aac", rate: int = 16000) -> Path:
    """A file holding only an audio stream (a sine tone)."""
    path = Path(path)
    container = av.open(str(path), mode="w")
    try:
        stream = container.add_stream(codec, rate=rate)
        stream.layout = "mono"
        n = int(seconds * rate)
        tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(n) / rate)).astype(np.float32)
        frame_size = stream.codec_context.frame_size or 1024
        fmt = stream.codec_context.format.name
        for start in range(0, n, frame_size):
            chunk = tone[start : start + frame_size]
            if len(chunk) < frame_size:
                chunk = np.pad(chunk, (0, frame_size - len(chunk)))
            data = chunk[None] if fmt.endswith("p") else chunk[None].T.reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(data, format=fmt, layout="mono")
            frame.sample_rate = rate
            frame.pts = start
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    finally:
        container.close()
    return path


def truncate(path: str | os.PathLike, fraction: float, out: str | os.PathLike | None = None) -> Path:
    """Keep the first `fraction` of the file's bytes (a download that stopped)."""
    data = Path(path).read_bytes()
    target = Path(out) if out is not None else Path(path)
    target.write_bytes(data[: int(len(data) * fraction)])
    return target


def corrupt_packet(path: str | os.PathLike, packet_index: int | None = None, out: str | os.PathLike | None = None) -> Path:
    """Overwrite the payload of one video packet (default: the middle one) with zeros, keeping the size.

    The container stays valid (its index still lists every frame); only that packet's compressed data is
    destroyed, which is what a bad sector or a broken transfer does to the middle of a file.
    """
    path = Path(path)
    container = av.open(str(path))
    try:
        stream = container.streams.video[0]
        packets = [(p.pos, p.size) for p in container.demux(stream) if p.size and p.pos is not None and p.pos >= 0]
    finally:
        container.close()
    if not packets:
        raise ValueError(f"{path}: no video packets with known positions")
    pos, size = packets[len(packets) // 2 if packet_index is None else packet_index]
    data = bytearray(path.read_bytes())
    # Keep the first few bytes (NAL length/header) so the demuxer still splits packets the same way.
    keep = min(8, size // 4)
    data[pos + keep : pos + size] = bytes(size - keep)
    target = Path(out) if out is not None else path
    target.write_bytes(bytes(data))
    return target
