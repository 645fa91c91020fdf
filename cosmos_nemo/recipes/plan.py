"""`cosmos-nemo plan RECIPE --gpus N --gpu-mem GiB [KEY=VALUE ...]`: per-GPU memory of a recipe before a run.

The recipe is built and its overrides applied exactly as `cosmos-nemo train` does; nothing is allocated and no
model is built: every number below comes from the model config by formula. For the chosen layout (the
recipe's `parallel.*`, DP = N / (TP x PP x CP)) it prints, for the rank that needs the most memory,
parameters, gradients, optimizer state, EMA and activations, and their total against the GPU; then it
suggests the smallest layout that fits.

Parameters (exact; `tests/test_plan.py` checks the sums against the families' meta-device counters)
------------------------------------------------------------------------------------------------
h hidden, L layers, q = heads x head_dim, kv = query groups x head_dim, f FFN width, d_h head_dim,
c text width (`context_dim`), r adaLN-LoRA rank, V / V_out embedding / output rows.

- AR layer: TP-split `h(q + 2kv) + qh + 3fh` (fused QKV, output projection, SwiGLU fc1 [2f] and fc2),
  replicated `2h + 2 d_h` (the two RMSNorms, the q/k RMSNorms); Video2World adds TP-split
  `hq + 2c kv + qh` and replicated `h + 2 d_h` (cross-attention, its norm and q/k norms). Outside the
  layers: embedding `V h` (TP-split; first pipeline stage), final norm `h` and output `V_out h` (TP-split;
  last stage).
- DiT block: TP-split `4qh + (hq + 2cq + qh) + 2fh` (self-attention, cross-attention, 4x GELU MLP),
  replicated `4 d_h + 12hr` (q/k norms of both attentions, three adaLN-LoRA modulations D->r->3D).
  Outside the blocks, replicated: patch embedding, timestep embedder `4h^2` and norm `h`, Predict1's
  learnable position tables `(T+H+W) h`, Predict2.5's text projection, final adaLN `3hr`, final linear and
  Predict1's log-variance head. The DiT has no pipeline stages.
- Per rank: a pipeline stage holds L / PP layers, each `split / TP + replicated`; the rank reported is the
  stage with the largest total.

Bytes per parameter (megatron's optimizer without the distributed optimizer, as `training/harness.py`
builds it: `use_distributed_optimizer=False`, gradients reduced in fp32 `grad_reduce_in_fp32=True`)
------------------------------------------------------------------------------------------------
                          weights   gradients   optimizer                       total
    fp32                     4         4        Adam m, v: 8                      16
    bf16                     2         4        fp32 main weights + m + v: 12     18
plus 4 (the fp32 EMA shadow, `checkpoint/ema.py`) when `trainer.ema_decay` or `trainer.ema_sigma_rel` is set.
LoRA (a recipe whose `peft` is set, e.g. `peft=lora`; or `trainable_params`): the base is frozen and keeps only
its weights; the adapters are extra fp32 parameters (`peft/lora.py`) with weights 4 + gradients 4 + Adam m, v 8
(fp32 parameters get no main copy) + EMA 4 bytes. Their number comes from `peft/lora.py apply_lora` on the
meta-device model (`count_adapter_parameters`); they are spread over the ranks like the base.

Activations (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models")
------------------------------------------------------------------------------------------------
The memory of a layer is the sum of the tensors its operations save for the backward pass, counted once per
storage, in elements per token (x the activation size: 2 bytes in bf16, 4 in fp32). As in the paper, terms on
the residual stream (norm inputs, the inputs of column-parallel linears, outputs after a row-parallel
all-reduce) are replicated over TP unless sequence parallelism is on (`model.extra_transformer_config=
{sequence_parallel: true}`); the others are split by TP. Everything per token is split by CP (the DiT's
cross-attention keeps the whole text on every CP rank). With flash attention there is no s^2 term. Two kernel
sets, chosen by the model's `use_te` (None/true: Transformer Engine, what GPUs run; false: megatron's local
spec, what runs on a CPU):

    AR self-attention  TE:    2h  + [q if GQA] + (q + 2kv) + q + kv + q
                       local: 3h  + [q if GQA] + (q + 2kv) + (q + kv) + q + k' + v' + q, + 4 d_h per position
        (norm input and output [local: also x*rstd]; the q copy megatron makes for GQA; the fused QKV output
        that the q/k norms and v read; [local: the norms' x*rstd]; rotated q; k; [v]; attention output = the
        output projection's input. Local SDPA repeats k and v to every head for GQA: k' = v' = q, else
        k' = kv, v' = 0 (v is a view of the QKV output); local RoPE keeps its cos/sin tables.)
    AR SwiGLU MLP      TE:    2h + 2f + f          local: 3h + 5f    (fc1 output, fc2 input; local SwiGLU unfused)
    AR cross-attention TE:    2h + 3q, per text token 3kv
                       local: 3h + 4q, per text token 3kv + k' + v'
    DiT block          TE:    4h + 6q (self) + 4h + 3q (cross) + 4h + 2f (MLP), per text token 3q
                       local: 4h + 8q (self) + 4h + 4q (cross) + 4h + 2f (MLP), per text token 4q, + 4 d_h per position
        (each of the three sublayers keeps LayerNorm input, normalised x, the modulated x = linear input and
        the sublayer output for its gate: 4h, replicated; the adaLN tensors per sample, 3(4h + r) per sample.)

The local column is checked against the tensors a tiny recipe's forward pass saves on a CPU
(`tests/test_plan.py`, within 1 % without recompute); the TE column is the same accounting with Transformer
Engine's kernels (the norm fused into the next linear, fused SwiGLU and RoPE, GQA without copies).

Outside the layers: AR final norm (2h TE, 3h local) and the cross-entropy's fp32 softmax over this rank's
vocabulary (4 V_out / TP bytes per token; twice with a z-loss); Video2World's text once (c per text token).
DiT: the patch embedding's input and Predict1's position embedding (whole sequence, before the CP split),
the text (c per text token; Predict2.5 also its 100,352-wide input), the final layer's 3h.

- LoRA keeps the full model's activations (the frozen linears still pass gradients to earlier layers): an
  upper bound, the adapters' own rank-r tensors are left out.
- Recompute: full keeps only each layer's input (h per token) and, during the backward, one layer's full set;
  selective recomputes the core attention, which with flash attention saves nothing on the TE kernels (locally
  the GQA copies of k and v are not kept).
- Pipeline (1F1B): stage k keeps min(PP - k, micro-batches) micro-batches in flight; the last stage adds the
  head. Micro-batches per step = global batch / (micro-batch x DP).
- Not counted: temporaries (the logits before the fp32 softmax, gradients of activations in the backward,
  attention workspaces, communication buffers), the CUDA context and allocator fragmentation: `--headroom`
  (default 10 % of the GPU) is kept free for them.

Suggestion rule: among the valid layouts for N GPUs (TP x PP x CP divides N; TP divides the attention heads,
query groups and vocabulary; AR: CP = 1 and PP divides the layers; DiT: PP = 1 and CP divides the latent
frames; the global batch is a multiple of micro-batch x DP), the smallest model-parallel size TP x PP x CP
whose worst rank fits in the budget, DP = N / (TP x PP x CP); among equal sizes the fewest pipeline stages,
then the fewest CP ranks (tensor parallelism first). If none fits with the recipe's recompute setting, the
same search with full recompute.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass
from typing import Any, Optional

GIB = 2**30
DEFAULT_HEADROOM = 0.10
# The clip the references train on, as a latent grid (diffusion_models.md §1.4): Predict1 121x704x1280 with
# CV8x8x8, Predict2/2.5 93x704x1280 with Wan2.1 (4x8x8); the DiT patches it (1, 2, 2).
DIT_REFERENCE_LATENT = {"predict1": (16, 88, 160), "predict2": (24, 88, 160), "predict2.5": (24, 88, 160)}
DIT_TEXT_LENGTH = 512


class PlanError(ValueError):
    """An input the planner cannot plan for (shown to the user as is)."""


# --------------------------------------------------------------------------------------------------
# parameters


@dataclass(frozen=True)
class ParameterSplit:
    """A model's parameters as the planner distributes them: per layer (TP-split and replicated), and outside
    the layers on the first and last pipeline stage (TP-split and replicated)."""

    num_layers: int
    layer_split: int
    layer_replicated: int
    first_split: int = 0
    first_replicated: int = 0
    last_split: int = 0
    last_replicated: int = 0

    @property
    def total(self) -> int:
        return (self.num_layers * (self.layer_split + self.layer_replicated) + self.first_split
                + self.first_replicated + self.last_split + self.last_replicated)

    def stage(self, stage: int, tp: int, pp: int) -> float:
        """Parameters on one rank of pipeline stage `stage` at TP `tp`."""
        n = self.num_layers // pp * (self.layer_split / tp + self.layer_replicated)
        if stage == 0:
            n += self.first_split / tp + self.first_replicated
        if stage == pp - 1:
            n += self.last_split / tp + self.last_replicated
        return n


def ar_parameters(cfg) -> ParameterSplit:
    """The AR model's parameters (`models/ar/model.py count_parameters` counts the same on the meta device)."""
    h, d_h, f = cfg.hidden_size, cfg.kv_channels, cfg.ffn_hidden_size
    q, kv = cfg.num_attention_heads * d_h, cfg.num_query_groups * d_h
    split = h * (q + 2 * kv) + q * h + 2 * f * h + f * h
    replicated = 2 * h + 2 * d_h
    if cfg.video2world:
        split += h * q + cfg.context_dim * 2 * kv + q * h
        replicated += h + 2 * d_h
    return ParameterSplit(cfg.num_layers, split, replicated, first_split=cfg.vocab_size * h,
                          last_split=cfg.output_vocab_size * h, last_replicated=h)


