"""Declarative key maps between a released checkpoint layout and megatron's, in the style of
Megatron-Bridge's parameter mappings.

A model family writes its layout ONCE, as a table of `param(...)` entries. Each entry maps one megatron
parameter name (with `{i}` for the layer index in per-layer entries) to the released tensor(s) it is made
of, says how (a `Transform`: a direct copy, or released tensors concatenated group by group: fused QKV
per KV group, fused KV per group, `[gate; up]`), and how each side is split over tensor parallel ranks
(a `TPSplit`: the megatron partition dim and stride, and the released split rules). Shapes are written
with symbols (`("q", "d")`) that a config's `dims` resolve, so one table serves every size.

Everything else is generic and driven only by the table (bound to a config as a `KeyMap`):
released → megatron and back, the expected released keys and shapes, strict accounting (one
`CheckpointMismatchError` lists every missing, unexpected and wrongly shaped key), loading into one
rank's TP/PP part of a model, export gathered over TP, merging per-stage exports, and TP shard/merge of
the released layout (`shard_released`, `merge_released`) and of the megatron layout.

Every transform is pure indexing (reshape, concatenate, split), so import then export returns the
original tensors bit for bit.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch

from cosmos_nemo.io.tensors import tensor_shape

Dim = Union[int, str]  # a literal size, or a symbol the bound config resolves ("d", "heads", ...)
EXTRA_STATE = "._extra_state"  # Transformer Engine's per-module state entries: not weights


class CheckpointMismatchError(ValueError):
    """Source and target keys or shapes disagree. The message lists every problem; `missing`,
    `unexpected` and `wrong` hold the key names for callers that add advice."""

    def __init__(self, message: str, missing: Sequence[str] = (), unexpected: Sequence[str] = (),
                 wrong: Sequence[str] = ()):
        super().__init__(message)
        self.missing, self.unexpected, self.wrong = list(missing), list(unexpected), list(wrong)


def format_list(title: str, items: Sequence[str], limit: int = 40) -> str:
    shown = "\n    ".join(items[:limit])
    more = f"\n    ... and {len(items) - limit} more" if len(items) > limit else ""
    return f"  {title} ({len(items)}):\n    {shown}{more}"


# ---------------------------------------------------------------------------------------------------
# Tensor-parallel splits


@dataclass(frozen=True)
class TPSplit:
    """How a tensor is divided over TP ranks: chunked along `dim` (None: replicated on every rank).

    `stride` blocks along `dim` are chunked separately and each rank's pieces concatenated (SwiGLU's
    `[gate; up]` is stride 2: a rank holds `[gate_r; up_r]`). `unit` names the dims symbol counting the
    whole units (attention heads, KV groups) that a rank must receive whole, so a TP size that would cut
    a head is refused rather than producing a wrong shard."""

    dim: Optional[int] = None
    stride: int = 1
    unit: Optional[str] = None


REPLICATED = TPSplit()


def column(unit: Optional[str] = None, stride: int = 1) -> TPSplit:
    """Split along dim 0 (column-parallel linears, vocab-parallel embeddings)."""
    return TPSplit(0, stride, unit)


def row(unit: Optional[str] = None) -> TPSplit:
    """Split along dim 1 (row-parallel linears)."""
    return TPSplit(1, 1, unit)


def shard_tensor(tensor: torch.Tensor, split: TPSplit, rank: int, tp: int) -> torch.Tensor:
    """Rank `rank`'s part of `tensor` (a view where possible)."""
    if split.dim is None or tp == 1:
        return tensor
    size = tensor.shape[split.dim]
    if size % (split.stride * tp):
        raise ValueError(f"a dimension of {size} cannot be split into {split.stride} x {tp} equal parts")
    block, part = size // split.stride, size // (split.stride * tp)
    pieces = [tensor.narrow(split.dim, b * block + rank * part, part) for b in range(split.stride)]
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=split.dim)


