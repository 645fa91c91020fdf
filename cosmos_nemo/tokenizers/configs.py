"""Named Cosmos video-tokenizer configurations and the registry of names and Hugging Face hub ids.

The released checkpoints share one architecture (factorized causal 3D conv encoder/decoder, Haar patcher,
mid-block spatial+temporal attention) and differ only by the fields below. Values follow NVIDIA's
`cosmos1/models/tokenizer/networks/configs.py` (0.1 / 1.0 releases) and
`cosmos_predict1/tokenizer/networks/configs.py` (the `Cosmos-Tokenize1-*-360p/720p` releases).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .fsq import DEFAULT_LEVELS


@dataclass(frozen=True)
class TokenizerConfig:
    """Constructor arguments of a causal video tokenizer (field names as in the reference config dicts)."""

    name: str = "custom"
    discrete: bool = True  # DV (FSQ indices) vs CV (continuous latents, identity posterior)
    temporal_compression: int = 8
    spatial_compression: int = 16
    channels: int = 128
    channels_mult: tuple[int, ...] = (2, 4, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (32,)
    resolution: int = 1024
    patch_size: int = 4
    patch_method: str = "haar"
    in_channels: int = 3
    out_channels: int = 3
    z_channels: int = 16
    z_factor: int = 1
    latent_channels: int = 16  # CV only
    embedding_dim: int = 6  # DV only: FSQ dimensionality
    levels: tuple[int, ...] = DEFAULT_LEVELS  # DV only
    dropout: float = 0.0
    legacy_mode: bool = False
    hub_id: str | None = None  # where the released weights live, when there are any
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "channels_mult", tuple(int(v) for v in self.channels_mult))
        object.__setattr__(self, "attn_resolutions", tuple(int(v) for v in self.attn_resolutions))
        object.__setattr__(self, "levels", tuple(int(v) for v in self.levels))
        if self.patch_method != "haar":
            raise ValueError(f"only the 'haar' patch method of the released tokenizers is supported, got {self.patch_method!r}")
        for what, factor in (("temporal", self.temporal_compression), ("spatial", self.spatial_compression)):
            if factor < self.patch_size or factor & (factor - 1):
                raise ValueError(
                    f"{what}_compression must be a power of two >= patch_size ({self.patch_size}), got {factor}"
                )

    @property
    def compression(self) -> tuple[int, int, int]:
        return (self.temporal_compression, self.spatial_compression, self.spatial_compression)

    @property
    def vocab_size(self) -> int:
        n = 1
        for v in self.levels:
            n *= v
        return n if self.discrete else 0

    @property
    def latent_dim(self) -> int:
        """Channels of what `encode` returns for CV, or of the FSQ codes for DV."""
        return self.embedding_dim if self.discrete else self.latent_channels

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k in ("channels_mult", "attn_resolutions", "levels"):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TokenizerConfig":
        d = dict(d)
        # Accept the reference's config dicts too: `name` is "DV"/"CV" there and `quantizer` marks DV.
        if "discrete" not in d:
            kind = str(d.get("name", "")).upper()
            d["discrete"] = kind.startswith("DV") or "quantizer" in d
        known = {f.name for f in dataclasses.fields(cls)}
        extra = {k: v for k, v in d.items() if k not in known}
        d = {k: v for k, v in d.items() if k in known}
        d.setdefault("extra", {}).update(extra)
        return cls(**d)

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    def replace(self, **changes: Any) -> "TokenizerConfig":
        return dataclasses.replace(self, **changes)


def _cv(name: str, t: int, s: int, hub: str | None, **kw: Any) -> TokenizerConfig:
    return TokenizerConfig(name=name, discrete=False, temporal_compression=t, spatial_compression=s, hub_id=hub, **kw)


def _dv(name: str, t: int, s: int, hub: str | None, **kw: Any) -> TokenizerConfig:
    return TokenizerConfig(name=name, discrete=True, temporal_compression=t, spatial_compression=s, hub_id=hub, **kw)


def _released() -> list[TokenizerConfig]:
    out = []
    for prefix in ("Cosmos-0.1-Tokenizer",):
        # CV4x8x8 0.1 uses channels_mult [2,4] in both halves (its encoder.jit is 61 MB = 30.1 M bf16 params).
        out.append(_cv(f"{prefix}-CV4x8x8", 4, 8, f"nvidia/{prefix}-CV4x8x8", channels_mult=(2, 4)))
        out.append(_cv(f"{prefix}-CV8x8x8", 8, 8, f"nvidia/{prefix}-CV8x8x8"))
        out.append(_cv(f"{prefix}-CV8x16x16", 8, 16, f"nvidia/{prefix}-CV8x16x16"))
        out.append(_dv(f"{prefix}-DV4x8x8", 4, 8, f"nvidia/{prefix}-DV4x8x8"))
        out.append(_dv(f"{prefix}-DV8x8x8", 8, 8, f"nvidia/{prefix}-DV8x8x8"))
        out.append(_dv(f"{prefix}-DV8x16x16", 8, 16, f"nvidia/{prefix}-DV8x16x16"))
    p = "Cosmos-1.0-Tokenizer"
    out.append(_cv(f"{p}-CV8x8x8", 8, 8, f"nvidia/{p}-CV8x8x8"))
    out.append(_dv(f"{p}-DV8x16x16", 8, 16, f"nvidia/{p}-DV8x16x16"))
    out.append(_cv(f"{p}-CV4x8x8-LowRes", 4, 8, f"nvidia/{p}-CV4x8x8-LowRes", patch_size=2))
    out.append(_dv(f"{p}-DV4x8x8-LowRes", 4, 8, f"nvidia/{p}-DV4x8x8-LowRes", patch_size=2, z_channels=256))
    p = "Cosmos-Tokenize1"
    out.append(_cv(f"{p}-CV8x8x8-720p", 8, 8, f"nvidia/{p}-CV8x8x8-720p"))
    out.append(_cv(f"{p}-CV4x8x8-360p", 4, 8, f"nvidia/{p}-CV4x8x8-360p", patch_size=2))
    out.append(_dv(f"{p}-DV8x16x16-720p", 8, 16, f"nvidia/{p}-DV8x16x16-720p"))
    out.append(_dv(f"{p}-DV4x8x8-360p", 4, 8, f"nvidia/{p}-DV4x8x8-360p", patch_size=2, z_channels=256))
    return out


# `tiny`: the real architecture at a width that trains on a CPU in about a minute (the quickstart's tokenizer).
# 4x8x8 compression like DV4x8x8, patch 4 so the network starts at H/4, one spatial downsampling level.
TINY = TokenizerConfig(
    name="tiny",
    discrete=True,
    temporal_compression=4,
    spatial_compression=8,
    channels=32,
    channels_mult=(1, 2),
    num_res_blocks=1,
    patch_size=4,
    z_channels=16,
)
TINY_CV = TINY.replace(name="tiny-cv", discrete=False, latent_channels=16)

REGISTRY: dict[str, TokenizerConfig] = {c.name: c for c in _released() + [TINY, TINY_CV]}
HUB_IDS: dict[str, str] = {c.hub_id: c.name for c in REGISTRY.values() if c.hub_id}

# Parameter counts of the released definitions (encoder, decoder), from the reference table; tests check them.
REFERENCE_PARAM_COUNTS: dict[str, tuple[int, int]] = {
    "CV4x8x8": (30_126_896, 43_065_232),
    "CV8x8x8": (42_914_864, 62_738_832),
    "CV8x16x16": (45_537_328, 65_361_296),
    "DV4x8x8": (42_717_830, 61_951_728),
    "DV8x8x8": (42_914_694, 62_738_672),
    "DV8x16x16": (45_537_158, 65_361_136),
    "CV4x8x8-patch2": (45_343_792, 64_865_024),
    "DV4x8x8-patch2": (46_647_302, 65_972_464),
}


def reference_count_key(cfg: TokenizerConfig) -> str:
    """The row of `REFERENCE_PARAM_COUNTS` a released config belongs to."""
    t, s, _ = cfg.compression
    key = f"{'DV' if cfg.discrete else 'CV'}{t}x{s}x{s}"
    return key + ("-patch2" if cfg.patch_size == 2 else "")


def resolve_name(name_or_hub_id: str) -> TokenizerConfig | None:
    """The registered config for a registry name or hub id (case-insensitive), or None."""
    if name_or_hub_id in REGISTRY:
        return REGISTRY[name_or_hub_id]
    if name_or_hub_id in HUB_IDS:
        return REGISTRY[HUB_IDS[name_or_hub_id]]
    low = name_or_hub_id.lower()
    for key, cfg in REGISTRY.items():
        if key.lower() == low or (cfg.hub_id and cfg.hub_id.lower() == low):
            return cfg
    return None


def get_config(name_or_hub_id: str) -> TokenizerConfig:
    cfg = resolve_name(name_or_hub_id)
    if cfg is None:
        raise KeyError(f"unknown tokenizer {name_or_hub_id!r}; known names: {', '.join(sorted(REGISTRY))}")
    return cfg
