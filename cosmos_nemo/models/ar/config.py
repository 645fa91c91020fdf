"""Typed configs of the Cosmos AR models, and the named ones (`ar_config("4b")`).

Sizes follow the reference table (ar_models.md §1.1): GQA 32/8 heads of 128, SwiGLU 14336, RMSNorm 1e-5,
QK-RMSNorm, theta 5e5, untied 64,000-row output; 12B/13B add YaRN; Video2World (5B/13B) adds
cross-attention to 1024-d T5 embeddings, the sin/cos absolute PE before every layer and a BOV token
(embedding rounded up to 64,064 rows, output 64,000).

Parallel sizes are not part of this config: they come from megatron's parallel state at build time.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

import torch

from cosmos_nemo.models.common.rope import YarnConfig
from cosmos_nemo.tokenizers.grid import (
    BOV_TOKEN_ID,
    PAD_TOKEN_ID,
    V2W_PAD_TO_MULTIPLE_OF,
    LatentGrid,
    base_layout,
    round_up,
    v2w_layout,
)

FSQ_VOCAB = 64_000


@dataclass
class ARModelConfig:
    """One Cosmos AR architecture. `vocab_size` is the embedding row count; `output_vocab_size` the
    output-layer row count (None: the same)."""

    name: str = "custom"
    family: str = "ar"  # the model family (models/family.py) that builds, trains and converts this config
    num_layers: int = 16
    hidden_size: int = 4096
    num_attention_heads: int = 32
    num_query_groups: int = 8
    kv_channels: int = 128
    ffn_hidden_size: int = 14336
    vocab_size: int = FSQ_VOCAB
    output_vocab_size: Optional[int] = None
    # Tokenizer swap to another vocabulary (DESIGN's vocabulary rule): when fine-tuning from a released
    # checkpoint with other row counts, resize its embedding/output rows (new rows = mean of the old, logged).
    resize_vocab: bool = False
    norm_eps: float = 1e-5
    rope_theta: float = 500_000.0
    yarn: Optional[YarnConfig] = None
    # Largest latent grid the model is used with (sizes KV caches and `seq_length`); any smaller or
    # differently shaped grid works at run time.
    max_grid: tuple[int, int, int] = (5, 40, 64)
    # Video2World: cross-attention to text embeddings, abs-PE before every layer, BOV/PAD layout.
    video2world: bool = False
    context_dim: int = 1024
    context_length: int = 512
    abs_pos_emb_dtype: str = "bfloat16"  # the reference's table rounding
    pad_to_multiple_of: int = V2W_PAD_TO_MULTIPLE_OF
    bov_token_id: int = BOV_TOKEN_ID
    pad_token_id: int = PAD_TOKEN_ID
    # Training-time knobs (the released models use no dropout).
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0
    init_method_std: float = 0.02
    recompute_granularity: Optional[str] = None  # None | "full" | "selective"
    use_te: Optional[bool] = None  # None: Transformer Engine when TE and CUDA are present
    extra_transformer_config: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.family != "ar":
            raise ValueError(f"ARModelConfig.family must be 'ar', got {self.family!r}")
        if self.output_vocab_size is None:
            self.output_vocab_size = self.vocab_size
        self.max_grid = LatentGrid.of(self.max_grid).as_tuple()
        if self.num_attention_heads % self.num_query_groups:
            raise ValueError(
                f"num_attention_heads {self.num_attention_heads} must be a multiple of num_query_groups "
                f"{self.num_query_groups}"
            )
        if self.output_vocab_size > self.vocab_size:
            raise ValueError(f"output_vocab_size {self.output_vocab_size} > embedding rows {self.vocab_size}")
        if self.video2world and self.vocab_size <= self.bov_token_id:
            raise ValueError(
                f"a Video2World model embeds the BOV token {self.bov_token_id}: vocab_size must exceed it, "
                f"got {self.vocab_size}"
            )
        if self.abs_pos_emb_dtype not in ("bfloat16", "float32", "float64"):
            raise ValueError(f"abs_pos_emb_dtype must be bfloat16/float32/float64, got {self.abs_pos_emb_dtype}")

    @property
    def head_dim(self) -> int:
        return self.kv_channels

    @property
    def seq_length(self) -> int:
        """Model input length for the largest grid (12,800 base / 12,864 V2W at 5x40x64)."""
        layout = v2w_layout(self.max_grid, self.pad_to_multiple_of) if self.video2world else base_layout(self.max_grid)
        return layout.input_length

    def layout(self, grid):
        """The sequence layout of a clip on `grid` for this model (base or V2W)."""
        return v2w_layout(grid, self.pad_to_multiple_of) if self.video2world else base_layout(grid)

    def replace(self, **changes) -> "ARModelConfig":
        return dataclasses.replace(self, **changes)

    def transformer_config(self, dtype: torch.dtype = torch.float32, **overrides):
        """megatron TransformerConfig, with TP/PP sizes from megatron's parallel state."""
        from megatron.core import parallel_state

        tp = parallel_state.get_tensor_model_parallel_world_size() if parallel_state.model_parallel_is_initialized() else 1
        pp = parallel_state.get_pipeline_model_parallel_world_size() if parallel_state.model_parallel_is_initialized() else 1
        for name, value in (("num_attention_heads", self.num_attention_heads), ("num_query_groups", self.num_query_groups)):
            if value % tp:
                raise ValueError(f"tensor parallel size {tp} must divide {name} = {value}")
        if self.num_layers % pp:
            raise ValueError(f"pipeline parallel size {pp} must divide num_layers = {self.num_layers}")
        from cosmos_nemo.models.common.transformer_config import build_transformer_config

        architecture = dict(
            num_layers=self.num_layers,
            hidden_size=self.hidden_size,
            num_attention_heads=self.num_attention_heads,
            num_query_groups=self.num_query_groups,
            kv_channels=self.kv_channels,
            ffn_hidden_size=self.ffn_hidden_size,
            normalization="RMSNorm",
            layernorm_epsilon=self.norm_eps,
            gated_linear_unit=True,
            activation_func=torch.nn.functional.silu,
            add_bias_linear=False,
            add_qkv_bias=False,
            qk_layernorm=True,
            tensor_model_parallel_size=tp,
            pipeline_model_parallel_size=pp,
        )
        return build_transformer_config(self, dtype, architecture, **overrides)


