"""The declarative AR key map (models/ar/convert.py driving models/common/keymap.py).

- Full sizes (4B, 12B, 5B-V2W, 13B-V2W): the mapping runs on meta tensors, so keys and shapes are checked
  at real size for free, and the megatron shapes are those of the model megatron builds.
- Tiny sizes: every element is a distinct integer, so a value check proves where each row went; the
  expected megatron layout and the reference TP split rules (ar_models.md §7.1) are written out here
  independently of the table.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import pytest
import torch
from safetensors.torch import load_file

from cosmos_nemo.cli import main
from cosmos_nemo.models.ar.config import REFERENCE_PARAMS_B, ar_config
from cosmos_nemo.models.ar.convert import (
    AR_TABLE,
    CheckpointMismatchError,
    ar_dims,
    ar_keymap,
    check_released_state,
    expected_released_shapes,
    export_released,
    load_released,
    merge_released_tp,
    shard_released_tp,
    to_megatron,
    to_released,
)
from cosmos_nemo.models.common import keymap as km

FULL = ["4b", "12b", "5b_v2w", "13b_v2w"]
# Tiny configs with small vocabularies, so that every element can hold a distinct integer cheaply.
SMALL_VOCAB = {"tiny": dict(vocab_size=320), "tiny_v2w": dict(vocab_size=320, output_vocab_size=300, bov_token_id=300,
                                                             pad_token_id=302)}


def small(name: str, **overrides):
    return ar_config(name, **{**SMALL_VOCAB[name], **overrides})


def distinct_state(cfg, prefix: str = "") -> dict[str, torch.Tensor]:
    """Released tensors whose elements are all different integers (exact in float64)."""
    out, start = {}, 0
    for k, shape in sorted(expected_released_shapes(cfg).items()):
        n = math.prod(shape)
        out[prefix + k] = torch.arange(start, start + n, dtype=torch.float64).reshape(shape)
        start += n
    return out


def assert_same(a: Mapping, b: Mapping) -> None:
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))
    for k in a:
        assert a[k].shape == b[k].shape and torch.equal(a[k], b[k]), k


# --------------------------------------------------------------------------------------------------
# Full sizes on the meta device


@pytest.mark.parametrize("name", FULL)
def test_full_size_layout_round_trips_and_matches_the_built_model(single_process, name):
    from cosmos_nemo.models.ar.model import build_ar_model

    cfg = ar_config(name)
    shapes = expected_released_shapes(cfg)
    d, v2w = cfg.hidden_size, cfg.video2world
    # ar_models.md §2.1
    assert shapes["tok_embeddings.weight"] == (64064 if v2w else 64000, d) and shapes["output.weight"] == (64000, d)
    assert shapes["layers.0.attention.wq.weight"] == (4096, d) and shapes["layers.0.attention.wk.weight"] == (1024, d)
    assert shapes["layers.0.attention.wo.weight"] == (d, 4096) and shapes["layers.0.attention.q_norm.weight"] == (128,)
    assert shapes["layers.0.feed_forward.w1.weight"] == (14336, d) and shapes["layers.0.feed_forward.w2.weight"] == (d, 14336)
    assert (shapes.get("layers.0.cross_attention.wk.weight") == (1024, 1024)) == v2w
    assert len(shapes) == 3 + cfg.num_layers * (11 + 7 * v2w)

    state = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    megatron = to_megatron(state, cfg)
    back = to_released(megatron, cfg)
    assert back.keys() == state.keys() and all(back[k].shape == state[k].shape for k in state)
    assert round(sum(t.numel() for t in megatron.values()) / 1e9, 2) == REFERENCE_PARAMS_B[name]

    with torch.device("meta"):
        model = build_ar_model(cfg, pre_process=True, post_process=True, perform_initialization=False,
                               use_cpu_initialization=True)
    assert {k: tuple(p.shape) for k, p in model.named_parameters()} == {k: tuple(t.shape) for k, t in megatron.items()}

    # the Transformer Engine spec names its pre-norms inside the following linear
    te = to_megatron(state, cfg, fused_norms=True)
    assert "decoder.layers.0.self_attention.linear_qkv.layer_norm_weight" in te and "decoder.layers.0.mlp.linear_fc1.layer_norm_weight" in te
    assert not any("input_layernorm" in k or "pre_mlp_layernorm" in k for k in te) and len(te) == len(megatron)

    # the released TP=8 shards (the released models' largest TP) have the reference split rules' shapes
    part = shard_released_tp(state, cfg, 8)[3]
    assert part["layers.1.attention.wq.weight"].shape == (512, d) and part["layers.1.attention.wk.weight"].shape == (128, d)
    assert part["layers.1.attention.wo.weight"].shape == (d, 512) and part["layers.1.feed_forward.w2.weight"].shape == (d, 1792)
    assert part["tok_embeddings.weight"].shape[0] * 8 == shapes["tok_embeddings.weight"][0]
    assert part["norm.weight"].shape == (d,)


# --------------------------------------------------------------------------------------------------
# Tiny sizes with values


def expected_megatron(state: dict, cfg) -> dict:
    """The megatron layout written out row by row (not through the table)."""
    heads, groups, hd = cfg.num_attention_heads, cfg.num_query_groups, cfg.head_dim
    per = heads // groups
    out = {"embedding.word_embeddings.weight": state["tok_embeddings.weight"],
           "decoder.final_layernorm.weight": state["norm.weight"], "output_layer.weight": state["output.weight"]}

    def head(w, h):
        return w[h * hd:(h + 1) * hd]

    for i in range(cfg.num_layers):
        r, m = f"layers.{i}.", f"decoder.layers.{i}."
        wq, wk, wv = (state[r + f"attention.{n}.weight"] for n in ("wq", "wk", "wv"))
        rows = []
        for g in range(groups):
            rows += [head(wq, h) for h in range(g * per, (g + 1) * per)] + [head(wk, g), head(wv, g)]
        out.update({
            m + "input_layernorm.weight": state[r + "attention_norm.weight"],
            m + "self_attention.linear_qkv.weight": torch.cat(rows),
            m + "self_attention.linear_proj.weight": state[r + "attention.wo.weight"],
            m + "self_attention.q_layernorm.weight": state[r + "attention.q_norm.weight"],
            m + "self_attention.k_layernorm.weight": state[r + "attention.k_norm.weight"],
            m + "pre_mlp_layernorm.weight": state[r + "ffn_norm.weight"],
            m + "mlp.linear_fc1.weight": torch.cat([state[r + "feed_forward.w1.weight"], state[r + "feed_forward.w3.weight"]]),
            m + "mlp.linear_fc2.weight": state[r + "feed_forward.w2.weight"],
        })
        if cfg.video2world:
            ck, cv = state[r + "cross_attention.wk.weight"], state[r + "cross_attention.wv.weight"]
            out.update({
                m + "pre_cross_attn_layernorm.weight": state[r + "cross_attention_norm.weight"],
                m + "cross_attention.linear_q.weight": state[r + "cross_attention.wq.weight"],
                m + "cross_attention.linear_kv.weight": torch.cat([t for g in range(groups) for t in (head(ck, g), head(cv, g))]),
                m + "cross_attention.linear_proj.weight": state[r + "cross_attention.wo.weight"],
                m + "cross_attention.q_layernorm.weight": state[r + "cross_attention.q_norm.weight"],
                m + "cross_attention.k_layernorm.weight": state[r + "cross_attention.k_norm.weight"],
            })
    return out


@pytest.mark.parametrize("name", ["tiny", "tiny_v2w"])
def test_tiny_values_map_row_by_row_and_back_bit_for_bit(name):
    cfg = small(name)
    state = distinct_state(cfg)
    megatron = to_megatron(state, cfg)
    assert_same(megatron, expected_megatron(state, cfg))
    assert_same(to_released(megatron, cfg), state)
    # with the prefix the released files carry, and with the Transformer Engine names
    assert_same(to_released(to_megatron(distinct_state(cfg, "model."), cfg, fused_norms=True), cfg, fused_norms=True,
                            prefix="model."), distinct_state(cfg, "model."))


def reference_shard(state: dict, cfg, tp: int, rank: int) -> dict:
    """ar_models.md §7.1: cosmos-predict1's split rules, key by key on the unfused released names."""
    out = {}
    for k, w in state.items():
        if k.endswith("attention.wq.weight"):  # self- and cross-attention: by head
            out[k] = w.view(cfg.num_attention_heads, -1, w.shape[1]).chunk(tp)[rank].reshape(-1, w.shape[1])
        elif k.endswith(("attention.wk.weight", "attention.wv.weight")):  # by KV head
            out[k] = w.view(cfg.num_query_groups, -1, w.shape[1]).chunk(tp)[rank].reshape(-1, w.shape[1])
        elif k.endswith(("feed_forward.w1.weight", "feed_forward.w3.weight", "tok_embeddings.weight", "output.weight")):
            out[k] = w.chunk(tp, dim=0)[rank]
        elif k.endswith(("feed_forward.w2.weight", "attention.wo.weight")):
            out[k] = w.chunk(tp, dim=1)[rank]
        else:
            assert "norm" in k, k
            out[k] = w
    return out


