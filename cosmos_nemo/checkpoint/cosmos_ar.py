"""Released Cosmos AR checkpoints (`model.pt`) ⇄ the megatron layout of `CosmosARModel`, strictly.

Source layout (ar_models.md §2.1), with or without the `model.` prefix:
`tok_embeddings`, `layers.{i}.{attention_norm, attention.{wq,wk,wv,wo,q_norm,k_norm}, ffn_norm,
feed_forward.{w1,w2,w3}}`, V2W `layers.{i}.{cross_attention_norm, cross_attention.{wq,wk,wv,wo,q_norm,k_norm}}`,
`norm`, `output` (all `.weight`).

Megatron layout (what `CosmosARModel.state_dict()` holds at TP=1):
- `linear_qkv` = per KV group `[q heads of the group; k; v]`, groups in order (megatron's GQA layout,
  so a TP rank's shard is a contiguous run of whole groups);
- cross-attention `linear_kv` = per KV group `[k; v]`;
- `linear_fc1` = `[w1 (gate); w3 (up)]`; under TP the gate and up halves are sharded separately
  (megatron marks it `partition_stride=2`);
- pre-norms are `input_layernorm`/`pre_mlp_layernorm` in the local spec and the fused
  `linear_qkv.layer_norm_weight`/`linear_fc1.layer_norm_weight` in the Transformer Engine spec.

Loading is strict: every source key must be expected and used, with the expected shape, and every model
parameter must be filled; anything else raises `CheckpointMismatchError` listing the keys and shapes.
Export reverses the fusion by indexing only, so import then export returns the original tensors bit for bit.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Optional, Union

import torch

from cosmos_nemo.models.ar.config import ARModelConfig

PREFIX = "model."
log = logging.getLogger(__name__)


class CheckpointMismatchError(ValueError):
    """Source and target keys or shapes disagree; the message lists every problem."""


def _fmt_list(title: str, items: list[str], limit: int = 40) -> str:
    shown = "\n    ".join(items[:limit])
    more = f"\n    ... and {len(items) - limit} more" if len(items) > limit else ""
    return f"  {title} ({len(items)}):\n    {shown}{more}"


# ---------------------------------------------------------------------------------------------------
# Reading


class LazyTensors(Mapping):
    """The tensors of a safetensors file, each read when accessed: every TP/PP rank loads only what it
    needs instead of the whole file (26 GB for 13B in bf16). `shape(key)` reads no data."""

    def __init__(self, path: Union[str, os.PathLike], names: Optional[dict[str, str]] = None,
                 overrides: Optional[dict[str, torch.Tensor]] = None):
        from safetensors import safe_open

        self.path = str(path)
        with safe_open(self.path, framework="pt") as f:
            self._shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        self._names = names if names is not None else {k: k for k in self._shapes}
        self._overrides = dict(overrides or {})

    def renamed(self, rename) -> "LazyTensors":
        out = LazyTensors.__new__(LazyTensors)
        out.path, out._shapes = self.path, self._shapes
        out._names = {rename(k): v for k, v in self._names.items()}
        out._overrides = {rename(k): v for k, v in self._overrides.items()}
        return out

    def with_override(self, key: str, tensor: torch.Tensor) -> "LazyTensors":
        out = self.renamed(lambda k: k)
        out._overrides[key] = tensor
        return out

    def shape(self, key: str) -> tuple[int, ...]:
        if key in self._overrides:
            return tuple(self._overrides[key].shape)
        return self._shapes[self._names[key]]

    def __getitem__(self, key: str) -> torch.Tensor:
        if key in self._overrides:
            return self._overrides[key]
        from safetensors import safe_open

        with safe_open(self.path, framework="pt") as f:
            return f.get_tensor(self._names[key])

    def __iter__(self):
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def tensor_shape(state: Mapping[str, torch.Tensor], key: str) -> tuple[int, ...]:
    return state.shape(key) if isinstance(state, LazyTensors) else tuple(state[key].shape)


def read_cosmos_checkpoint(path: Union[str, os.PathLike], lazy: bool = False) -> Mapping[str, torch.Tensor]:
    """Tensors of a Cosmos AR checkpoint: `.safetensors`, or a torch file loaded with
    `weights_only=True` and memory-mapped (a flat state dict, or one nested under "model"/"state_dict").
    A directory is searched for `model.safetensors` then `model.pt`. With `lazy`, a safetensors file is
    returned as a `LazyTensors` view that reads each tensor on access."""
    p = Path(path)
    if p.is_dir():
        for name in ("model.safetensors", "model.pt"):
            if (p / name).is_file():
                p = p / name
                break
        else:
            raise FileNotFoundError(f"{path} is a directory without model.safetensors or model.pt")
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint {p} does not exist")
    if p.suffix == ".safetensors":
        if lazy:
            return LazyTensors(p)
        from safetensors.torch import load_file

        return load_file(str(p))
    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # a pickle with classes, or not a torch file at all
        raise ValueError(
            f"cannot read {p} as a weights-only torch checkpoint ({type(err).__name__}: {err}); "
            "only plain tensor state dicts are loaded (convert other files to safetensors first)"
        ) from err
    if isinstance(obj, Mapping):
        for nest in ("model", "state_dict"):
            if isinstance(obj.get(nest), Mapping) and not isinstance(obj.get(nest), torch.Tensor):
                obj = obj[nest]
                break
    if not isinstance(obj, Mapping):
        raise ValueError(f"{p} holds a {type(obj).__name__}, not a state dict of tensors")
    bad = [f"{k}: {type(v).__name__}" for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"{p} has non-tensor entries:\n" + "\n".join(bad[:20]))
    return dict(obj)


def strip_prefix(state: Mapping[str, torch.Tensor], prefix: str = PREFIX) -> Mapping[str, torch.Tensor]:
    """Remove the released files' `model.` prefix; all keys must agree on having it or not."""
    with_prefix = [k for k in state if k.startswith(prefix)]
    if not with_prefix:
        return state if isinstance(state, LazyTensors) else dict(state)
    if len(with_prefix) != len(state):
        without = sorted(k for k in state if not k.startswith(prefix))
        raise CheckpointMismatchError(
            f"checkpoint keys mix the {prefix!r} prefix and no prefix:\n" + _fmt_list("keys without it", without)
        )
    if isinstance(state, LazyTensors):
        return state.renamed(lambda k: k[len(prefix):])
    return {k[len(prefix):]: v for k, v in state.items()}


