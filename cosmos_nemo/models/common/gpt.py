"""A plain Llama-style megatron GPTModel (no position embedding) for the harness demo and tests.

The Cosmos AR model (models/ar) adds 3D RoPE, QK-norm and Video2World pieces on the same GPTModel; this
builder is the smallest model that exercises TP, PP, DP, DDP, the optimizer and dist-ckpt.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from megatron.core.models.gpt import GPTModel
from megatron.core.transformer.transformer_config import TransformerConfig

from cosmos_nemo.models.common.spec import gpt_layer_spec


@dataclass
class PlainGPTConfig:
    num_layers: int = 2
    hidden_size: int = 64
    num_attention_heads: int = 4
    num_query_groups: int = 2
    ffn_hidden_size: int = 128
    vocab_size: int = 128
    max_sequence_length: int = 64
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0
    qk_layernorm: bool = True


def transformer_config(cfg: PlainGPTConfig, tensor_parallel: int, pipeline_parallel: int) -> TransformerConfig:
    return TransformerConfig(
        num_layers=cfg.num_layers,
        hidden_size=cfg.hidden_size,
        num_attention_heads=cfg.num_attention_heads,
        num_query_groups=cfg.num_query_groups,
        ffn_hidden_size=cfg.ffn_hidden_size,
        kv_channels=cfg.hidden_size // cfg.num_attention_heads,
        normalization="RMSNorm",
        gated_linear_unit=True,
        activation_func=torch.nn.functional.silu,
        add_bias_linear=False,
        hidden_dropout=cfg.hidden_dropout,
        attention_dropout=cfg.attention_dropout,
        qk_layernorm=cfg.qk_layernorm,
        tensor_model_parallel_size=tensor_parallel,
        pipeline_model_parallel_size=pipeline_parallel,
        pipeline_dtype=torch.float32,
        use_cpu_initialization=True,
        # The fused kernels below are CUDA/apex-only; the unfused paths compute the same thing.
        bias_dropout_fusion=False,
        apply_rope_fusion=False,
        masked_softmax_fusion=False,
        gradient_accumulation_fusion=False,
        persist_layer_norm=False,
    )


def build_plain_gpt(cfg: PlainGPTConfig, tensor_parallel: int, pipeline_parallel: int, pre_process: bool, post_process: bool) -> GPTModel:
    return GPTModel(
        config=transformer_config(cfg, tensor_parallel, pipeline_parallel),
        transformer_layer_spec=gpt_layer_spec(qk_layernorm=cfg.qk_layernorm),
        vocab_size=cfg.vocab_size,
        max_sequence_length=cfg.max_sequence_length,
        position_embedding_type="none",
        share_embeddings_and_output_weights=False,
        pre_process=pre_process,
        post_process=post_process,
    )
