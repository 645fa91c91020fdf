"""Layer specs of the Cosmos AR models.

Base (4B/12B): the shared GPT layer spec with QK-RMSNorm (models/common/spec.py).

Video2World (5B/13B): the same layer plus `pre_cross_attn_layernorm` (RMSNorm) and a cross-attention to
text embeddings between self-attention and the MLP, each with its residual, as the reference's
`CosmosVideo2WorldTransformerLayer` does. The cross-attention is `CosmosCrossAttention`
(models/common/cross_attention.py): GQA over the text context with RMSNorm on q and k, no RoPE, no mask.
"""

from __future__ import annotations

import copy
from typing import Optional

from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.spec_utils import ModuleSpec

from cosmos_nemo.models.common.cross_attention import CosmosCrossAttention, CosmosCrossAttentionSubmodules
from cosmos_nemo.models.common.spec import gpt_layer_spec, transformer_engine_available


def ar_layer_spec(video2world: bool = False, context_dim: Optional[int] = None, use_te: Optional[bool] = None) -> ModuleSpec:
    """The decoder-layer spec of a Cosmos AR model (local or Transformer Engine)."""
    if use_te is None:
        use_te = transformer_engine_available()
    spec = copy.deepcopy(gpt_layer_spec(qk_layernorm=True, use_te=use_te))
    if not video2world:
        return spec
    sub = spec.submodules
    self_sub = sub.self_attention.submodules
    if use_te:
        from megatron.core.extensions.transformer_engine import TEColumnParallelLinear, TENorm, TERowParallelLinear

        norm, column, row = TENorm, TEColumnParallelLinear, TERowParallelLinear
    else:
        from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear

        norm, column, row = sub.input_layernorm, ColumnParallelLinear, RowParallelLinear
    sub.pre_cross_attn_layernorm = norm
    sub.cross_attention = ModuleSpec(
        module=CosmosCrossAttention,
        params={"attn_mask_type": AttnMaskType.no_mask, "context_dim": context_dim},
        submodules=CosmosCrossAttentionSubmodules(
            linear_q=column,
            linear_kv=column,
            core_attention=self_sub.core_attention,
            linear_proj=row,
            q_layernorm=self_sub.q_layernorm,
            k_layernorm=self_sub.k_layernorm,
        ),
    )
    sub.cross_attn_bda = get_bias_dropout_add
    return spec
