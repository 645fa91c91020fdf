"""Typed configs of the Cosmos diffusion transformers (DiT), and the named ones (`dit_config("predict1_7b_v2w")`).

One class covers Predict1 (Cosmos-1.0 diffusion), Predict2 and Predict2.5 (diffusion_models.md §1.1): every
block is adaLN-LoRA-modulated self-attention (per-head q/k RMSNorm, 3D RoPE), cross-attention to 1024-d
text tokens and a 4x GELU MLP; the variants differ only in the fields below.

Channel counts follow the reference: `in_channels` is the latent width (16) plus the condition-mask
channel of Video2World models; the padding-mask channel (`concat_padding_mask`) is added by the patch
embedding, so a Predict1 7B V2W patch embedding reads 18 channels x (1*2*2) = 72 inputs.

Parallel sizes are not part of this config: they come from megatron's parallel state at build time.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional, Union

import torch

from cosmos_nemo.models.dit.objectives import DiffusionObjective

GENERATIONS = ("predict1", "predict2", "predict2.5")


@dataclass
class DiTModelConfig:
    """One Cosmos DiT architecture."""

    name: str = "custom"
    family: str = "dit"  # the model family (models/family.py) that builds, trains and converts this config
    generation: str = "predict1"  # predict1 | predict2 | predict2.5: checkpoint key layout and defaults
    hidden_size: int = 4096
    num_layers: int = 28
    num_attention_heads: int = 32
    head_dim: int = 128
    mlp_ratio: float = 4.0
    in_channels: int = 17  # latent channels (+1 condition mask for Video2World); the padding mask is extra
    out_channels: int = 16
    video2world: bool = True  # whether `in_channels` includes the condition-mask channel
    concat_padding_mask: bool = True
    patch_spatial: int = 2
    patch_temporal: int = 1
    context_dim: int = 1024  # width of the text tokens the cross-attention reads
    adaln_lora_dim: int = 256
    # 3D RoPE: NTK ratios (t, h, w); fps modulation (Predict1) scales the frame index by base_fps / fps.
    rope_scale: tuple[float, float, float] = (2.0, 1.0, 1.0)
    rope_fps_modulation: bool = True
    base_fps: float = 24.0
    rope_theta: float = 10_000.0
    # Predict1: a learnable absolute position embedding (t, h, w tables, RMS-normalised sum) added at the
    # input of every block. Sizes in latent positions (max_img_h / patch etc.).
    extra_pos_emb: bool = True
    max_size: tuple[int, int, int] = (128, 120, 120)  # (T, H, W) in tokens: the learnable tables' rows
    # Predict2/2.5: one timestep per latent frame; Predict2.5 scales timesteps (0..1000) by 0.001.
    per_frame_timesteps: bool = False
    timestep_scale: float = 1.0
    # Predict2.5: text tokens come as [B, L, 100352] (28 normalised Reason1 layers) and are projected.
    crossattn_proj_in: Optional[int] = None
    # Predict2.5 ("wan fp32 strategy"): timestep embedding and final layer in fp32, q/k fp32 before RoPE.
    fp32_time_and_final: bool = False
    qk_fp32_rope: bool = False
    # Predict1: the Kendall log-variance head u(c_noise) of the EDM loss (`logvar.*` in model.pt).
    logvar_head: bool = False
    logvar_channels: int = 128
    norm_eps: float = 1e-6
    # Training-time knobs (the released models use no dropout).
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0
    init_method_std: float = 0.02
    recompute_granularity: Optional[str] = None  # None | "full"
    use_te: Optional[bool] = None  # None: Transformer Engine when TE and CUDA are present
    extra_transformer_config: dict = field(default_factory=dict)
    # The training objective and frame-conditioning policy (models/dit/objectives.py); a dict is accepted.
    objective: Union[DiffusionObjective, dict] = field(default_factory=DiffusionObjective)

    def __post_init__(self) -> None:
        if isinstance(self.objective, dict):
            self.objective = DiffusionObjective(**self.objective)
        if self.family != "dit":
            raise ValueError(f"DiTModelConfig.family must be 'dit', got {self.family!r}")
        if self.generation not in GENERATIONS:
            raise ValueError(f"generation must be one of {GENERATIONS}, got {self.generation!r}")
        if self.hidden_size != self.num_attention_heads * self.head_dim:
            raise ValueError(f"hidden_size {self.hidden_size} must equal num_attention_heads {self.num_attention_heads} "
                             f"x head_dim {self.head_dim}")
        if self.head_dim < 8 or self.head_dim % 2:
            raise ValueError(f"head_dim {self.head_dim} is too small or odd for the 3D RoPE split")
        self.rope_scale = tuple(float(r) for r in self.rope_scale)
        self.max_size = tuple(int(s) for s in self.max_size)
        if len(self.rope_scale) != 3 or len(self.max_size) != 3:
            raise ValueError("rope_scale and max_size are (t, h, w) triples")
        if self.recompute_granularity not in (None, "full"):
            raise ValueError(f"recompute_granularity must be None or 'full', got {self.recompute_granularity!r}")
        if self.video2world and self.in_channels < 2:
            raise ValueError("a Video2World model's in_channels includes the condition-mask channel")

    # ------------------------------------------------------------------------------------------------
    @property
    def latent_channels(self) -> int:
        """Channels of the latents themselves (without the condition mask)."""
        return self.in_channels - (1 if self.video2world else 0)

    @property
    def patch_in_features(self) -> int:
        """Inputs of the patch-embedding linear: (channels + padding mask) x patch volume."""
        channels = self.in_channels + (1 if self.concat_padding_mask else 0)
        return channels * self.patch_temporal * self.patch_spatial**2

    @property
    def patch_out_features(self) -> int:
        return self.out_channels * self.patch_temporal * self.patch_spatial**2

    @property
    def ffn_hidden_size(self) -> int:
        return int(self.hidden_size * self.mlp_ratio)

    def replace(self, **changes) -> "DiTModelConfig":
        return dataclasses.replace(self, **changes)

    def transformer_config(self, dtype: torch.dtype = torch.float32, **overrides):
        """megatron TransformerConfig, with TP/CP sizes from megatron's parallel state.

        The block norms of the DiT are parameter-free LayerNorms applied by the layer itself; megatron's
        `normalization` (RMSNorm, eps 1e-6) builds only the per-head q/k norms."""
        from megatron.core import parallel_state

        from cosmos_nemo.models.common.transformer_config import build_transformer_config

        ready = parallel_state.model_parallel_is_initialized()
        tp = parallel_state.get_tensor_model_parallel_world_size() if ready else 1
        pp = parallel_state.get_pipeline_model_parallel_world_size() if ready else 1
        cp = parallel_state.get_context_parallel_world_size() if ready else 1
        if self.num_attention_heads % tp:
            raise ValueError(f"tensor parallel size {tp} must divide num_attention_heads = {self.num_attention_heads}")
        if pp != 1:
            raise ValueError(
                "the DiT does not support pipeline parallelism: the timestep embedding modulates every block, so "
                "every stage would need it; use tensor, context and data parallelism (pipeline_parallel=1)"
            )
        architecture = dict(
            num_layers=self.num_layers,
            hidden_size=self.hidden_size,
            num_attention_heads=self.num_attention_heads,
            num_query_groups=self.num_attention_heads,
            kv_channels=self.head_dim,
            ffn_hidden_size=self.ffn_hidden_size,
            normalization="RMSNorm",
            layernorm_epsilon=self.norm_eps,
            gated_linear_unit=False,
            activation_func=torch.nn.functional.gelu,
            add_bias_linear=False,
            add_qkv_bias=False,
            qk_layernorm=True,
            tensor_model_parallel_size=tp,
            context_parallel_size=cp,
        )
        # The MLP is GELU without bias: megatron's bias-GELU fusion is the tanh approximation and needs a bias.
        return build_transformer_config(self, dtype, architecture, fusion={"bias_activation_fusion": False},
                                        **overrides)


# ---------------------------------------------------------------------------------------------------
# Named configs (diffusion_models.md §1.1; the same numbers as diffusers' TRANSFORMER_CONFIGS)

# Objectives (diffusion_models.md §3-4): Predict1 EDM + Kendall log-variance, sigma x sqrt(T) in the V2W and
# 14B recipes (not in 7B T2W), 0-2 conditional frames uniformly for V2W; Predict2 rectified flow in EDM form
# (lognormal sigma x sqrt(T), loss x 10, 1-2 conditional frames at sigma 1e-4); Predict2.5 flow matching
# (logit-normal, shift 5, timesteps x 1000, 0/1/2 conditional frames 0.5/0.25/0.25).
_EDM_T2W = dict(kind="edm", logvar=True, video_noise_multiplier="none")
_EDM_V2W = dict(kind="edm", logvar=True, video_noise_multiplier="sqrt_t",
                conditional_frames_probs={0: 1 / 3, 1: 1 / 3, 2: 1 / 3})
_RF2 = dict(kind="rf", time_distribution="lognormal_sigma", video_noise_multiplier="sqrt_t", loss_scale=10.0,
            timestep_input_scale=1.0, conditional_frames_probs={1: 0.5, 2: 0.5}, conditional_frame_timestep=1e-4)
_RF25 = dict(kind="rf", time_distribution="logitnormal", shift=5.0, timestep_input_scale=1000.0,
             conditional_frames_probs={0: 0.5, 1: 0.25, 2: 0.25})
_P1 = dict(generation="predict1", rope_fps_modulation=True, extra_pos_emb=True, logvar_head=True)
_P2 = dict(generation="predict2", rope_fps_modulation=False, extra_pos_emb=False, per_frame_timesteps=True,
           video2world=True, in_channels=17, objective=_RF2)
_P25 = dict(_P2, generation="predict2.5", timestep_scale=0.001, crossattn_proj_in=100_352,
            fp32_time_and_final=True, qk_fp32_rope=True, rope_scale=(1.0, 3.0, 3.0), objective=_RF25)
_7B = dict(hidden_size=4096, num_layers=28, num_attention_heads=32)
_14B = dict(hidden_size=5120, num_layers=36, num_attention_heads=40)
_2B = dict(hidden_size=2048, num_layers=28, num_attention_heads=16)
_TINY = dict(hidden_size=256, num_layers=2, num_attention_heads=4, head_dim=64, adaln_lora_dim=64)

NAMED_CONFIGS: dict[str, dict] = {
    "predict1_7b_t2w": dict(_P1, **_7B, in_channels=16, video2world=False, rope_scale=(2.0, 1.0, 1.0), objective=_EDM_T2W),
    "predict1_7b_v2w": dict(_P1, **_7B, in_channels=17, video2world=True, rope_scale=(2.0, 1.0, 1.0), objective=_EDM_V2W),
    "predict1_14b_t2w": dict(_P1, **_14B, in_channels=16, video2world=False, rope_scale=(2.0, 2.0, 2.0),
                             objective=dict(_EDM_T2W, video_noise_multiplier="sqrt_t")),
    "predict1_14b_v2w": dict(_P1, **_14B, in_channels=17, video2world=True, rope_scale=(2.0, 2.0, 2.0), objective=_EDM_V2W),
    "predict2_2b": dict(_P2, **_2B, rope_scale=(1.0, 3.0, 3.0)),
    "predict2_14b": dict(_P2, **_14B, rope_scale=(20 / 24, 2.0, 2.0)),
    "predict25_2b": dict(_P25, **_2B),
    "predict25_14b": dict(_P25, **_14B),
    # Tiny models of the real block structure for CPU runs and tests (head dim 64: RoPE split 24/20/20).
    "tiny_predict1_v2w": dict(_P1, **_TINY, in_channels=17, video2world=True, rope_scale=(2.0, 1.0, 1.0), objective=_EDM_V2W),
    "tiny_predict1_t2w": dict(_P1, **_TINY, in_channels=16, video2world=False, rope_scale=(2.0, 1.0, 1.0), objective=_EDM_T2W),
    "tiny_predict2": dict(_P2, **_TINY, rope_scale=(1.0, 3.0, 3.0)),
    "tiny_predict25": dict(_P25, **_TINY, crossattn_proj_in=512),
}
for _name, _fields in NAMED_CONFIGS.items():
    _fields["name"] = _name

_ALIASES = {
    "cosmos-1.0-diffusion-7b-text2world": "predict1_7b_t2w", "cosmos-1.0-diffusion-7b-video2world": "predict1_7b_v2w",
    "cosmos-1.0-diffusion-14b-text2world": "predict1_14b_t2w",
    "cosmos-1.0-diffusion-14b-video2world": "predict1_14b_v2w",
    "cosmos-predict1-7b-text2world": "predict1_7b_t2w", "cosmos-predict1-7b-video2world": "predict1_7b_v2w",
    "cosmos-predict1-14b-text2world": "predict1_14b_t2w", "cosmos-predict1-14b-video2world": "predict1_14b_v2w",
    "cosmos-2.0-diffusion-2b-video2world": "predict2_2b", "cosmos-2.0-diffusion-14b-video2world": "predict2_14b",
    "cosmos-predict2-2b-video2world": "predict2_2b", "cosmos-predict2-14b-video2world": "predict2_14b",
    "cosmos-2.5-predict-base-2b": "predict25_2b", "cosmos-2.5-predict-base-14b": "predict25_14b",
    "cosmos-predict2.5-2b": "predict25_2b", "cosmos-predict2.5-14b": "predict25_14b",
    "predict2.5_2b": "predict25_2b", "predict2.5_14b": "predict25_14b",
}

# The released (non-tiny) configs.
RELEASED = tuple(n for n in NAMED_CONFIGS if not n.startswith("tiny"))


def dit_config(name: str, **overrides) -> DiTModelConfig:
    """A named config (see `NAMED_CONFIGS`; NVIDIA/diffusers model names are accepted) with field overrides."""
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in NAMED_CONFIGS:
        raise KeyError(f"unknown DiT model config {name!r}; choose one of {sorted(NAMED_CONFIGS)}")
    return DiTModelConfig(**{**NAMED_CONFIGS[key], **overrides})


def dit_config_from_dict(fields: dict) -> DiTModelConfig:
    """A DiTModelConfig from plain data (a run folder's `config.yaml` `model:` section); unknown fields are an
    error naming them."""
    fields = dict(fields)
    known = {f.name for f in dataclasses.fields(DiTModelConfig)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"unknown DiT model config fields {unknown}; known: {sorted(known)}")
    for key in ("rope_scale", "max_size"):
        if fields.get(key) is not None:
            fields[key] = tuple(fields[key])
    if isinstance(fields.get("objective"), dict):
        fields["objective"] = DiffusionObjective(**fields["objective"])
    return DiTModelConfig(**fields)
