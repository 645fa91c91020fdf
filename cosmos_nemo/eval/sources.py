"""Where TokenBench frames come from: pairing files, streaming decode, and the reference preprocessing.

Default: the frames of each file exactly as PyAV decodes them (uint8 RGB, bit-identical to mediapy's and
imageio's rgb24 pipe), streamed in chunks.

With `width` and/or `num_frames` (the NeMo `token_bench.py` flags), each side is preprocessed the way that
script does it before scoring:

1. keep the first ``max(ceil(fps * 10), 300)`` frames (10 s, at least 300 frames);
2. keep the first `num_frames` of those;
3. resize the short side to `width` with Lanczos, as `mediapy.resize_video` does (Pillow's LANCZOS on each
   uint8 RGB frame; the long side is ``int(long * width / short + 0.5)``; Pillow returns an unchanged copy
   when the size already matches);
4. only with `reencode`: write the result to H.264 mp4 the way `mediapy.write_video` does (libx264,
   ``-qp 20`` up to 640x480 pixels and ``-qp 28`` above, yuv420p for even sizes and yuv444p otherwise,
   the source frame rate), then decode that file. This is lossy for both sides, as in the reference.
"""

from __future__ import annotations

import math
import os
import queue
import threading
import uuid
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av
from av.video.reformatter import VideoReformatter
import numpy as np

from cosmos_nemo.io.video import iter_frames, list_videos, mp4_container, probe

# Filename prefixes of the TokenBench subsets (`video/preprocessing_script.py`).
TOKENBENCH_PREFIXES = ("bdd_100_", "egoexo4D_", "panda_", "bridgev2_")
# The reference clips every video to 10 s, and to no fewer than 300 frames.
CLIP_SECONDS = 10
CLIP_MIN_FRAMES = 300


@dataclass(frozen=True)
class Pairing:
    pairs: list[tuple[str, Path, Path]]  # (name relative to the roots, reference file, generated file)
    only_reference: list[str]
    only_generated: list[str]


def pair_videos(gt_root: str | os.PathLike, target_root: str | os.PathLike, ext: str = "mp4", recursive: bool = False) -> Pairing:
    """Pair files by their path relative to each root (top level only unless `recursive`)."""
    suffix = "." + ext.lstrip(".").lower()
    gt_root, target_root = Path(gt_root), Path(target_root)
    for root, what in ((gt_root, "--gtpath"), (target_root, "--targetpath")):
        if not root.is_dir():
            raise FileNotFoundError(f"{what} {root} is not a folder")
    gt = {p.relative_to(gt_root).as_posix(): p for p in list_videos(gt_root, recursive, (suffix,))}
    tg = {p.relative_to(target_root).as_posix(): p for p in list_videos(target_root, recursive, (suffix,))}
    common = sorted(gt.keys() & tg.keys())
    return Pairing(
        pairs=[(name, gt[name], tg[name]) for name in common],
        only_reference=sorted(gt.keys() - tg.keys()),
        only_generated=sorted(tg.keys() - gt.keys()),
    )


def subset_of(name: str) -> str:
    """The subset a file belongs to: a TokenBench prefix, else its basename up to the first underscore."""
    base = Path(name).name
    for prefix in TOKENBENCH_PREFIXES:
        if base.startswith(prefix):
            return prefix
    stem = Path(base).stem
    return stem.split("_", 1)[0] + "_" if "_" in stem else "(no prefix)"


@dataclass(frozen=True)
class Preprocess:
    """The NeMo `token_bench.py` preprocessing; inactive when both `width` and `num_frames` are None."""

    width: int | None = None  # target short side (the reference calls it width)
    num_frames: int | None = None
    reencode: bool = False

    @property
    def active(self) -> bool:
        return self.width is not None or self.num_frames is not None


