"""Released Cosmos AR layout ⇄ megatron layout: fusion layout, bit-exact round trips, strict errors."""

from __future__ import annotations

import pickle

import pytest
import torch
from safetensors.torch import save_file

from cosmos_nemo.io.tensors import LazyTensors, TensorFileError, read_state_dict, strip_prefix
from cosmos_nemo.models.ar.config import ar_config
from cosmos_nemo.models.ar.convert import (
    CheckpointMismatchError,
    expected_released_shapes,
    export_released,
    load_released,
    shard_released_tp,
    to_megatron,
    to_released,
)
from cosmos_nemo.models.common.keymap import fused_qkv
from cosmos_nemo.parallel.launch import run_in_processes


def random_state(cfg, seed=0, prefix=""):
    g = torch.Generator().manual_seed(seed)
    return {prefix + k: torch.randn(s, generator=g) for k, s in sorted(expected_released_shapes(cfg).items())}


def test_qkv_layout_is_per_kv_group():
    heads, groups, hd = 4, 2, 1
    wq = torch.arange(4.0)[:, None]  # q heads 0..3
    wk = torch.tensor([[10.0], [11.0]])
    wv = torch.tensor([[20.0], [21.0]])
    qkv, dims = fused_qkv("groups"), {"groups": groups}
    fused = qkv.to_megatron([wq, wk, wv], dims)
    # megatron GQA layout: [q0 q1 k0 v0 | q2 q3 k1 v1]
    assert fused.flatten().tolist() == [0, 1, 10, 20, 2, 3, 11, 21]
    split = qkv.to_released(fused, [(heads * hd, 1), (groups * hd, 1), (groups * hd, 1)], dims)
    assert all(torch.equal(a, b) for a, b in zip(split, (wq, wk, wv)))


def test_megatron_keys_and_fc1_order():
    cfg = ar_config("tiny_v2w", num_layers=1)
    state = random_state(cfg)
    meg = to_megatron(state, cfg)
    assert torch.equal(meg["decoder.layers.0.mlp.linear_fc1.weight"][:512], state["layers.0.feed_forward.w1.weight"])
    assert torch.equal(meg["decoder.layers.0.mlp.linear_fc1.weight"][512:], state["layers.0.feed_forward.w3.weight"])
    kv = meg["decoder.layers.0.cross_attention.linear_kv.weight"]
    assert kv.shape == (2 * 2 * 64, 384)
    assert torch.equal(kv[64:128], state["layers.0.cross_attention.wv.weight"][:64])  # [k0; v0; k1; v1]
    te = to_megatron(state, cfg, fused_norms=True)
    assert torch.equal(te["decoder.layers.0.self_attention.linear_qkv.layer_norm_weight"], state["layers.0.attention_norm.weight"])
    back = to_released(te, cfg, fused_norms=True)
    assert back.keys() == state.keys() and all(torch.equal(back[k], state[k]) for k in state)


@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
@pytest.mark.parametrize("prefix", ["", "model."])
def test_import_export_bit_exact(single_process, tmp_path, fmt, prefix):
    from cosmos_nemo.models.ar.model import build_ar_model

    cfg = ar_config("tiny_v2w", num_layers=2)
    state = random_state(cfg, seed=1, prefix=prefix)
    path = tmp_path / f"model.{fmt}"
    save_file(state, str(path)) if fmt == "safetensors" else torch.save(state, path)
    model = build_ar_model(cfg)
    report = load_released(model, path)
    assert report["source_keys"] == len(state) and report["resized"] == ""
    exported = export_released(model, prefix=prefix)
    assert exported.keys() == state.keys()
    for k in state:
        assert torch.equal(exported[k], state[k]), k
    # the directory form finds model.<fmt> too
    assert read_state_dict(tmp_path).keys() == state.keys()


def _expect_error(model, state, *fragments, error=CheckpointMismatchError):
    with pytest.raises(error) as err:
        load_released(model, state)
    for f in fragments:
        assert f in str(err.value), str(err.value)