# ---------------------------------------------------------------------------------------------------
# Expected source layout


def cosmos_expected_shapes(cfg: ARModelConfig) -> dict[str, tuple[int, ...]]:
    """Every key (without prefix) and shape of the released checkpoint of this architecture."""
    d, hd, ff = cfg.hidden_size, cfg.head_dim, cfg.ffn_hidden_size
    q, kv = cfg.num_attention_heads * hd, cfg.num_query_groups * hd
    shapes = {"tok_embeddings.weight": (cfg.vocab_size, d), "norm.weight": (d,), "output.weight": (cfg.output_vocab_size, d)}
    for i in range(cfg.num_layers):
        L = f"layers.{i}."
        shapes.update({
            L + "attention_norm.weight": (d,), L + "ffn_norm.weight": (d,),
            L + "attention.wq.weight": (q, d), L + "attention.wk.weight": (kv, d), L + "attention.wv.weight": (kv, d),
            L + "attention.wo.weight": (d, q), L + "attention.q_norm.weight": (hd,), L + "attention.k_norm.weight": (hd,),
            L + "feed_forward.w1.weight": (ff, d), L + "feed_forward.w3.weight": (ff, d), L + "feed_forward.w2.weight": (d, ff),
        })
        if cfg.video2world:
            c = cfg.context_dim
            shapes.update({
                L + "cross_attention_norm.weight": (d,),
                L + "cross_attention.wq.weight": (q, d), L + "cross_attention.wk.weight": (kv, c),
                L + "cross_attention.wv.weight": (kv, c), L + "cross_attention.wo.weight": (d, q),
                L + "cross_attention.q_norm.weight": (hd,), L + "cross_attention.k_norm.weight": (hd,),
            })
    return shapes