TP_CASES = [("tiny", 2, {}), ("tiny_v2w", 2, {}), ("tiny", 4, {"num_query_groups": 4}), ("tiny_v2w", 4, {"num_query_groups": 4})]


@pytest.mark.parametrize("name,tp,overrides", TP_CASES)
def test_released_tp_shards_follow_the_reference_rules_and_merge_back(name, tp, overrides):
    cfg = small(name, **overrides)
    state = distinct_state(cfg, prefix="model.")
    parts = shard_released_tp(state, cfg, tp)
    assert len(parts) == tp
    for rank, part in enumerate(parts):
        assert_same(part, reference_shard(state, cfg, tp, rank))
        # each shard owns exactly its elements, so torch.save writes only the shard
        assert all(t.untyped_storage().nbytes() == t.numel() * t.element_size() for t in part.values())
    assert_same(merge_released_tp(parts, cfg), state)


@pytest.mark.parametrize("name,tp,overrides", TP_CASES)
def test_megatron_tp_shards_are_the_megatron_layout_of_the_released_shards(name, tp, overrides):
    cfg = small(name, **overrides)
    state = distinct_state(cfg)
    kmap = ar_keymap(cfg)
    megatron = to_megatron(state, cfg)
    megatron_parts = km.shard_megatron(megatron, kmap, tp)
    assert_same(km.merge_megatron(megatron_parts, kmap), megatron)
    local = kmap.shard(tp)
    for rank, part in enumerate(shard_released_tp(state, cfg, tp)):
        assert_same(km.released_to_megatron(part, local), megatron_parts[rank])
        # SwiGLU: gate and up split separately, [gate_r; up_r] on each rank
        w1, w3 = state["layers.1.feed_forward.w1.weight"], state["layers.1.feed_forward.w3.weight"]
        assert torch.equal(megatron_parts[rank]["decoder.layers.1.mlp.linear_fc1.weight"],
                           torch.cat([w1.chunk(tp)[rank], w3.chunk(tp)[rank]]))
    assert local.dims["groups"] == cfg.num_query_groups // tp and local.dims["d"] == cfg.hidden_size


