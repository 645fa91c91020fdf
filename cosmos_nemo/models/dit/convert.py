"""Checkpoint interop of the Cosmos DiT: ONE declarative key table per released layout (diffusion_models.md
§10-11), on the generic machinery of models/common/keymap.py (strict accounting, TP shards, bit-exact
round trips).

Layouts (keys as in the file, after a `net.` / `net_ema.` prefix is stripped):

- `cosmos1` (Predict1 / Cosmos-1.0): `blocks.block{i}.blocks.{0,1,2}...`, `x_embedder.proj.1`,
  `t_embedder.1.linear_{1,2}`, `affline_norm`, `extra_pos_embedder.pos_emb_{t,h,w}`,
  `final_layer.{adaLN_modulation.{1,2},linear}`; `logvar.{0.freqs,0.phases,1.weight}` sit beside `net.`
  in a released `model.pt`; the buffer `pos_embedder.seq` (arange) is checked and rebuilt, not a weight.
- `cosmos2` (Predict2 / 2.5): `blocks.{i}.{self_attn,cross_attn}.{q,k,v,output}_proj`, `.{q,k}_norm`,
  `mlp.layer{1,2}`, `adaln_modulation_{self_attn,cross_attn,mlp}.{1,2}`, `t_embedding_norm`,
  `final_layer.adaln_modulation.{1,2}`, `crossattn_proj.0` (2.5); run-time buffers (`pos_embedder.*`,
  `accum_*`, `*._extra_state`) are accepted and dropped.
- `diffusers` (`CosmosTransformer3DModel`, any generation): `transformer_blocks.{i}.attn{1,2}.to_{q,k,v}`,
  `to_out.0`, `norm_{q,k}`, `ff.net.{0.proj,2}`, `norm{1,2,3}.linear_{1,2}`, `time_embed.*`, `patch_embed.proj`,
  `learnable_pos_embed.*`, `norm_out.*`, `proj_out`, `crossattn_proj.0`; it has no log-variance head.

Megatron side (`DiTModel`): `decoder.layers.{i}.self_attention.linear_qkv` fused per head `[q_h; k_h; v_h]`
(megatron's layout with one query group per head, so a TP rank holds whole heads), cross-attention
`linear_q` and `linear_kv` fused per head `[k_h; v_h]`, `linear_proj` row parallel, `mlp.linear_fc1/fc2`,
`adaln_{self_attn,cross_attn,mlp}.{down,up}`; outside the blocks `patch_embed`, `t_embedder.linear_{1,2}`,
`t_norm`, `learnable_pos_emb.pos_emb_*`, `text_proj.0`, `final_adaln.{down,up}`, `final_linear`,
`logvar.{fourier.freqs,fourier.phases,linear}`.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Optional

import torch

from cosmos_nemo.io.tensors import TensorFileError, read_state_dict, tensor_shape
from cosmos_nemo.models.common import keymap as km
from cosmos_nemo.models.common.keymap import CheckpointMismatchError, column, param, released, row
from cosmos_nemo.models.dit.config import NAMED_CONFIGS, DiTModelConfig, dit_config

log = logging.getLogger(__name__)

LAYOUTS = ("cosmos1", "cosmos2", "diffusers")
EXTRA_POS, PROJ, LOGVAR = "extra_pos", "crossattn_proj", "logvar"
_L = "decoder.layers.{i}."

# Symbols: d hidden (whole), q = heads x head_dim and ff = MLP width (split over TP), hd head dim, ctx text
# width, cin the projected text input, pin/pout the patch-embedding in/out features, r the adaLN-LoRA
# width, lt/lh/lw the learnable position tables, c the log-variance features; "heads" the TP unit.


def _table(names: dict) -> tuple:
    """One layout's table from its names (`names[...]` are the released key patterns)."""
    n = names
    entries = [
        param("patch_embed.weight", released(n["patch"], ("d", "pin"))),
        param("t_embedder.linear_1.weight", released(n["t1"], ("d", "d"))),
        param("t_embedder.linear_2.weight", released(n["t2"], ("d3", "d"))),
        param("t_norm.weight", released(n["tnorm"], ("d",))),
        param("final_adaln.down.weight", released(n["fdown"], ("r", "d"))),
        param("final_adaln.up.weight", released(n["fup"], ("d2", "r"))),
        param("final_linear.weight", released(n["fout"], ("pout", "d"))),
        param("learnable_pos_emb.pos_emb_t", released(n["pos"] + ".pos_emb_t", ("lt", "d")), when=EXTRA_POS),
        param("learnable_pos_emb.pos_emb_h", released(n["pos"] + ".pos_emb_h", ("lh", "d")), when=EXTRA_POS),
        param("learnable_pos_emb.pos_emb_w", released(n["pos"] + ".pos_emb_w", ("lw", "d")), when=EXTRA_POS),
        param("text_proj.0.weight", released("crossattn_proj.0.weight", ("ctx", "cin")), when=PROJ),
        param("text_proj.0.bias", released("crossattn_proj.0.bias", ("ctx",)), when=PROJ),
    ]
    for sub, key in (("self", "adaln_self_attn"), ("cross", "adaln_cross_attn"), ("mlp", "adaln_mlp")):
        entries += [
            param(_L + key + ".down.weight", released(n["mod"][sub] + n["mod_down"], ("r", "d"))),
            param(_L + key + ".up.weight", released(n["mod"][sub] + n["mod_up"], ("d3", "r"))),
        ]
    sa, ca = n["self"], n["cross"]
    entries += [
        param(_L + "self_attention.linear_qkv.weight",
              released(sa + n["q"], ("q", "d"), column("heads")), released(sa + n["k"], ("q", "d"), column("heads")),
              released(sa + n["v"], ("q", "d"), column("heads")), transform=km.fused_qkv("heads"), tp=column("heads")),
        param(_L + "self_attention.q_layernorm.weight", released(sa + n["qn"], ("hd",))),
        param(_L + "self_attention.k_layernorm.weight", released(sa + n["kn"], ("hd",))),
        param(_L + "self_attention.linear_proj.weight", released(sa + n["o"], ("d", "q"), row("heads")), tp=row("heads")),
        param(_L + "cross_attention.linear_q.weight", released(ca + n["q"], ("q", "d"), column("heads")),
              tp=column("heads")),
        param(_L + "cross_attention.linear_kv.weight",
              released(ca + n["k"], ("q", "ctx"), column("heads")), released(ca + n["v"], ("q", "ctx"), column("heads")),
              transform=km.fused_kv("heads"), tp=column("heads")),
        param(_L + "cross_attention.q_layernorm.weight", released(ca + n["qn"], ("hd",))),
        param(_L + "cross_attention.k_layernorm.weight", released(ca + n["kn"], ("hd",))),
        param(_L + "cross_attention.linear_proj.weight", released(ca + n["o"], ("d", "q"), row("heads")), tp=row("heads")),
        param(_L + "mlp.linear_fc1.weight", released(n["fc1"], ("ff", "d"), column()), tp=column()),
        param(_L + "mlp.linear_fc2.weight", released(n["fc2"], ("d", "ff"), row()), tp=row()),
    ]
    if n.get("logvar"):
        entries += [
            param("logvar.fourier.freqs", released("logvar.0.freqs", ("c",)), when=LOGVAR),
            param("logvar.fourier.phases", released("logvar.0.phases", ("c",)), when=LOGVAR),
            param("logvar.linear.weight", released("logvar.1.weight", (1, "c")), when=LOGVAR),
        ]
    return tuple(entries)


