"""Video decoding and encoding with PyAV.

Frames come out exactly as the decoder produces them (uint8 RGB, `[n, H, W, 3]`), with the container's
rotation metadata applied so they are upright. Windows are taken by *frame index*: for variable-frame-rate
(VFR) files the i-th decoded frame is frame i, whatever its timestamp, which is also how the ffmpeg CLI's
`-f rawvideo` pipe numbers them.

A decoder that yields zero frames is an error (`VideoDecodeError`), never an empty array: mediapy with
FFmpeg 9 silently returned empty arrays and turned metrics into NaN. A decode error in the middle of a file
is also an error: the frames before it are not passed off as the whole video.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import av
import numpy as np

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".m4v", ".ts", ".flv", ".wmv")


class VideoDecodeError(RuntimeError):
    """A file could not be decoded as video (corrupt, truncated, empty, audio-only, not a video)."""


@dataclass(frozen=True)
class VideoInfo:
    path: str
    width: int  # after rotation
    height: int  # after rotation
    fps: float  # average frame rate reported by the container (0.0 when unknown)
    num_frames: int  # as reported by the container; 0 when unknown (count by decoding if needed)
    rotation: int  # degrees the frames are rotated by to make them upright
    codec: str
    pix_fmt: str


def _open(path: str | os.PathLike):
    p = Path(path)
    if not p.is_file():
        raise VideoDecodeError(f"{p}: no such file")
    if p.stat().st_size == 0:
        raise VideoDecodeError(f"{p}: zero-byte file")
    try:
        container = av.open(str(p), mode="r")
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as e:
        raise VideoDecodeError(f"{p}: not a readable media file ({e})") from e
    if not container.streams.video:
        container.close()
        raise VideoDecodeError(f"{p}: no video stream (audio-only or not a video)")
    return container


def _rotation_of(stream, first_frame=None) -> int:
    rot = 0
    if first_frame is not None:
        rot = int(round(getattr(first_frame, "rotation", 0) or 0))
    return rot % 360


def probe(path: str | os.PathLike) -> VideoInfo:
    """Read a file's video metadata, decoding one frame to learn its rotation and check it decodes."""
    container = _open(path)
    try:
        stream = container.streams.video[0]
        first = None
        try:
            for first in container.decode(stream):
                break
        except av.error.FFmpegError as e:
            raise VideoDecodeError(f"{path}: cannot decode the first frame ({e})") from e
        if first is None:
            raise VideoDecodeError(f"{path}: the decoder produced zero frames")
        rot = _rotation_of(stream, first)
        w, h = first.width, first.height
        if rot in (90, 270):
            w, h = h, w
        fps = float(stream.average_rate) if stream.average_rate else 0.0
        return VideoInfo(
            path=str(path),
            width=w,
            height=h,
            fps=fps,
            num_frames=int(stream.frames or 0),
            rotation=rot,
            codec=stream.codec_context.name,
            pix_fmt=str(stream.codec_context.pix_fmt),
        )
    finally:
        container.close()


