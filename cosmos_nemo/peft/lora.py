"""LoRA as a model transform on megatron's parallel linears, for every model family.

    report = apply_lora(model, LoRAConfig(targets=["q_proj", "v_proj"], rank=8, alpha=8), seed=1234)

`apply_lora` runs on a bare model whose base weights are already loaded, before DDP wraps it (the trainer
does it in that order, so the random A matrices are drawn after the base is in place, and the optimizer
only ever sees adapters). It freezes every base parameter, and gives each targeted linear a sibling
module `<linear>_lora` (e.g. `self_attention.linear_qkv_lora`) holding one pair per target:

    y = W x + (alpha / rank) * B A dropout(x)      A: [rank, in], B: [out, rank]

A is drawn (Kaiming-uniform, as PEFT; or N(0, 1/rank) as Cosmos-Predict1) from a generator seeded by the
run seed and the module's name, so every TP layout draws the same full matrix; B starts at zero, so the
model's outputs at step 0 are the base model's, bit for bit. Adapters are fp32 whatever the model's
precision. The adapter is added by a forward hook on the base linear, so the base module, its class and
its state-dict keys are untouched.

Targets are names. A fused `linear_qkv` (rows interleaved per query group, megatron's layout) or
cross-attention `linear_kv` gets separate q/k/v pairs, like the references' separate `to_q/to_k/to_v`:

    reference (Cosmos 2.x)  diffusers         megatron                 what it adapts
    q_proj                  to_q              linear_qkv[q], linear_q  query of self- and cross-attention
    k_proj / v_proj         to_k / to_v       linear_qkv, linear_kv    keys / values of both
    output_proj             to_out.0          linear_proj              both attention outputs
    mlp.layer1 / layer2     ff.net.0.proj/2   linear_fc1 / linear_fc2  the MLP

A scope narrows a name to one attention: `self_attn.`, `attn1.`, `self_attention.` or Predict1's `FA[...]`
for self-attention; `cross_attn.`, `attn2.`, `cross_attention.` or `CA[...]` for cross-attention
(`FA[to_q, to_v]` = `self_attn.to_q, self_attn.to_v`). megatron's `linear_qkv` means all three of q, k, v
in self-attention, `linear_q`/`linear_kv` the cross-attention's. `first_n_blocks` limits the adapters to
blocks 0..N-1. A target that matches nothing in the model is an error.

Tensor parallelism: for a column-parallel base, A is replicated and B split by output rows like the base;
for a row-parallel base, A is split by input columns and B replicated. The rank-r activations are
reduced across TP (megatron's own region functions), so TP=2 computes what TP=1 computes. With sequence
parallelism the rank-r activations are gathered / reduce-scattered along the sequence instead.

`merge_lora` adds `(alpha / rank) * B A` into the base weights (the q/k/v deltas interleaved into the
fused layout) and stops the hooks; `unmerge_lora` subtracts it again.
"""

from __future__ import annotations

import math
import re
import zlib
from dataclasses import dataclass, field
from typing import ClassVar, Iterable, Optional

import torch
from torch import nn

ADAPTER_SUFFIX = "_lora"  # a linear `linear_qkv` gets the sibling `linear_qkv_lora`
_SELF, _CROSS, _MLP = "self_attention", "cross_attention", "mlp"