def check_cosmos_state(state: Mapping[str, torch.Tensor], cfg: ARModelConfig) -> None:
    """Raise CheckpointMismatchError unless `state` (prefix stripped) has exactly the expected keys/shapes."""
    expected = cosmos_expected_shapes(cfg)
    unexpected = sorted(k for k in state if k not in expected)
    missing = sorted(k for k in expected if k not in state)
    wrong = sorted(
        f"{k}: checkpoint {tensor_shape(state, k)}, model {expected[k]}"
        for k in expected if k in state and tensor_shape(state, k) != expected[k]
    )
    if unexpected or missing or wrong:
        parts = [f"checkpoint does not match the {cfg.name!r} AR architecture "
                 f"({cfg.num_layers} layers, hidden {cfg.hidden_size}, vocab {cfg.vocab_size}/{cfg.output_vocab_size}"
                 f"{', video2world context ' + str(cfg.context_dim) if cfg.video2world else ''}):"]
        if unexpected:
            parts.append(_fmt_list("unexpected keys", unexpected))
        if missing:
            parts.append(_fmt_list("missing keys", missing))
        if wrong:
            parts.append(_fmt_list("wrong shapes", wrong))
            if any(k.startswith(("tok_embeddings.", "output.")) for k in wrong):
                parts.append("  (a different vocabulary size: set model.resize_vocab=true / resize_vocab=True to "
                             "resize the embedding and output rows, new rows initialised from the mean of the old)")
        raise CheckpointMismatchError("\n".join(parts))


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


def apply_vocab_resize(state: Mapping[str, torch.Tensor], cfg: ARModelConfig) -> Mapping[str, torch.Tensor]:
    """Resize `tok_embeddings` / `output` (prefix stripped) to the config's vocabulary sizes."""
    out = state if isinstance(state, LazyTensors) else dict(state)
    for key, rows in (("tok_embeddings.weight", cfg.vocab_size), ("output.weight", cfg.output_vocab_size)):
        if key in out:
            shape = tensor_shape(out, key)
            if len(shape) == 2 and shape[1] == cfg.hidden_size and shape[0] != rows:
                resized = resize_vocab_rows(out[key], rows, key)
                out = out.with_override(key, resized) if isinstance(out, LazyTensors) else {**out, key: resized}
    return out


# ---------------------------------------------------------------------------------------------------
# Fusion helpers (pure indexing, exactly invertible)


def fuse_qkv(wq, wk, wv, heads: int, groups: int, head_dim: int) -> torch.Tensor:
    per = heads // groups
    q = wq.reshape(groups, per * head_dim, -1)
    k = wk.reshape(groups, head_dim, -1)
    v = wv.reshape(groups, head_dim, -1)
    return torch.cat([q, k, v], dim=1).reshape((heads + 2 * groups) * head_dim, -1)


def split_qkv(qkv, heads: int, groups: int, head_dim: int):
    per = heads // groups
    blocks = qkv.reshape(groups, (per + 2) * head_dim, -1)
    q, k, v = torch.split(blocks, [per * head_dim, head_dim, head_dim], dim=1)
    return q.reshape(heads * head_dim, -1), k.reshape(groups * head_dim, -1), v.reshape(groups * head_dim, -1)


def fuse_kv(wk, wv, groups: int, head_dim: int) -> torch.Tensor:
    k = wk.reshape(groups, head_dim, -1)
    v = wv.reshape(groups, head_dim, -1)
    return torch.cat([k, v], dim=1).reshape(2 * groups * head_dim, -1)


def split_kv(kv, groups: int, head_dim: int):
    k, v = torch.split(kv.reshape(groups, 2 * head_dim, -1), [head_dim, head_dim], dim=1)
    return k.reshape(groups * head_dim, -1), v.reshape(groups * head_dim, -1)


# ---------------------------------------------------------------------------------------------------
# Key maps


def _norm_names(fused_norms: bool) -> tuple[str, str]:
    if fused_norms:  # Transformer Engine spec: the pre-norms live inside the following linear
        return "self_attention.linear_qkv.layer_norm_weight", "mlp.linear_fc1.layer_norm_weight"
    return "input_layernorm.weight", "pre_mlp_layernorm.weight"


