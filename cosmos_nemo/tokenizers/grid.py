"""Latent-grid arithmetic: the one place where frames/height/width, tokenizer compression, the latent
grid (T, H, W) and sequence lengths are converted into each other.

Cosmos video tokenizers are causal in time: latent frame 0 encodes pixel frame 0 alone and every later
latent frame encodes `t` more frames, so a clip of `1 + k*t` frames becomes `1 + k` latent frames. Space
is compressed by `h` and `w` exactly. Any combination that does not divide evenly is refused with the
arithmetic and the nearest values that would work, instead of being silently cropped (the reference
hard-codes 5x40x64 and breaks on anything else).

Token order inside a grid is raster order `t*H*W + h*W + w`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Sequence, Union

# Special token ids of the Cosmos AR video vocabulary (64,000 FSQ ids followed by these).
BOV_TOKEN_ID = 64000  # <|begin_of_video|>
EOV_TOKEN_ID = 64001  # <|end_of_video|> (never used by the 3D-RoPE models)
PAD_TOKEN_ID = 64002  # <|pad_token_video|>, also the ignore index of the loss
V2W_PAD_TO_MULTIPLE_OF = 64


class GridError(ValueError):
    """A frames/resolution/compression combination that cannot be tokenized exactly."""


@dataclass(frozen=True)
class Compression:
    """Tokenizer compression factors: `t` in time (causal), `h` x `w` in space."""

    t: int
    h: int
    w: int

    def __post_init__(self) -> None:
        for axis, value in (("t", self.t), ("h", self.h), ("w", self.w)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise GridError(f"compression factor {axis} must be a positive integer, got {value!r}")

    @classmethod
    def parse(cls, spec: "CompressionLike") -> "Compression":
        """Accepts a Compression, a (t, h, w) sequence, "8,16,16", "8x16x16", or a tokenizer name such as
        "DV8x16x16", "CV4x8x8", "Cosmos-1.0-Tokenizer-DV8x16x16" (image tokenizers "DI16x16" have t = 1)."""
        if isinstance(spec, Compression):
            return spec
        if isinstance(spec, str):
            text = spec.strip()
            match = re.search(r"(\d+)\s*[x,]\s*(\d+)\s*[x,]\s*(\d+)\s*$", text)
            if match:
                return cls(*(int(g) for g in match.groups()))
            match = re.search(r"[CD]I(\d+)x(\d+)\s*$", text)
            if match:
                return cls(1, int(match.group(1)), int(match.group(2)))
            raise GridError(
                f"cannot read a tokenizer compression from {spec!r}: write it as 't,h,w' (e.g. '8,16,16') "
                "or as a tokenizer name (e.g. 'DV8x16x16')"
            )
        values = tuple(spec)
        if len(values) != 3:
            raise GridError(f"compression needs 3 factors (t, h, w), got {len(values)}: {values!r}")
        return cls(*(int(v) for v in values))

    def __str__(self) -> str:
        return f"{self.t}x{self.h}x{self.w}"


CompressionLike = Union[Compression, str, Sequence[int]]


@dataclass(frozen=True)
class LatentGrid:
    """A latent grid of T frames, H rows and W columns; one token per cell."""

    T: int
    H: int
    W: int

    def __post_init__(self) -> None:
        for axis, value in (("T", self.T), ("H", self.H), ("W", self.W)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise GridError(f"latent grid {axis} must be a positive integer, got {value!r}")

    @classmethod
    def of(cls, grid: "GridLike") -> "LatentGrid":
        """A LatentGrid from a LatentGrid or a (T, H, W) sequence/tensor."""
        if isinstance(grid, LatentGrid):
            return grid
        values = [int(v) for v in (grid.tolist() if hasattr(grid, "tolist") else grid)]
        if len(values) != 3:
            raise GridError(f"a latent grid has 3 sizes (T, H, W), got {values!r}")
        return cls(*values)

    @property
    def num_tokens(self) -> int:
        return self.T * self.H * self.W

    @property
    def tokens_per_frame(self) -> int:
        return self.H * self.W

    def as_tuple(self) -> tuple[int, int, int]:
        return (self.T, self.H, self.W)

    def __iter__(self):
        return iter(self.as_tuple())

    def __str__(self) -> str:
        return f"{self.T}x{self.H}x{self.W}"


GridLike = Union[LatentGrid, Sequence[int]]


def _nearest_multiples(value: int, factor: int) -> list[int]:
    below = (value // factor) * factor
    above = below + factor
    return [v for v in (below, above) if v >= factor]


def _nearest_causal(frames: int, t: int) -> list[int]:
    below = 1 + ((frames - 1) // t) * t if frames >= 1 else 1
    above = below + t
    return [v for v in dict.fromkeys((below, above)) if v >= 1]


def _or_list(values: list[int]) -> str:
    return " or ".join(str(v) for v in values)


def check_frames(frames: int, compression: CompressionLike) -> int:
    """Number of latent frames for `frames` pixel frames, or GridError with the arithmetic."""
    c = Compression.parse(compression)
    if not isinstance(frames, int) or isinstance(frames, bool) or frames < 1:
        raise GridError(f"frames must be a positive integer, got {frames!r}")
    if (frames - 1) % c.t:
        raise GridError(
            f"frames must be 1 + {c.t}k for a {c} tokenizer (causal: frame 0 alone, then {c.t} frames per "
            f"latent frame): got {frames}; {_or_list(_nearest_causal(frames, c.t))} would work"
        )
    return 1 + (frames - 1) // c.t


def _check_spatial(name: str, value: int, factor: int, c: Compression) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise GridError(f"{name} must be a positive integer, got {value!r}")
    if value % factor:
        raise GridError(
            f"{name} must be a multiple of {factor} for a {c} tokenizer: got {value} "
            f"({value} / {factor} = {value / factor:g}); {_or_list(_nearest_multiples(value, factor))} would work"
        )
    return value // factor


def latent_grid(frames: int, height: int, width: int, compression: CompressionLike) -> LatentGrid:
    """The latent grid of a `frames x height x width` clip, e.g. 33x640x1024 at 8x16x16 -> 5x40x64.

    Every problem is reported at once, so a user fixes frames and resolution in one go."""
    c = Compression.parse(compression)
    errors, sizes = [], []
    for check in (
        lambda: check_frames(frames, c),
        lambda: _check_spatial("height", height, c.h, c),
        lambda: _check_spatial("width", width, c.w, c),
    ):
        try:
            sizes.append(check())
        except GridError as err:
            errors.append(str(err))
    if errors:
        raise GridError("; ".join(errors) if len(errors) == 1 else "invalid clip shape:\n  - " + "\n  - ".join(errors))
    return LatentGrid(*sizes)


def pixel_shape(grid: GridLike, compression: CompressionLike) -> tuple[int, int, int]:
    """(frames, height, width) of the clip that a latent grid decodes to."""
    g, c = LatentGrid.of(grid), Compression.parse(compression)
    return (1 + (g.T - 1) * c.t, g.H * c.h, g.W * c.w)


def num_tokens(frames: int, height: int, width: int, compression: CompressionLike) -> int:
    return latent_grid(frames, height, width, compression).num_tokens


def latent_frames_covering(frames: int, compression: CompressionLike) -> int:
    """Latent frames needed to hold the first `frames` pixel frames (e.g. 9 input frames at t=8 -> 2).

    Unlike `check_frames` this rounds up, for conditioning windows that need not fill a latent frame."""
    c = Compression.parse(compression)
    if frames < 1:
        raise GridError(f"frames must be at least 1, got {frames}")
    return 1 + math.ceil((frames - 1) / c.t)


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


@dataclass(frozen=True)
class SequenceLayout:
    """How a clip's tokens sit in a training/inference sequence.

    Base models: the `num_video_tokens` ids alone (`input_length == num_video_tokens`).
    Video2World: `[BOV] + ids + [PAD] * n`, where the model input (`tokens = stored[:-1]`) is padded to
    a multiple of 64 and the stored sequence has one more token so that `labels = stored[1:]`.
    """

    grid: LatentGrid
    num_prefix: int  # 1 for the BOV token of Video2World, else 0
    input_length: int  # model input length (RoPE / abs-PE table rows)

    @property
    def num_video_tokens(self) -> int:
        return self.grid.num_tokens

    @property
    def video_start(self) -> int:
        """Index of the first video token in the model input."""
        return self.num_prefix

    @property
    def num_pad_input(self) -> int:
        """PAD tokens in the model input."""
        return self.input_length - self.num_prefix - self.num_video_tokens

    @property
    def stored_length(self) -> int:
        """Tokens stored per document: the input plus the one extra label token (V2W: one more PAD)."""
        return self.input_length + 1 if self.num_prefix else self.input_length

    @property
    def num_pad_stored(self) -> int:
        return self.stored_length - self.num_prefix - self.num_video_tokens

    def stored_tokens(self, video_ids: Sequence[int], bov_id: int = BOV_TOKEN_ID, pad_id: int = PAD_TOKEN_ID) -> list[int]:
        """The stored sequence for one clip's ids (raster order)."""
        ids = [int(i) for i in video_ids]
        if len(ids) != self.num_video_tokens:
            raise GridError(
                f"a {self.grid} grid holds {self.num_video_tokens} tokens, got {len(ids)} ids"
            )
        return [bov_id] * self.num_prefix + ids + [pad_id] * self.num_pad_stored

    def loss_mask(self) -> list[int]:
        """1 where the label (stored[1:]) is a video token, 0 on PAD labels (V2W); length input_length."""
        if not self.num_prefix:
            return [1] * self.input_length
        return [1] * self.num_video_tokens + [0] * (self.input_length - self.num_video_tokens)


