"""A megatron core-attention module on `torch.nn.functional.scaled_dot_product_attention`.

megatron's local `DotProductAttention` allocates its score buffer on `torch.cuda.current_device()` and
materialises the full [b, heads, s, s] score matrix. This module has the same constructor and forward
signature, so it drops into a megatron layer spec as `core_attention`, and lets torch pick the kernel
(flash / memory-efficient on GPU, the fused CPU kernel on CPU; the math kernel under megatron's
`deterministic_mode`).

Inputs are megatron's `[s, b, heads, head_dim]` query/key/value (key/value may have fewer heads: GQA);
the output is `[s_q, b, heads * head_dim]`. Masking follows megatron's convention: `attention_mask` is
True where attention is *not* allowed. With a causal mask type and more keys than queries (KV-cache
decoding), query i sits at absolute position `s_k - s_q + i` and sees keys up to that position.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Optional

import torch
import torch.nn.functional as F
from megatron.core import tensor_parallel
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.utils import divide


class SDPACoreAttention(MegatronModule):
    def __init__(
        self,
        config: TransformerConfig,
        layer_number: int,
        attn_mask_type: AttnMaskType,
        attention_type: str,
        attention_dropout: Optional[float] = None,
        softmax_scale: Optional[float] = None,
        cp_comm_type: Optional[str] = None,
        pg_collection=None,
    ):
        super().__init__(config=config)
        if config.context_parallel_size != 1:
            raise ValueError("context parallelism needs the Transformer Engine spec (TEDotProductAttention)")
        if config.apply_query_key_layer_scaling:
            raise ValueError("apply_query_key_layer_scaling is not supported by SDPACoreAttention")
        self.layer_number = max(1, layer_number)
        self.attn_mask_type = attn_mask_type
        self.attention_type = attention_type
        if pg_collection is not None:
            tp_size = pg_collection.tp.size()
        else:
            from megatron.core import parallel_state

            tp_size = parallel_state.get_tensor_model_parallel_world_size()
        self.heads_per_partition = divide(config.num_attention_heads, tp_size)
        self.groups_per_partition = divide(config.num_query_groups or config.num_attention_heads, tp_size)
        head_dim = config.kv_channels
        self.softmax_scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(head_dim)
        self.dropout_p = config.attention_dropout if attention_dropout is None else attention_dropout

    def _kernels(self):
        """With megatron's `deterministic_mode` on a GPU, only SDPA's math kernel: the memory-efficient
        kernel's backward accumulates with atomics (run-to-run differences). Elsewhere torch picks."""
        if self.config.deterministic_mode and torch.cuda.is_available():
            from torch.nn.attention import SDPBackend, sdpa_kernel

            return sdpa_kernel([SDPBackend.MATH])
        return nullcontext()

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: Optional[torch.Tensor],
        attn_mask_type: Optional[AttnMaskType] = None,
        attention_bias: Optional[torch.Tensor] = None,
        packed_seq_params=None,
    ) -> torch.Tensor:
        if packed_seq_params is not None:
            raise ValueError("packed sequences are not supported by SDPACoreAttention (clips are never packed)")
        if attention_bias is not None:
            raise ValueError("attention_bias is not supported by SDPACoreAttention")
        mask_type = attn_mask_type if attn_mask_type is not None else self.attn_mask_type
        sq, b, heads, dim = query.shape
        sk = key.shape[0]
        q = query.permute(1, 2, 0, 3)  # [b, heads, sq, dim]
        k = key.permute(1, 2, 0, 3)
        v = value.permute(1, 2, 0, 3)
        if k.shape[1] != heads:
            rep = heads // k.shape[1]
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)

        is_causal = False
        mask = None
        if mask_type == AttnMaskType.causal and attention_mask is None:
            if sq == sk:
                is_causal = True
            else:
                offset = sk - sq
                rows = torch.arange(sq, device=q.device).unsqueeze(1) + offset
                mask = torch.arange(sk, device=q.device).unsqueeze(0) <= rows  # True = attend
        elif attention_mask is not None:
            mask = ~attention_mask.to(torch.bool)

        dropout_p = self.dropout_p if self.training else 0.0
        with self._kernels(), (tensor_parallel.get_cuda_rng_tracker().fork() if dropout_p > 0.0 else nullcontext()):
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal,
                                                 scale=self.softmax_scale)
        # [b, heads, sq, dim] -> [sq, b, heads * dim]
        return out.permute(2, 0, 1, 3).reshape(sq, b, heads * dim)