def cosmos_layer_to_megatron(state: Mapping[str, torch.Tensor], i: int, cfg: ARModelConfig, fused_norms: bool = False,
                             out_index: Optional[int] = None) -> dict[str, torch.Tensor]:
    """Megatron tensors (TP=1) of source layer `i`, keyed `decoder.layers.{out_index or i}.*`."""
    src, dst = f"layers.{i}.", f"decoder.layers.{i if out_index is None else out_index}."
    heads, groups, hd = cfg.num_attention_heads, cfg.num_query_groups, cfg.head_dim
    attn_norm, mlp_norm = _norm_names(fused_norms)
    out = {
        dst + attn_norm: state[src + "attention_norm.weight"],
        dst + "self_attention.linear_qkv.weight": fuse_qkv(
            state[src + "attention.wq.weight"], state[src + "attention.wk.weight"], state[src + "attention.wv.weight"],
            heads, groups, hd),
        dst + "self_attention.linear_proj.weight": state[src + "attention.wo.weight"],
        dst + "self_attention.q_layernorm.weight": state[src + "attention.q_norm.weight"],
        dst + "self_attention.k_layernorm.weight": state[src + "attention.k_norm.weight"],
        dst + mlp_norm: state[src + "ffn_norm.weight"],
        dst + "mlp.linear_fc1.weight": torch.cat([state[src + "feed_forward.w1.weight"], state[src + "feed_forward.w3.weight"]], 0),
        dst + "mlp.linear_fc2.weight": state[src + "feed_forward.w2.weight"],
    }
    if cfg.video2world:
        out.update({
            dst + "pre_cross_attn_layernorm.weight": state[src + "cross_attention_norm.weight"],
            dst + "cross_attention.linear_q.weight": state[src + "cross_attention.wq.weight"],
            dst + "cross_attention.linear_kv.weight": fuse_kv(
                state[src + "cross_attention.wk.weight"], state[src + "cross_attention.wv.weight"], groups, hd),
            dst + "cross_attention.linear_proj.weight": state[src + "cross_attention.wo.weight"],
            dst + "cross_attention.q_layernorm.weight": state[src + "cross_attention.q_norm.weight"],
            dst + "cross_attention.k_layernorm.weight": state[src + "cross_attention.k_norm.weight"],
        })
    return out


def megatron_layer_to_cosmos(state: Mapping[str, torch.Tensor], j: int, cfg: ARModelConfig, fused_norms: bool = False,
                             out_index: Optional[int] = None) -> dict[str, torch.Tensor]:
    src, dst = f"decoder.layers.{j}.", f"layers.{j if out_index is None else out_index}."
    heads, groups, hd = cfg.num_attention_heads, cfg.num_query_groups, cfg.head_dim
    attn_norm, mlp_norm = _norm_names(fused_norms)
    wq, wk, wv = split_qkv(state[src + "self_attention.linear_qkv.weight"], heads, groups, hd)
    w1, w3 = torch.chunk(state[src + "mlp.linear_fc1.weight"], 2, dim=0)
    out = {
        dst + "attention_norm.weight": state[src + attn_norm],
        dst + "attention.wq.weight": wq, dst + "attention.wk.weight": wk, dst + "attention.wv.weight": wv,
        dst + "attention.wo.weight": state[src + "self_attention.linear_proj.weight"],
        dst + "attention.q_norm.weight": state[src + "self_attention.q_layernorm.weight"],
        dst + "attention.k_norm.weight": state[src + "self_attention.k_layernorm.weight"],
        dst + "ffn_norm.weight": state[src + mlp_norm],
        dst + "feed_forward.w1.weight": w1, dst + "feed_forward.w3.weight": w3,
        dst + "feed_forward.w2.weight": state[src + "mlp.linear_fc2.weight"],
    }
    if cfg.video2world:
        ck, cv = split_kv(state[src + "cross_attention.linear_kv.weight"], groups, hd)
        out.update({
            dst + "cross_attention_norm.weight": state[src + "pre_cross_attn_layernorm.weight"],
            dst + "cross_attention.wq.weight": state[src + "cross_attention.linear_q.weight"],
            dst + "cross_attention.wk.weight": ck, dst + "cross_attention.wv.weight": cv,
            dst + "cross_attention.wo.weight": state[src + "cross_attention.linear_proj.weight"],
            dst + "cross_attention.q_norm.weight": state[src + "cross_attention.q_layernorm.weight"],
            dst + "cross_attention.k_norm.weight": state[src + "cross_attention.k_layernorm.weight"],
        })
    return {k: v.contiguous() for k, v in out.items()}


_GLOBALS = {
    "tok_embeddings.weight": "embedding.word_embeddings.weight",
    "norm.weight": "decoder.final_layernorm.weight",
    "output.weight": "output_layer.weight",
}


