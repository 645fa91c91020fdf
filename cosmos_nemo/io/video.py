"""Video decoding and encoding with PyAV.

Frames come out exactly as the decoder produces them (uint8 RGB, `[n, H, W, 3]`), with the container's
display matrix applied the way the ffmpeg CLI's autorotate applies it (rotations by multiples of 90° and
mirror flips), so they are upright.

Windows are taken by *frame index*: for variable-frame-rate (VFR) files the i-th decoded frame is frame
i, whatever its timestamp. This is what the ffmpeg CLI's `-f rawvideo` pipe gives with `-fps_mode
passthrough`; no frame is duplicated or dropped to reach a constant rate. The `fps` we report for such a
file is the container's average rate, which is only an average.

Errors are never silent (`VideoDecodeError`, with the reason):
- a decoder that yields zero frames is an error, never an empty array (mediapy with FFmpeg 9 silently
  returned empty arrays and turned metrics into NaN);
- a decode error in the middle of a file, a frame the decoder marks as corrupt (concealed damage), fewer
  frames than the container's index lists, or a last frame that ends more than ~1.5 frames before the
  declared duration (a truncated webm/mkv) are errors: the frames before the damage are not passed off
  as the whole video.
When such an error comes from a file that was cut short (an interrupted download or copy, a writer that
did not finish), the message says `truncated` and why: for MP4/MOV, a top-level box that runs past the end
of the file, or media data without its index (`moov`).
Damage that the decoder itself conceals without reporting it (e.g. zeroed VP8 data) cannot be told
from real content by any reader; such files decode "successfully" here as with the ffmpeg CLI.
"""

from __future__ import annotations

import contextlib

import math
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterator

import av
from av.video.reformatter import VideoReformatter
import numpy as np

from cosmos_nemo.io.atomic import atomic_path

VIDEO_EXTENSIONS = (
    ".mp4", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".m4v", ".ts", ".mts", ".m2ts", ".flv", ".wmv", ".3gp",
    ".ogv", ".mxf", ".y4m",
)


class VideoDecodeError(RuntimeError):
    """A file could not be decoded as video (corrupt, truncated, empty, audio-only, not a video)."""


@dataclass(frozen=True)
class VideoInfo:
    path: str
    width: int  # after the display transform (rotation)
    height: int  # after the display transform (rotation)
    fps: float  # average frame rate reported by the container (0.0 when unknown); an average for VFR
    num_frames: int  # as listed by the container's index; 0 when unknown (`count_frames` decodes to count)
    rotation: int  # clockwise degrees (0, 90, 180, 270) the stored frames are turned by to be upright
    flipped: bool  # the display transform also mirrors the frames
    codec: str
    pix_fmt: str
    duration: float  # seconds as reported by the container; 0.0 when unknown


# ------------------------------------------------------------------------------------------------------
# Display matrix (rotation / flips)


def _display_matrix(frame) -> np.ndarray | None:
    """The frame's 3x3 int32 DISPLAYMATRIX side data (FFmpeg layout), or None when absent."""
    # `frame.side_data` is a mapping keyed by side-data type name in every PyAV this library supports (18, 19);
    # iterating it yields the entries in PyAV 18 but their types in PyAV 19, so look the entry up by name.
    try:
        sd = frame.side_data["DISPLAYMATRIX"]
    except KeyError:
        return None
    raw = bytes(sd)
    if len(raw) >= 36:
        return np.frombuffer(raw[:36], dtype="<i4").reshape(3, 3)
    return None


# Each transform maps a stored HxWx3 array to the displayed one.
_IDENTITY: Callable[[np.ndarray], np.ndarray] = lambda a: a
_TRANSFORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "none": _IDENTITY,
    "clock": lambda a: np.rot90(a, k=-1),  # rotate 90° clockwise
    "cclock": lambda a: np.rot90(a, k=1),  # rotate 90° counter-clockwise
    "clock_flip": lambda a: np.rot90(a, k=-1)[::-1],  # clockwise then vertical flip
    "cclock_flip": lambda a: np.rot90(a, k=1)[::-1],  # counter-clockwise then vertical flip (= transpose)
    "hflip": lambda a: a[:, ::-1],
    "vflip": lambda a: a[::-1],
    "rot180": lambda a: a[::-1, ::-1],
}