# what each reference / diffusers / megatron name adapts: (scope, linear, part); part None = the whole linear
_PIECES = {
    "q": [(_SELF, "linear_qkv", "q"), (_CROSS, "linear_q", None)],
    "k": [(_SELF, "linear_qkv", "k"), (_CROSS, "linear_kv", "k")],
    "v": [(_SELF, "linear_qkv", "v"), (_CROSS, "linear_kv", "v")],
    "out": [(_SELF, "linear_proj", None), (_CROSS, "linear_proj", None)],
    "fc1": [(_MLP, "linear_fc1", None)],
    "fc2": [(_MLP, "linear_fc2", None)],
}
_NAMES = {
    "q_proj": ("q",), "to_q": ("q",), "k_proj": ("k",), "to_k": ("k",), "v_proj": ("v",), "to_v": ("v",),
    "output_proj": ("out",), "to_out.0": ("out",), "to_out": ("out",),
    "mlp.layer1": ("fc1",), "layer1": ("fc1",), "ff.net.0.proj": ("fc1",),
    "mlp.layer2": ("fc2",), "layer2": ("fc2",), "ff.net.2": ("fc2",),
    "linear_proj": ("out",), "linear_fc1": ("fc1",), "linear_fc2": ("fc2",), "mlp.linear_fc1": ("fc1",),
    "mlp.linear_fc2": ("fc2",),
}
_MEGATRON_FUSED = {"linear_qkv": (_SELF, ("q", "k", "v")), "linear_q": (_CROSS, ("q",)),
                   "linear_kv": (_CROSS, ("k", "v"))}
_SCOPES = {"self_attn": _SELF, "attn1": _SELF, "self_attention": _SELF, "fa": _SELF,
           "cross_attn": _CROSS, "attn2": _CROSS, "cross_attention": _CROSS, "ca": _CROSS}
# the per-query-group row layout of megatron's fused linears
_FUSED_LAYOUT = {"linear_qkv": ("q", "k", "v"), "linear_kv": ("k", "v")}


class LoRAError(ValueError):
    """A LoRA configuration, adapter or base checkpoint that does not fit the model."""