_P1B = "blocks.block{i}.blocks."
COSMOS1_TABLE = _table(dict(
    patch="x_embedder.proj.1.weight", t1="t_embedder.1.linear_1.weight", t2="t_embedder.1.linear_2.weight",
    tnorm="affline_norm.weight", fdown="final_layer.adaLN_modulation.1.weight",
    fup="final_layer.adaLN_modulation.2.weight", fout="final_layer.linear.weight", pos="extra_pos_embedder",
    mod={"self": _P1B + "0.", "cross": _P1B + "1.", "mlp": _P1B + "2."},
    mod_down="adaLN_modulation.1.weight", mod_up="adaLN_modulation.2.weight",
    self=_P1B + "0.block.attn.", cross=_P1B + "1.block.attn.",
    q="to_q.0.weight", k="to_k.0.weight", v="to_v.0.weight", o="to_out.0.weight", qn="to_q.1.weight",
    kn="to_k.1.weight", fc1=_P1B + "2.block.layer1.weight", fc2=_P1B + "2.block.layer2.weight", logvar=True,
))
_P2B = "blocks.{i}."
COSMOS2_TABLE = _table(dict(
    patch="x_embedder.proj.1.weight", t1="t_embedder.1.linear_1.weight", t2="t_embedder.1.linear_2.weight",
    tnorm="t_embedding_norm.weight", fdown="final_layer.adaln_modulation.1.weight",
    fup="final_layer.adaln_modulation.2.weight", fout="final_layer.linear.weight", pos="extra_pos_embedder",
    mod={"self": _P2B + "adaln_modulation_self_attn.", "cross": _P2B + "adaln_modulation_cross_attn.",
         "mlp": _P2B + "adaln_modulation_mlp."},
    mod_down="1.weight", mod_up="2.weight", self=_P2B + "self_attn.", cross=_P2B + "cross_attn.",
    q="q_proj.weight", k="k_proj.weight", v="v_proj.weight", o="output_proj.weight", qn="q_norm.weight",
    kn="k_norm.weight", fc1=_P2B + "mlp.layer1.weight", fc2=_P2B + "mlp.layer2.weight", logvar=True,
))
_DB = "transformer_blocks.{i}."
DIFFUSERS_TABLE = _table(dict(
    patch="patch_embed.proj.weight", t1="time_embed.t_embedder.linear_1.weight",
    t2="time_embed.t_embedder.linear_2.weight", tnorm="time_embed.norm.weight", fdown="norm_out.linear_1.weight",
    fup="norm_out.linear_2.weight", fout="proj_out.weight", pos="learnable_pos_embed",
    mod={"self": _DB + "norm1.", "cross": _DB + "norm2.", "mlp": _DB + "norm3."},
    mod_down="linear_1.weight", mod_up="linear_2.weight", self=_DB + "attn1.", cross=_DB + "attn2.",
    q="to_q.weight", k="to_k.weight", v="to_v.weight", o="to_out.0.weight", qn="norm_q.weight",
    kn="norm_k.weight", fc1=_DB + "ff.net.0.proj.weight", fc2=_DB + "ff.net.2.weight", logvar=False,
))
TABLES = {"cosmos1": COSMOS1_TABLE, "cosmos2": COSMOS2_TABLE, "diffusers": DIFFUSERS_TABLE}