def display_transform(matrix: np.ndarray | None) -> tuple[str, int, bool]:
    """`(transform name, clockwise rotation degrees, mirrored)` for a display matrix.

    Follows the ffmpeg CLI's autorotate (fftools): theta = the matrix's clockwise rotation, then
    90 → transpose `clock` (or `cclock_flip` when m[3] > 0), 270 → `cclock` (or `clock_flip` when m[3] < 0),
    180 → `hflip` if m[0] < 0 and `vflip` if m[4] < 0, 0 → `vflip` if m[4] < 0. Angles that are not a
    multiple of 90° are refused (the CLI would resample the picture with a rotate filter).
    """
    if matrix is None:
        return "none", 0, False
    m = matrix.reshape(-1).astype(np.float64)
    scale0, scale1 = math.hypot(m[0], m[3]), math.hypot(m[1], m[4])
    if scale0 == 0 or scale1 == 0:
        return "none", 0, False
    # av_display_rotation_get returns -atan2(m1/s1, m0/s0) (counter-clockwise); the CLI negates it.
    theta = math.degrees(math.atan2(m[1] / scale1, m[0] / scale0))
    theta -= 360 * math.floor(theta / 360 + 0.9 / 360)
    if abs(theta - 90) < 1:
        return ("cclock_flip", 90, True) if m[3] > 0 else ("clock", 90, False)
    if abs(theta - 270) < 1:
        return ("clock_flip", 270, True) if m[3] < 0 else ("cclock", 270, False)
    if abs(theta - 180) < 1:
        h, v = m[0] < 0, m[4] < 0
        if h and v:
            return "rot180", 180, False
        if h:
            return "hflip", 0, True
        if v:
            return "vflip", 0, True
        return "none", 0, False
    if abs(theta) < 1 or abs(theta - 360) < 1:
        return ("vflip", 0, True) if m[4] < 0 else ("none", 0, False)
    raise VideoDecodeError(
        f"display matrix rotates by {theta:.1f}°, not a multiple of 90°; re-encode the file upright "
        f"(e.g. `ffmpeg -i in -c:v libx264 out.mp4`, which applies the rotation)"
    )


# ------------------------------------------------------------------------------------------------------
# Decoding


_ISO_BOX_TYPES = (b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"styp", b"moof", b"sidx")


def _iso_truncation(path: Path) -> str | None:
    """Why an MP4/MOV (ISO-BMFF) file is cut short, from its top-level boxes; None if they are complete or the
    file is not one. Reads only the box headers."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8 or head[4:8] not in _ISO_BOX_TYPES:
                return None
            pos, kinds = 0, set()
            while pos + 8 <= size:
                f.seek(pos)
                hdr = f.read(16)
                n, kind = int.from_bytes(hdr[:4], "big"), hdr[4:8].decode("latin-1")
                if n == 1:  # 64-bit size
                    if len(hdr) < 16:
                        return f"the file ends inside the header of its '{kind}' box"
                    n = int.from_bytes(hdr[8:16], "big")
                elif n == 0:  # the box runs to the end of the file
                    n = size - pos
                if n < 8:
                    return None  # not a box layout this check understands
                kinds.add(kind)
                if pos + n > size:
                    return f"the file is {size} bytes but its '{kind}' box runs to byte {pos + n}"
                pos += n
    except OSError:
        return None
    if "mdat" in kinds and "moov" not in kinds and "moof" not in kinds:
        return "it has media data but no index ('moov' box), which MP4 writers add last"
    return None


def _decode_error(path, detail: str, if_truncated: str | None = None) -> VideoDecodeError:
    """The error for a file that fails to decode: `truncated` with the reason when it was cut short (with
    `if_truncated`, when given, in place of `detail`: what the decoder saw, said as a cut-short file's symptom)."""
    why = _iso_truncation(Path(path))
    if why is not None:
        return VideoDecodeError(f"{path}: truncated: {why} ({if_truncated or detail})")
    return VideoDecodeError(f"{path}: {detail}")


def _open(path: str | os.PathLike):
    p = Path(path)
    if not p.is_file():
        raise VideoDecodeError(f"{p}: no such file")
    if p.stat().st_size == 0:
        raise VideoDecodeError(f"{p}: zero-byte file")
    try:
        container = av.open(str(p), mode="r")
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError, OSError) as e:
        raise _decode_error(p, f"not a readable media file: {e}") from e
    if not container.streams.video:
        container.close()
        raise _decode_error(p, "no video stream (audio-only or not a video)")
    return container


def probe(path: str | os.PathLike) -> VideoInfo:
    """A file's video metadata, decoding its first frame to learn the display transform and check it decodes."""
    container = _open(path)
    try:
        stream = container.streams.video[0]
        first = None
        try:
            for first in container.decode(stream):
                break
        except (av.error.FFmpegError, ValueError) as e:
            raise _decode_error(path, f"cannot decode the first frame ({e})") from e
        if first is None:
            raise _decode_error(path, "the decoder produced zero frames")
        _, rot, flipped = display_transform(_display_matrix(first))
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
            flipped=flipped,
            codec=stream.codec_context.name,
            pix_fmt=str(stream.codec_context.pix_fmt),
            duration=_declared_duration(container, stream) or 0.0,
        )
    finally:
        container.close()