_COSMOS_4B = dict(num_layers=16, hidden_size=4096)
_COSMOS_12B = dict(num_layers=40, hidden_size=5120, yarn=YarnConfig(2.0, 4.0, 1.0, (3, 40, 64)))
_V2W = dict(video2world=True, vocab_size=64_064, output_vocab_size=FSQ_VOCAB, context_dim=1024, context_length=512)
_TINY = dict(num_layers=2, hidden_size=256, num_attention_heads=4, num_query_groups=2, kv_channels=64, ffn_hidden_size=512)

NAMED_CONFIGS: dict[str, dict] = {
    "4b": dict(name="4b", **_COSMOS_4B),
    "12b": dict(name="12b", **_COSMOS_12B),
    "5b_v2w": dict(name="5b_v2w", **_COSMOS_4B, **_V2W),
    "13b_v2w": dict(name="13b_v2w", **_COSMOS_12B, **_V2W),
    # Tiny models of the real block structure for CPU runs and tests; same FSQ vocabulary and special ids.
    "tiny": dict(name="tiny", **_TINY, max_grid=(3, 4, 6)),
    "tiny_v2w": dict(
        name="tiny_v2w", **_TINY, max_grid=(3, 4, 6), video2world=True, vocab_size=64_064,
        output_vocab_size=FSQ_VOCAB, context_dim=384, context_length=16,
    ),
}

# Parameter counts of the reference models (ar_models.md §1.1), in billions, rounded as published.
REFERENCE_PARAMS_B = {"4b": 4.01, "12b": 11.56, "5b_v2w": 4.58, "13b_v2w": 13.32}

_ALIASES = {"cosmos-1.0-autoregressive-4b": "4b", "cosmos-predict1-4b": "4b", "5b": "5b_v2w", "13b": "13b_v2w",
            "cosmos-1.0-autoregressive-12b": "12b", "cosmos-1.0-autoregressive-5b-video2world": "5b_v2w",
            "cosmos-1.0-autoregressive-13b-video2world": "13b_v2w"}