def dit_parameters(cfg) -> ParameterSplit:
    """The DiT's parameters (`models/dit/model.py count_parameters` counts the same on the meta device)."""
    h, d_h, f, r, c = cfg.hidden_size, cfg.head_dim, cfg.ffn_hidden_size, cfg.adaln_lora_dim, cfg.context_dim
    q = cfg.num_attention_heads * d_h
    split = h * 3 * q + q * h + h * q + c * 2 * q + q * h + 2 * f * h
    replicated = 4 * d_h + 3 * (h * r + r * 3 * h)
    outside = cfg.patch_in_features * h + 4 * h * h + h + h * r + r * 2 * h + h * cfg.patch_out_features
    if cfg.extra_pos_emb:
        outside += sum(cfg.max_size) * h
    if cfg.crossattn_proj_in:
        outside += cfg.crossattn_proj_in * c + c
    if cfg.logvar_head:
        outside += cfg.logvar_channels
    return ParameterSplit(cfg.num_layers, split, replicated, first_replicated=outside)


# --------------------------------------------------------------------------------------------------
# activations


@dataclass(frozen=True)
class Terms:
    """Saved activations, in elements of the activation dtype unless named fp32, by how they scale:
    per token replicated over TP (`token`) or split by TP (`token_tp`), per text token of a sample (`text`,
    `text_tp`), per sequence position shared by the micro-batch (`position`), per token / position of the
    whole sequence before the CP split (`full_token`, `full_position`), per sample (`sample`), and fp32
    elements per token split by TP (`fp32_token_tp`) or replicated (`fp32_token`)."""

    token: float = 0
    token_tp: float = 0
    text: float = 0
    text_tp: float = 0
    position: float = 0
    full_token: float = 0
    full_position: float = 0
    sample: float = 0
    fp32_token: float = 0
    fp32_token_tp: float = 0

    def __add__(self, other: "Terms") -> "Terms":
        return Terms(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in dataclasses.fields(self)})

    def bytes(self, w: "Workload", tp: int, cp: int, elem: int, sequence_parallel: bool = False) -> float:
        b, s, lc = w.micro_batch, w.tokens, w.text_length
        token_rep = self.token / tp if sequence_parallel else self.token
        fp32_rep = self.fp32_token / tp if sequence_parallel else self.fp32_token
        elements = (b * s / cp * (token_rep + self.token_tp / tp) + b * lc * (self.text + self.text_tp / tp)
                    + s / cp * self.position + b * s * self.full_token + s * self.full_position + b * self.sample)
        return elem * elements + 4 * b * s / cp * (fp32_rep + self.fp32_token_tp / tp)