def unshard_tensor(shards: Sequence[torch.Tensor], split: TPSplit) -> torch.Tensor:
    """The whole tensor from every rank's part, in rank order (the inverse of `shard_tensor`)."""
    if split.dim is None or len(shards) == 1:
        return shards[0]
    blocks = [torch.chunk(s, split.stride, dim=split.dim) for s in shards]
    return torch.cat([blocks[r][b] for b in range(split.stride) for r in range(len(shards))], dim=split.dim)


# ---------------------------------------------------------------------------------------------------
# Transforms (pure indexing, exactly invertible)


class Transform:
    """How the released tensors of one entry make the megatron tensor, and back."""

    def to_megatron(self, tensors: Sequence[torch.Tensor], dims: Mapping[str, int]) -> torch.Tensor:
        raise NotImplementedError

    def to_released(self, tensor: torch.Tensor, shapes: Sequence[tuple[int, ...]],
                    dims: Mapping[str, int]) -> list[torch.Tensor]:
        raise NotImplementedError


@dataclass(frozen=True)
class Direct(Transform):
    """The megatron tensor is the released tensor."""

    def to_megatron(self, tensors, dims):
        return tensors[0]

    def to_released(self, tensor, shapes, dims):
        return [tensor]


@dataclass(frozen=True)
class GroupConcat(Transform):
    """The released tensors cut into `groups` equal row blocks each, concatenated group by group along
    dim 0: `[a_0; b_0; c_0; a_1; b_1; c_1; ...]`.

    With the KV-group count this is megatron's GQA layout (`[q heads of group g; k_g; v_g]` per group, so
    a TP rank's rows are a run of whole groups); with one group it is a plain concatenation."""

    groups: Dim = 1

    def to_megatron(self, tensors, dims):
        g = resolve(self.groups, dims)
        return torch.cat([t.reshape(g, -1, *t.shape[1:]) for t in tensors], dim=1).reshape(-1, *tensors[0].shape[1:])

    def to_released(self, tensor, shapes, dims):
        g = resolve(self.groups, dims)
        rows = [s[0] // g for s in shapes]
        blocks = tensor.reshape(g, sum(rows), *tensor.shape[1:])
        return [b.reshape(-1, *tensor.shape[1:]).clone(memory_format=torch.contiguous_format)
                for b in torch.split(blocks, rows, dim=1)]


DIRECT = Direct()


def fused_qkv(groups: Dim) -> GroupConcat:
    """`[wq; wk; wv]` fused per KV group: `[q heads of the group; k; v]` for each of `groups` groups."""
    return GroupConcat(groups)


def fused_kv(groups: Dim) -> GroupConcat:
    """`[wk; wv]` fused per KV group: `[k; v]` for each of `groups` groups."""
    return GroupConcat(groups)


def concat() -> GroupConcat:
    """The released tensors concatenated along dim 0 (SwiGLU `[w1 gate; w3 up]`)."""
    return GroupConcat(1)


def resolve(dim: Dim, dims: Mapping[str, int]) -> int:
    return dims[dim] if isinstance(dim, str) else int(dim)


# ---------------------------------------------------------------------------------------------------
# Table entries


@dataclass(frozen=True)
class Released:
    """One released tensor of an entry: its name, symbolic shape and released TP split rule."""

    name: str
    shape: tuple[Dim, ...]
    tp: TPSplit = REPLICATED


def released(name: str, shape: tuple[Dim, ...], tp: TPSplit = REPLICATED) -> Released:
    return Released(name, tuple(shape), tp)


@dataclass(frozen=True)
class Param:
    """One table entry: a megatron parameter and the released tensors it is made of.

    `stage` ("first"/"last") marks a global tensor held only by that pipeline stage; `when` names a
    feature the entry exists with (e.g. "video2world"); `te_name` is the parameter's name in the
    Transformer Engine spec where it differs (pre-norms fused into the following linear)."""

    megatron: str
    released: tuple[Released, ...]
    transform: Transform = DIRECT
    tp: TPSplit = REPLICATED
    stage: Optional[str] = None
    when: Optional[str] = None
    te_name: Optional[str] = None


def param(megatron: str, *sources: Released, transform: Transform = DIRECT, tp: TPSplit = REPLICATED,
          stage: Optional[str] = None, when: Optional[str] = None, te_name: Optional[str] = None) -> Param:
    if not sources:
        raise ValueError(f"{megatron}: an entry needs at least one released tensor")
    if len(sources) > 1 and isinstance(transform, Direct):
        raise ValueError(f"{megatron}: several released tensors need a combining transform")
    return Param(megatron, tuple(sources), transform, tp, stage, when, te_name)


@dataclass(frozen=True)
class Rule:
    """An entry bound to a config and (for per-layer entries) to one layer: concrete names and shapes."""

    megatron: str
    released: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    released_tp: tuple[TPSplit, ...]
    transform: Transform
    tp: TPSplit


# ---------------------------------------------------------------------------------------------------
# A table bound to a config


class KeyMap:
    """A table bound to a config's `dims`, its layer count, its features and its spec variant.

    `name` describes the architecture in error messages; `hint(wrong_keys)` may add advice when shapes
    differ (e.g. how to resize a vocabulary)."""

    def __init__(self, table: Sequence[Param], dims: Mapping[str, int], num_layers: int,
                 features: Collection[str] = (), te_names: bool = False, name: str = "the model",
                 hint: Optional[Callable[[list[str]], Optional[str]]] = None):
        self.table, self.dims, self.num_layers = tuple(table), dict(dims), num_layers
        self.features, self.te_names, self.name, self.hint = frozenset(features), te_names, name, hint
        self.entries = [p for p in self.table if p.when is None or p.when in self.features]
        self._validate()

    def _validate(self) -> None:
        problems = []
        symbols = set()
        for p in self.entries:
            for r in p.released:
                symbols.update(s for s in r.shape if isinstance(s, str))
                symbols.update(u for u in (r.tp.unit,) if u)
                if r.tp.dim is not None and not isinstance(r.shape[r.tp.dim], str):
                    problems.append(f"{r.name}: its TP-split dimension must be a symbol, not {r.shape[r.tp.dim]}")
            symbols.update(u for u in (p.tp.unit,) if u)
            if isinstance(p.transform, GroupConcat) and isinstance(p.transform.groups, str):
                symbols.add(p.transform.groups)
            per_layer = {"{i}" in n for n in (p.megatron, p.te_name or p.megatron, *(r.name for r in p.released))}
            if len(per_layer) > 1:
                problems.append(f"{p.megatron}: either every name of an entry has the {{i}} layer placeholder or none")
        unknown = sorted(symbols - set(self.dims))
        if unknown:
            problems.append(f"symbols without a size in dims: {unknown}")
        names = [n for p in self.entries for n in (self._megatron_name(p), *(r.name for r in p.released))]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            problems.append(f"names listed twice (each key must be used exactly once): {twice}")
        if problems:
            raise ValueError("invalid key map table:\n  " + "\n  ".join(problems))

    def _megatron_name(self, p: Param) -> str:
        return p.te_name if self.te_names and p.te_name else p.megatron

    def _bind(self, p: Param, layer: Optional[int], megatron_index: Optional[int]) -> Rule:
        def fill(name: str, i: Optional[int]) -> str:
            return name if i is None else name.replace("{i}", str(i))

        return Rule(
            megatron=fill(self._megatron_name(p), megatron_index),
            released=tuple(fill(r.name, layer) for r in p.released),
            shapes=tuple(tuple(resolve(s, self.dims) for s in r.shape) for r in p.released),
            released_tp=tuple(r.tp for r in p.released),
            transform=p.transform, tp=p.tp,
        )

    def global_rules(self, stages: Optional[Collection[str]] = None) -> list[Rule]:
        """Rules of the tensors outside the layers (only those of `stages`, when given)."""
        return [self._bind(p, None, None) for p in self.entries if "{i}" not in p.megatron
                and (stages is None or p.stage is None or p.stage in stages)]

    def layer_rules(self, layer: int, megatron_index: Optional[int] = None) -> list[Rule]:
        """Rules of released layer `layer`, named `megatron_index` on the megatron side (a pipeline
        stage numbers its layers from 0)."""
        index = layer if megatron_index is None else megatron_index
        return [self._bind(p, layer, index) for p in self.entries if "{i}" in p.megatron]

    def rules(self) -> list[Rule]:
        """Every rule of the whole model: globals first, then layer by layer."""
        return self.global_rules() + [r for i in range(self.num_layers) for r in self.layer_rules(i)]

    def released_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every released key and its shape."""
        return {n: s for r in self.rules() for n, s in zip(r.released, r.shapes)}

    def megatron_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every megatron key and its shape at TP=1 (the transforms run on meta tensors)."""
        return {r.megatron: tuple(megatron_meta(r, self.dims).shape) for r in self.rules()}

    def shard(self, tp: int) -> "KeyMap":
        """The key map of one TP rank's part: every size that a split divides is divided by `tp`.

        Refused, listing every reason, when `tp` does not divide a split size or unit (heads, KV groups)."""
        if tp < 1:
            raise ValueError(f"tensor parallel size must be >= 1, got {tp}")
        if tp == 1:
            return self
        split, whole = set(), set()
        for p in self.entries:
            for r in p.released:
                for d, s in enumerate(r.shape):
                    if isinstance(s, str):
                        (split if d == r.tp.dim else whole).add(s)
                split.update(u for u in (r.tp.unit,) if u)
            split.update(u for u in (p.tp.unit,) if u)
            if isinstance(p.transform, GroupConcat) and isinstance(p.transform.groups, str):
                split.add(p.transform.groups)
        problems = [f"{s} = {self.dims[s]}" for s in sorted(split) if self.dims[s] % tp]
        if problems:
            raise ValueError(f"tensor parallel size {tp} must divide every split size of {self.name}; it does "
                             f"not divide: {', '.join(problems)}")
        if split & whole:
            raise ValueError(f"invalid key map table: {sorted(split & whole)} are split in some tensors and "
                             "whole in others, so a rank's part has no single size")
        dims = {k: (v // tp if k in split else v) for k, v in self.dims.items()}
        return KeyMap(self.table, dims, self.num_layers, self.features, self.te_names,
                      f"{self.name}, one of {tp} tensor-parallel parts", self.hint)


def megatron_meta(rule: Rule, dims: Mapping[str, int]) -> torch.Tensor:
    """The megatron tensor of `rule` on the meta device (its shape, nothing allocated)."""
    return rule.transform.to_megatron([torch.empty(s, device="meta") for s in rule.shapes], dims)


# ---------------------------------------------------------------------------------------------------
# Strict accounting


def _mismatch(title: str, unexpected, missing, wrong_lines, wrong_keys, hint=None) -> CheckpointMismatchError:
    parts = [title]
    if unexpected:
        parts.append(format_list("unexpected keys", unexpected))
    if missing:
        parts.append(format_list("missing keys", missing))
    if wrong_lines:
        parts.append(format_list("wrong shapes", wrong_lines))
    advice = hint(wrong_keys) if hint and wrong_keys else None
    if advice:
        parts.append(f"  ({advice})")
    return CheckpointMismatchError("\n".join(parts), missing, unexpected, wrong_keys)


def _check(state: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]], title: str,
           ours: str, hint=None) -> None:
    present = set(state)  # iterating reads no tensor (a Mapping's `in` may read one)
    unexpected = sorted(present - set(expected))
    missing = sorted(k for k in expected if k not in present)
    wrong = sorted(k for k in expected if k in present and tensor_shape(state, k) != tuple(expected[k]))
    if unexpected or missing or wrong:
        lines = [f"{k}: checkpoint {tensor_shape(state, k)}, {ours} {tuple(expected[k])}" for k in wrong]
        raise _mismatch(title, unexpected, missing, lines, wrong, hint)


def check_released(state: Mapping[str, torch.Tensor], kmap: KeyMap) -> None:
    """Raise CheckpointMismatchError unless `state` holds exactly the released keys and shapes of `kmap`
    (every problem listed in one message). Lazy views are checked without reading a tensor."""
    _check(state, kmap.released_shapes(), f"checkpoint does not match {kmap.name}:", "model", kmap.hint)


def check_megatron(state: Mapping[str, torch.Tensor], kmap: KeyMap) -> None:
    """The same for a megatron state dict at TP=1 (Transformer Engine `_extra_state` entries ignored)."""
    state = {k: v for k, v in state.items() if not k.endswith(EXTRA_STATE)}
    _check(state, kmap.megatron_shapes(), f"megatron state dict does not match {kmap.name}:", "model", kmap.hint)


# ---------------------------------------------------------------------------------------------------
# Whole state dicts at TP=1


def released_to_megatron(state: Mapping[str, torch.Tensor], kmap: KeyMap) -> dict[str, torch.Tensor]:
    """The megatron layout (TP=1, all layers) of a released state dict, checked strictly first."""
    check_released(state, kmap)
    return {r.megatron: r.transform.to_megatron([state[n] for n in r.released], kmap.dims) for r in kmap.rules()}


def released_of(rule: Rule, tensor: torch.Tensor, dims: Mapping[str, int]) -> dict[str, torch.Tensor]:
    """The released tensors of one rule from its (whole) megatron tensor."""
    return dict(zip(rule.released, rule.transform.to_released(tensor, rule.shapes, dims)))


def megatron_to_released(state: Mapping[str, torch.Tensor], kmap: KeyMap) -> dict[str, torch.Tensor]:
    """The released layout of a megatron state dict (TP=1, all layers), checked strictly first."""
    state = {k: v for k, v in state.items() if not k.endswith(EXTRA_STATE)}
    check_megatron(state, kmap)
    out: dict[str, torch.Tensor] = {}
    for r in kmap.rules():
        out.update(released_of(r, state[r.megatron], kmap.dims))
    return out


# ---------------------------------------------------------------------------------------------------
# TP shard / merge of whole state dicts


def shard_released(state: Mapping[str, torch.Tensor], kmap: KeyMap, tp: int) -> list[dict[str, torch.Tensor]]:
    """The released state split into `tp` parts by the released split rules (one dict per rank; each
    tensor its own copy, so saving a part writes only that part)."""
    check_released(state, kmap)
    kmap.shard(tp)  # refuses a TP size that does not divide heads, groups, vocabulary, ...
    parts: list[dict[str, torch.Tensor]] = [{} for _ in range(tp)]
    for r in kmap.rules():
        for name, split in zip(r.released, r.released_tp):
            tensor = state[name]
            for rank in range(tp):
                parts[rank][name] = shard_tensor(tensor, split, rank, tp).clone(memory_format=torch.contiguous_format)
    return parts


def _merge(shards: Sequence[Mapping[str, torch.Tensor]], kmap: KeyMap, released_side: bool) -> dict[str, torch.Tensor]:
    tp = len(shards)
    if tp == 0:
        raise ValueError("no shards to merge")
    local = kmap.shard(tp)
    problems: list[str] = []
    for rank, part in enumerate(shards):
        try:
            (check_released if released_side else check_megatron)(part, local)
        except CheckpointMismatchError as err:
            problems.append(f"shard {rank} of {tp}: {err}")
    if problems:
        raise CheckpointMismatchError("\n".join(problems))
    out: dict[str, torch.Tensor] = {}
    disagree = []
    for r in kmap.rules():
        items = zip(r.released, r.released_tp) if released_side else [(r.megatron, r.tp)]
        for name, split in items:
            pieces = [part[name] for part in shards]
            if split.dim is None:
                differ = [rank for rank in range(1, tp) if not torch.equal(pieces[rank], pieces[0])]
                if differ:
                    disagree.append(f"{name}: shards {differ} differ from shard 0")
            out[name] = unshard_tensor(pieces, split)
    if disagree:
        raise CheckpointMismatchError(
            "replicated tensors must be identical on every shard (they are not averaged):\n"
            + format_list("tensors that differ", disagree)
        )
    return out


def merge_released(shards: Sequence[Mapping[str, torch.Tensor]], kmap: KeyMap) -> dict[str, torch.Tensor]:
    """The whole released state from its TP parts (rank order); every part is checked strictly and
    replicated tensors must agree exactly."""
    return _merge(shards, kmap, released_side=True)


def shard_megatron(state: Mapping[str, torch.Tensor], kmap: KeyMap, tp: int) -> list[dict[str, torch.Tensor]]:
    """A TP=1 megatron state dict split as megatron's parallel layers hold it, one dict per rank."""
    state = {k: v for k, v in state.items() if not k.endswith(EXTRA_STATE)}
    check_megatron(state, kmap)
    kmap.shard(tp)
    return [{r.megatron: shard_tensor(state[r.megatron], r.tp, rank, tp) for r in kmap.rules()} for rank in range(tp)]


def merge_megatron(shards: Sequence[Mapping[str, torch.Tensor]], kmap: KeyMap) -> dict[str, torch.Tensor]:
    """The TP=1 megatron state dict from the ranks' parts (the inverse of `shard_megatron`)."""
    shards = [{k: v for k, v in s.items() if not k.endswith(EXTRA_STATE)} for s in shards]
    return _merge(shards, kmap, released_side=False)


# ---------------------------------------------------------------------------------------------------
# A rank's model: load and export


def tensor_parallel_state() -> tuple[int, int, object]:
    """(rank, size, group) of this process's tensor-parallel group; (0, 1, None) without parallel state."""
    from megatron.core import parallel_state

    if not parallel_state.model_parallel_is_initialized():
        return 0, 1, None
    return (parallel_state.get_tensor_model_parallel_rank(), parallel_state.get_tensor_model_parallel_world_size(),
            parallel_state.get_tensor_model_parallel_group())


def _local_rules(kmap: KeyMap, layer_offset: int, num_layers: int, stages: Collection[str]) -> dict:
    """This rank's rules by local layer (None: the globals of its stages)."""
    by_layer = {None: kmap.global_rules(stages)}
    for j in range(num_layers):
        by_layer[j] = kmap.layer_rules(layer_offset + j, j)
    return by_layer


def _model_tensors(model: torch.nn.Module, targets: Collection[str]) -> dict[str, torch.Tensor]:
    """The model's parameters, plus the buffers a key map names (e.g. fixed random features saved in the
    released file); other buffers (caches, constants rebuilt at run time) are not weights."""
    tensors = dict(model.named_parameters())
    wanted = set(targets)
    tensors.update({k: v for k, v in model.named_buffers() if k in wanted and k not in tensors})
    return tensors


@torch.no_grad()
def load_model(model: torch.nn.Module, state: Mapping[str, torch.Tensor], kmap: KeyMap, *, layer_offset: int = 0,
               num_layers: Optional[int] = None, stages: Collection[str] = ("first", "last")) -> dict:
    """Fill `model` (this rank's TP/PP part) from a released state dict.

    The model holds layers `layer_offset .. layer_offset + num_layers - 1` (numbered from 0 in its own
    parameter names) and the global tensors of `stages`; the rest of `state` is checked but never read.
    Strict: `state` must be exactly the whole released layout, and a dry run on meta tensors checks that
    every parameter of this rank is filled with a shard of its shape before anything is copied. Then
    layer by layer, so a rank never holds more than one converted layer beyond its own weights (with a
    lazy view, each tensor is read when its layer is loaded)."""
    num_layers = kmap.num_layers if num_layers is None else num_layers
    tp_rank, tp_size, _ = tensor_parallel_state()
    check_released(state, kmap)
    plan = _local_rules(kmap, layer_offset, num_layers, stages)
    targets = [r.megatron for rules in plan.values() for r in rules]
    params = _model_tensors(model, targets)
    unfilled = sorted(set(dict(model.named_parameters())) - set(targets))
    no_param = sorted(t for t in targets if t not in params)
    wrong = []
    for rules in plan.values():
        for r in rules:
            if r.megatron in params:
                try:
                    shape = tuple(shard_tensor(megatron_meta(r, kmap.dims), r.tp, tp_rank, tp_size).shape)
                except ValueError as err:
                    shape = str(err)
                if shape != tuple(params[r.megatron].shape):
                    wrong.append(f"{r.megatron}: shard {shape}, parameter {tuple(params[r.megatron].shape)}")
    if unfilled or no_param or wrong:
        parts = [f"the model's parameters (tensor-parallel rank {tp_rank} of {tp_size}, layers {layer_offset}.."
                 f"{layer_offset + num_layers - 1}) and {kmap.name} disagree:"]
        if unfilled:
            parts.append(format_list("parameters the key map does not fill", unfilled))
        if no_param:
            parts.append(format_list("key map targets with no parameter", no_param))
        if wrong:
            parts.append(format_list("shard shapes", wrong))
        raise CheckpointMismatchError("\n".join(parts), missing=unfilled, unexpected=no_param, wrong=wrong)
    for rules in plan.values():  # one layer at a time
        for r in rules:
            full = r.transform.to_megatron([state[n] for n in r.released], kmap.dims)
            params[r.megatron].copy_(shard_tensor(full, r.tp, tp_rank, tp_size))
    return {"source_keys": len(state), "parameters_filled": len(params),
            "layers": (layer_offset, layer_offset + num_layers), "tensor_parallel": (tp_rank, tp_size)}


@torch.no_grad()
def export_model(model: torch.nn.Module, kmap: KeyMap, *, layer_offset: int = 0, num_layers: Optional[int] = None,
                 stages: Collection[str] = ("first", "last")) -> dict[str, torch.Tensor]:
    """The released tensors of `model` (this rank's PP stage), gathered over tensor parallelism.

    A collective on the TP group: call it on every TP rank. Each pipeline stage returns its own layers
    (under their global indices) and globals; `merge_stage_exports` joins the stages. Every parameter
    must be covered by the key map (a parameter it does not know would be lost silently otherwise)."""
    import torch.distributed as dist

    num_layers = kmap.num_layers if num_layers is None else num_layers
    tp_rank, tp_size, group = tensor_parallel_state()
    plan = _local_rules(kmap, layer_offset, num_layers, stages)
    targets = [r.megatron for rules in plan.values() for r in rules]
    params = _model_tensors(model, targets)
    uncovered = sorted(set(params) - set(targets))
    no_param = sorted(t for t in targets if t not in params)
    if uncovered or no_param:
        raise CheckpointMismatchError(
            f"cannot export the model's parameters with {kmap.name}:\n"
            + (format_list("parameters the key map does not cover", uncovered) + "\n" if uncovered else "")
            + (format_list("key map tensors the model lacks", no_param) if no_param else ""),
            missing=no_param, unexpected=uncovered,
        )
    out: dict[str, torch.Tensor] = {}
    for rules in plan.values():
        for r in rules:
            local = params[r.megatron].detach().cpu().contiguous()
            if tp_size > 1 and r.tp.dim is not None:
                shards = [torch.empty_like(local) for _ in range(tp_size)]
                dist.all_gather(shards, local, group=group)
                local = unshard_tensor(shards, r.tp)
            out.update(released_of(r, local, kmap.dims))
    expected = kmap.released_shapes()
    wrong = [f"{k}: exported {tuple(v.shape)}, expected {expected[k]}" for k, v in out.items() if tuple(v.shape) != expected[k]]
    if wrong:
        raise CheckpointMismatchError(f"the export does not match {kmap.name}:\n" + format_list("wrong shapes", wrong))
    return out


def merge_stage_exports(parts: Sequence[Mapping[str, torch.Tensor]], kmap: KeyMap) -> dict[str, torch.Tensor]:
    """One complete released state from the pipeline stages' exports, checked strictly (a tensor
    exported by two stages must agree exactly)."""
    merged: dict[str, torch.Tensor] = {}
    disagree = []
    for part in parts:
        for k, v in part.items():
            if k in merged and not torch.equal(merged[k], v):
                disagree.append(k)
            merged[k] = v
    if disagree:
        raise CheckpointMismatchError(f"pipeline stages disagree on {len(disagree)} tensors:\n"
                                      + format_list("tensors", sorted(disagree)))
    check_released(merged, kmap)
    return merged