def test_strict_errors(single_process):
    from cosmos_nemo.models.ar.model import build_ar_model

    cfg = ar_config("tiny", num_layers=2, vocab_size=320)
    model = build_ar_model(cfg)
    good = random_state(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items() if torch.is_tensor(v)}

    missing = dict(good)
    del missing["layers.1.feed_forward.w3.weight"]
    _expect_error(model, missing, "missing keys (1)", "layers.1.feed_forward.w3.weight")

    extra = dict(good, **{"layers.2.attention.wq.weight": torch.zeros(256, 256), "medusa_head.weight": torch.zeros(1)})
    _expect_error(model, extra, "unexpected keys (2)", "layers.2.attention.wq.weight", "medusa_head.weight")

    wrong = dict(good, **{"tok_embeddings.weight": torch.zeros(64000, 256)})
    _expect_error(model, wrong, "wrong shapes (1)", "tok_embeddings.weight: checkpoint (64000, 256), model (320, 256)")

    mixed = {("model." + k if i % 2 else k): v for i, (k, v) in enumerate(good.items())}
    _expect_error(model, mixed, "mix the 'model.' prefix", error=TensorFileError)

    # every problem at once, in one message
    everything = dict(extra, **{"tok_embeddings.weight": torch.zeros(64000, 256)})
    del everything["layers.1.feed_forward.w3.weight"]
    _expect_error(model, everything, "unexpected keys (2)", "missing keys (1)", "wrong shapes (1)",
                  "layers.2.attention.wq.weight", "layers.1.feed_forward.w3.weight", "tok_embeddings.weight: checkpoint")

    # the dry run on meta tensors: a model whose parameters differ from its config is refused whole
    other = build_ar_model(ar_config("tiny", num_layers=2, vocab_size=320, ffn_hidden_size=384))
    other.ar_config = cfg
    before_other = {k: v.clone() for k, v in other.state_dict().items() if torch.is_tensor(v)}
    _expect_error(other, good, "shard shapes (4)", "decoder.layers.0.mlp.linear_fc1.weight: shard (1024, 256), "
                  "parameter (768, 256)")
    assert all(torch.equal(before_other[k], v) for k, v in other.state_dict().items() if torch.is_tensor(v))

    # nothing was copied by a refused load
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


class NotATensor:
    """A class a weights-only load must refuse to construct."""


def test_unsafe_or_foreign_files_refused(tmp_path):
    bad = tmp_path / "pickled.pt"
    with open(bad, "wb") as f:
        pickle.dump({"x": NotATensor()}, f)
    with pytest.raises(TensorFileError, match="weights-only"):
        read_state_dict(bad)
    nested = tmp_path / "nested.pt"
    torch.save({"model": {"a": torch.zeros(1)}, "iteration": 3}, nested)
    assert list(read_state_dict(nested)) == ["a"]
    nontensor = tmp_path / "nontensor.pt"
    torch.save({"a": torch.zeros(1), "step": 3}, nontensor)
    with pytest.raises(TensorFileError, match="non-tensor entries"):
        read_state_dict(nontensor)
    with pytest.raises(FileNotFoundError, match="without model.safetensors or model.pt"):
        read_state_dict(tmp_path / "..")
    assert strip_prefix({"model.a": 1}, "model.") == {"a": 1}


def _tp2_roundtrip(cfg_kwargs: dict, state: dict) -> dict:
    """Load at TP=2, return the shard shapes and values, the export (gathered over TP) and the logits.

    Tensors cross the process boundary as numpy arrays (torch's shared-memory handles would outlive
    the worker)."""
    torch.set_num_threads(1)
    state = {k: torch.from_numpy(v) for k, v in state.items()}
    from cosmos_nemo import parallel
    from cosmos_nemo.models.ar.model import build_ar_model

    parallel.setup(tensor_parallel=2)
    model = build_ar_model(ar_config("tiny_v2w", **cfg_kwargs))
    load_released(model, state)
    shapes = {k: tuple(v.shape) for k, v in model.named_parameters()}
    params = {k: v.detach().clone().numpy() for k, v in model.named_parameters()}
    exported = {k: v.numpy() for k, v in export_released(model, prefix="").items()}
    tokens, context = _v2w_inputs()
    with torch.no_grad():
        logits = model.eval()(tokens, grid=(2, 3, 5), context=context).numpy()
    parallel.teardown()
    return {"shapes": shapes, "params": params, "exported": exported, "logits": logits}