def _declared_duration(container, stream) -> float | None:
    """The video's duration in seconds from the stream, or from the container when video is its only stream."""
    if stream.duration is not None and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration is not None and len(container.streams) == 1:
        return container.duration / 1_000_000
    return None


def _rgb24(frame, reformatter: VideoReformatter) -> np.ndarray:
    """uint8 RGB of a decoded frame. Bicubic is the ffmpeg CLI's default scaler flag: it only matters where
    swscale has no exact unscaled path (e.g. 10-bit input), and there it brings us closest to the CLI.

    One `VideoReformatter` serves all frames of a stream, single-threaded. PyAV's `frame.reformat` builds a
    new swscale context per frame with one thread per CPU by default: at 320x240 that started and stopped
    threads for every frame and took twice as long (ad-hoc measurement, PyAV 18 / FFmpeg 8); at 1280x720
    one thread and automatic threads take the same time."""
    if frame.format.name == "rgb24":
        return frame.to_ndarray()
    return reformatter.reformat(frame, format="rgb24", interpolation="BICUBIC", threads=1).to_ndarray()


def _frame_end(frame) -> float | None:
    if frame.pts is None or frame.time_base is None:
        return None
    duration = frame.duration or 0
    return float((frame.pts + duration) * frame.time_base)


def iter_frames(
    path: str | os.PathLike,
    chunk_size: int = 32,
    start: int = 0,
    stop: int | None = None,
    threads: int = 0,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
    check_complete: bool = True,
) -> Iterator[np.ndarray]:
    """Yield uint8 RGB frames `[n<=chunk_size, H, W, 3]` for frame indices `start <= i < stop`.

    `threads`: decoder threads (0 = FFmpeg's automatic choice, 1 = single-threaded). `transform` is applied
    to each upright frame before it is buffered (e.g. a resize), which keeps memory proportional to the
    output size. Raises `VideoDecodeError` if the file cannot be opened, if decoding fails or is damaged
    part-way, or if no frame at all was decoded. With `stop=None` and `check_complete`, the whole file is
    checked against the container's frame count and duration (see the module docstring).
    """
    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    container = _open(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO" if threads != 1 else "SLICE"
        stream.thread_count = max(0, int(threads))
        reformatter = VideoReformatter()  # one colour-conversion context for the stream (see _rgb24)
        buf: list[np.ndarray] = []
        index = -1
        display = None
        first_time = None
        last_end = None
        try:
            for frame in container.decode(stream):
                index += 1
                if display is None:
                    display = _TRANSFORMS[display_transform(_display_matrix(frame))[0]]
                    first_time = None if frame.pts is None else float(frame.pts * frame.time_base)
                if frame.is_corrupt:
                    raise _decode_error(path, f"frame {index} is marked corrupt by the decoder (damaged data)",
                                        f"the data ends within frame {index}")
                last_end = _frame_end(frame)
                if index < start:
                    continue
                if stop is not None and index >= stop:
                    break
                rgb = np.ascontiguousarray(display(_rgb24(frame, reformatter)))
                buf.append(transform(rgb) if transform is not None else rgb)
                if len(buf) == chunk_size:
                    yield np.stack(buf)
                    buf = []
        except (av.error.FFmpegError, ValueError) as e:
            raise _decode_error(path, f"decoding failed after {index + 1} frames ({e})") from e
        if index < 0:
            raise _decode_error(path, "the decoder produced zero frames")
        if stop is None and check_complete:
            _check_complete(path, container, stream, index + 1, first_time, last_end)
        if buf:
            yield np.stack(buf)
    finally:
        container.close()


_DECLARED_DURATION_FORMATS = ("matroska", "webm", "mov", "mp4", "avi", "flv", "asf")


def _check_complete(path, container, stream, decoded: int, first_time, last_end) -> None:
    listed = int(stream.frames or 0)
    why = _iso_truncation(Path(path))
    if why is not None:  # e.g. an index cut short at its end: every frame may decode, the file is still incomplete
        of = f" of the {listed} the container lists" if listed else ""
        raise VideoDecodeError(f"{path}: truncated: {why} (decoded {decoded} frames{of})")
    if listed and decoded < listed:
        raise VideoDecodeError(f"{path}: truncated or damaged: decoded {decoded} frames but the container lists {listed}")
    # Only containers whose header states the duration: for MPEG-PS/TS and raw streams FFmpeg estimates it
    # (from timestamps or the bitrate), which can be off by more than the tolerance on valid files.
    fmt = container.format.name or ""
    if not any(name in fmt.split(",") for name in _DECLARED_DURATION_FORMATS):
        return
    declared = _declared_duration(container, stream)
    if declared and last_end is not None and first_time is not None and decoded > 1:
        covered = last_end - first_time
        period = covered / decoded
        # More than ~1.5 frames missing at the end (timestamps can round; a container may count the last
        # frame's duration slightly differently) means the file stops before its declared end.
        if declared - covered > 1.5 * period + 0.01 * declared:
            raise VideoDecodeError(
                f"{path}: truncated: the decoded frames cover {covered:.2f}s of the declared {declared:.2f}s"
            )


def read_frames(path: str | os.PathLike, start: int = 0, num_frames: int | None = None, threads: int = 0) -> np.ndarray:
    """All frames `[start, start+num_frames)` as one uint8 array `[n, H, W, 3]`."""
    stop = None if num_frames is None else start + num_frames
    chunks = list(iter_frames(path, chunk_size=64, start=start, stop=stop, threads=threads))
    if not chunks:
        raise VideoDecodeError(f"{path}: no frames in range start={start}, num_frames={num_frames}")
    return np.concatenate(chunks)


def count_frames(path: str | os.PathLike) -> int:
    """Count decodable frames exactly by decoding (container counts can be missing or wrong)."""
    container = _open(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        n = 0
        try:
            for _ in container.decode(stream):
                n += 1
        except (av.error.FFmpegError, ValueError) as e:
            raise _decode_error(path, f"decoding failed after {n} frames ({e})") from e
        if n == 0:
            raise _decode_error(path, "the decoder produced zero frames")
        return n
    finally:
        container.close()


# ------------------------------------------------------------------------------------------------------
# Encoding


@contextlib.contextmanager
def mp4_container(path: Path, options: dict | None = None):
    """An open PyAV output container whose file appears at `path` only once the block completes; on any
    error the container is closed and nothing is left under `path` (io/atomic.py)."""
    # The temporary name keeps the .mp4 suffix: the muxer picks the container format from it.
    with atomic_path(path, suffix=".mp4") as tmp:
        container = av.open(str(tmp), mode="w", options=options or {})
        try:
            yield container
        except BaseException:
            try:
                container.close()
            except Exception:
                pass
            raise
        container.close()


def write_mp4(
    path: str | os.PathLike,
    frames: np.ndarray | Iterator[np.ndarray],
    fps: float = 24.0,
    crf: int = 18,
    codec: str = "libx264",
    pix_fmt: str | None = None,
    deterministic: bool = False,
    faststart: bool = True,
) -> Path:
    """Write uint8 RGB frames `[T, H, W, 3]` (or an iterator of such chunks) as an H.264 mp4.

    The file is written to a temporary name beside `path` and renamed when complete, so a crash never
    leaves a half-written video under the final name. Odd frame sizes use yuv444p (yuv420p needs even
    sizes) unless `pix_fmt` is given. `deterministic` makes the bytes depend only on the frames and
    settings: x264 single-threaded and without its SIMD code (see the comment below; slower, meant for
    small generated sets). `faststart` puts the index at the front so players can start before the download ends.
    """
    path = Path(path)
    chunks = [frames] if isinstance(frames, np.ndarray) else frames
    with mp4_container(path, {"movflags": "+faststart"} if faststart else {}) as container:
        stream = None
        written = 0
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
                options = {"crf": str(crf)} if codec in ("libx264", "libx265") else {}
                if deterministic:
                    stream.thread_count = 1
                    if codec == "libx264":
                        # x264's SIMD routines make the bytes vary between identical runs (benchmarks/README.md,
                        # "Measurements behind code choices"), presumably by reading the uninitialised row padding
                        # of the input frames. The C paths only read the picture, so the output depends on the
                        # frames alone.
                        options["threads"] = "1"
                        options["x264-params"] = "asm=0"
                stream.options = options
            elif chunk.shape[1:3] != (stream.height, stream.width):
                raise ValueError(f"frame size changed mid-video: {chunk.shape[1:3]} vs {(stream.height, stream.width)}")
            for f in chunk:
                frame = av.VideoFrame.from_ndarray(f, format="rgb24")
                for packet in stream.encode(frame):
                    container.mux(packet)
                written += 1
        if stream is None or written == 0:
            raise ValueError("write_mp4 got zero frames")
        for packet in stream.encode():
            container.mux(packet)
    return path


def _fps_fraction(fps: float) -> Fraction:
    return Fraction(fps).limit_denominator(1001)


def list_videos(root: str | os.PathLike, recursive: bool = False, extensions=VIDEO_EXTENSIONS) -> list[Path]:
    """Video files under `root` (by extension), sorted by their path relative to `root` (POSIX form)."""
    root = Path(root)
    pattern = "**/*" if recursive else "*"
    exts = tuple(e.lower() for e in extensions)
    files = [
        p
        for p in root.glob(pattern)
        if p.is_file() and p.suffix.lower() in exts and not p.name.startswith(".")
    ]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())