def _to_rgb(frame, rotation: int) -> np.ndarray:
    arr = frame.to_ndarray(format="rgb24")
    if rotation:
        # FFmpeg's display rotation is counter-clockwise; np.rot90 with k>0 also rotates counter-clockwise.
        arr = np.ascontiguousarray(np.rot90(arr, k=rotation // 90))
    return arr


def iter_frames(
    path: str | os.PathLike,
    chunk_size: int = 32,
    start: int = 0,
    stop: int | None = None,
    threads: bool = True,
) -> Iterator[np.ndarray]:
    """Yield uint8 RGB frames `[n<=chunk_size, H, W, 3]` for frame indices `start <= i < stop`.

    Raises `VideoDecodeError` if the file cannot be opened, if decoding fails part-way, or if no frame
    at all was decoded.
    """
    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    container = _open(path)
    try:
        stream = container.streams.video[0]
        if threads:
            stream.thread_type = "AUTO"
        buf: list[np.ndarray] = []
        index = -1
        rotation = None
        try:
            for frame in container.decode(stream):
                index += 1
                if rotation is None:
                    rotation = _rotation_of(stream, frame)
                if index < start:
                    continue
                if stop is not None and index >= stop:
                    break
                buf.append(_to_rgb(frame, rotation))
                if len(buf) == chunk_size:
                    yield np.stack(buf)
                    buf = []
        except av.error.FFmpegError as e:
            raise VideoDecodeError(f"{path}: decoding failed after {index + 1} frames ({e})") from e
        if index < 0:
            raise VideoDecodeError(f"{path}: the decoder produced zero frames")
        if buf:
            yield np.stack(buf)
    finally:
        container.close()


def read_frames(path: str | os.PathLike, start: int = 0, num_frames: int | None = None) -> np.ndarray:
    """All frames `[start, start+num_frames)` as one uint8 array `[n, H, W, 3]`."""
    stop = None if num_frames is None else start + num_frames
    chunks = list(iter_frames(path, chunk_size=64, start=start, stop=stop))
    if not chunks:
        raise VideoDecodeError(f"{path}: no frames in range start={start}, num_frames={num_frames}")
    return np.concatenate(chunks)


def count_frames(path: str | os.PathLike) -> int:
    """Count decodable frames exactly by decoding (container counts can be missing or wrong)."""
    return sum(len(c) for c in iter_frames(path, chunk_size=256))


def write_mp4(
    path: str | os.PathLike,
    frames: np.ndarray | Iterator[np.ndarray],
    fps: float = 24.0,
    crf: int = 18,
    codec: str = "libx264",
    pix_fmt: str | None = None,
) -> Path:
    """Write uint8 RGB frames `[T, H, W, 3]` (or an iterator of such chunks) as an H.264 mp4.

    The file is written to a temporary name beside `path` and renamed when complete, so a crash never
    leaves a half-written video under the final name. Odd frame sizes use yuv444p (yuv420p needs even
    sizes) unless `pix_fmt` is given.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.mp4")
    chunks = [frames] if isinstance(frames, np.ndarray) else frames
    container = av.open(str(tmp), mode="w")
    stream = None
    written = 0
    try:
        for chunk in chunks:
            chunk = np.asarray(chunk)
            if chunk.ndim == 3:
                chunk = chunk[None]
            if chunk.dtype != np.uint8 or chunk.ndim != 4 or chunk.shape[-1] != 3:
                raise ValueError(f"frames must be uint8 [T,H,W,3], got {chunk.dtype} {tuple(chunk.shape)}")
            if stream is None:
                h, w = chunk.shape[1:3]
                stream = container.add_stream(codec, rate=_fps_fraction(fps))
                stream.width, stream.height = w, h
                stream.pix_fmt = pix_fmt or ("yuv420p" if w % 2 == 0 and h % 2 == 0 else "yuv444p")
                stream.options = {"crf": str(crf)}
            for f in chunk:
                for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                    container.mux(packet)
                written += 1
        if stream is None or written == 0:
            raise ValueError("write_mp4 got zero frames")
        for packet in stream.encode():
            container.mux(packet)
        container.close()
        os.replace(tmp, path)
    except BaseException:
        try:
            container.close()
        except Exception:
            pass
        tmp.unlink(missing_ok=True)
        raise
    return path


def _fps_fraction(fps: float):
    from fractions import Fraction

    return Fraction(fps).limit_denominator(1001)


def list_videos(root: str | os.PathLike, recursive: bool = False, extensions=VIDEO_EXTENSIONS) -> list[Path]:
    """Video files under `root` (by extension), sorted by their path relative to `root`."""
    root = Path(root)
    pattern = "**/*" if recursive else "*"
    exts = tuple(e.lower() for e in extensions)
    files = [p for p in root.glob(pattern) if p.is_file() and p.suffix.lower() in exts]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())