def _v2w_inputs():
    from cosmos_nemo.tokenizers.grid import v2w_layout

    g = torch.Generator().manual_seed(8)
    layout = v2w_layout((2, 3, 5))
    ids = torch.randint(0, 64000, (2, 30), generator=g)
    tokens = torch.tensor([layout.stored_tokens(r.tolist())[:-1] for r in ids])
    return tokens, torch.randn(2, 6, 384, generator=g)


@pytest.mark.slow
@pytest.mark.distributed
def test_tp2_load_export_bit_exact_and_v2w_forward():
    from test_ar_reference_parity import random_cosmos_state  # O(1) activations, so 1e-5 is meaningful

    cfg_kwargs = dict(num_layers=2)
    state = random_cosmos_state(ar_config("tiny_v2w", **cfg_kwargs), seed=7)
    results = run_in_processes(_tp2_roundtrip, 2, cfg_kwargs, {k: v.numpy() for k, v in state.items()})
    for r in results:
        shapes = r["shapes"]
        assert shapes["embedding.word_embeddings.weight"] == (32032, 256)
        assert shapes["decoder.layers.0.self_attention.linear_qkv.weight"] == (256, 256)  # 1 group: 2q + k + v
        assert shapes["decoder.layers.0.mlp.linear_fc1.weight"] == (512, 256)  # [gate_r; up_r]
        assert shapes["decoder.layers.0.cross_attention.linear_kv.weight"] == (128, 384)
        assert shapes["output_layer.weight"] == (32000, 256)
        assert r["exported"].keys() == state.keys()
        for k in state:
            assert torch.equal(torch.from_numpy(r["exported"][k]), state[k]), k
    # each rank holds exactly the megatron layout of its released TP shard (the reference split rules),
    # and megatron's own split of the TP=1 megatron layout
    from cosmos_nemo.models.ar.convert import ar_keymap
    from cosmos_nemo.models.common.keymap import released_to_megatron, shard_megatron

    cfg = ar_config("tiny_v2w", **cfg_kwargs)
    local = cfg.replace(num_attention_heads=2, num_query_groups=1, ffn_hidden_size=256, vocab_size=32032,
                        output_vocab_size=32000, bov_token_id=0)
    megatron_parts = shard_megatron(to_megatron(state, cfg), ar_keymap(cfg), 2)
    for rank, (r, part) in enumerate(zip(results, shard_released_tp(state, cfg, 2))):
        from_shard = released_to_megatron(part, ar_keymap(local))
        assert from_shard.keys() == r["params"].keys() == megatron_parts[rank].keys()
        for k, v in r["params"].items():
            assert torch.equal(torch.from_numpy(v), from_shard[k]), (rank, k)
            assert torch.equal(torch.from_numpy(v), megatron_parts[rank][k]), (rank, k)
    # the TP=2 forward (cross-attention KV groups split over ranks) equals the independent reference
    from test_ar_reference_parity import reference_forward

    tokens, context = _v2w_inputs()
    ref, _ = reference_forward(state, tokens, (2, 3, 5), layers=2, heads=4, kv_heads=2, hd=64, v2w=True, context=context)
    for r in results:
        torch.testing.assert_close(torch.from_numpy(r["logits"]), ref, atol=1e-5, rtol=0)