# --------------------------------------------------------------------------------------------------
# Errors


def test_every_problem_in_one_message():
    cfg = small("tiny_v2w", num_layers=2)
    state = distinct_state(cfg)
    del state["layers.1.cross_attention.k_norm.weight"]
    state["layers.2.attention.wq.weight"] = torch.zeros(1)
    state["layers.0.feed_forward.w2.weight"] = torch.zeros(256, 511, dtype=torch.float64)
    state["tok_embeddings.weight"] = torch.zeros(64000, 256, dtype=torch.float64)
    with pytest.raises(CheckpointMismatchError) as err:
        to_megatron(state, cfg)
    text = str(err.value)
    for fragment in ("the 'tiny_v2w' AR architecture (2 layers, hidden 256, vocab 320/300, video2world context 384)",
                     "unexpected keys (1)", "layers.2.attention.wq.weight", "missing keys (1)",
                     "layers.1.cross_attention.k_norm.weight", "wrong shapes (2)",
                     "layers.0.feed_forward.w2.weight: checkpoint (256, 511), model (256, 512)",
                     "tok_embeddings.weight: checkpoint (64000, 256), model (320, 256)", "resize_vocab"):
        assert fragment in text, text
    assert err.value.missing == ["layers.1.cross_attention.k_norm.weight"]
    assert err.value.unexpected == ["layers.2.attention.wq.weight"]
    with pytest.raises(CheckpointMismatchError, match="unexpected keys"):
        check_released_state({**distinct_state(cfg), "medusa_head.weight": torch.zeros(1)}, cfg)

    # the megatron side is strict too (Transformer Engine's _extra_state entries are not weights)
    megatron = to_megatron(distinct_state(cfg), cfg)
    megatron["decoder.layers.0.self_attention.core_attention._extra_state"] = torch.zeros(0)
    del megatron["output_layer.weight"]
    megatron["decoder.layers.0.mlp.linear_fc1.weight"] = torch.zeros(3, 256)
    with pytest.raises(CheckpointMismatchError) as err:
        to_released(megatron, cfg)
    assert "missing keys (1)" in str(err.value) and "output_layer.weight" in str(err.value)
    assert "decoder.layers.0.mlp.linear_fc1.weight: checkpoint (3, 256), model (1024, 256)" in str(err.value)