def ar_layer_activations(cfg, te: bool = True, recompute: Optional[str] = None) -> Terms:
    """Saved activations of one AR decoder layer (see the module docstring)."""
    h, d_h, f = cfg.hidden_size, cfg.kv_channels, cfg.ffn_hidden_size
    q, kv = cfg.num_attention_heads * d_h, cfg.num_query_groups * d_h
    gqa = cfg.num_attention_heads != cfg.num_query_groups
    repeat = (not te) and gqa  # local SDPA repeats k, v to every head
    norm = 2 * h if te else 3 * h
    # self-attention: q copy (GQA), fused QKV output, [x*rstd of q/k norms], rotated q, k, [v], output
    self_repeat = repeat and recompute != "selective"
    attn = (q if gqa else 0) + (q + 2 * kv) + (0 if te else q + kv) + q + (q if self_repeat else kv) \
        + (q if self_repeat else 0) + q
    mlp = 3 * f if te else 5 * f
    terms = Terms(token=2 * norm, token_tp=attn + mlp, position=0 if te else 4 * d_h)
    if cfg.video2world:
        cross_text = 3 * kv + ((q if repeat else kv) + (q if repeat else 0) if not te else 0)
        terms += Terms(token=norm, token_tp=3 * q if te else 4 * q, text_tp=cross_text)
    return terms


def dit_layer_activations(cfg, te: bool = True, recompute: Optional[str] = None, frames: int = 1) -> Terms:
    """Saved activations of one DiT block (see the module docstring); `frames` latent frames for per-frame
    adaLN (Predict2/2.5)."""
    h, d_h, f, r = cfg.hidden_size, cfg.head_dim, cfg.ffn_hidden_size, cfg.adaln_lora_dim
    q = cfg.num_attention_heads * d_h
    self_attn = 6 * q if te else 8 * q
    cross = 3 * q if te else 4 * q
    per_sample = 3 * (4 * h + r) * (frames if cfg.per_frame_timesteps else 1)
    return Terms(token=12 * h, token_tp=self_attn + cross + 2 * f, text_tp=3 * q if te else 4 * q,
                 position=0 if te else 4 * d_h, sample=per_sample)


def ar_outside_activations(cfg, te: bool = True, z_loss: bool = False) -> tuple[Terms, Terms, Terms]:
    """(first stage, every stage, last stage) activations outside the AR layers."""
    every = Terms(text=cfg.context_dim) if cfg.video2world else Terms()
    last = Terms(token=2 * cfg.hidden_size if te else 3 * cfg.hidden_size,
                 fp32_token_tp=cfg.output_vocab_size * (2 if z_loss else 1))
    return Terms(), every, last


def dit_outside_activations(cfg, te: bool = True) -> tuple[Terms, Terms, Terms]:
    """(first stage, every stage, last stage) activations outside the DiT blocks (one stage)."""
    h = cfg.hidden_size
    text = cfg.context_dim + ((cfg.crossattn_proj_in + cfg.context_dim) if cfg.crossattn_proj_in else 0)
    first = Terms(full_token=cfg.patch_in_features, full_position=h if cfg.extra_pos_emb else 0, text=text)
    last = Terms(fp32_token=3 * h) if cfg.fp32_time_and_final else Terms(token=3 * h)
    return first, Terms(), last


# --------------------------------------------------------------------------------------------------
# the plan of one layout


@dataclass(frozen=True)
class Layout:
    tp: int
    pp: int
    cp: int
    dp: int

    @property
    def model_parallel(self) -> int:
        return self.tp * self.pp * self.cp

    def __str__(self) -> str:
        return f"TP={self.tp} PP={self.pp} CP={self.cp} DP={self.dp}"

    def overrides(self) -> list[str]:
        return [f"parallel.tensor={self.tp}", f"parallel.pipeline={self.pp}", f"parallel.context={self.cp}"]


@dataclass(frozen=True)
class Workload:
    """What the activations depend on: tokens per sample (the whole sequence), the text length of the
    cross-attention (0: none), micro-batch and global batch."""

    tokens: int
    micro_batch: int
    global_batch: int
    text_length: int = 0
    frames: int = 1  # latent frames (per-frame adaLN of Predict2/2.5, CP divisibility of the DiT)


