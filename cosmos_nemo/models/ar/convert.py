"""The Cosmos AR key map: ONE declarative table between the released `model.pt` layout
(ar_models.md §2.1) and `CosmosARModel`'s megatron layout, and the functions built on it.

Released (with or without the `model.` prefix): `tok_embeddings`, `layers.{i}.{attention_norm,
attention.{wq,wk,wv,wo,q_norm,k_norm}, ffn_norm, feed_forward.{w1,w2,w3}}`, Video2World
`layers.{i}.{cross_attention_norm, cross_attention.{wq,wk,wv,wo,q_norm,k_norm}}`, `norm`, `output`.

Megatron: `linear_qkv` is fused per KV group `[q heads of the group; k; v]` (megatron's GQA layout, so a TP
rank holds whole groups), cross-attention `linear_kv` per group `[k; v]`, `linear_fc1 = [w1 gate; w3 up]`
with gate and up TP-split separately (stride 2). The pre-norms are `input_layernorm`/`pre_mlp_layernorm`
in the local spec and `linear_qkv.layer_norm_weight`/`linear_fc1.layer_norm_weight` in the Transformer
Engine spec.

The released split rules are those of cosmos-predict1's shard/merge scripts (ar_models.md §7.1): wq by
head, wk/wv by KV head, w1/w3 along dim 0, wo/w2 along dim 1, embeddings and output along dim 0, norms
replicated. Everything here is the generic machinery of models/common/keymap.py driven by `AR_TABLE`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Optional, Union

import torch

from cosmos_nemo.io.tensors import LazyTensors, read_state_dict, strip_prefix, tensor_shape
from cosmos_nemo.models.ar.config import ARModelConfig
from cosmos_nemo.models.common import keymap as km
from cosmos_nemo.models.common.keymap import CheckpointMismatchError, column, param, released, row

__all__ = [
    "AR_TABLE", "PREFIX", "CheckpointMismatchError", "ar_keymap", "expected_released_shapes", "check_released_state",
    "to_megatron", "to_released", "shard_released_tp", "merge_released_tp", "resize_vocab_rows", "apply_vocab_resize",
    "load_released", "export_released", "merge_pipeline_exports",
]

PREFIX = "model."
V2W = "video2world"
log = logging.getLogger(__name__)

_L, _R = "decoder.layers.{i}.", "layers.{i}."

# Shapes use these symbols (`ar_dims`): d hidden, hd head dim, q = heads x hd, kv = KV groups x hd, ff FFN
# width, vocab / out_vocab embedding and output rows, ctx the text-context width; "heads" and "groups"
# are the units a TP rank must hold whole.
AR_TABLE = (
    param("embedding.word_embeddings.weight", released("tok_embeddings.weight", ("vocab", "d"), column()),
          tp=column(), stage="first"),
    param("decoder.final_layernorm.weight", released("norm.weight", ("d",)), stage="last"),
    param("output_layer.weight", released("output.weight", ("out_vocab", "d"), column()), tp=column(), stage="last"),
    # self-attention
    param(_L + "input_layernorm.weight", released(_R + "attention_norm.weight", ("d",)),
          te_name=_L + "self_attention.linear_qkv.layer_norm_weight"),
    param(_L + "self_attention.linear_qkv.weight",
          released(_R + "attention.wq.weight", ("q", "d"), column("heads")),
          released(_R + "attention.wk.weight", ("kv", "d"), column("groups")),
          released(_R + "attention.wv.weight", ("kv", "d"), column("groups")),
          transform=km.fused_qkv("groups"), tp=column("groups")),
    param(_L + "self_attention.linear_proj.weight", released(_R + "attention.wo.weight", ("d", "q"), row("heads")),
          tp=row("heads")),
    param(_L + "self_attention.q_layernorm.weight", released(_R + "attention.q_norm.weight", ("hd",))),
    param(_L + "self_attention.k_layernorm.weight", released(_R + "attention.k_norm.weight", ("hd",))),
    # SwiGLU MLP
    param(_L + "pre_mlp_layernorm.weight", released(_R + "ffn_norm.weight", ("d",)),
          te_name=_L + "mlp.linear_fc1.layer_norm_weight"),
    param(_L + "mlp.linear_fc1.weight",
          released(_R + "feed_forward.w1.weight", ("ff", "d"), column()),
          released(_R + "feed_forward.w3.weight", ("ff", "d"), column()),
          transform=km.concat(), tp=column(stride=2)),
    param(_L + "mlp.linear_fc2.weight", released(_R + "feed_forward.w2.weight", ("d", "ff"), row()), tp=row()),
    # Video2World cross-attention to the text context
    param(_L + "pre_cross_attn_layernorm.weight", released(_R + "cross_attention_norm.weight", ("d",)), when=V2W),
    param(_L + "cross_attention.linear_q.weight", released(_R + "cross_attention.wq.weight", ("q", "d"), column("heads")),
          tp=column("heads"), when=V2W),
    param(_L + "cross_attention.linear_kv.weight",
          released(_R + "cross_attention.wk.weight", ("kv", "ctx"), column("groups")),
          released(_R + "cross_attention.wv.weight", ("kv", "ctx"), column("groups")),
          transform=km.fused_kv("groups"), tp=column("groups"), when=V2W),
    param(_L + "cross_attention.linear_proj.weight", released(_R + "cross_attention.wo.weight", ("d", "q"), row("heads")),
          tp=row("heads"), when=V2W),
    param(_L + "cross_attention.q_layernorm.weight", released(_R + "cross_attention.q_norm.weight", ("hd",)), when=V2W),
    param(_L + "cross_attention.k_layernorm.weight", released(_R + "cross_attention.k_norm.weight", ("hd",)), when=V2W),
)


def ar_dims(cfg: ARModelConfig) -> dict[str, int]:
    hd = cfg.head_dim
    return dict(d=cfg.hidden_size, hd=hd, heads=cfg.num_attention_heads, groups=cfg.num_query_groups,
                q=cfg.num_attention_heads * hd, kv=cfg.num_query_groups * hd, ff=cfg.ffn_hidden_size,
                vocab=cfg.vocab_size, out_vocab=cfg.output_vocab_size, ctx=cfg.context_dim)


def _vocab_hint(wrong: list[str]) -> Optional[str]:
    if any(k.startswith(("tok_embeddings.", "output.")) for k in wrong):
        return ("a different vocabulary size: set model.resize_vocab=true / resize_vocab=True (--resize-vocab) to "
                "resize the embedding and output rows, new rows initialised from the mean of the old")
    return None


def ar_keymap(cfg: ARModelConfig, fused_norms: bool = False) -> km.KeyMap:
    """`AR_TABLE` bound to `cfg` (`fused_norms`: the Transformer Engine spec's pre-norm names)."""
    name = (f"the {cfg.name!r} AR architecture ({cfg.num_layers} layers, hidden {cfg.hidden_size}, vocab "
            f"{cfg.vocab_size}/{cfg.output_vocab_size}{', video2world context ' + str(cfg.context_dim) if cfg.video2world else ''})")
    return km.KeyMap(AR_TABLE, ar_dims(cfg), cfg.num_layers, features={V2W} if cfg.video2world else (),
                     te_names=fused_norms, name=name, hint=_vocab_hint)


def expected_released_shapes(cfg: ARModelConfig) -> dict[str, tuple[int, ...]]:
    """Every key (without prefix) and shape of the released checkpoint of this architecture."""
    return ar_keymap(cfg).released_shapes()


def check_released_state(state: Mapping[str, torch.Tensor], cfg: ARModelConfig) -> None:
    """Raise CheckpointMismatchError unless `state` (prefix stripped) has exactly the expected keys and
    shapes; every problem is listed in one message."""
    km.check_released(state, ar_keymap(cfg))


def to_megatron(state: Mapping[str, torch.Tensor], cfg: ARModelConfig, fused_norms: bool = False) -> dict[str, torch.Tensor]:
    """The whole model in the megatron layout at TP=1/PP=1 (the `model.` prefix may be present)."""
    return km.released_to_megatron(strip_prefix(state, PREFIX), ar_keymap(cfg, fused_norms))


def to_released(state: Mapping[str, torch.Tensor], cfg: ARModelConfig, fused_norms: bool = False,
                prefix: str = "") -> dict[str, torch.Tensor]:
    """The released layout of a TP=1/PP=1 megatron state dict, keys prefixed with `prefix`."""
    out = km.megatron_to_released(state, ar_keymap(cfg, fused_norms))
    return {prefix + k: v for k, v in out.items()}


def _split_prefix(state: Mapping[str, torch.Tensor]) -> tuple[str, Mapping[str, torch.Tensor]]:
    stripped = strip_prefix(state, PREFIX)
    return (PREFIX if len(state) and all(k.startswith(PREFIX) for k in state) else ""), stripped


def shard_released_tp(state: Mapping[str, torch.Tensor], cfg: ARModelConfig, tp: int) -> list[dict[str, torch.Tensor]]:
    """The released checkpoint split into `tp` tensor-parallel parts by the reference split rules, as
    cosmos-predict1's `shard_autoregressive_base_checkpoints.py` writes them; the `model.` prefix is kept
    when the input has it."""
    prefix, stripped = _split_prefix(state)
    return [{prefix + k: v for k, v in part.items()} for part in km.shard_released(stripped, ar_keymap(cfg), tp)]


def merge_released_tp(shards: list[Mapping[str, torch.Tensor]], cfg: ARModelConfig) -> dict[str, torch.Tensor]:
    """The whole released checkpoint from its TP parts in rank order (the reference merge script's
    inverse of `shard_released_tp`, except that replicated norms must agree exactly, not be averaged)."""
    split = [_split_prefix(s) for s in shards]
    prefixes = {p for p, _ in split}
    if len(prefixes) > 1:
        raise CheckpointMismatchError("the shards disagree on the 'model.' key prefix")
    prefix = prefixes.pop() if prefixes else ""
    merged = km.merge_released([s for _, s in split], ar_keymap(cfg))
    return {prefix + k: v for k, v in merged.items()}


# ---------------------------------------------------------------------------------------------------
# Vocabulary resize (DESIGN: a tokenizer swap to another vocabulary)


def resize_vocab_rows(weight: torch.Tensor, rows: int, name: str = "") -> torch.Tensor:
    """`weight` with `rows` rows: extra rows are the mean of the existing ones, surplus rows are dropped.
    Logged, since it changes what the model knows about token ids."""
    old = weight.shape[0]
    if rows == old:
        return weight
    if rows < old:
        log.warning("resize_vocab: %s keeps the first %d of %d rows (ids >= %d dropped)", name, rows, old, rows)
        return weight[:rows].clone()
    mean = weight.float().mean(dim=0, keepdim=True).to(weight.dtype)
    log.warning("resize_vocab: %s grows from %d to %d rows; new rows = mean of the old rows", name, old, rows)
    return torch.cat([weight, mean.expand(rows - old, -1)], dim=0)


def apply_vocab_resize(state: Mapping[str, torch.Tensor], cfg: ARModelConfig) -> tuple[Mapping[str, torch.Tensor], str]:
    """`tok_embeddings` / `output` (prefix stripped) resized to the config's row counts, and a note of
    what changed ("" when nothing did). A lazy view stays lazy for every other tensor."""
    out, notes, present = state, [], set(state)
    for key, rows in (("tok_embeddings.weight", cfg.vocab_size), ("output.weight", cfg.output_vocab_size)):
        if key in present:
            shape = tensor_shape(out, key)
            if len(shape) == 2 and shape[1] == cfg.hidden_size and shape[0] != rows:
                resized = resize_vocab_rows(out[key], rows, key)
                out = out.with_override(key, resized) if isinstance(out, LazyTensors) else {**out, key: resized}
                notes.append(f"{key} rows {shape[0]} -> {rows}")
    return out, "; ".join(notes)


# ---------------------------------------------------------------------------------------------------
# A rank's model


def _fused_norms(model) -> bool:
    return any(k.endswith("linear_qkv.layer_norm_weight") for k, _ in model.named_parameters())


def _placement(model) -> dict:
    """Which layers (global indices) and global tensors this pipeline stage of the model holds."""
    layers = model.decoder.layers
    offset = (layers[0].layer_number - 1) if len(layers) else 0
    stages = [stage for stage, held in (("first", model.pre_process), ("last", model.post_process)) if held]
    return dict(layer_offset=offset, num_layers=len(layers), stages=stages)


def load_released(model, source: Union[str, os.PathLike, Mapping[str, torch.Tensor]], resize_vocab: bool = False) -> dict:
    """Fill `model` (this rank's TP/PP part of a CosmosARModel, `model.ar_config` its config) from a released
    checkpoint: a `.pt`/`.safetensors` file (read lazily), a folder holding `model.safetensors` or
    `model.pt`, or a state dict, with or without the `model.` prefix.

    Strict: the source must hold exactly the architecture's keys and shapes, and every parameter of this
    rank must be filled (checked before anything is copied). With `resize_vocab`, the embedding and
    output rows are first resized to the model's vocabulary (new rows = mean of the old, logged).
    Returns a report; its "resized" entry says what was resized ("" when nothing)."""
    cfg: ARModelConfig = model.ar_config
    state = read_state_dict(source, lazy=True) if isinstance(source, (str, os.PathLike)) else source
    state = strip_prefix(state, PREFIX)
    resized = ""
    if resize_vocab:
        state, resized = apply_vocab_resize(state, cfg)
    report = km.load_model(model, state, ar_keymap(cfg, _fused_norms(model)), **_placement(model))
    report["resized"] = resized
    return report


def export_released(model, prefix: str = PREFIX) -> dict[str, torch.Tensor]:
    """The released layout of `model`, gathered over tensor parallelism (a collective on the TP group:
    call it on every TP rank). Under pipeline parallelism each stage returns its own layers (with global
    layer indices) and globals; join the stages with `merge_pipeline_exports`. Tensors copied as-is may
    share memory with the (CPU) model's parameters."""
    out = km.export_model(model, ar_keymap(model.ar_config, _fused_norms(model)), **_placement(model))
    return {prefix + k: v for k, v in out.items()}


def merge_pipeline_exports(parts: list[Mapping[str, torch.Tensor]], cfg: ARModelConfig,
                           prefix: str = PREFIX) -> dict[str, torch.Tensor]:
    """One complete checkpoint from the pipeline stages' exports (keys carrying `prefix`), checked strictly."""
    stripped = [{k[len(prefix):] if prefix and k.startswith(prefix) else k: v for k, v in p.items()} for p in parts]
    merged = km.merge_stage_exports(stripped, ar_keymap(cfg))
    return {prefix + k: v for k, v in merged.items()}