@dataclass
class LoRAConfig:
    """Low-rank adapters on named linears (see the module docstring for the names).

    targets: names of the linears to adapt (reference, diffusers or megatron names; a scope such as
        `self_attn.q_proj`, `attn2.to_k` or `FA[to_q, to_v]` limits one to self- or cross-attention).
    rank, alpha: the update is (alpha / rank) * B A. Cosmos-Predict1 uses scale 1 with no alpha/rank:
        alpha = rank.
    dropout: dropout on the adapter's input (PEFT's lora_dropout).
    first_n_blocks: adapt blocks 0..N-1 only (None: every block). The number is checked against the
        model: more than it has is an error.
    init: "kaiming" (PEFT: Kaiming-uniform A) or "gaussian" (Cosmos-Predict1: A ~ N(0, 1/rank)).
    """

    targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "output_proj",
                                                         "mlp.layer1", "mlp.layer2"])
    rank: int = 32
    alpha: float = 32.0
    dropout: float = 0.0
    first_n_blocks: Optional[int] = None
    init: str = "kaiming"

    # named settings an override can give as a whole: `peft=lora` (then e.g. `peft.rank=8`)
    PRESETS: ClassVar[dict] = {"lora": {}}

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def validate(self) -> None:
        if isinstance(self.targets, str):
            self.targets = [t for t in re.split(r",(?![^\[]*\])", self.targets) if t.strip()]
        if not self.targets:
            raise LoRAError("LoRA needs at least one target (peft.targets), e.g. [q_proj, v_proj]")
        if not (isinstance(self.rank, int) and self.rank >= 1):
            raise LoRAError(f"peft.rank must be a positive integer, got {self.rank!r}")
        if not self.alpha > 0:
            raise LoRAError(f"peft.alpha must be positive, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise LoRAError(f"peft.dropout must lie in [0, 1), got {self.dropout!r}")
        if self.first_n_blocks is not None and self.first_n_blocks < 1:
            raise LoRAError(f"peft.first_n_blocks must be >= 1 (or null for every block), got {self.first_n_blocks}")
        if self.init not in ("kaiming", "gaussian"):
            raise LoRAError(f"peft.init must be 'kaiming' or 'gaussian', got {self.init!r}")


def parse_targets(targets: Iterable[str]) -> dict[tuple[str, str], set]:
    """{(scope, linear): parts} for a list of target names; parts is {None} for a whole linear."""
    wanted: dict[tuple[str, str], set] = {}
    for raw in targets:
        for name in _expand_grammar(raw):
            pieces = _pieces_of(name)
            if pieces is None:
                known = sorted(set(_NAMES) | set(_MEGATRON_FUSED))
                raise LoRAError(f"unknown LoRA target {raw!r}; known names: {', '.join(known)} (optionally "
                                f"scoped: self_attn.<name>, cross_attn.<name>, attn1./attn2., FA[...]/CA[...])")
            for scope, linear, part in pieces:
                wanted.setdefault((scope, linear), set()).add(part)
    return wanted


def _expand_grammar(raw: str) -> list[str]:
    raw = raw.strip()
    match = re.fullmatch(r"(FA|CA|MLP)\[(.*)\]", raw, flags=re.IGNORECASE)
    if not match:
        return [raw]
    scope = {"fa": "self_attn", "ca": "cross_attn", "mlp": "mlp"}[match.group(1).lower()]
    return [f"{scope}.{n.strip()}" for n in match.group(2).split(",") if n.strip()]


def _pieces_of(name: str):
    if name in _NAMES:
        return [p for key in _NAMES[name] for p in _PIECES[key]]
    if name in _MEGATRON_FUSED:
        scope, parts = _MEGATRON_FUSED[name]
        linear = "linear_qkv" if name == "linear_qkv" else name
        return [(scope, linear, p if linear in _FUSED_LAYOUT else None) for p in parts]
    scope_name, _, rest = name.partition(".")
    scope = _SCOPES.get(scope_name.lower())
    if scope is None or not rest:
        return None
    inner = _pieces_of(rest)
    if inner is None:
        return None
    return [p for p in inner if p[0] == scope]


# ---------------------------------------------------------------------------------------------------
# the adapter module


def _linear_kind(linear: nn.Module) -> str:
    """"column", "row" or "replicated": how the base linear is split over tensor-parallel ranks."""
    from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear

    if isinstance(linear, ColumnParallelLinear):
        return "replicated" if getattr(linear, "gather_output", False) else "column"
    if isinstance(linear, RowParallelLinear):
        return "row"
    mode = getattr(linear, "parallel_mode", None)  # Transformer Engine linears
    if mode in ("column", "row"):
        return mode
    if mode == "duplicated" or isinstance(linear, nn.Linear):
        return "replicated"
    raise LoRAError(f"LoRA cannot adapt a {type(linear).__name__}: not a megatron or Transformer Engine linear")


def _tp():
    from megatron.core import parallel_state

    if not parallel_state.model_parallel_is_initialized():
        return 0, 1
    return parallel_state.get_tensor_model_parallel_rank(), parallel_state.get_tensor_model_parallel_world_size()


class LoRAPair(nn.Module):
    """One low-rank update: `lora_A` [rank, in] and `lora_B` [out, rank] (this rank's slices), fp32."""

    def __init__(self, in_features: int, out_features: int, rank: int, device=None):
        super().__init__()
        self.lora_A = nn.Parameter(torch.zeros(rank, in_features, dtype=torch.float32, device=device))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank, dtype=torch.float32, device=device))