def test_tp_refusals_and_merge_checks():
    cfg = small("tiny")  # 4 heads in 2 KV groups
    state = distinct_state(cfg)
    with pytest.raises(ValueError, match=r"tensor parallel size 4 must divide .* groups = 2"):
        shard_released_tp(state, cfg, 4)
    with pytest.raises(ValueError, match=r"heads = 4.*"):
        shard_released_tp(state, cfg, 8)
    parts = shard_released_tp(state, cfg, 2)
    # replicated tensors must agree exactly: never averaged
    drifted = [dict(p) for p in parts]
    drifted[1]["norm.weight"] = drifted[1]["norm.weight"] + 1e-3
    drifted[1]["layers.0.attention.q_norm.weight"] = -drifted[1]["layers.0.attention.q_norm.weight"]
    with pytest.raises(CheckpointMismatchError, match="must be identical") as err:
        merge_released_tp(drifted, cfg)
    assert "norm.weight: shards [1] differ from shard 0" in str(err.value)
    assert "layers.0.attention.q_norm.weight" in str(err.value)
    # every shard is checked against its expected part, all problems together
    broken = [dict(p) for p in parts]
    del broken[0]["layers.1.feed_forward.w3.weight"]
    broken[1]["layers.0.attention.wq.weight"] = state["layers.0.attention.wq.weight"]  # a whole tensor, not a shard
    with pytest.raises(CheckpointMismatchError) as err:
        merge_released_tp(broken, cfg)
    text = str(err.value)
    assert "shard 0 of 2" in text and "layers.1.feed_forward.w3.weight" in text
    assert "shard 1 of 2" in text and "layers.0.attention.wq.weight: checkpoint (256, 256), model (128, 256)" in text
    with pytest.raises(CheckpointMismatchError, match="prefix"):
        merge_released_tp([{"model." + k: v for k, v in parts[0].items()}, parts[1]], cfg)


def test_table_validation():
    dims = ar_dims(small("tiny"))
    with pytest.raises(ValueError, match="listed twice"):
        km.KeyMap(AR_TABLE + (km.param("extra.weight", km.released("norm.weight", ("d",))),), dims, 1)
    with pytest.raises(ValueError, match=r"symbols without a size in dims: \['width'\]"):
        km.KeyMap(AR_TABLE + (km.param("extra.weight", km.released("extra.weight", ("width",))),), dims, 1)
    with pytest.raises(ValueError, match="layer placeholder"):
        km.KeyMap(AR_TABLE + (km.param("extra.{i}.weight", km.released("extra.weight", ("d",))),), dims, 1)
    with pytest.raises(ValueError, match="must be >= 1"):
        ar_keymap(small("tiny")).shard(0)
    with pytest.raises(ValueError, match="combining transform"):
        km.param("x", km.released("a", (1,)), km.released("b", (1,)))


# --------------------------------------------------------------------------------------------------
# A rank's model


class Recording(Mapping):
    """A state dict view that records which tensors are read (shapes are free, as with LazyTensors)."""

    def __init__(self, state):
        self.state, self.reads = state, []

    def __getitem__(self, key):
        self.reads.append(key)
        return self.state[key]

    def shape(self, key):
        return tuple(self.state[key].shape)

    def __iter__(self):
        return iter(self.state)

    def __len__(self):
        return len(self.state)


def test_load_reads_each_needed_tensor_once_layer_by_layer_and_skips_other_stages(single_process):
    from cosmos_nemo.models.ar.model import build_ar_model

    cfg = small("tiny_v2w", num_layers=2)
    state = {k: v.float() for k, v in distinct_state(cfg).items()}
    model = build_ar_model(cfg, pre_process=False, post_process=True)  # a last pipeline stage: no embedding
    view = Recording(state)
    report = load_released(model, view)
    assert "tok_embeddings.weight" not in view.reads  # another stage's tensor is not even read
    assert sorted(view.reads) == sorted(k for k in state if k != "tok_embeddings.weight")  # each once
    layers = [int(k.split(".")[1]) for k in view.reads if k.startswith("layers.")]
    assert layers == sorted(layers)  # one layer at a time
    assert report["layers"] == (0, 2) and report["parameters_filled"] == len(dict(model.named_parameters()))
    exported = export_released(model, prefix="")
    assert_same(exported, {k: v for k, v in state.items() if k != "tok_embeddings.weight"})