def ar_config_from_reference(model_config: dict, tokenizer_config: Optional[dict] = None, name: str = "reference",
                             **overrides) -> ARModelConfig:
    """An ARModelConfig from cosmos-predict1's native `ModelConfig` fields (dim, n_layers, n_heads, ...) and
    its tokenizer config, applying the reference's vocabulary rules: for `training_type="text_to_video"`
    one BOV id (= video vocabulary size + offset) is added and the embedding only is rounded up to a
    multiple of 64 (1001 -> 1024, 64001 -> 64064), the output keeps `vocab_size` rows."""
    mc, tc = model_config, tokenizer_config or {}
    head_dim = mc.get("head_dim") or mc["dim"] // mc["n_heads"]
    cross = bool(mc.get("insert_cross_attn", False))
    if cross != bool(mc.get("apply_abs_pos_emb", False)):
        raise ValueError("only the released combinations are supported: cross-attention and the absolute PE together "
                         f"(Video2World) or neither; got insert_cross_attn={cross}, apply_abs_pos_emb={mc.get('apply_abs_pos_emb')}")
    if cross and mc.get("insert_cross_attn_every_k_layers", 1) != 1:
        raise ValueError("cross-attention in every layer is supported (insert_cross_attn_every_k_layers = 1)")
    if mc.get("rope_dim", "3D") != "3D" or mc.get("pytorch_rope_version", "v2") != "v2":
        raise ValueError("only the 3D RoPE of pytorch_rope_version v2 (the released models' math) is supported")
    fields = dict(
        name=name, num_layers=mc["n_layers"], hidden_size=mc["dim"], num_attention_heads=mc["n_heads"],
        num_query_groups=mc.get("n_kv_heads") or mc["n_heads"], kv_channels=head_dim,
        ffn_hidden_size=mc["ffn_hidden_size"], vocab_size=mc["vocab_size"], norm_eps=mc.get("norm_eps", 1e-5),
        rope_theta=float(mc.get("rope_theta", 500_000.0)), pad_to_multiple_of=mc.get("pad_to_multiple_of") or 64,
    )
    if mc.get("video_latent_shape"):
        fields["max_grid"] = tuple(mc["video_latent_shape"])
    if mc.get("apply_yarn"):
        fields["yarn"] = YarnConfig(float(mc["yarn_scale"]), float(mc["yarn_beta_fast"]), float(mc["yarn_beta_slow"]),
                                    tuple(mc["original_latent_shape"]))
    if tc.get("training_type") == "text_to_video" or cross:
        if not cross:
            raise ValueError("training_type text_to_video without cross-attention is not a released model")
        bov = tc.get("video_vocab_size", mc["vocab_size"]) + tc.get("video_tokenizer_offset", 0)
        fields.update(video2world=True, context_dim=mc.get("context_dim") or 1024, bov_token_id=bov,
                      pad_token_id=bov + 2, output_vocab_size=mc["vocab_size"],
                      vocab_size=round_up(max(bov + 1, mc["vocab_size"] + 1), 64))
    fields.update(overrides)
    return ARModelConfig(**fields)


def ar_config(name: str, **overrides) -> ARModelConfig:
    """A named config (`4b`, `12b`, `5b_v2w`, `13b_v2w`, `tiny`, `tiny_v2w`) with field overrides."""
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in NAMED_CONFIGS:
        raise KeyError(f"unknown AR model config {name!r}; choose one of {sorted(NAMED_CONFIGS)}")
    return ARModelConfig(**{**NAMED_CONFIGS[key], **overrides})


def ar_config_from_dict(fields: dict) -> ARModelConfig:
    """An ARModelConfig from plain data (a run folder's `config.yaml` `model:` section, which predates the
    `family` field in older runs); unknown fields are an error naming them."""
    fields = dict(fields)
    known = {f.name for f in dataclasses.fields(ARModelConfig)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"unknown AR model config fields {unknown}; known: {sorted(known)}")
    yarn = fields.get("yarn")
    if isinstance(yarn, dict):
        fields["yarn"] = YarnConfig(yarn["scale"], yarn["beta_fast"], yarn["beta_slow"], tuple(yarn["original_latent_shape"]))
    if fields.get("max_grid") is not None:
        fields["max_grid"] = tuple(fields["max_grid"])
    return ARModelConfig(**fields)