class LoRAAdapter(nn.Module):
    """The adapters of one base linear, one `LoRAPair` per part ("q"/"k"/"v" of a fused linear, or "all").

    `delta(x)` is what the pairs add to the base linear's output for its input x, in the base output's
    layout on this TP rank (q/k/v deltas interleaved per query group for a fused linear)."""

    def __init__(self, linear: nn.Module, parts: dict[str, int], kind: str, rank: int, scale: float, dropout: float,
                 groups: int = 1, layout: tuple = ("all",), norm=None, sizes: Optional[dict] = None,
                 gated: bool = False):
        super().__init__()
        out_local, in_local = linear.weight.shape
        self.kind, self.scale, self.groups, self.layout = kind, float(scale), groups, tuple(layout)
        # local output rows of every part of the layout (the adapted ones are `parts`)
        self.sizes = dict(sizes or parts)
        self.sequence_parallel = bool(getattr(linear, "sequence_parallel", False)) and kind != "replicated"
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None
        self.merged = False
        self.gated = gated and kind == "column"  # a gated MLP's fc1: rows [gate; up] per TP rank
        self.norm = norm  # Transformer Engine's fused layer-norm linears normalise their input inside
        device = linear.weight.device
        for part in self.layout:
            if part in parts:
                self.add_module(part, LoRAPair(in_local, parts[part], rank, device))
        del out_local
        self.mark_parallel()

    def pairs(self) -> dict[str, LoRAPair]:
        return {name: module for name, module in self.named_children() if isinstance(module, LoRAPair)}

    def mark_parallel(self) -> None:
        """Give the pairs megatron's tensor-parallel attributes (again after their tensors are replaced)."""
        from megatron.core.tensor_parallel.layers import set_tensor_model_parallel_attributes

        for pair in self.pairs().values():
            split = {"column": (pair.lora_B, 0), "row": (pair.lora_A, 1)}.get(self.kind)
            for p in (pair.lora_A, pair.lora_B):
                if split is not None and p is split[0]:
                    set_tensor_model_parallel_attributes(p, True, split[1], 1)
                else:
                    set_tensor_model_parallel_attributes(p, False, 0, 1)
                    # replicated over TP but seeing only this rank's sequence slice: megatron all-reduces its
                    # gradient over TP (finalize_model_grads), like a layer norm's under sequence parallelism
                    if self.sequence_parallel:
                        p.sequence_parallel = True

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm is not None:
            x = self.norm(x)
        x = x.float()
        return self.dropout(x) if self.dropout is not None and self.training else x

    def _low_rank(self, x: torch.Tensor, pair: LoRAPair) -> torch.Tensor:
        from megatron.core import tensor_parallel as tpar

        h = torch.matmul(x, pair.lora_A.t())
        if self.kind == "column":
            return (tpar.gather_from_sequence_parallel_region(h) if self.sequence_parallel
                    else tpar.copy_to_tensor_model_parallel_region(h))
        if self.kind == "row":
            return (tpar.reduce_scatter_to_sequence_parallel_region(h) if self.sequence_parallel
                    else tpar.reduce_from_tensor_model_parallel_region(h))
        return h

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        x = self._input(x)
        outs = {part: torch.matmul(self._low_rank(x, pair), pair.lora_B.t()) * self.scale
                for part, pair in self.pairs().items()}
        if self.layout == ("all",):
            return outs["all"]
        lead = next(iter(outs.values())).shape[:-1]
        pieces = []
        for part in self.layout:
            per_group = self.sizes[part] // self.groups
            d = outs.get(part)
            if d is None:
                d = torch.zeros(*lead, self.groups, per_group, dtype=torch.float32, device=x.device)
            else:
                d = d.view(*lead, self.groups, per_group)
            pieces.append(d)
        return torch.cat(pieces, dim=-1).reshape(*lead, -1)

    @torch.no_grad()
    def weight_delta(self) -> torch.Tensor:
        """`scale * B A` in the base weight's local layout [out_local, in_local], fp32."""
        mats = {part: pair.lora_B @ pair.lora_A * self.scale for part, pair in self.pairs().items()}
        if self.layout == ("all",):
            return mats["all"]
        in_local = next(iter(mats.values())).shape[1]
        pieces = []
        for part in self.layout:
            per_group = self.sizes[part] // self.groups
            m = mats.get(part)
            if m is None:
                m = torch.zeros(self.groups * per_group, in_local, device=next(iter(mats.values())).device)
            pieces.append(m.view(self.groups, per_group, in_local))
        return torch.cat(pieces, dim=1).reshape(-1, in_local)

    def sharded_state_dict(self, prefix: str = "", sharded_offsets: tuple = (), metadata: Optional[dict] = None):
        """megatron dist-ckpt entries of the pairs: split along the axis their base linear is split on."""
        from megatron.core import parallel_state
        from megatron.core.transformer.utils import make_sharded_tensors_for_checkpoint

        axis = {}
        for part in self.pairs():
            if self.kind == "column":
                axis[f"{part}.lora_B"] = 0
            elif self.kind == "row":
                axis[f"{part}.lora_A"] = 1
        state = self.state_dict(prefix="", keep_vars=True)
        dp_cp = (metadata or {}).get("dp_cp_group") or parallel_state.get_data_parallel_group(with_context_parallel=True)
        tp_group = parallel_state.get_tensor_model_parallel_group()
        out = make_sharded_tensors_for_checkpoint(state, prefix, axis, sharded_offsets, tp_group=tp_group,
                                                  dp_cp_group=dp_cp)
        if self.gated:  # B's rows are [gate; up] on each TP rank: stored as megatron stores the gated fc1 weight
            import inspect

            from megatron.core.transformer.mlp import apply_swiglu_sharded_factory

            extra = {}
            params = inspect.signature(apply_swiglu_sharded_factory).parameters
            if "tp_group" in params:
                extra = {"tp_group": tp_group, "dp_group": dp_cp}
            key = f"{prefix}all.lora_B"
            out[key] = apply_swiglu_sharded_factory(out[key], sharded_offsets, **extra)
        return out

    def hook(self, module, args, output):
        """Forward hook on the base linear: add the adapter's update to its output (megatron linears return
        (output, bias))."""
        if self.merged:
            return None
        x = args[0]
        if isinstance(output, tuple):
            out = output[0]
            return (out + self.delta(x).to(out.dtype),) + tuple(output[1:])
        return output + self.delta(x).to(output.dtype)


