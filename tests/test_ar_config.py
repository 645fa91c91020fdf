"""Named AR configs: parameter counts against the reference table, counted on the meta device."""

import pytest
import torch

from cosmos_nemo.models.ar.config import REFERENCE_PARAMS_B, ARModelConfig, ar_config
from cosmos_nemo.models.ar.model import count_parameters


def released_param_count(cfg: ARModelConfig) -> int:
    """Parameters of the released checkpoint layout (ar_models.md §2.1), written out by hand."""
    d, hd, ff = cfg.hidden_size, cfg.kv_channels, cfg.ffn_hidden_size
    q, kv = cfg.num_attention_heads * hd, cfg.num_query_groups * hd
    layer = 2 * d + q * d + 2 * kv * d + d * q + 2 * hd + 3 * ff * d
    if cfg.video2world:
        layer += d + q * d + 2 * kv * cfg.context_dim + d * q + 2 * hd
    return cfg.vocab_size * d + cfg.output_vocab_size * d + d + cfg.num_layers * layer


@pytest.mark.parametrize("name", ["4b", "12b", "5b_v2w", "13b_v2w"])
def test_named_config_param_counts(name):
    cfg = ar_config(name)
    count = count_parameters(cfg)  # builds the megatron model on the meta device
    assert count == released_param_count(cfg)
    assert round(count / 1e9, 2) == REFERENCE_PARAMS_B[name]


def test_exact_4b_count():
    # 2 x 64000 x 4096 embeddings/output + final norm + 16 x 218,112,256 per layer
    assert count_parameters(ar_config("4b")) == 4_014_088_192


@pytest.mark.parametrize("name", ["tiny", "tiny_v2w"])
def test_tiny_counts(name):
    cfg = ar_config(name)
    assert count_parameters(cfg) == released_param_count(cfg)


def test_config_fields():
    base, v2w = ar_config("12b"), ar_config("13b_v2w")
    assert base.seq_length == 12_800 and v2w.seq_length == 12_864
    assert base.yarn is not None and base.yarn.original_latent_shape == (3, 40, 64)
    assert ar_config("4b").yarn is None
    assert v2w.vocab_size == 64_064 and v2w.output_vocab_size == 64_000 and v2w.context_dim == 1024
    assert ar_config("tiny_v2w", context_dim=768).context_dim == 768
    assert ar_config("Cosmos-1.0-Autoregressive-5B-Video2World").name == "5b_v2w"
    with pytest.raises(KeyError, match="choose one of"):
        ar_config("7b")
    with pytest.raises(ValueError, match="must exceed it"):
        ar_config("tiny_v2w", vocab_size=64_000)
    with pytest.raises(ValueError, match="multiple of num_query_groups"):
        ARModelConfig(num_attention_heads=6, num_query_groups=4)


def test_transformer_config_fields():
    cfg = ar_config("tiny")  # 4 heads, 2 groups
    tc = cfg.transformer_config()
    assert tc.num_query_groups == 2 and tc.qk_layernorm and tc.gated_linear_unit and not tc.add_bias_linear
    assert tc.layernorm_epsilon == 1e-5 and tc.normalization == "RMSNorm"
    assert tc.params_dtype == torch.float32


def test_config_from_reference_fields():
    from cosmos_nemo.models.ar.config import ar_config_from_reference

    base = dict(dim=4096, n_layers=16, n_heads=32, n_kv_heads=8, head_dim=128, vocab_size=64000,
                ffn_hidden_size=14336, norm_eps=1e-5, rope_theta=500000, video_latent_shape=[5, 40, 64])
    assert count_parameters(ar_config_from_reference(base)) == count_parameters(ar_config("4b"))
    v2w = dict(base, insert_cross_attn=True, apply_abs_pos_emb=True, context_dim=1024)
    cfg = ar_config_from_reference(v2w, {"training_type": "text_to_video", "video_vocab_size": 64000})
    assert (cfg.vocab_size, cfg.output_vocab_size, cfg.bov_token_id) == (64064, 64000, 64000)
    assert count_parameters(cfg) == count_parameters(ar_config("5b_v2w"))
    tiny = dict(base, dim=256, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=None, vocab_size=1000, ffn_hidden_size=512,
                insert_cross_attn=True, apply_abs_pos_emb=True, context_dim=1024)
    t = ar_config_from_reference(tiny, {"training_type": "text_to_video", "video_vocab_size": 1000})
    assert (t.vocab_size, t.output_vocab_size, t.kv_channels, t.bov_token_id) == (1024, 1000, 64, 1000)
    yarn = ar_config_from_reference(dict(base, dim=5120, n_layers=40, apply_yarn=True, yarn_scale=2, yarn_beta_fast=4,
                                         yarn_beta_slow=1, original_latent_shape=[3, 40, 64]))
    assert yarn.yarn == ar_config("12b").yarn
    with pytest.raises(ValueError, match="together"):
        ar_config_from_reference(dict(base, insert_cross_attn=True))