def test_golden_weights_round_trip_bit_for_bit(single_process, golden):
    from test_ar_golden import golden_config

    from cosmos_nemo.models.ar.model import build_ar_model

    folder = golden("ar", "ar4b_base")
    cfg = golden_config(folder)
    weights = load_file(str(folder / "weights.safetensors"))
    model = build_ar_model(cfg)
    load_released(model, folder / "weights.safetensors")
    assert_same(export_released(model, prefix=""), weights)
    assert_same(to_released(to_megatron(weights, cfg), cfg), weights)
    assert_same(merge_released_tp(shard_released_tp(weights, cfg, 2), cfg), weights)


# --------------------------------------------------------------------------------------------------
# CLI: cosmos-nemo convert shard-tp / merge-tp


def test_shard_and_merge_commands(tmp_path, capsys):
    cfg = ar_config("tiny_v2w", num_layers=1)
    g = torch.Generator().manual_seed(0)
    state = {"model." + k: torch.randn(s, generator=g) for k, s in expected_released_shapes(cfg).items()}
    torch.save(state, tmp_path / "model.pt")
    flags = ["--model_size", "tiny_v2w", "--set", "num_layers=1", "--tensor_parallel_size", "2"]
    assert main(["convert", "shard-tp", "--checkpoint_path", str(tmp_path / "model.pt"), *flags]) == 0
    for rank, expected in enumerate(shard_released_tp(state, cfg, 2)):
        part = torch.load(tmp_path / f"model_model_mp_{rank}.pt", weights_only=True)
        assert_same(part, expected)
        assert all(k.startswith("model.") for k in part)
    # the shards are merged from beside X.pt, as the reference names them
    out = tmp_path / "merged" / "model.pt"
    assert main(["convert", "merge-tp", "--checkpoint_path", str(tmp_path / "model.pt"), "--output_path", str(out),
                 *flags]) == 0
    assert_same(torch.load(out, weights_only=True), state)

    capsys.readouterr()
    assert main(["convert", "shard-tp", "--checkpoint_path", str(tmp_path / "model.pt"), *flags]) == 2
    assert "--overwrite" in capsys.readouterr().out  # existing shards are not replaced silently
    bad = ["--model_size", "tiny_v2w", "--set", "num_layers=1", "--tensor_parallel_size", "3"]
    assert main(["convert", "shard-tp", "--checkpoint_path", str(tmp_path / "model.pt"), *bad]) == 2
    assert "tensor parallel size 3 must divide" in capsys.readouterr().out
    assert not (tmp_path / "model_model_mp_2.pt").exists()
    assert main(["convert", "merge-tp", "--checkpoint_path", str(tmp_path / "model.pt"), "--output_path",
                 str(tmp_path / "x.pt"), "--model_size", "tiny_v2w", "--set", "num_layers=1",
                 "--tensor_parallel_size", "4"]) == 2
    assert "model_model_mp_2.pt" in capsys.readouterr().out and not (tmp_path / "x.pt").exists()
    assert main(["convert", "merge-tp", "--checkpoint_path", str(tmp_path / "model.pt"), "--output_path", str(out),
                 "--model_size", "tiny", "--tensor_parallel_size", "2"]) == 2
    assert "unexpected keys" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["shard-tp", "merge-tp"])
def test_tp_commands_help_explains_every_flag(capsys, command):
    with pytest.raises(SystemExit):
        main(["convert", command, "--help"])
    text = capsys.readouterr().out
    flags = ["--checkpoint_path", "--model_size", "--tensor_parallel_size", "--set"]
    flags += ["--target_backend", "--overwrite"] if command == "shard-tp" else ["--output_path", "--overwrite"]
    for flag in flags:
        assert flag in text
    for size in ("4b", "12b", "5b_v2w", "13b_v2w", "tiny", "tiny_v2w"):
        assert size in text
    assert "_model_mp_" in text