# ---------------------------------------------------------------------------------------------------
# the transform


@dataclass
class AdaptedLinear:
    name: str  # the base linear's module name, e.g. decoder.layers.0.self_attention.linear_qkv
    block: int  # global block index (the same under any pipeline split)
    linear: str  # e.g. self_attention.linear_qkv
    parts: tuple  # ("q", "v"), or ("all",)
    adapter: LoRAAdapter

    @property
    def key(self) -> str:
        return f"{self.block}.{self.linear}"

    @property
    def kind(self) -> str:
        return self.linear + ("" if self.parts == ("all",) else f"[{','.join(self.parts)}]")


@dataclass
class LoRAReport:
    """What `apply_lora` did: the adapted linears, and global parameter counts (over TP and PP)."""

    config: LoRAConfig
    adapted: list[AdaptedLinear]
    num_blocks: int
    trainable: int
    total: int

    @property
    def fraction(self) -> float:
        return self.trainable / self.total if self.total else 0.0

    @property
    def adapted_blocks(self) -> list[int]:
        """Every adapted block of the whole model (all pipeline stages): blocks are homogeneous."""
        return list(range(self.config.first_n_blocks or self.num_blocks))

    def describe(self) -> dict:
        """What an adapter checkpoint records and inference checks: the settings, the model's block count, the
        adapted blocks and the linears adapted in each."""
        return {"rank": self.config.rank, "alpha": self.config.alpha, "targets": list(self.config.targets),
                "first_n_blocks": self.config.first_n_blocks, "init": self.config.init, "num_blocks": self.num_blocks,
                "adapted_blocks": self.adapted_blocks, "linears": sorted({a.kind for a in self.adapted}),
                "trainable_parameters": self.trainable}

    def summary(self) -> str:
        blocks = self.adapted_blocks
        return (f"LoRA rank {self.config.rank}, alpha {self.config.alpha:g} (scale {self.config.scale:g}) on "
                f"blocks 0-{blocks[-1]} of {self.num_blocks}: {', '.join(sorted({a.kind for a in self.adapted}))}; "
                f"trainable {self.trainable:,} of {self.total:,} parameters ({100 * self.fraction:.3f} %); "
                f"the base is frozen")