def base_layout(grid: GridLike) -> SequenceLayout:
    g = LatentGrid.of(grid)
    return SequenceLayout(grid=g, num_prefix=0, input_length=g.num_tokens)


def v2w_layout(grid: GridLike, pad_to_multiple_of: int = V2W_PAD_TO_MULTIPLE_OF) -> SequenceLayout:
    """Video2World: 1 BOV + N tokens padded to a multiple of 64, e.g. 5x40x64 -> input 12,864, stored 12,865."""
    g = LatentGrid.of(grid)
    if pad_to_multiple_of < 1:
        raise GridError(f"pad_to_multiple_of must be >= 1, got {pad_to_multiple_of}")
    return SequenceLayout(grid=g, num_prefix=1, input_length=round_up(1 + g.num_tokens, pad_to_multiple_of))


def check_stored_length(stored_length: int, grid: GridLike, v2w: bool) -> SequenceLayout:
    """Validates that a stored document matches the layout of its manifest grid."""
    layout = v2w_layout(grid) if v2w else base_layout(grid)
    if stored_length != layout.stored_length:
        kind = "Video2World ([BOV] + ids + PAD to a multiple of 64, plus 1)" if v2w else "base (ids only)"
        raise GridError(
            f"a {kind} document on a {layout.grid} grid has {layout.stored_length} tokens, got {stored_length}"
        )
    return layout
