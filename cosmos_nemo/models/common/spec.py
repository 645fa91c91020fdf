"""Layer specs: Transformer Engine on GPU when it is installed, megatron's local modules elsewhere.

The local spec is megatron's own `get_gpt_layer_local_spec` with RMSNorm, with its core attention
replaced by `SDPACoreAttention` (megatron's local `DotProductAttention` hard-codes CUDA buffers).
"""

from __future__ import annotations

import torch
from megatron.core.transformer.spec_utils import ModuleSpec

from cosmos_nemo.models.common.attention import SDPACoreAttention


def transformer_engine_available() -> bool:
    """True when Transformer Engine imports and a CUDA device is present."""
    if not torch.cuda.is_available():
        return False
    try:
        import transformer_engine  # noqa: F401
    except ImportError:
        return False
    return True


def gpt_layer_spec(qk_layernorm: bool = False, use_te: bool | None = None) -> ModuleSpec:
    """The GPT decoder-layer spec: pre-RMSNorm, attention (optionally with QK-RMSNorm), SwiGLU-ready MLP.

    `use_te=None` picks Transformer Engine when it is available, the local spec otherwise.
    """
    if use_te is None:
        use_te = transformer_engine_available()
    if use_te:
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec

        return get_gpt_layer_with_transformer_engine_spec(qk_layernorm=qk_layernorm)
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    spec = get_gpt_layer_local_spec(qk_layernorm=qk_layernorm, normalization="RMSNorm")
    spec.submodules.self_attention.submodules.core_attention = SDPACoreAttention
    return spec