def reference_resize_shape(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(height, width) after `token_bench.py`'s `resize_video`: short side set, long side rounded half up."""
    if height <= width:
        return short_side, int(width * short_side / height + 0.5)
    return int(height * short_side / width + 0.5), short_side


def resize_frames(frames: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Lanczos-resize uint8 `[n, H, W, 3]` to `shape` (H, W) exactly as `mediapy.resize_video` does."""
    from PIL import Image  # Pillow ships with scikit-image

    if frames.shape[1:3] == tuple(shape):
        return frames
    out = np.empty((len(frames), shape[0], shape[1], 3), dtype=np.uint8)
    for i, frame in enumerate(frames):
        out[i] = np.asarray(Image.fromarray(frame).resize((shape[1], shape[0]), resample=Image.Resampling.LANCZOS))
    return out


def clip_length(fps: float, num_frames: int | None) -> int:
    """How many leading frames the reference keeps: 10 s (at least 300 frames), then at most `num_frames`."""
    keep = max(math.ceil(fps * CLIP_SECONDS) if fps > 0 else 0, CLIP_MIN_FRAMES)
    return keep if num_frames is None else min(keep, num_frames)


def mediapy_qp(height: int, width: int) -> int:
    """`mediapy.VideoWriter`'s default quantiser when no rate is given."""
    return 20 if height * width <= 640 * 480 else 28


def encode_like_mediapy(path: Path, chunks: Iterator[np.ndarray], fps: float) -> Path:
    """Write uint8 RGB chunks as H.264 with `mediapy.write_video`'s defaults (see module docstring).

    The RGB->YUV conversion uses bicubic swscale, the ffmpeg command line's default for its automatic
    format conversion. Files are written under a temporary name and renamed when complete.
    """
    with mp4_container(path) as container:
        stream = None
        reformatter = VideoReformatter()  # one swscale context for the file, single-threaded (see io.video._rgb24)
        for chunk in chunks:
            if stream is None:
                h, w = chunk.shape[1:3]
                rate = Fraction(fps if fps > 0 else 30.0).limit_denominator(1001)
                stream = container.add_stream("libx264", rate=rate)
                stream.width, stream.height = w, h
                stream.pix_fmt = "yuv420p" if h % 2 == 0 and w % 2 == 0 else "yuv444p"
                stream.options = {"qp": str(mediapy_qp(h, w))}
            for frame in chunk:
                vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
                vf = reformatter.reformat(vf, format=stream.pix_fmt, interpolation="BICUBIC", threads=1)
                for packet in stream.encode(vf):
                    container.mux(packet)
        if stream is None:
            raise ValueError(f"no frames to encode into {path}")
        for packet in stream.encode():
            container.mux(packet)
    return path


def video_chunks(path: Path, pre: Preprocess, chunk_size: int, workdir: Path | None = None) -> Iterator[np.ndarray]:
    """uint8 RGB chunks `[n, H, W, 3]` of `path`, preprocessed as `pre` says."""
    if not pre.active:
        yield from iter_frames(path, chunk_size=chunk_size)
        return
    fps = probe(path).fps
    stop = clip_length(fps, pre.num_frames)

    def processed() -> Iterator[np.ndarray]:
        for chunk in iter_frames(path, chunk_size=chunk_size, stop=stop):
            if pre.width is not None:
                chunk = resize_frames(chunk, reference_resize_shape(chunk.shape[1], chunk.shape[2], pre.width))
            yield chunk

    if not pre.reencode:
        yield from processed()
        return
    if workdir is None:
        raise ValueError("re-encoding needs a work folder")
    encoded = workdir / f"{uuid.uuid4().hex}.mp4"
    try:
        encode_like_mediapy(encoded, processed(), fps)
        yield from iter_frames(encoded, chunk_size=chunk_size)
    finally:
        encoded.unlink(missing_ok=True)


_END = object()


def prefetch(source: Iterator, depth: int = 2) -> Iterator:
    """Run `source` in a background thread, `depth` items ahead, re-raising its errors here.

    Decoding (PyAV releases the GIL) then overlaps with the metric computation. Closing the returned
    generator stops the thread at its next item.
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def run() -> None:
        try:
            for item in source:
                while not stop.is_set():
                    try:
                        q.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put((_END, None))
        except BaseException as e:  # handed to the consumer, which re-raises it
            q.put((_END, e))
        finally:
            close = getattr(source, "close", None)
            if close is not None and stop.is_set():
                try:
                    close()
                except Exception:
                    pass

    thread = threading.Thread(target=run, daemon=True, name="tokenbench-decode")
    thread.start()
    try:
        while True:
            item, err = q.get()
            if err is not None:
                raise err
            if item is _END:
                return
            yield item
    finally:
        stop.set()
        # Drain so a producer blocked on put() can see the stop flag and exit.
        while thread.is_alive():
            try:
                q.get(timeout=0.1)
            except queue.Empty:
                pass
        thread.join()