def test_resize_vocab(single_process):
    from cosmos_nemo.models.ar.model import build_ar_model

    small = ar_config("tiny", num_layers=1, vocab_size=300)
    state = random_state(small, seed=11)
    model = build_ar_model(ar_config("tiny", num_layers=1, vocab_size=320))
    _expect_error(model, state, "tok_embeddings.weight: checkpoint (300, 256), model (320, 256)", "resize_vocab")
    report = load_released(model, state, resize_vocab=True)
    assert report["resized"] == "tok_embeddings.weight rows 300 -> 320; output.weight rows 300 -> 320"
    emb = model.embedding.word_embeddings.weight
    assert torch.equal(emb[:300], state["tok_embeddings.weight"])
    torch.testing.assert_close(emb[300:], state["tok_embeddings.weight"].mean(0).expand(20, -1))
    out = model.output_layer.weight
    torch.testing.assert_close(out[310], state["output.weight"].mean(0))
    shrink = build_ar_model(ar_config("tiny", num_layers=1, vocab_size=200))
    load_released(shrink, state, resize_vocab=True)
    assert torch.equal(shrink.embedding.word_embeddings.weight, state["tok_embeddings.weight"][:200])


def test_lazy_safetensors_view(single_process, tmp_path):
    from cosmos_nemo.models.ar.model import build_ar_model

    small = ar_config("tiny", num_layers=1, vocab_size=300)
    state = random_state(small, seed=12, prefix="model.")
    save_file(state, str(tmp_path / "model.safetensors"))
    view = read_state_dict(tmp_path / "model.safetensors", lazy=True)
    assert isinstance(view, LazyTensors) and len(view) == len(state)
    stripped = strip_prefix(view, "model.")
    assert stripped.shape("tok_embeddings.weight") == (300, 256)
    assert torch.equal(stripped["norm.weight"], state["model.norm.weight"])
    # a path loads lazily, with the vocabulary resize applied on the view
    model = build_ar_model(ar_config("tiny", num_layers=1, vocab_size=320))
    load_released(model, tmp_path / "model.safetensors", resize_vocab=True)
    assert torch.equal(model.embedding.word_embeddings.weight[:300], state["model.tok_embeddings.weight"])
    assert torch.equal(model.decoder.final_layernorm.weight, state["model.norm.weight"])


def test_finetune_with_resize_vocab_goes_through_the_family_provider(single_process, tmp_path, caplog):
    """`model.resize_vocab=true` (set by the tokenizer-swap recipes) reaches the Cosmos import through the
    AR family provider, which the trainer calls to start from pretrained weights; without it the mismatch
    is refused, and a dist-ckpt start cannot resize."""
    import dataclasses
    import logging

    from cosmos_nemo.models.ar.model import build_ar_model
    from cosmos_nemo.models.family import get_family

    family = get_family("ar")
    state = random_state(ar_config("tiny", num_layers=1, vocab_size=300), seed=13, prefix="model.")
    save_file(state, str(tmp_path / "model.safetensors"))
    cfg = ar_config("tiny", num_layers=1, vocab_size=320)
    model = build_ar_model(cfg)
    with pytest.raises(CheckpointMismatchError, match="resize_vocab"):
        family.load_released(model, cfg, str(tmp_path / "model.safetensors"))
    resized = dataclasses.replace(cfg, resize_vocab=True)
    with caplog.at_level(logging.WARNING):
        note = family.load_released(model, resized, str(tmp_path / "model.safetensors"))
    assert "initialised from Cosmos checkpoint" in note and "rows 300 -> 320" in note
    assert "grows from 300 to 320 rows" in caplog.text
    emb = model.embedding.word_embeddings.weight
    torch.testing.assert_close(emb[300:], state["model.tok_embeddings.weight"].mean(0).expand(20, -1))
    with pytest.raises(ValueError, match="convert ar-export"):
        family.check_dist_ckpt_start(resized, str(tmp_path / "model"))
    # the provider's export is the released layout with the `model.` prefix
    exported = family.export_released(model, resized)
    assert torch.equal(exported["model.norm.weight"], state["model.norm.weight"])