@dataclass
class Settings:
    """The training settings that size memory, from a recipe (`settings_of`) or given directly."""

    precision: str = "bf16"
    recompute: Optional[str] = None  # None | "full" | "selective"
    te: bool = True  # Transformer Engine kernels (GPU) or megatron's local spec (CPU)
    ema: bool = False
    z_loss: bool = False
    sequence_parallel: bool = False
    trainable_params: Optional[int] = None  # LoRA adapter parameters (fp32, beside the frozen base); None: full

    @property
    def weight_bytes(self) -> int:
        return 2 if self.precision == "bf16" else 4

    @property
    def optimizer_bytes(self) -> int:
        return 12 if self.precision == "bf16" else 8  # (fp32 main weights +) Adam m and v

    @property
    def activation_bytes(self) -> int:
        return 2 if self.precision == "bf16" else 4


@dataclass
class RankMemory:
    """Bytes on the worst rank of one layout, and how they were reached."""

    layout: Layout
    settings: Settings
    stage: int
    parameters: float
    trainable: float
    bytes: dict[str, float]
    layer_bytes: float  # one layer of one micro-batch, nothing recomputed
    input_bytes: float  # one layer's input (what full recompute keeps)
    outside_bytes: float  # outside the layers on this stage, one micro-batch
    layers: int
    in_flight: int

    @property
    def total(self) -> float:
        return sum(self.bytes.values())