def _layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    from megatron.core.transformer.transformer_layer import TransformerLayer

    return [(n, m) for n, m in model.named_modules() if isinstance(m, TransformerLayer)]


def _num_blocks(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    return int(getattr(config, "num_layers", 0) or 0) or len(_layers(model))


def lora_adapters(model: nn.Module) -> dict[str, LoRAAdapter]:
    """{module name: adapter} of a LoRA model (empty for a plain one)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRAAdapter)}


def is_lora_model(model: nn.Module) -> bool:
    return any(isinstance(m, LoRAAdapter) for m in model.modules())


def is_adapter_key(key: str) -> bool:
    """Whether a state-dict key (or dist-ckpt key) belongs to a LoRA adapter."""
    return re.search(rf"{ADAPTER_SUFFIX}\.(?:q|k|v|all)\.lora_[AB]$", key) is not None


def _fused_norm(linear: nn.Module, config):
    """The input normalisation of Transformer Engine's fused layer-norm linear, recomputed for the adapter."""
    weight = getattr(linear, "layer_norm_weight", None)
    if weight is None:
        return None
    bias = getattr(linear, "layer_norm_bias", None)
    eps = float(getattr(config, "layernorm_epsilon", 1e-5))
    centred = bool(getattr(config, "layernorm_zero_centered_gamma", False))
    rms = getattr(linear, "normalization", getattr(config, "normalization", "LayerNorm")) == "RMSNorm"

    def norm(x):
        w = weight.float() + 1.0 if centred else weight.float()
        xf = x.float()
        if rms:
            return xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * w
        return torch.nn.functional.layer_norm(xf, (xf.shape[-1],), w, None if bias is None else bias.float(), eps)

    return norm


def _init_pair(pair: LoRAPair, name: str, kind: str, cfg: LoRAConfig, seed: int) -> None:
    """Draw the full A (same on every TP layout) and take this rank's slice; B = 0."""
    rank_tp, size_tp = _tp()
    in_local = pair.lora_A.shape[1]
    in_full = in_local * size_tp if kind == "row" else in_local
    gen = torch.Generator().manual_seed((int(seed) * 1_000_003 + zlib.crc32(name.encode())) % (2**63))
    full = torch.empty(cfg.rank, in_full, dtype=torch.float32)
    if cfg.init == "gaussian":
        full.normal_(0.0, 1.0 / cfg.rank, generator=gen)
    else:  # torch's Kaiming-uniform with a = sqrt(5), as nn.Linear and PEFT draw their A
        bound = 1.0 / math.sqrt(in_full)
        full.uniform_(-bound, bound, generator=gen)
    if kind == "row":
        full = full[:, rank_tp * in_local:(rank_tp + 1) * in_local]
    with torch.no_grad():
        pair.lora_A.copy_(full.to(pair.lora_A.device))
        pair.lora_B.zero_()


def apply_lora(model: nn.Module, cfg: LoRAConfig, seed: int = 0) -> LoRAReport:
    """Freeze `model` and give its targeted linears adapters (see the module docstring). Collective over the
    model-parallel ranks (the parameter counts are summed over them). Returns the report."""
    cfg.validate()
    if is_lora_model(model):
        raise LoRAError("this model already has LoRA adapters")
    wanted = parse_targets(cfg.targets)
    num_blocks = _num_blocks(model)
    if cfg.first_n_blocks is not None and cfg.first_n_blocks > num_blocks:
        raise LoRAError(f"peft.first_n_blocks={cfg.first_n_blocks} but the model has {num_blocks} blocks")
    for p in model.parameters():
        p.requires_grad_(False)

    adapted: list[AdaptedLinear] = []
    matched: set = set()
    for layer_name, layer in _layers(model):
        block = int(getattr(layer, "layer_number", 1)) - 1
        if cfg.first_n_blocks is not None and block >= cfg.first_n_blocks:
            continue
        for (scope, linear_name), parts in wanted.items():
            holder = getattr(layer, scope, None)
            linear = getattr(holder, linear_name, None) if holder is not None else None
            if linear is None or not hasattr(linear, "weight"):
                continue
            matched.add((scope, linear_name))
            name = f"{layer_name}.{scope}.{linear_name}" if layer_name else f"{scope}.{linear_name}"
            adapted.append(_attach(holder, scope, linear_name, linear, name, block, parts, cfg, seed, model))

    missing = [f"{scope}.{linear}" for scope, linear in wanted if (scope, linear) not in matched]
    names_missing = [t for t in cfg.targets
                     if all(f"{s}.{ln}" in missing for s, ln, _ in _flatten_pieces(t))]
    if names_missing or not adapted:
        raise LoRAError(f"LoRA target(s) {names_missing or cfg.targets} match no linear of this model "
                        f"({type(model).__name__}); its blocks have: {', '.join(_available(model))}")
    trainable, total = _global_counts(model)
    report = LoRAReport(cfg, adapted, num_blocks, trainable, total)
    model.lora_report = report
    return report


def check_fits(model: nn.Module, described: dict, where: str = "the adapter") -> None:
    """Raise unless an adapter described by `described` (a `LoRAReport.describe()` saved with it) fits the
    LoRA model's adapters exactly: the same number of blocks, the same adapted blocks and linears, the
    same rank and scale. Nothing is applied partially: a mismatch is an error naming the difference."""
    report = getattr(model, "lora_report", None)
    if report is None:
        raise LoRAError("the model has no LoRA adapters to load an adapter into")
    ours = report.describe()
    problems = []
    if described.get("num_blocks") != ours["num_blocks"]:
        problems.append(f"it was trained on a model with {described.get('num_blocks')} blocks, this model has "
                        f"{ours['num_blocks']}")
    if described.get("adapted_blocks") != ours["adapted_blocks"]:
        theirs = described.get("adapted_blocks") or []
        problems.append(f"it adapts blocks {_span(theirs)}, this model's adapters cover blocks {_span(ours['adapted_blocks'])}")
    if sorted(described.get("linears", [])) != ours["linears"]:
        problems.append(f"it adapts {described.get('linears')}, this model's adapters are on {ours['linears']}")
    for key in ("rank", "alpha"):
        if described.get(key) != ours[key]:
            problems.append(f"its {key} is {described.get(key)}, this model's is {ours[key]}")
    if problems:
        raise LoRAError(f"{where} does not fit this model, so none of it is applied: " + "; ".join(problems))


def _span(blocks: list) -> str:
    return f"{blocks[0]}-{blocks[-1]} ({len(blocks)})" if blocks else "none"


def remove_lora(model: nn.Module) -> None:
    """Take the adapters (merged or not) and their hooks off the model, and make every parameter trainable
    again: the plain model, e.g. after `merge_lora` for export."""
    for holder in list(model.modules()):
        for child_name, adapter in list(holder.named_children()):
            if isinstance(adapter, LoRAAdapter):
                adapter.handle.remove()
                delattr(holder, child_name)
    for p in model.parameters():
        p.requires_grad_(True)
    for attr in ("lora_report", "lora_info"):
        if hasattr(model, attr):
            delattr(model, attr)


def _flatten_pieces(target: str) -> list:
    return [p for name in _expand_grammar(target) for p in (_pieces_of(name) or [])]


def _available(model: nn.Module) -> list[str]:
    layers = _layers(model)
    if not layers:
        return ["(no transformer blocks)"]
    found = []
    for scope in (_SELF, _CROSS, _MLP):
        holder = getattr(layers[0][1], scope, None)
        for linear in ("linear_qkv", "linear_q", "linear_kv", "linear_proj", "linear_fc1", "linear_fc2"):
            if holder is not None and hasattr(getattr(holder, linear, None), "weight"):
                found.append(f"{scope}.{linear}")
    return found


def _attach(holder, scope, linear_name, linear, name, block, parts, cfg, seed, model) -> AdaptedLinear:
    kind = _linear_kind(linear)
    out_local = linear.weight.shape[0]
    if linear_name in _FUSED_LAYOUT:
        layout = _FUSED_LAYOUT[linear_name]
        groups = int(holder.num_query_groups_per_partition)
        head_dim = int(holder.hidden_size_per_attention_head)
        heads = int(holder.num_attention_heads_per_partition)
        sizes = {"q": heads * head_dim, "k": groups * head_dim, "v": groups * head_dim}
        if sum(sizes[p] for p in layout) != out_local:
            raise LoRAError(f"{name}: fused output rows {out_local} do not match the attention's heads")
        chosen = {p: sizes[p] for p in layout if p in parts or None in parts}
    else:
        layout, groups, chosen = ("all",), 1, {"all": out_local}
        sizes = chosen
    adapter = LoRAAdapter(linear, chosen, kind, cfg.rank, cfg.scale, cfg.dropout, groups, layout,
                          norm=_fused_norm(linear, getattr(model, "config", None)),
                          sizes={p: sizes[p] for p in layout},
                          gated=linear_name == "linear_fc1" and bool(getattr(getattr(model, "config", None),
                                                                             "gated_linear_unit", False)))
    for part, pair in adapter.pairs().items():
        _init_pair(pair, f"{block}.{scope}.{linear_name}.{part}", kind, cfg, seed)
    holder.add_module(linear_name + ADAPTER_SUFFIX, adapter)
    adapter.handle = linear.register_forward_hook(adapter.hook)
    return AdaptedLinear(name, block, f"{scope}.{linear_name}", tuple(adapter.pairs()), adapter)


def _global_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters of the whole model: TP shards summed, TP replicas counted once,
    pipeline stages summed."""
    import torch.distributed as dist
    from megatron.core import parallel_state

    rank_tp, _ = _tp()
    counts = torch.zeros(2, dtype=torch.float64)
    for p in model.parameters():
        if getattr(p, "tensor_model_parallel", False) or rank_tp == 0:
            counts[1] += p.numel()
            if p.requires_grad:
                counts[0] += p.numel()
    if dist.is_initialized() and parallel_state.model_parallel_is_initialized():
        dist.all_reduce(counts, group=parallel_state.get_model_parallel_group())
    return int(counts[0]), int(counts[1])


# ---------------------------------------------------------------------------------------------------
# merging


@torch.no_grad()
def merge_lora(model: nn.Module) -> int:
    """Add every adapter's `scale * B A` into its base weight and switch the adapter off. Returns the number
    of linears merged."""
    return _merge(model, +1)


@torch.no_grad()
def unmerge_lora(model: nn.Module) -> int:
    """Undo `merge_lora`: subtract the updates again and switch the adapters back on."""
    return _merge(model, -1)


def _merge(model: nn.Module, sign: int) -> int:
    count = 0
    for holder in model.modules():
        for child_name, adapter in list(holder.named_children()):
            if not isinstance(adapter, LoRAAdapter) or adapter.merged == (sign > 0):
                continue
            if adapter.norm is not None:
                raise LoRAError(f"{child_name}: an adapter on a fused layer-norm linear cannot be merged into it")
            linear = getattr(holder, child_name[: -len(ADAPTER_SUFFIX)])
            w = linear.weight
            w.copy_((w.float() + sign * adapter.weight_delta().to(w.device)).to(w.dtype))
            adapter.merged = sign > 0
            count += 1
    return count
