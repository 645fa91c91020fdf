"""Cosmos video tokenizers, text encoders and latent-grid arithmetic.

This room owns the causal video tokenizers (discrete FSQ DV* and continuous CV*), their weight loaders
for released TorchScript and safetensors files, the text encoders (T5 for production, a small offline
encoder for tests), and the one place where frames/height/width are converted to a latent grid and a
sequence length (grid.py).

The tokenizer API is exported lazily, so `import cosmos_nemo.tokenizers.grid` stays light:

    from cosmos_nemo.tokenizers import load_video_tokenizer
    tok = load_video_tokenizer("nvidia/Cosmos-0.1-Tokenizer-DV4x8x8")   # or "tiny", or a folder
    indices = tok.encode(video)        # video [B,3,1+k·t,H,W] in [-1,1] → int64 [B,1+k,H/s,W/s]
    video_hat = tok.decode(indices)
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "CausalVideoTokenizer": ".api",
    "load_video_tokenizer": ".api",
    "VideoShapeError": ".api",
    "TokenizerConfig": ".configs",
    "REGISTRY": ".configs",
    "get_config": ".configs",
    "FSQuantizer": ".fsq",
    "TokenizerLoadError": ".loading",
    "TokenizerNotAvailableError": ".loading",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