class ModelMemory:
    """A model config's parameters and activation terms (either family)."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.family = getattr(cfg, "family", "ar")
        if self.family == "ar":
            self.params = ar_parameters(cfg)
        elif self.family == "dit":
            self.params = dit_parameters(cfg)
        else:
            raise PlanError(f"the planner knows the 'ar' and 'dit' families, not {self.family!r}")

    def layer(self, s: Settings, w: Workload) -> Terms:
        recompute = s.recompute
        if self.family == "ar":
            return ar_layer_activations(self.cfg, s.te, recompute)
        return dit_layer_activations(self.cfg, s.te, recompute, frames=w.frames)

    def outside(self, s: Settings) -> tuple[Terms, Terms, Terms]:
        if self.family == "ar":
            return ar_outside_activations(self.cfg, s.te, s.z_loss)
        return dit_outside_activations(self.cfg, s.te)

    # ----------------------------------------------------------------------------------------------
    def check_layout(self, layout: Layout, w: Workload) -> None:
        """Raise PlanError when `layout` cannot run this model (the launcher's rules, `recipes/launch.py`)."""
        cfg, tp, pp, cp = self.cfg, layout.tp, layout.pp, layout.cp
        if min(tp, pp, cp, layout.dp) < 1:
            raise PlanError(f"parallel sizes must be >= 1, got {layout}")
        if cfg.num_attention_heads % tp:
            raise PlanError(f"parallel.tensor={tp} must divide model.num_attention_heads={cfg.num_attention_heads}")
        if self.family == "ar":
            if cfg.num_query_groups % tp:
                raise PlanError(f"parallel.tensor={tp} must divide model.num_query_groups={cfg.num_query_groups}")
            for name in ("vocab_size", "output_vocab_size"):
                if getattr(cfg, name) % tp:
                    raise PlanError(f"parallel.tensor={tp} must divide model.{name}={getattr(cfg, name)}")
            if cp != 1:
                raise PlanError("context parallelism is not supported by the AR models: set parallel.context=1")
            if cfg.num_layers % pp:
                raise PlanError(f"parallel.pipeline={pp} must divide model.num_layers={cfg.num_layers}")
        else:
            if pp != 1:
                raise PlanError("the DiT does not support pipeline parallelism: set parallel.pipeline=1")
            if w.frames % cp:
                raise PlanError(f"parallel.context={cp} must divide the {w.frames} latent frames of the clip")
        if w.global_batch % (w.micro_batch * layout.dp):
            raise PlanError(f"data.global_batch_size={w.global_batch} is not a multiple of micro_batch_size x DP = "
                            f"{w.micro_batch} x {layout.dp}")

    def memory(self, layout: Layout, w: Workload, s: Settings) -> RankMemory:
        """Bytes per rank of `layout` (the worst pipeline stage)."""
        tp, pp, cp = layout.tp, layout.pp, layout.cp
        microbatches = max(1, w.global_batch // (w.micro_batch * layout.dp))
        layer = self.layer(s, w)
        elem, sp = s.activation_bytes, s.sequence_parallel
        layer_bytes = layer.bytes(w, tp, cp, elem, sp)
        input_bytes = Terms(token=self.cfg.hidden_size).bytes(w, tp, cp, elem, sp)  # a layer's input
        first, every, last = self.outside(s)
        total_params = self.params.total
        layers = self.params.num_layers // pp
        worst = None
        for stage in range(pp):
            in_flight = min(pp - stage, microbatches)
            outside = every + (first if stage == 0 else Terms()) + (last if stage == pp - 1 else Terms())
            stored = outside.bytes(w, tp, cp, elem, sp)
            if s.recompute == "full":
                act = in_flight * (layers * input_bytes + stored) + layer_bytes
            else:
                act = in_flight * (layers * layer_bytes + stored)
            params = self.params.stage(stage, tp, pp)
            if s.trainable_params is None:  # every parameter trains
                trainable, weights, optimizer = params, params * s.weight_bytes, params * s.optimizer_bytes
            else:  # LoRA: fp32 adapters on this rank's share of the frozen base
                trainable = params * s.trainable_params / total_params
                weights, optimizer = params * s.weight_bytes + trainable * 4, trainable * 8
            mem = {
                "parameters": weights,
                "gradients": trainable * 4,
                "optimizer": optimizer,
                "ema": trainable * 4 if s.ema else 0.0,
                "activations": act,
            }
            plan = RankMemory(layout, s, stage, params, trainable, mem, layer_bytes, input_bytes, stored, layers,
                              in_flight)
            if worst is None or plan.total > worst.total:
                worst = plan
        return worst


# --------------------------------------------------------------------------------------------------
# layouts


def candidate_layouts(memory: ModelMemory, gpus: int, w: Workload) -> list[Layout]:
    """Every valid layout for `gpus` GPUs, in the suggestion's order of preference."""
    out = []
    for mp in range(1, gpus + 1):
        if gpus % mp:
            continue
        for pp in range(1, mp + 1):
            if mp % pp:
                continue
            for cp in range(1, mp // pp + 1):
                if (mp // pp) % cp:
                    continue
                layout = Layout(tp=mp // (pp * cp), pp=pp, cp=cp, dp=gpus // mp)
                try:
                    memory.check_layout(layout, w)
                except PlanError:
                    continue
                out.append(layout)
    return out  # ordered by model-parallel size, then fewest PP, then fewest CP


def suggest(memory: ModelMemory, gpus: int, w: Workload, s: Settings, budget: float) -> Optional[RankMemory]:
    """The suggestion rule (module docstring): the first fitting layout, at the recipe's recompute setting,
    else with full recompute. None when nothing fits."""
    settings = [s] if s.recompute == "full" else [s, dataclasses.replace(s, recompute="full")]
    for setting in settings:
        for layout in candidate_layouts(memory, gpus, w):
            plan = memory.memory(layout, w, setting)
            if plan.total <= budget:
                return plan
    return None


# --------------------------------------------------------------------------------------------------
# from a recipe


def settings_of(recipe, trainable_params: Optional[int] = None) -> Settings:
    """The memory-relevant settings of a built recipe (`nemo_run.Partial` after overrides)."""
    import fiddle as fdl

    model = fdl.build(recipe.model)
    trainer = recipe.trainer
    precision = trainer.precision
    if precision not in ("fp32", "bf16"):
        raise PlanError(f"trainer.precision must be 'fp32' or 'bf16', got {precision!r}")
    extra = model.extra_transformer_config or {}
    if trainable_params is None:
        trainable_params = trainable_parameters(recipe, model)
    return Settings(
        precision=precision,
        recompute=model.recompute_granularity,
        te=model.use_te is not False,
        ema=trainer.ema_decay is not None or trainer.ema_sigma_rel is not None,
        z_loss=bool(getattr(trainer, "z_loss", 0.0)),
        sequence_parallel=bool(extra.get("sequence_parallel", False)),
        trainable_params=trainable_params,
    )


def trainable_parameters(recipe, model) -> Optional[int]:
    """The parameter-efficient fine-tuning hook: None (every parameter trains) unless the recipe's `peft` is
    set, in which case the number of LoRA adapter parameters (`count_adapter_parameters`)."""
    import fiddle as fdl

    peft = getattr(recipe, "__arguments__", {}).get("peft")
    if not peft:
        return None
    try:
        return count_adapter_parameters(model, fdl.build(peft) if isinstance(peft, fdl.Buildable) else peft)
    except (TypeError, ValueError) as err:  # LoRAError is a ValueError: a target that matches nothing, ...
        raise PlanError(f"peft: {str(err).split(chr(10))[0]}") from None


def count_adapter_parameters(model_cfg, peft_cfg) -> int:
    """LoRA adapter parameters of the whole model: the model built on the meta device (nothing allocated) with
    `peft/lora.py apply_lora` applied, as the trainer applies it."""
    import torch
    from megatron.core import parallel_state

    from cosmos_nemo import parallel
    from cosmos_nemo.peft.lora import apply_lora

    own_state = not parallel_state.model_parallel_is_initialized()
    if own_state:
        parallel.setup()
    elif parallel_state.get_model_parallel_world_size() != 1:
        raise PlanError("count_adapter_parameters counts the whole model: call it where TP = PP = 1")
    try:
        with torch.device("meta"):
            if getattr(model_cfg, "family", "ar") == "dit":
                from cosmos_nemo.models.dit.model import build_dit_model

                model = build_dit_model(model_cfg, perform_initialization=False, use_cpu_initialization=True)
            else:
                from cosmos_nemo.models.ar.model import build_ar_model

                model = build_ar_model(model_cfg, pre_process=True, post_process=True, perform_initialization=False,
                                       use_cpu_initialization=True)
        apply_lora(model, peft_cfg)  # outside the meta context: it counts with a tensor of its own
        return sum(p.numel() for p in model.parameters() if p.requires_grad)
    finally:
        if own_state:
            parallel.teardown()


def workload_of(recipe, latent: Optional[tuple[int, int, int]] = None, text_length: Optional[int] = None) -> Workload:
    """Tokens, text length and batch sizes of a recipe: AR from `model.max_grid` (or `latent`, a token grid);
    DiT from `latent` (a latent grid T,H,W), by default the reference clip of its generation."""
    import fiddle as fdl

    model = fdl.build(recipe.model)
    data = recipe.data
    if data.micro_batch_size < 1 or data.global_batch_size < 1:
        raise PlanError(f"batch sizes must be >= 1, got micro {data.micro_batch_size}, global {data.global_batch_size}")
    if getattr(model, "family", "ar") == "dit":
        grid = tuple(latent) if latent else DIT_REFERENCE_LATENT[model.generation]
        t, hgt, wid = grid
        if t % model.patch_temporal or hgt % model.patch_spatial or wid % model.patch_spatial:
            raise PlanError(f"latent grid {t}x{hgt}x{wid} is not divisible by the patch size "
                            f"{model.patch_temporal}x{model.patch_spatial}x{model.patch_spatial}")
        frames = t // model.patch_temporal
        tokens = frames * (hgt // model.patch_spatial) * (wid // model.patch_spatial)
        text = DIT_TEXT_LENGTH if text_length is None else text_length
    else:
        from cosmos_nemo.tokenizers.grid import LatentGrid

        grid = LatentGrid.of(tuple(latent) if latent else model.max_grid)
        tokens = model.layout(grid).input_length
        frames = grid.as_tuple()[0]
        text = (model.context_length if text_length is None else text_length) if model.video2world else 0
    return Workload(tokens=tokens, micro_batch=data.micro_batch_size, global_batch=data.global_batch_size,
                    text_length=text, frames=frames)


@dataclass
class Plan:
    """What `cosmos-nemo plan` prints: the chosen layout's memory and the suggestion."""

    recipe: str
    model: Any
    gpus: int
    gpu_mem_gib: float
    headroom: float
    workload: Workload
    settings: Settings
    parameters: int
    overrides: tuple[str, ...]
    recipe_args: dict
    chosen: RankMemory
    suggestion: Optional[RankMemory]
    layouts: list[RankMemory]  # every valid layout at the recipe's recompute setting, then with full recompute

    @property
    def budget(self) -> float:
        return self.gpu_mem_gib * GIB * (1.0 - self.headroom)


def plan_recipe(name: str, gpus: int, gpu_mem_gib: float, overrides: tuple[str, ...] = (),
                recipe_args: Optional[dict] = None, headroom: float = DEFAULT_HEADROOM,
                latent: Optional[tuple[int, int, int]] = None, text_length: Optional[int] = None,
                trainable_params: Optional[int] = None) -> Plan:
    """Build recipe `name` with `overrides` (as `cosmos-nemo train` does) and plan it on `gpus` GPUs of
    `gpu_mem_gib` GiB. Raises PlanError, KeyError (unknown recipe) or OverrideError."""
    import fiddle as fdl

    from cosmos_nemo.recipes.overrides import apply_overrides
    from cosmos_nemo.recipes.registry import build_recipe

    if gpus < 1:
        raise PlanError(f"--gpus must be >= 1, got {gpus}")
    if not gpu_mem_gib > 0:
        raise PlanError(f"--gpu-mem must be > 0 GiB, got {gpu_mem_gib}")
    if not 0.0 <= headroom < 1.0:
        raise PlanError(f"--headroom is a fraction in [0, 1), got {headroom}")
    if trainable_params is not None and trainable_params < 1:
        raise PlanError(f"--trainable-params must be >= 1, got {trainable_params}")
    recipe = build_recipe(name, recipe_args)
    apply_overrides(recipe, overrides)
    try:
        model = fdl.build(recipe.model)
    except (TypeError, ValueError) as err:  # the config's own checks; fiddle appends its call context
        raise PlanError(f"the model config does not build: {str(err).split(chr(10))[0]}") from None
    memory = ModelMemory(model)
    w = workload_of(recipe, latent, text_length)
    s = settings_of(recipe, trainable_params)
    par = recipe.parallel
    mp = par.tensor * par.pipeline * par.context
    if min(par.tensor, par.pipeline, par.context) < 1:
        raise PlanError(f"parallel sizes must be >= 1, got TP={par.tensor} PP={par.pipeline} CP={par.context}")
    if gpus % mp:
        raise PlanError(f"{gpus} GPUs are not divisible by TP x PP x CP = {par.tensor} x {par.pipeline} x "
                        f"{par.context} = {mp}: use a multiple of {mp} GPUs, or other parallel.* overrides")
    chosen_layout = Layout(par.tensor, par.pipeline, par.context, gpus // mp)
    memory.check_layout(chosen_layout, w)
    chosen = memory.memory(chosen_layout, w, s)
    budget = gpu_mem_gib * GIB * (1.0 - headroom)
    settings = [s] if s.recompute == "full" else [s, dataclasses.replace(s, recompute="full")]
    candidates = candidate_layouts(memory, gpus, w)
    layouts = [memory.memory(layout, w, setting) for setting in settings for layout in candidates]
    return Plan(recipe=name, model=model, gpus=gpus, gpu_mem_gib=gpu_mem_gib, headroom=headroom, workload=w,
                settings=s, parameters=memory.params.total, overrides=tuple(overrides),
                recipe_args=dict(recipe_args or {}), chosen=chosen,
                suggestion=suggest(memory, gpus, w, s, budget), layouts=layouts)


# --------------------------------------------------------------------------------------------------
# report


def _gib(n: float) -> str:
    return f"{n / GIB:8.2f} GiB"


def _billions(n: float) -> str:
    return f"{n / 1e9:.3f} B" if n >= 1e8 else f"{n / 1e6:.2f} M"


def describe(plan: Plan, all_layouts: bool = False) -> str:
    s, w, c = plan.settings, plan.workload, plan.chosen
    model = plan.model
    lines = [f"plan: {plan.recipe} on {plan.gpus} GPU(s) x {plan.gpu_mem_gib:g} GiB; budget "
             f"{plan.budget / GIB:.2f} GiB per GPU ({plan.headroom:.0%} kept free for what the estimate leaves out)"]
    ema = ", fp32 EMA" if s.ema else ""
    if s.trainable_params is None:
        lines.append(f"model: {model.family} {model.name}, {plan.parameters:,} parameters, all trainable; {s.precision}"
                     + (" weights, fp32 main weights" if s.precision == "bf16" else " weights")
                     + f", fp32 gradients, Adam m and v{ema}; no distributed optimizer")
    else:
        lines.append(f"model: {model.family} {model.name}, {plan.parameters:,} parameters, frozen ({s.precision}); "
                     f"LoRA: {s.trainable_params:,} fp32 adapter parameters with fp32 gradients, Adam m and v{ema}")
    text = f" + {w.text_length} text tokens" if w.text_length else ""
    lines.append(f"workload: micro-batch {w.micro_batch} x {w.tokens:,} tokens{text}, global batch {w.global_batch}; "
                 f"recompute {s.recompute or 'none'}; {'Transformer Engine' if s.te else 'local (CPU)'} kernels"
                 + ("; sequence parallel" if s.sequence_parallel else ""))
    lines.append("")
    lines.append(f"chosen layout {c.layout} (the recipe's parallel.* and overrides):")
    lines.extend(_breakdown(c, plan.budget))
    lines.append("")
    if plan.suggestion is None:
        lines.append(f"no layout of {plan.gpus} GPU(s) fits in {plan.budget / GIB:.2f} GiB, even with full recompute")
    else:
        g = plan.suggestion
        extra = [] if g.settings.recompute == s.recompute else [f"model.recompute_granularity={g.settings.recompute}"]
        why = "the smallest TP x PP x CP that fits" + (" with full recompute" if extra else "")
        lines.append(f"suggested: {g.layout} ({why}: {g.layout.model_parallel}) -> {g.total / GIB:.2f} GiB per GPU")
        if g.layout != c.layout or extra:
            lines.extend(_breakdown(g, plan.budget))
        lines.append("  " + train_command(plan, g))
    if all_layouts:
        for m in plan.layouts:
            if m is plan.layouts[0] or m.settings.recompute != previous:
                previous = m.settings.recompute
                lines.append("")
                lines.append(f"every valid layout, recompute {previous or 'none'} (worst rank):")
            fits = "fits" if m.total <= plan.budget else "does not fit"
            lines.append(f"  {str(m.layout):24s} params {_gib(m.bytes['parameters'])}  grads+optim+ema "
                         f"{_gib(m.bytes['gradients'] + m.bytes['optimizer'] + m.bytes['ema'])}  activations "
                         f"{_gib(m.bytes['activations'])}  total {_gib(m.total)}  {fits}")
    return "\n".join(lines)


def train_command(plan: Plan, m: RankMemory) -> str:
    """The `cosmos-nemo train` command line of layout `m`: the recipe, its arguments, the user's overrides
    (less those the layout replaces) and the layout's."""
    import shlex

    replaced = {"parallel.tensor", "parallel.pipeline", "parallel.context"}
    extra = []
    if m.settings.recompute != plan.settings.recompute:
        replaced.add("model.recompute_granularity")
        extra.append(f"model.recompute_granularity={m.settings.recompute}")
    kept = [item for item in plan.overrides if item.split("=", 1)[0].strip() not in replaced]
    words = ["cosmos-nemo", "train", plan.recipe]
    for key, value in plan.recipe_args.items():
        words += ["--recipe-arg", f"{key}={value}"]
    return " ".join(shlex.quote(w) for w in words + kept + m.layout.overrides() + extra)


def _breakdown(m: RankMemory, budget: float) -> list[str]:
    s = m.settings
    b = m.bytes
    stage = f" (pipeline stage {m.stage})" if m.layout.pp > 1 else ""
    opt = "fp32 main weights + Adam m, v" if s.precision == "bf16" else "Adam m, v"
    flight = f" x {m.in_flight} micro-batches in flight" if m.in_flight > 1 else ""
    if s.recompute == "full":
        act = (f"({m.layers} layer inputs x {m.input_bytes / GIB:.2f} + outside {m.outside_bytes / GIB:.2f}){flight}"
               f" + 1 layer {m.layer_bytes / GIB:.2f} GiB")
    else:
        act = f"({m.layers} layers x {m.layer_bytes / GIB:.2f} + outside {m.outside_bytes / GIB:.2f} GiB){flight}"
    weights = f"{_billions(m.parameters)} x {s.weight_bytes} B{stage}"
    optimizer = f"{_billions(m.trainable)} x {s.optimizer_bytes} B ({opt})"
    if s.trainable_params is not None:  # LoRA
        weights = (f"{_billions(m.parameters)} x {s.weight_bytes} B (frozen){stage} + {_billions(m.trainable)} "
                   "adapters x 4 B")
        optimizer = f"{_billions(m.trainable)} x 8 B (Adam m, v of the fp32 adapters)"
    rows = [
        (f"parameters   {weights}", b["parameters"]),
        (f"gradients    {_billions(m.trainable)} x 4 B (fp32 buffer)", b["gradients"]),
        (f"optimizer    {optimizer}", b["optimizer"]),
    ]
    if s.ema:
        rows.append((f"EMA          {_billions(m.trainable)} x 4 B", b["ema"]))
    rows.append((f"activations  {act}", b["activations"]))
    width = max(len(label) for label, _ in rows)
    out = [f"  {label:{width}s} {_gib(value)}" for label, value in rows]
    verdict = "fits" if m.total <= budget else f"DOES NOT FIT (over by {(m.total - budget) / GIB:.2f} GiB)"
    out.append(f"  {'total':{width}s} {_gib(m.total)}  {verdict}")
    return out


# --------------------------------------------------------------------------------------------------
# the command


def _triple(text: str) -> tuple[int, int, int]:
    parts = [p for p in text.replace("x", ",").split(",") if p.strip()]
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected three positive integers T,H,W, got {text!r}")
    return values


def _plan(args: argparse.Namespace) -> int:
    from cosmos_nemo.recipes.commands import _parse_recipe_args
    from cosmos_nemo.recipes.overrides import OverrideError

    if not args.recipe:
        print("error: name a recipe (cosmos-nemo train --list shows them)", file=sys.stderr)
        return 2
    try:
        plan = plan_recipe(args.recipe, args.gpus, args.gpu_mem, tuple(args.overrides),
                           recipe_args=_parse_recipe_args(args.recipe_arg), headroom=args.headroom,
                           latent=args.latent, text_length=args.text_length, trainable_params=args.trainable_params)
    except (KeyError, OverrideError, PlanError, ValueError, TypeError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"error: {message}", file=sys.stderr)
        return 2
    print(describe(plan, all_layouts=args.all))
    if plan.suggestion is None:
        print(f"error: {args.recipe} does not fit on {args.gpus} GPU(s) of {args.gpu_mem:g} GiB in any layout "
              "(more GPUs, a smaller micro-batch or a shorter clip)", file=sys.stderr)
        return 1
    return 0


_EPILOG = """examples:
  cosmos-nemo plan cosmos_ar_4b_finetune --gpus 8 --gpu-mem 80
  cosmos-nemo plan cosmos_ar_4b_finetune --gpus 8 --gpu-mem 80 parallel.tensor=4 model.recompute_granularity=full
  cosmos-nemo plan cosmos_predict1_7b_v2w_finetune --gpus 8 --gpu-mem 80 --all
  cosmos-nemo plan cosmos_predict25_2b_finetune --gpus 8 --gpu-mem 80 --latent 24,60,106 trainer.precision=bf16

Per GPU: weights (2 B bf16 / 4 B fp32), fp32 gradients (4 B), optimizer (bf16: fp32 main weights + Adam m, v
= 12 B; fp32: m, v = 8 B), fp32 EMA (4 B) when the recipe keeps one, and the activations saved for the
backward (Korthikanti et al. 2022, adapted to these layers; `python -c "import cosmos_nemo.recipes.plan as p;
help(p)"` has the formulas). The suggestion is the smallest TP x PP x CP that fits (DP = N / (TP x PP x CP)),
tensor parallelism first, then context, then pipeline; with full recompute when nothing fits without.
Exit status: 0 when some layout fits, 1 when none does, 2 for bad input.
"""


def register(sub: argparse._SubParsersAction) -> None:
    from cosmos_nemo.recipes.commands import _Intermixed

    p = sub.add_parser(
        "plan",
        help="per-GPU memory of a recipe at a layout, and the smallest layout that fits",
        description="Build a recipe with its overrides (as `cosmos-nemo train` does), then estimate, for the rank that "
        "needs the most, the memory of parameters, gradients, optimizer state, EMA and activations at the recipe's "
        "TP/PP/CP on N GPUs, and suggest the smallest layout that fits. Nothing is allocated: the numbers come "
        "from the model config.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("recipe", nargs="?", help="recipe name, e.g. cosmos_ar_4b_finetune (cosmos-nemo train --list)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="dotted overrides, as for train: parallel.tensor=2, parallel.pipeline=2, parallel.context=2, "
                   "trainer.precision=bf16|fp32, model.recompute_granularity=full|selective|null, "
                   "data.micro_batch_size=1, data.global_batch_size=..., model.max_grid=[5,40,64] (AR sequence), "
                   "model.use_te=false (plan for megatron's local kernels, as on a CPU), "
                   "model.extra_transformer_config={sequence_parallel: true}")
    p.add_argument("--gpus", type=int, required=True, help="number of GPUs N (world size)")
    p.add_argument("--gpu-mem", "--gpu_mem", type=float, required=True, metavar="GIB",
                   help="memory of one GPU in GiB (2^30 bytes), e.g. 80 for an 80 GB H100/A100")
    p.add_argument("--headroom", type=float, default=DEFAULT_HEADROOM, metavar="FRACTION",
                   help="fraction of the GPU kept free for what the estimate does not count: the CUDA context, NCCL "
                   "buffers, temporaries and allocator fragmentation (default 0.1)")
    p.add_argument("--latent", type=_triple, metavar="T,H,W",
                   help="the latent grid of one training clip. DiT: before patching, default the reference clip "
                   "(Predict1 16,88,160 = 121x704x1280; Predict2/2.5 24,88,160 = 93x704x1280); AR: the token grid, "
                   "default model.max_grid")
    p.add_argument("--text-length", "--text_length", type=int, metavar="L",
                   help="text tokens of the cross-attention (default 512; AR Video2World: model.context_length)")
    p.add_argument("--trainable-params", "--trainable_params", type=int, metavar="N",
                   help="LoRA: the number of fp32 adapter parameters beside the frozen base; only they get gradients, "
                   "optimizer state and EMA (default: every parameter trains, or, for a recipe with peft set, e.g. "
                   "the override peft=lora, its adapters are counted)")
    p.add_argument("--recipe-arg", "--recipe_arg", action="append", default=[], metavar="NAME=VALUE",
                   help="an argument of the recipe function (the tokenizer-swap recipes' tokenizer, frames, height, "
                   "width), as for train")
    p.add_argument("--all", action="store_true", help="also list every valid layout for N GPUs with its memory")
    p.set_defaults(func=_plan)
    p.__class__ = type("PlanArgumentParser", (_Intermixed, type(p)), {})