def cosmos_to_megatron(state: Mapping[str, torch.Tensor], cfg: ARModelConfig, fused_norms: bool = False) -> dict[str, torch.Tensor]:
    """The whole model in the megatron layout at TP=1/PP=1 (validated strictly first)."""
    state = strip_prefix(state)
    check_cosmos_state(state, cfg)
    out = {dst: state[src] for src, dst in _GLOBALS.items()}
    for i in range(cfg.num_layers):
        out.update(cosmos_layer_to_megatron(state, i, cfg, fused_norms))
    return out


def megatron_to_cosmos(state: Mapping[str, torch.Tensor], cfg: ARModelConfig, fused_norms: bool = False,
                       prefix: str = "") -> dict[str, torch.Tensor]:
    """The released layout from a TP=1/PP=1 megatron state dict (`_extra_state` entries ignored)."""
    state = {k: v for k, v in state.items() if not k.endswith("._extra_state")}
    out = {src: state[dst] for src, dst in _GLOBALS.items()}
    for i in range(cfg.num_layers):
        out.update(megatron_layer_to_cosmos(state, i, cfg, fused_norms))
    return {prefix + k: v for k, v in out.items()}


# ---------------------------------------------------------------------------------------------------
# Loading into / exporting from a (possibly TP/PP-sharded) model


def _uses_fused_norms(model) -> bool:
    return any(k.endswith("linear_qkv.layer_norm_weight") for k in model.state_dict())


def _layer_offset(model) -> int:
    layers = model.decoder.layers
    return (layers[0].layer_number - 1) if len(layers) else 0


def _stride(name: str, param: torch.Tensor) -> int:
    # The SwiGLU fc1 is [gate; up] and each rank holds [gate_r; up_r]: stride 2 whatever the linear
    # implementation records (megatron's local and TE linears do record it; be independent of that).
    if name.endswith("mlp.linear_fc1.weight"):
        return 2
    return getattr(param, "partition_stride", 1)


def _shard(full: torch.Tensor, param: torch.Tensor, tp_rank: int, tp_size: int, stride: int = 1) -> torch.Tensor:
    """This rank's shard of a TP=1 tensor along megatron's partition dim, `stride` blocks chunked separately."""
    if not getattr(param, "tensor_model_parallel", False) or tp_size == 1:
        return full
    dim = param.partition_dim
    blocks = torch.chunk(full, stride, dim=dim)
    return torch.cat([torch.chunk(b, tp_size, dim=dim)[tp_rank] for b in blocks], dim=dim)


def _unshard(shards: list[torch.Tensor], param: torch.Tensor, stride: int = 1) -> torch.Tensor:
    if not getattr(param, "tensor_model_parallel", False) or len(shards) == 1:
        return shards[0]
    dim = param.partition_dim
    per_rank_blocks = [torch.chunk(s, stride, dim=dim) for s in shards]
    return torch.cat([torch.cat([blocks[b] for blocks in per_rank_blocks], dim=dim) for b in range(stride)], dim=dim)


def _tp():
    from megatron.core import parallel_state

    if not parallel_state.model_parallel_is_initialized():
        return 0, 1, None
    return (parallel_state.get_tensor_model_parallel_rank(), parallel_state.get_tensor_model_parallel_world_size(),
            parallel_state.get_tensor_model_parallel_group())


