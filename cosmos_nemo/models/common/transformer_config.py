"""megatron `TransformerConfig`s of the model families: each family gives its architecture's fields; the
run-time ones (dtype, CPU initialisation, dropout, recompute, the fusion flags of this machine, the config's
`extra_transformer_config` and call overrides) are set here, the same way for every family."""

from __future__ import annotations

import torch


def fusion_settings(on_gpu: bool) -> dict:
    """megatron's fusion flags. On a GPU, Megatron-LM's training defaults where the kernel exists: the
    jit-fused bias-dropout-add and bias-activation and the masked-softmax kernel always, the fused RoPE with
    Transformer Engine, gradient-accumulation fusion with its CUDA extension (Apex; megatron refuses to build
    a linear layer with the flag on and the extension missing). Without CUDA none of these kernels exists and
    the unfused paths, which compute the same thing, are used; the CPU adapter adds its own
    gradient-accumulation kernel to DDP-wrapped models (training/harness.py)."""
    if not on_gpu:
        return dict(bias_dropout_fusion=False, bias_activation_fusion=False, apply_rope_fusion=False,
                    masked_softmax_fusion=False, gradient_accumulation_fusion=False, persist_layer_norm=False)
    from megatron.core.tensor_parallel import layers

    from cosmos_nemo.models.common.spec import transformer_engine_available

    return dict(bias_dropout_fusion=True, bias_activation_fusion=True, masked_softmax_fusion=True,
                apply_rope_fusion=transformer_engine_available(),
                gradient_accumulation_fusion=bool(layers._grad_accum_fusion_available))


def build_transformer_config(model_cfg, dtype: torch.dtype, architecture: dict, fusion: dict | None = None,
                             **overrides):
    """`TransformerConfig(**architecture, **run-time fields)`; `model_cfg` supplies `hidden_dropout`,
    `attention_dropout`, `init_method_std`, `recompute_granularity` and `extra_transformer_config`; `fusion`
    changes single fusion flags (e.g. one a family's layers cannot use)."""
    from megatron.core.transformer.transformer_config import TransformerConfig

    on_gpu = torch.cuda.is_available()
    full = model_cfg.recompute_granularity == "full"
    kwargs = dict(
        architecture,
        hidden_dropout=model_cfg.hidden_dropout,
        attention_dropout=model_cfg.attention_dropout,
        init_method_std=model_cfg.init_method_std,
        pipeline_dtype=dtype,
        params_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        use_cpu_initialization=not on_gpu,
        recompute_granularity=model_cfg.recompute_granularity,
        recompute_method="uniform" if full else None,
        recompute_num_layers=1 if full else None,
        **{**fusion_settings(on_gpu), **(fusion or {})},
    )
    kwargs.update(model_cfg.extra_transformer_config)
    kwargs.update(overrides)
    return TransformerConfig(**kwargs)
