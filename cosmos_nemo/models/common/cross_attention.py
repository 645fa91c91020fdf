"""A megatron cross-attention from hidden states to a context of any width, with optional q/k norms.

megatron's own `CrossAttention` cannot serve the Cosmos models: it requires `num_query_groups ==
num_attention_heads`, projects the context from `hidden_size`, and has no QK-norm, while Cosmos AR
Video2World uses GQA-8 over a 1024-wide (or any) text context and the DiT uses per-head RMSNorm on q and k
over 1024-d text tokens. `CosmosCrossAttention` is a megatron `Attention` with its own projections:

- `linear_q`: hidden -> heads * head_dim (column parallel, by head);
- `linear_kv`: context_dim -> groups * 2 * head_dim, rows interleaved per KV group `[k_g; v_g]`
  (column parallel, by whole groups), the NeMo layout;
- `q_layernorm`/`k_layernorm` over the head dim; no RoPE; no mask by default (padded T5 positions are
  zero vectors that only dilute the softmax: the references do not mask them);
- `linear_proj`: row parallel.

Used by the AR Video2World layer (models/ar/spec.py) and the DiT layer (models/dit/layer.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch
from megatron.core.transformer.attention import Attention
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.spec_utils import ModuleSpec, build_module


@dataclass
class CosmosCrossAttentionSubmodules:
    linear_q: Union[ModuleSpec, type]
    linear_kv: Union[ModuleSpec, type]
    core_attention: Union[ModuleSpec, type]
    linear_proj: Union[ModuleSpec, type]
    q_layernorm: Union[ModuleSpec, type, None] = None
    k_layernorm: Union[ModuleSpec, type, None] = None


class CosmosCrossAttention(Attention):
    """GQA cross-attention from the hidden states to a context of width `context_dim` (see module doc)."""

    def __init__(
        self,
        config,
        submodules: CosmosCrossAttentionSubmodules,
        layer_number: int,
        attn_mask_type: AttnMaskType = AttnMaskType.no_mask,
        context_dim: Optional[int] = None,
        cp_comm_type: Optional[str] = None,
        pg_collection=None,
        name: Optional[str] = None,  # megatron >= 0.19's spec builder names modules; not used here
    ):
        super().__init__(
            config=config,
            submodules=submodules,
            layer_number=layer_number,
            attn_mask_type=attn_mask_type,
            attention_type="cross",
            cp_comm_type=cp_comm_type,
            pg_collection=pg_collection,
        )
        self.context_dim = context_dim or config.hidden_size
        common = dict(
            config=config,
            init_method=config.init_method,
            gather_output=False,
            bias=config.add_bias_linear,
            skip_bias_add=False,
            is_expert=False,
            tp_group=self.pg_collection.tp,
        )
        self.linear_q = build_module(submodules.linear_q, config.hidden_size, self.query_projection_size,
                                     tp_comm_buffer_name="q", **common)
        self.linear_kv = build_module(submodules.linear_kv, self.context_dim, 2 * self.kv_projection_size,
                                      tp_comm_buffer_name="kv", **common)
        norm_args = dict(hidden_size=self.hidden_size_per_attention_head, config=config, eps=config.layernorm_epsilon)
        self.q_layernorm = build_module(submodules.q_layernorm, **norm_args) if submodules.q_layernorm else None
        self.k_layernorm = build_module(submodules.k_layernorm, **norm_args) if submodules.k_layernorm else None

    def get_query_key_value_tensors(self, hidden_states, key_value_states, output_gate=False, split_qkv=True):
        if key_value_states is None:
            raise ValueError("a Video2World layer needs the text context (key_value_states) for cross-attention")
        sq, b = hidden_states.shape[:2]
        query, _ = self.linear_q(hidden_states)
        query = query.view(sq, b, self.num_attention_heads_per_partition, self.hidden_size_per_attention_head)
        mixed_kv, _ = self.linear_kv(key_value_states)
        sk = key_value_states.shape[0]
        mixed_kv = mixed_kv.view(sk, b, self.num_query_groups_per_partition, 2 * self.hidden_size_per_attention_head)
        key, value = torch.split(mixed_kv, self.hidden_size_per_attention_head, dim=-1)
        if self.q_layernorm is not None:
            query = self.q_layernorm(query)
        if self.k_layernorm is not None:
            key = self.k_layernorm(key)
        return query, key, value

    def forward(self, hidden_states, attention_mask=None, key_value_states=None, inference_context=None, **unused):
        """hidden_states [sq, b, hidden]; key_value_states [sk, b, context_dim]; attention_mask (optional)
        [b, 1, 1, sk] bool, True where a context position must NOT be attended (megatron convention).

        The context K/V do not change during generation, so with an inference context they are computed
        at the prefill step (offset 0) and reused while decoding."""
        cache_key = f"cross_attention_{self.layer_number}"
        decoding = inference_context is not None and not self.training and inference_context.sequence_len_offset > 0
        if decoding and cache_key in inference_context.key_value_memory_dict:
            key, value = inference_context.key_value_memory_dict[cache_key]
            sq, b = hidden_states.shape[:2]
            query, _ = self.linear_q(hidden_states)
            query = query.view(sq, b, self.num_attention_heads_per_partition, self.hidden_size_per_attention_head)
            if self.q_layernorm is not None:
                query = self.q_layernorm(query)
        else:
            query, key, value = self.get_query_key_value_tensors(hidden_states, key_value_states)
            if inference_context is not None and not self.training:
                inference_context.key_value_memory_dict[cache_key] = (key, value)
        mask_type = AttnMaskType.padding if attention_mask is not None else AttnMaskType.no_mask
        core = self.core_attention(query, key, value, attention_mask, attn_mask_type=mask_type)
        return self.linear_proj(core)