# Buffers of the released files that are not weights: accepted (and, for cosmos1's arange, checked) and dropped.
_RUNTIME_BUFFERS = {
    "cosmos1": re.compile(r"^pos_embedder\.seq$|\._extra_state$"),
    "cosmos2": re.compile(r"^pos_embedder\.(seq|dim_spatial_range|dim_temporal_range)$|^accum_[a-z_]+$|\._extra_state$"),
    "diffusers": re.compile(r"$^"),
}


def layout_of(cfg: DiTModelConfig) -> str:
    """The Cosmos layout a config's generation releases in."""
    return "cosmos1" if cfg.generation == "predict1" else "cosmos2"


def dit_dims(cfg: DiTModelConfig) -> dict[str, int]:
    d = cfg.hidden_size
    return dict(d=d, d2=2 * d, d3=3 * d, q=cfg.num_attention_heads * cfg.head_dim, heads=cfg.num_attention_heads,
                hd=cfg.head_dim, ff=cfg.ffn_hidden_size, ctx=cfg.context_dim, cin=cfg.crossattn_proj_in or 0,
                pin=cfg.patch_in_features, pout=cfg.patch_out_features, r=cfg.adaln_lora_dim,
                lt=cfg.max_size[0], lh=cfg.max_size[1], lw=cfg.max_size[2], c=cfg.logvar_channels)


