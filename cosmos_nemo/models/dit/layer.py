"""The Cosmos DiT block as a megatron `TransformerLayer`, and its layer spec.

One block (diffusion_models.md §1.2) is three sublayers, each with its own adaLN modulation:

    shift, scale, gate = (up(down(SiLU(emb))) + adaln_lora_3D).chunk(3)
    x = x + gate * Sub(LayerNorm(x, no affine, eps 1e-6) * (1 + scale) + shift)

for Sub = self-attention (per-head q/k RMSNorm, 3D RoPE on q and k), cross-attention to the text tokens
(q/k RMSNorm, no RoPE, no mask), and the 4x GELU MLP; Predict1 adds its learnable position embedding to
x at the input of every block. The three modulations stay separate modules (`adaln_self_attn`,
`adaln_cross_attn`, `adaln_mlp`, each `down: D -> r`, `up: r -> 3D`, no bias) so that released weights
load and export exactly; the timestep embedding, the shared adaLN-LoRA term and the position embedding
are explicit forward arguments, never detached, so they get gradients through every block (NeMo's DiT
smuggles them through `attention_mask`/`packed_seq_params` and detaches them, diffusion_models.md §13).

Attention and MLP are megatron modules from the spec: `SelfAttention` (fused `linear_qkv`, q/k norms,
core attention, `linear_proj`), `CosmosCrossAttention` and `MLP`, local or Transformer Engine. The
self-attention keeps megatron's modules and applies megatron's `apply_rotary_pos_emb` (fused with TE);
Predict2.5 rotates q and k in float32 (`fp32_rope`). Under context parallelism the cross-attention is
built with a copy of the config without CP: queries are this rank's tokens, the text K/V are whole.

Modulations are per sample (`emb` [B, D]) or per latent frame (`emb` [B, T, D], Predict2/2.5); the
hidden states are megatron's `[S, B, D]` with S = T*H*W in raster order, so a per-frame modulation
broadcasts over the H*W tokens of its frame.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Optional, Union

import torch
import torch.nn.functional as F
from megatron.core.models.common.embeddings.rope_utils import apply_rotary_pos_emb
from megatron.core.transformer.attention import SelfAttention, SelfAttentionSubmodules
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.mlp import MLP, MLPSubmodules
from megatron.core.transformer.spec_utils import ModuleSpec, build_module
from megatron.core.transformer.transformer_layer import TransformerLayer, TransformerLayerSubmodules
from torch import nn

from cosmos_nemo.models.common.cross_attention import CosmosCrossAttention, CosmosCrossAttentionSubmodules
from cosmos_nemo.models.common.spec import transformer_engine_available


class DiTSelfAttention(SelfAttention):
    """megatron's `SelfAttention` modules with the DiT's forward: q/k norm, RoPE (optionally in float32),
    unmasked attention, output projection."""

    def __init__(self, config, submodules: SelfAttentionSubmodules, layer_number: int,
                 attn_mask_type: AttnMaskType = AttnMaskType.no_mask, cp_comm_type: Optional[str] = None,
                 pg_collection=None, fp32_rope: bool = False, **kwargs):
        super().__init__(config=config, submodules=submodules, layer_number=layer_number,
                         attn_mask_type=attn_mask_type, cp_comm_type=cp_comm_type, pg_collection=pg_collection)
        self.fp32_rope = fp32_rope

    def forward(self, hidden_states: torch.Tensor, rotary_pos_emb: Optional[torch.Tensor] = None, **unused):
        query, key, value = self.get_query_key_value_tensors(hidden_states)[:3]
        if rotary_pos_emb is not None:
            if self.fp32_rope:
                query = apply_rotary_pos_emb(query.float(), rotary_pos_emb, config=self.config).to(value.dtype)
                key = apply_rotary_pos_emb(key.float(), rotary_pos_emb, config=self.config).to(value.dtype)
            else:
                query = apply_rotary_pos_emb(query, rotary_pos_emb, config=self.config)
                key = apply_rotary_pos_emb(key, rotary_pos_emb, config=self.config)
        core = self.core_attention(query, key, value, None, attn_mask_type=AttnMaskType.no_mask)
        return self.linear_proj(core)


class AdaLNModulation(nn.Module):
    """`up(down(SiLU(emb)))` (+ the shared adaLN-LoRA term), split into `chunks` tensors of width D."""

    def __init__(self, hidden_size: int, lora_dim: int, chunks: int, config=None):
        super().__init__()
        dtype = config.params_dtype if config is not None else torch.float32
        self.chunks = chunks
        self.down = nn.Linear(hidden_size, lora_dim, bias=False, dtype=dtype)
        self.up = nn.Linear(lora_dim, chunks * hidden_size, bias=False, dtype=dtype)
        if config is not None and config.perform_initialization:
            config.init_method(self.down.weight)
            config.init_method(self.up.weight)

    def forward(self, emb: torch.Tensor, adaln_lora: Optional[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        out = self.up(self.down(F.silu(emb)))
        if adaln_lora is not None:
            out = out + adaln_lora[..., : out.shape[-1]]
        return out.chunk(self.chunks, dim=-1)


def _token_view(x: torch.Tensor, mod: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`x` [S, B, D] and a modulation [B, D] or [B, T, D] in shapes that broadcast (per-frame: x as
    [T, S/T, B, D], the modulation as [T, 1, B, D])."""
    if mod.dim() == 2:
        return x, mod.unsqueeze(0)
    frames = mod.shape[1]
    if x.shape[0] % frames:
        raise ValueError(f"{x.shape[0]} tokens do not split into {frames} frames")
    return x.view(frames, -1, *x.shape[1:]), mod.transpose(0, 1).unsqueeze(1)