@torch.no_grad()
def load_cosmos_checkpoint(model, source: Union[str, os.PathLike, Mapping[str, torch.Tensor]],
                           resize_vocab: bool = False) -> dict:
    """Fill `model` (this rank's TP/PP part of a CosmosARModel) from a released checkpoint or state dict.

    Strict: the source must hold exactly the architecture's keys and shapes (checked before anything is
    copied), and every parameter of this rank must be filled. With `resize_vocab`, embedding and output
    rows are first resized to the model's vocabulary (new rows = mean of the old, logged). Returns a
    small report."""
    cfg: ARModelConfig = model.ar_config
    state = read_cosmos_checkpoint(source, lazy=True) if isinstance(source, (str, os.PathLike)) else dict(source)
    state = strip_prefix(state)
    if resize_vocab:
        state = apply_vocab_resize(state, cfg)
    check_cosmos_state(state, cfg)
    fused = _uses_fused_norms(model)
    offset = _layer_offset(model)
    n_local = len(model.decoder.layers)

    def converted(source: Mapping[str, torch.Tensor], j: Optional[int], needed=None) -> dict[str, torch.Tensor]:
        """Megatron tensors of local layer j, or of the globals (those in `needed`, if given) when j is None."""
        if j is None:
            return {dst: source[src] for src, dst in _GLOBALS.items() if needed is None or dst in needed}
        return cosmos_layer_to_megatron(source, offset + j, cfg, fused, out_index=j)

    tp_rank, tp_size, _ = _tp()
    params = dict(model.named_parameters())
    # Dry run on meta tensors: every key and shard shape is checked before anything is copied.
    meta = {k: torch.empty(tensor_shape(state, k), device="meta") for k in state}
    planned: dict[str, torch.Size] = {}
    for j in [None, *range(n_local)]:
        planned.update({k: v.shape for k, v in converted(meta, j).items()})
    unfilled = sorted(set(params) - set(planned))
    unknown_targets = sorted(k for k in planned if k not in params and not _is_other_stage(k, model))
    wrong = []
    for name, param in params.items():
        if name in planned:
            shard = _shard(torch.empty(planned[name], device="meta"), param, tp_rank, tp_size, _stride(name, param))
            if shard.shape != param.shape:
                wrong.append(f"{name}: shard {tuple(shard.shape)} vs parameter {tuple(param.shape)}")
    if unfilled or unknown_targets or wrong:
        raise CheckpointMismatchError(
            "the model's parameters and the converted checkpoint disagree:\n"
            + (_fmt_list("parameters not filled", unfilled) + "\n" if unfilled else "")
            + (_fmt_list("converted tensors with no parameter", unknown_targets) + "\n" if unknown_targets else "")
            + (_fmt_list("shard shapes", wrong) if wrong else "")
        )
    # Layer by layer, so a rank never holds more than one converted layer besides its own weights.
    for j in [None, *range(n_local)]:
        for name, tensor in converted(state, j, needed=params).items():
            if name in params:  # the globals of other pipeline stages are skipped (not even read)
                param = params[name]
                param.copy_(_shard(tensor, param, tp_rank, tp_size, _stride(name, param)).to(param.dtype))
    return {"source_keys": len(state), "parameters_filled": len(params), "layers": (offset, offset + n_local),
            "tensor_parallel": (tp_rank, tp_size)}


def _is_other_stage(key: str, model) -> bool:
    """Global tensors that live on another pipeline stage (embedding on the first, output on the last)."""
    return (key.startswith("embedding.") and not model.pre_process) or (
        (key.startswith("output_layer.") or key.startswith("decoder.final_layernorm.")) and not model.post_process)


@torch.no_grad()
def export_cosmos_state_dict(model, prefix: str = PREFIX) -> dict[str, torch.Tensor]:
    """The released layout of `model`, gathered over tensor parallelism (a collective on the TP group:
    call it on every TP rank). Under pipeline parallelism each stage returns its own layers (with global
    layer indices) and globals; merge the stages' dicts with `merge_pipeline_exports`."""
    import torch.distributed as dist

    cfg: ARModelConfig = model.ar_config
    tp_rank, tp_size, group = _tp()
    full = {}
    for name, param in model.named_parameters():
        local = param.detach().cpu().contiguous()
        if tp_size > 1 and getattr(param, "tensor_model_parallel", False):
            shards = [torch.empty_like(local) for _ in range(tp_size)]
            dist.all_gather(shards, local, group=group)
            local = _unshard(shards, param, _stride(name, param))
        full[name] = local
    fused = _uses_fused_norms(model)
    offset = _layer_offset(model)
    out = {}
    for j in range(len(model.decoder.layers)):
        out.update(megatron_layer_to_cosmos(full, j, cfg, fused, out_index=offset + j))
    for src, dst in _GLOBALS.items():
        if dst in full:
            out[src] = full[dst]
    return {prefix + k: v for k, v in out.items()}


def merge_pipeline_exports(parts: list[Mapping[str, torch.Tensor]], cfg: ARModelConfig, prefix: str = PREFIX) -> dict[str, torch.Tensor]:
    """Merge per-stage exports into one complete checkpoint, checking it strictly."""
    merged: dict[str, torch.Tensor] = {}
    for part in parts:
        for k, v in part.items():
            if k in merged and not torch.equal(merged[k], v):
                raise CheckpointMismatchError(f"pipeline stages disagree on {k}")
            merged[k] = v
    check_cosmos_state(strip_prefix(merged, prefix) if prefix else merged, cfg)
    return merged