def describe(cfg: DiTModelConfig) -> str:
    kind = "Video2World" if cfg.video2world else "Text2World"
    return (f"the {cfg.name!r} DiT ({cfg.generation}, {kind}, hidden {cfg.hidden_size}, {cfg.num_layers} blocks, "
            f"{cfg.num_attention_heads} heads, {cfg.patch_in_features // (cfg.patch_temporal * cfg.patch_spatial ** 2)}"
            " input channels with masks)")


def dit_keymap(cfg: DiTModelConfig, layout: Optional[str] = None, logvar: Optional[bool] = None) -> km.KeyMap:
    """The table of `layout` (default: the config's Cosmos layout) bound to `cfg`. `logvar` (default: the
    config's head, never for diffusers) includes the log-variance head's keys."""
    layout = layout or layout_of(cfg)
    if layout not in TABLES:
        raise ValueError(f"unknown DiT checkpoint layout {layout!r}; choose one of {LAYOUTS}")
    features = set()
    if cfg.extra_pos_emb:
        features.add(EXTRA_POS)
    if cfg.crossattn_proj_in:
        features.add(PROJ)
    if (cfg.logvar_head if logvar is None else logvar) and layout != "diffusers":
        features.add(LOGVAR)
    return km.KeyMap(TABLES[layout], dit_dims(cfg), cfg.num_layers, features=features,
                     name=f"{describe(cfg)} in the {layout} layout")


# ---------------------------------------------------------------------------------------------------
# Reading released files


def detect_layout(keys) -> str:
    """cosmos1, cosmos2 or diffusers from a state dict's keys (prefix already stripped)."""
    keys = list(keys)
    if any(k.startswith("transformer_blocks.") or k.startswith("time_embed.") for k in keys):
        return "diffusers"
    if any(k.startswith("blocks.block") for k in keys) or "affline_norm.weight" in keys:
        return "cosmos1"
    if any(re.match(r"blocks\.\d+\.", k) for k in keys) or "t_embedding_norm.weight" in keys:
        return "cosmos2"
    raise TensorFileError("not a Cosmos DiT checkpoint: its keys match none of the cosmos1 (blocks.block0...), "
                          f"cosmos2 (blocks.0.self_attn...) or diffusers (transformer_blocks.0...) layouts; first keys: "
                          f"{keys[:8]}")