def modulated_norm(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """`LayerNorm(x, no affine) * (1 + scale) + shift`, the modulation per sample or per frame."""
    normed = F.layer_norm(x, (x.shape[-1],), eps=eps)
    view, scale_v = _token_view(normed, scale)
    _, shift_v = _token_view(normed, shift)
    return (view * (1 + scale_v) + shift_v).reshape(x.shape)


def gated_residual(x: torch.Tensor, out: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """`x + gate * out`, the gate per sample or per frame."""
    view, gate_v = _token_view(out, gate)
    return x + (view * gate_v).reshape(x.shape)


@dataclass
class DiTLayerSubmodules(TransformerLayerSubmodules):
    """megatron's layer submodules (the norms are the DiT's own, so Identity there) plus the DiT's
    cross-attention spec, built with a CP-free config copy."""

    dit_cross_attention: Union[ModuleSpec, type] = IdentityOp


class DiTLayer(TransformerLayer):
    """One Cosmos DiT block (see the module docstring)."""

    def __init__(self, config, submodules: DiTLayerSubmodules, layer_number: int = 1, hidden_dropout=None,
                 pg_collection=None, vp_stage=None, adaln_lora_dim: int = 256, context_dim: int = 1024, **kwargs):
        super().__init__(config=config, submodules=submodules, layer_number=layer_number,
                         hidden_dropout=hidden_dropout, pg_collection=pg_collection, vp_stage=vp_stage)
        cross_config = config
        if config.context_parallel_size > 1:
            cross_config = copy.copy(config)
            cross_config.context_parallel_size = 1
        self.cross_attention = build_module(submodules.dit_cross_attention, config=cross_config,
                                            layer_number=self.layer_number, pg_collection=self.pg_collection
                                            if hasattr(self, "pg_collection") else pg_collection,
                                            context_dim=context_dim)
        d = config.hidden_size
        self.adaln_self_attn = AdaLNModulation(d, adaln_lora_dim, 3, config)
        self.adaln_cross_attn = AdaLNModulation(d, adaln_lora_dim, 3, config)
        self.adaln_mlp = AdaLNModulation(d, adaln_lora_dim, 3, config)
        self.norm_eps = config.layernorm_epsilon

    def _dropout(self, out: torch.Tensor) -> torch.Tensor:
        return F.dropout(out, p=self.hidden_dropout, training=self.training) if self.hidden_dropout else out

    def forward(self, hidden_states: torch.Tensor, emb: torch.Tensor, context: torch.Tensor,
                adaln_lora: Optional[torch.Tensor] = None, rotary_pos_emb: Optional[torch.Tensor] = None,
                extra_pos_emb: Optional[torch.Tensor] = None, **unused) -> torch.Tensor:
        """hidden_states [S, B, D]; emb [B, D] or [B, T, D] (the normalised timestep embedding); context
        [Lc, B, context_dim]; adaln_lora [B, (T,) 3D]; rotary_pos_emb [S, 1, 1, head_dim]; extra_pos_emb
        [S, 1 or B, D]. Returns the new hidden states [S, B, D]."""
        x = hidden_states
        if extra_pos_emb is not None:
            x = x + extra_pos_emb
        shift, scale, gate = self.adaln_self_attn(emb, adaln_lora)
        out, _ = self.self_attention(modulated_norm(x, shift, scale, self.norm_eps), rotary_pos_emb=rotary_pos_emb)
        x = gated_residual(x, self._dropout(out), gate)
        shift, scale, gate = self.adaln_cross_attn(emb, adaln_lora)
        out, _ = self.cross_attention(modulated_norm(x, shift, scale, self.norm_eps), key_value_states=context)
        x = gated_residual(x, self._dropout(out), gate)
        shift, scale, gate = self.adaln_mlp(emb, adaln_lora)
        out, _ = self.mlp(modulated_norm(x, shift, scale, self.norm_eps))
        return gated_residual(x, self._dropout(out), gate)


def dit_layer_spec(use_te: Optional[bool] = None, fp32_rope: bool = False, adaln_lora_dim: int = 256,
                   context_dim: int = 1024) -> ModuleSpec:
    """The DiT layer spec: megatron's Transformer Engine modules when TE and CUDA are present (`use_te=None`),
    the local ones (`SDPACoreAttention` core) elsewhere. No module fuses a norm into a linear: the DiT's
    norms are modulated."""
    if use_te is None:
        use_te = transformer_engine_available()
    if use_te:
        from megatron.core.extensions.transformer_engine import (
            TEColumnParallelLinear,
            TEDotProductAttention,
            TENorm,
            TERowParallelLinear,
        )

        column, row, core, qk_norm = TEColumnParallelLinear, TERowParallelLinear, TEDotProductAttention, TENorm
    else:
        from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
        from megatron.core.transformer.torch_norm import WrappedTorchNorm

        from cosmos_nemo.models.common.attention import SDPACoreAttention

        column, row, core, qk_norm = ColumnParallelLinear, RowParallelLinear, SDPACoreAttention, WrappedTorchNorm
    return ModuleSpec(
        module=DiTLayer,
        params={"adaln_lora_dim": adaln_lora_dim, "context_dim": context_dim},
        submodules=DiTLayerSubmodules(
            self_attention=ModuleSpec(
                module=DiTSelfAttention,
                params={"attn_mask_type": AttnMaskType.no_mask, "fp32_rope": fp32_rope},
                submodules=SelfAttentionSubmodules(linear_qkv=column, core_attention=core, linear_proj=row,
                                                   q_layernorm=qk_norm, k_layernorm=qk_norm),
            ),
            dit_cross_attention=ModuleSpec(
                module=CosmosCrossAttention,
                params={"attn_mask_type": AttnMaskType.no_mask},
                submodules=CosmosCrossAttentionSubmodules(linear_q=column, linear_kv=column, core_attention=core,
                                                          linear_proj=row, q_layernorm=qk_norm, k_layernorm=qk_norm),
            ),
            mlp=ModuleSpec(module=MLP, submodules=MLPSubmodules(linear_fc1=column, linear_fc2=row)),
        ),
    )