def read_dcp(folder: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a torch distributed checkpoint (DCP) folder (`.metadata` + `*.distcp`), as Predict2.5
    writes `iter_*/model/`, read in one process; non-tensor entries (TE `_extra_state` bytes) are skipped."""
    from torch.distributed.checkpoint import FileSystemReader, load
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    reader = FileSystemReader(str(folder))
    metadata = reader.read_metadata()
    state = {k: torch.empty(tuple(m.size), dtype=m.properties.dtype)
             for k, m in metadata.state_dict_metadata.items() if isinstance(m, TensorStorageMetadata)}
    skipped = sorted(set(metadata.state_dict_metadata) - set(state))
    bad = [k for k in skipped if not k.endswith("_extra_state")]
    if bad:
        raise TensorFileError(f"{folder}: non-tensor entries in a model checkpoint: {bad[:10]}")
    load(state, storage_reader=reader, no_dist=True)
    return state


def read_released(path: str | os.PathLike, ema: bool = False) -> tuple[dict[str, torch.Tensor], str, dict]:
    """(state, layout, info) of a released DiT checkpoint: a Cosmos `model.pt` / consolidated `.pt` /
    `.safetensors` (keys under `net.`, `net_ema.`, `logvar.` or bare), a Predict2.5 DCP folder (`model/`
    with `.metadata`, or its `iter_*` parent), or a diffusers `CosmosTransformer3DModel` folder
    (`config.json` + `diffusion_pytorch_model*.safetensors`, or its pipeline root with `transformer/`).

    `ema` takes the `net_ema.*` weights (error when the file has none). `info` holds the diffusers config
    (when there is one) and what was dropped."""
    p = Path(path)
    info: dict = {"source": str(p)}
    if p.is_dir() and (p / "transformer" / "config.json").is_file():
        p = p / "transformer"
    if p.is_dir() and (p / "model" / ".metadata").is_file():
        p = p / "model"
    if p.is_dir() and (p / "config.json").is_file() and any(p.glob("diffusion_pytorch_model*.safetensors")):
        info["diffusers_config"] = json.loads((p / "config.json").read_text())
        state: dict = {}
        for f in sorted(p.glob("diffusion_pytorch_model*.safetensors")):
            state.update(read_state_dict(f))
        if ema:
            raise ValueError("a diffusers folder holds one set of weights; --ema applies to Cosmos files with net_ema.*")
        return state, "diffusers", info
    if p.is_dir() and (p / ".metadata").is_file():
        if (p / "metadata.json").is_file():
            raise ValueError(f"{p} is a megatron dist-ckpt folder (cosmos-nemo's own format): give it to a recipe as "
                             "checkpoint.pretrained, or export it with `cosmos-nemo convert dit-export`")
        raw = read_dcp(p)
    else:
        try:
            raw = dict(read_state_dict(p, folder_names=("model.pt", "model.safetensors", "model_ema_bf16.pt",
                                                        "model_ema_fp32.pt")))
        except TensorFileError:
            raise
        except Exception as err:  # truncated / corrupt files
            raise TensorFileError(f"cannot read {p}: {type(err).__name__}: {err}") from err
    nets = {pre: {k[len(pre):]: v for k, v in raw.items() if k.startswith(pre)} for pre in ("net_ema.", "net.")}
    if ema:
        if not nets["net_ema."]:
            raise ValueError(f"{p} has no EMA weights (net_ema.*); drop --ema / ema=True to load the regular weights")
        chosen, info["weights"] = nets["net_ema."], "net_ema"
    elif nets["net."]:
        chosen, info["weights"] = nets["net."], "net"
    elif nets["net_ema."]:
        chosen, info["weights"] = nets["net_ema."], "net_ema (the file has no regular weights)"
    else:
        chosen, info["weights"] = {k: v for k, v in raw.items() if not k.startswith("logvar.")}, "bare keys"
    state = dict(chosen)
    state.update({k: v for k, v in raw.items() if k.startswith("logvar.")})
    others = sorted(k for k in raw if not k.startswith(("net.", "net_ema.", "logvar.")) and (nets["net."] or nets["net_ema."]))
    if others:
        raise CheckpointMismatchError(f"{p}: keys outside net./net_ema./logvar.:\n" + km.format_list("unexpected keys", others),
                                      unexpected=others)
    return state, detect_layout(state), info


def split_runtime_buffers(state: Mapping[str, torch.Tensor], layout: str) -> tuple[dict, list[str]]:
    """(weights, dropped keys): the run-time buffers of `layout` removed. cosmos1's `pos_embedder.seq`
    must be the arange the reference builds (anything else is not a buffer we can drop)."""
    pattern = _RUNTIME_BUFFERS[layout]
    weights, dropped = {}, []
    for k in state:
        if pattern.search(k):
            dropped.append(k)
        else:
            weights[k] = state[k]
    seq = state.get("pos_embedder.seq") if "pos_embedder.seq" in dropped else None
    if seq is not None and not torch.equal(seq.float(), torch.arange(seq.numel(), dtype=torch.float32)):
        raise CheckpointMismatchError("pos_embedder.seq is not the arange the reference's RoPE builds; this file was "
                                      "not written by Cosmos", wrong=["pos_embedder.seq"])
    return weights, sorted(dropped)


# ---------------------------------------------------------------------------------------------------
# What a checkpoint looks like (for errors)


def infer_architecture(state: Mapping[str, torch.Tensor], layout: str) -> dict:
    """Hidden size, block count, input channels and options read off a released state's shapes."""
    names = {"cosmos1": ("x_embedder.proj.1.weight", r"blocks\.block(\d+)\."),
             "cosmos2": ("x_embedder.proj.1.weight", r"blocks\.(\d+)\."),
             "diffusers": ("patch_embed.proj.weight", r"transformer_blocks\.(\d+)\.")}
    patch, block = names[layout]
    arch: dict = {}
    if patch in state:
        d, pin = tensor_shape(state, patch)
        arch.update(hidden_size=d, patch_in_features=pin)
    blocks = {int(m.group(1)) for k in state for m in [re.match(block, k)] if m}
    if blocks:
        arch["num_layers"] = max(blocks) + 1
    arch["extra_pos_emb"] = any("pos_emb_t" in k for k in state)
    arch["crossattn_proj"] = "crossattn_proj.0.weight" in state
    return arch


def guess_named_config(arch: Mapping, layout: str) -> Optional[str]:
    """The named config whose architecture matches `arch` (None when none does)."""
    generations = {"cosmos1": ("predict1",), "cosmos2": ("predict2", "predict2.5"),
                   "diffusers": ("predict1", "predict2", "predict2.5")}[layout]
    for name in NAMED_CONFIGS:
        cfg = dit_config(name)
        if cfg.generation not in generations:
            continue
        if (cfg.hidden_size, cfg.num_layers, cfg.patch_in_features, cfg.extra_pos_emb, bool(cfg.crossattn_proj_in)) == (
                arch.get("hidden_size"), arch.get("num_layers"), arch.get("patch_in_features"),
                arch.get("extra_pos_emb"), arch.get("crossattn_proj")):
            return name
    return None


def _size_hint(cfg: DiTModelConfig, state: Mapping[str, torch.Tensor], layout: str) -> Optional[str]:
    arch = infer_architecture(state, layout)
    if not arch.get("hidden_size"):
        return None
    hints = []
    patch_vol = cfg.patch_temporal * cfg.patch_spatial**2
    if arch["hidden_size"] == cfg.hidden_size and arch.get("num_layers") == cfg.num_layers and \
            arch["patch_in_features"] != cfg.patch_in_features:
        ckpt_ch = arch["patch_in_features"] // patch_vol
        ours = cfg.patch_in_features // patch_vol
        if ckpt_ch == ours - 1 and cfg.video2world:
            hints.append(f"the checkpoint is a Text2World model ({ckpt_ch} input channels with the padding mask) and "
                         f"the config a Video2World one ({ours}: + the condition mask); load it into the T2W config "
                         "or use a Video2World checkpoint")
        elif ckpt_ch == ours + 1 and not cfg.video2world:
            hints.append(f"the checkpoint is a Video2World model ({ckpt_ch} input channels) and the config a "
                         f"Text2World one ({ours})")
        else:
            hints.append(f"the checkpoint's patch embedding reads {ckpt_ch} channels, the model {ours}")
    guess = guess_named_config(arch, layout)
    desc = (f"hidden {arch['hidden_size']}, {arch.get('num_layers', '?')} blocks, "
            f"{arch['patch_in_features'] // patch_vol} input channels")
    ours = (cfg.hidden_size, cfg.num_layers, cfg.patch_in_features)
    if ours != (arch["hidden_size"], arch.get("num_layers"), arch["patch_in_features"]):
        if guess:
            hints.append(f"it looks like {guess} ({desc}); the model is {describe(cfg)}")
        else:
            hints.append(f"it has {desc}, which matches no named config; the model is {describe(cfg)}")
    return "; ".join(hints) if hints else None


def check_state(state: Mapping[str, torch.Tensor], kmap: km.KeyMap, cfg: DiTModelConfig, layout: str) -> None:
    """Strict check with the size/T2W-vs-V2W diagnosis appended."""
    try:
        km.check_released(state, kmap)
    except CheckpointMismatchError as err:
        hint = _size_hint(cfg, state, layout)
        if hint:
            raise CheckpointMismatchError(f"{err}\n  ({hint})", err.missing, err.unexpected, err.wrong) from None
        raise


# ---------------------------------------------------------------------------------------------------
# Load / export a model


def load_released(model, cfg: DiTModelConfig, path: str | os.PathLike, ema: bool = False) -> dict:
    """Fill this rank's DiT (any TP) from a released checkpoint of any layout, strictly. A diffusers file
    has no log-variance head: a model with one keeps its initialisation, and the report says so."""
    from cosmos_nemo.models.family import unwrap

    model = unwrap(model)
    raw, layout, info = read_released(path, ema=ema)
    state, dropped = split_runtime_buffers(raw, layout)
    logvar_in_file = any(k.startswith("logvar.") for k in state)
    if layout == "diffusers" or (cfg.logvar_head and not logvar_in_file and layout == "cosmos2"):
        use_logvar = False
    else:
        use_logvar = cfg.logvar_head
    kmap = dit_keymap(cfg, layout, logvar=use_logvar)
    check_state(state, kmap, cfg, layout)
    stages = ("first", "last")
    if cfg.logvar_head and not use_logvar:
        report = km.load_model(_WithoutLogvar(model), state, kmap, stages=stages)
        info["logvar"] = "not in the file: the log-variance head keeps its initialisation"
    else:
        report = km.load_model(model, state, kmap, stages=stages)
    report.update(layout=layout, dropped_buffers=dropped, **info)
    return report


class _WithoutLogvar(torch.nn.Module):
    """A view of a DiT without its `logvar` head (for files that do not carry one)."""

    def __init__(self, model):
        super().__init__()
        self._model = [model]

    def named_parameters(self, *args, **kwargs):
        return ((k, v) for k, v in self._model[0].named_parameters() if not k.startswith("logvar."))

    def named_buffers(self, *args, **kwargs):
        return ((k, v) for k, v in self._model[0].named_buffers() if not k.startswith("logvar."))


def export_released(model, cfg: DiTModelConfig, layout: Optional[str] = None) -> dict[str, torch.Tensor]:
    """This DiT's weights in `layout` (default: its Cosmos layout; a collective over TP), with cosmos1's
    `pos_embedder.seq` buffer rebuilt as the reference has it. No `net.` prefix (see `with_cosmos_prefix`)."""
    from cosmos_nemo.models.family import unwrap

    model = unwrap(model)
    layout = layout or layout_of(cfg)
    kmap = dit_keymap(cfg, layout)
    if cfg.logvar_head and layout == "diffusers":
        out = km.export_model(_WithoutLogvar(model), kmap)
    else:
        out = km.export_model(model, kmap)
    if layout == "cosmos1":
        out["pos_embedder.seq"] = torch.arange(max(cfg.max_size), dtype=torch.float32)
    return out


def with_cosmos_prefix(state: Mapping[str, torch.Tensor], ema: bool = False) -> dict[str, torch.Tensor]:
    """Keys as in a released `model.pt`: the net's under `net.` (or `net_ema.`), the log-variance head's
    `logvar.*` beside them."""
    pre = "net_ema." if ema else "net."
    return {(k if k.startswith("logvar.") else pre + k): v for k, v in state.items()}


# ---------------------------------------------------------------------------------------------------
# diffusers configs


def diffusers_config(cfg: DiTModelConfig) -> dict:
    """The `CosmosTransformer3DModel` config (config.json) of a DiT config."""
    out = {
        "_class_name": "CosmosTransformer3DModel",
        "in_channels": cfg.in_channels,
        "out_channels": cfg.out_channels,
        "num_attention_heads": cfg.num_attention_heads,
        "attention_head_dim": cfg.head_dim,
        "num_layers": cfg.num_layers,
        "mlp_ratio": cfg.mlp_ratio,
        "text_embed_dim": cfg.context_dim,
        "adaln_lora_dim": cfg.adaln_lora_dim,
        "max_size": [cfg.max_size[0] * cfg.patch_temporal, cfg.max_size[1] * cfg.patch_spatial,
                     cfg.max_size[2] * cfg.patch_spatial],
        "patch_size": [cfg.patch_temporal, cfg.patch_spatial, cfg.patch_spatial],
        "rope_scale": list(cfg.rope_scale),
        "concat_padding_mask": cfg.concat_padding_mask,
        "extra_pos_embed_type": "learnable" if cfg.extra_pos_emb else None,
    }
    if cfg.crossattn_proj_in:
        out.update(use_crossattn_projection=True, crossattn_proj_in_channels=cfg.crossattn_proj_in,
                   encoder_hidden_states_channels=cfg.context_dim)
    return out


def config_from_diffusers(dconf: Mapping, name: str = "diffusers", **overrides) -> DiTModelConfig:
    """A DiTModelConfig from a `CosmosTransformer3DModel` config.json. The generation follows from the
    options: a learnable extra position embedding is Predict1, a text projection Predict2.5, else Predict2."""
    unsupported = [k for k in ("controlnet_block_every_n", "img_context_dim_in") if dconf.get(k)]
    if unsupported:
        raise ValueError(f"diffusers options {unsupported} (Transfer2.5 control / image context) are not supported")
    patch = tuple(dconf.get("patch_size", (1, 2, 2)))
    max_size = tuple(dconf.get("max_size", (128, 240, 240)))
    if dconf.get("extra_pos_embed_type") == "learnable":
        base = NAMED_CONFIGS["predict1_7b_v2w"]
        generation = "predict1"
    elif dconf.get("use_crossattn_projection"):
        base, generation = NAMED_CONFIGS["predict25_2b"], "predict2.5"
    else:
        base, generation = NAMED_CONFIGS["predict2_2b"], "predict2"
    in_channels = int(dconf.get("in_channels", 16))
    fields = dict(base)
    fields.update(
        name=name, generation=generation, hidden_size=dconf["num_attention_heads"] * dconf.get("attention_head_dim", 128),
        num_layers=dconf.get("num_layers", 28), num_attention_heads=dconf["num_attention_heads"],
        head_dim=dconf.get("attention_head_dim", 128), mlp_ratio=float(dconf.get("mlp_ratio", 4.0)),
        in_channels=in_channels, out_channels=int(dconf.get("out_channels", 16)),
        video2world=in_channels > int(dconf.get("out_channels", 16)),
        context_dim=int(dconf.get("encoder_hidden_states_channels", dconf.get("text_embed_dim", 1024))
                        if dconf.get("use_crossattn_projection") else dconf.get("text_embed_dim", 1024)),
        adaln_lora_dim=int(dconf.get("adaln_lora_dim", 256)), patch_temporal=patch[0], patch_spatial=patch[1],
        max_size=(max_size[0] // patch[0], max_size[1] // patch[1], max_size[2] // patch[2]),
        rope_scale=tuple(dconf.get("rope_scale", (2.0, 1.0, 1.0))),
        concat_padding_mask=bool(dconf.get("concat_padding_mask", True)),
        crossattn_proj_in=int(dconf["crossattn_proj_in_channels"]) if dconf.get("use_crossattn_projection") else None,
        logvar_head=False,
    )
    fields.update(overrides)
    return DiTModelConfig(**fields)


def save_diffusers(state: Mapping[str, torch.Tensor], cfg: DiTModelConfig, folder: str | os.PathLike,
                   overwrite: bool = False, dtype: Optional[torch.dtype] = None) -> Path:
    """Write a diffusers `CosmosTransformer3DModel` folder (config.json + diffusion_pytorch_model.safetensors),
    atomically."""
    from safetensors.torch import save_file

    from cosmos_nemo.io.atomic import atomic_dir

    out = Path(folder)
    tensors = {k: (v.to(dtype) if dtype is not None else v).detach().cpu().contiguous() for k, v in state.items()}
    with atomic_dir(out, overwrite=overwrite) as tmp:
        save_file(tensors, str(Path(tmp) / "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})
        (Path(tmp) / "config.json").write_text(json.dumps(diffusers_config(cfg), indent=2) + "\n")
    return out
