"""A DiT's LoRA adapter as a diffusers / PEFT LoRA file, and back.

    save_diffusers_lora(model, "lora.safetensors")      # collective over TP/PP; rank 0 writes, atomically
    pipe.load_lora_weights("lora.safetensors")          # diffusers: Cosmos2_5_PredictBasePipeline (or any
                                                        # CosmosLoraLoaderMixin), or transformer.load_lora_adapter
    load_diffusers_lora(model, "lora.safetensors")      # back into a LoRA DiT, strictly

The file is what `Cosmos2_5_PredictBasePipeline.save_lora_weights` writes for a PEFT-adapted
`CosmosTransformer3DModel`: one safetensors file with, for every adapted linear,

    transformer.transformer_blocks.{i}.{module}.lora_A.weight    [rank, in]
    transformer.transformer_blocks.{i}.{module}.lora_B.weight    [out, rank]

where `module` is diffusers' name of the linear:

    ours (megatron)                          diffusers module
    self_attention.linear_qkv  q / k / v     attn1.to_q / attn1.to_k / attn1.to_v
    self_attention.linear_proj               attn1.to_out.0
    cross_attention.linear_q                 attn2.to_q
    cross_attention.linear_kv  k / v         attn2.to_k / attn2.to_v
    cross_attention.linear_proj              attn2.to_out.0
    mlp.linear_fc1 / mlp.linear_fc2          ff.net.0.proj / ff.net.2

The matrices are the full (TP-gathered) ones, unscaled: the update is (alpha / rank) * B A in both
frameworks. A fused q/k/v pair's B is already in diffusers' plain head-major row order, so nothing is
permuted. The tensors are fp32 by default (the adapters train in fp32, and they are small: a 2B Predict2.5
at rank 32 is 184 MB); bf16 / fp16 halve that.

Alpha: diffusers' Cosmos loader passes no `network_alphas`; it builds PEFT's `LoraConfig` from the file's
safetensors metadata entry `lora_adapter_metadata` (a JSON object `{"transformer.r": .., "transformer.lora_alpha":
.., "transformer.target_modules": [...], ...}`), and without that entry it takes alpha = rank (scale 1). So
the file carries `r` = rank and `lora_alpha` = alpha, and diffusers' scale is ours. `bake_scale=True`
(`lora-export --bake-scale`) instead multiplies B by alpha / rank and records alpha = rank: for readers that
ignore the metadata (they assume scale 1). `target_modules` lists every adapted module by its full name, so
`first_n_blocks` adapters inject into those blocks only. The metadata entry `cosmos_nemo_lora` adds what
the adapter fits (ours: blocks, linears, rank, alpha, the model's name); diffusers ignores it.

`load_diffusers_lora` reads such a file (keys with the `transformer.` prefix, bare, or PEFT's
`base_model.model.`) into a LoRA DiT with the same targets and rank: every key must name one of the
model's adapters and every adapter must be in the file, with the right shapes; otherwise it is a
`LoRAError` listing the differences, and nothing is copied. A file whose scale differs from the model's
(a baked file; one without metadata: scale 1) is rescaled into B, so the model computes what the file means.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Optional

import torch

from cosmos_nemo.peft.lora import LoRAError, lora_adapters

PIPELINE_PREFIX = "transformer."  # CosmosLoraLoaderMixin.transformer_name
METADATA_KEY = "lora_adapter_metadata"  # diffusers.loaders.lora_base.LORA_ADAPTER_METADATA_KEY
OURS_KEY = "cosmos_nemo_lora"
DEFAULT_NAME = "pytorch_lora_weights.safetensors"  # diffusers' LORA_WEIGHT_NAME_SAFE

# (our linear, part) -> diffusers module inside transformer_blocks.{i}
DIFFUSERS_MODULES = {
    ("self_attention.linear_qkv", "q"): "attn1.to_q",
    ("self_attention.linear_qkv", "k"): "attn1.to_k",
    ("self_attention.linear_qkv", "v"): "attn1.to_v",
    ("self_attention.linear_proj", "all"): "attn1.to_out.0",
    ("cross_attention.linear_q", "all"): "attn2.to_q",
    ("cross_attention.linear_kv", "k"): "attn2.to_k",
    ("cross_attention.linear_kv", "v"): "attn2.to_v",
    ("cross_attention.linear_proj", "all"): "attn2.to_out.0",
    ("mlp.linear_fc1", "all"): "ff.net.0.proj",
    ("mlp.linear_fc2", "all"): "ff.net.2",
}
_KEY = re.compile(r"^transformer_blocks\.(\d+)\.(.+)\.lora_([AB])\.weight$")
_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
           "fp16": torch.float16, "float16": torch.float16}


def _bare(model):
    from cosmos_nemo.models.family import unwrap

    return unwrap(model)


def _report(model):
    report = getattr(model, "lora_report", None)
    if report is None:
        raise LoRAError(f"{type(model).__name__} has no LoRA adapters (apply_lora first)")
    from cosmos_nemo.models.dit.model import DiTModel

    if not isinstance(model, DiTModel):
        raise LoRAError(f"the diffusers LoRA format is the DiT's (CosmosTransformer3DModel); this is a "
                        f"{type(model).__name__}")
    return report


def _entries(model):
    """[(diffusers module key prefix, AdaptedLinear, part, pair)] of this rank's adapters, in a fixed order."""
    out = []
    for adapted in _report(model).adapted:
        for part, pair in sorted(adapted.adapter.pairs().items()):
            module = DIFFUSERS_MODULES.get((adapted.linear, part))
            if module is None:
                raise LoRAError(f"{adapted.name}: diffusers' CosmosTransformer3DModel has no module for the "
                                f"{part!r} part of {adapted.linear}")
            out.append((f"transformer_blocks.{adapted.block}.{module}", adapted, part, pair))
    return out


def _tp_group():
    from megatron.core import parallel_state

    if not parallel_state.model_parallel_is_initialized():
        return None, 0, 1
    return (parallel_state.get_tensor_model_parallel_group(), parallel_state.get_tensor_model_parallel_rank(),
            parallel_state.get_tensor_model_parallel_world_size())


def _split_axes(kind: str) -> tuple[Optional[int], Optional[int]]:
    """(axis A is split on, axis B is split on) over TP for a base linear of `kind`."""
    return (1 if kind == "row" else None), (0 if kind == "column" else None)


@torch.no_grad()
def diffusers_lora_state(model) -> dict[str, torch.Tensor]:
    """The LoRA DiT's adapters as diffusers keys (`transformer.transformer_blocks.{i}.attn1.to_q.lora_A.weight`,
    ...), full matrices as fp32 CPU tensors, unscaled. A collective: every TP rank gathers the split matrices
    (B of column-parallel bases along dim 0, A of row-parallel ones along dim 1), every pipeline stage gets
    the others' blocks; every rank returns the whole state."""
    import torch.distributed as dist

    model = _bare(model)
    group, _, size = _tp_group()
    state: dict[str, torch.Tensor] = {}
    for prefix, adapted, part, pair in _entries(model):
        for which, param, axis in zip("AB", (pair.lora_A, pair.lora_B), _split_axes(adapted.adapter.kind)):
            t = param.detach()
            if axis is not None and size > 1:
                pieces = [torch.empty_like(t) for _ in range(size)]
                dist.all_gather(pieces, t.contiguous(), group=group)
                t = torch.cat(pieces, dim=axis)
            state[f"{PIPELINE_PREFIX}{prefix}.lora_{which}.weight"] = t.float().cpu().contiguous()
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized() and parallel_state.get_pipeline_model_parallel_world_size() > 1:
        stages = [None] * parallel_state.get_pipeline_model_parallel_world_size()
        dist.all_gather_object(stages, state, group=parallel_state.get_pipeline_model_parallel_group())
        state = {k: v for stage in stages for k, v in stage.items()}
    return dict(sorted(state.items(), key=lambda kv: _sort_key(kv[0])))


def _sort_key(key: str):
    match = re.search(r"transformer_blocks\.(\d+)\.", key)
    return (int(match.group(1)) if match else -1, key)


def _global_modules(model) -> tuple[list[int], list[str]]:
    """(adapted blocks of the whole model, diffusers modules adapted in each): blocks are homogeneous, so this
    rank's adapters name the modules of every block, also under pipeline parallelism."""
    report = _report(model)
    modules = set()
    for kind in report.describe()["linears"]:  # e.g. "self_attention.linear_qkv[q,k,v]", "mlp.linear_fc1"
        linear, _, parts = kind.partition("[")
        for part in (parts.rstrip("]").split(",") if parts else ["all"]):
            if (linear, part) not in DIFFUSERS_MODULES:
                raise LoRAError(f"diffusers' CosmosTransformer3DModel has no module for the {part!r} part of {linear}")
            modules.add(DIFFUSERS_MODULES[(linear, part)])
    return list(report.adapted_blocks), sorted(modules)


def diffusers_lora_metadata(model, bake_scale: bool = False) -> dict[str, str]:
    """The safetensors metadata diffusers reads (`lora_adapter_metadata`: PEFT LoraConfig fields under
    `transformer.`), plus ours (`cosmos_nemo_lora`)."""
    model = _bare(model)
    report = _report(model)
    cfg = report.config
    blocks, modules = _global_modules(model)
    config = {"r": cfg.rank, "lora_alpha": float(cfg.rank if bake_scale else cfg.alpha),
              "target_modules": [f"transformer_blocks.{b}.{m}" for b in blocks for m in modules],
              "lora_dropout": float(cfg.dropout), "bias": "none", "use_dora": False, "use_rslora": False,
              "lora_bias": False, "rank_pattern": {}, "alpha_pattern": {}}
    adapter = dict(report.describe(), baked_scale=bool(bake_scale), diffusers_modules=modules,
                   model=getattr(getattr(model, "dit_config", None), "name", None))
    return {"format": "pt",
            METADATA_KEY: json.dumps({PIPELINE_PREFIX + k: v for k, v in config.items()}, indent=2, sort_keys=True),
            OURS_KEY: json.dumps(adapter, sort_keys=True)}


def save_diffusers_lora(model, path: str | os.PathLike, dtype: torch.dtype = torch.float32, bake_scale: bool = False,
                        overwrite: bool = False) -> Path:
    """Write the LoRA DiT's adapters as a diffusers LoRA safetensors file (see the module docstring), atomically.
    A collective over the model-parallel ranks (`diffusers_lora_state`); global rank 0 writes. `path` is a
    `.safetensors` file, or a folder that gets diffusers' default name `pytorch_lora_weights.safetensors`.
    Returns the file written."""
    import torch.distributed as dist

    from cosmos_nemo.io.tensors import save_tensors

    out = Path(path)
    if out.suffix != ".safetensors":
        out = out / DEFAULT_NAME
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
    model = _bare(model)
    state = diffusers_lora_state(model)
    if bake_scale:
        scale = _report(model).config.scale
        state = {k: (v * scale if ".lora_B." in k else v) for k, v in state.items()}
    metadata = diffusers_lora_metadata(model, bake_scale)
    if not dist.is_initialized() or dist.get_rank() == 0:
        # the shared writer: atomic, and its metadata in sorted order, so the file's bytes do not depend on the process
        save_tensors(out, {k: v.to(dtype) for k, v in state.items()}, metadata=metadata)
    if dist.is_initialized():
        dist.barrier()
    return out


# ---------------------------------------------------------------------------------------------------
# reading a diffusers LoRA file


def read_diffusers_lora(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict, float, str]:
    """(state with bare keys `transformer_blocks.{i}...lora_A.weight`, the PEFT config diffusers would build, the
    file's scale lora_alpha / r, where the scale came from) of a diffusers / PEFT LoRA file. A folder is read
    as diffusers reads one: its `pytorch_lora_weights.safetensors`."""
    p = Path(path)
    if p.is_dir():
        p = p / DEFAULT_NAME
    if not p.is_file():
        raise FileNotFoundError(f"{p} not found: give a diffusers LoRA .safetensors file (or its folder)")
    from cosmos_nemo.io.tensors import TensorFileError, open_safetensors, read_safetensors

    try:
        raw = read_safetensors(p)
        with open_safetensors(p) as f:
            file_meta = f.metadata() or {}
    except TensorFileError as err:  # not safetensors, truncated, empty
        raise LoRAError(f"cannot read the LoRA file: {err}") from None
    state = {}
    for key, value in raw.items():
        for prefix in (PIPELINE_PREFIX, "base_model.model."):
            if key.startswith(prefix):
                key = key[len(prefix):]
                break
        state[key] = value
    config: dict = {}
    if file_meta.get(METADATA_KEY):
        packed = json.loads(file_meta[METADATA_KEY])
        config = {k[len(PIPELINE_PREFIX):]: v for k, v in packed.items() if k.startswith(PIPELINE_PREFIX)}
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise LoRAError(f"{p}: per-module ranks or alphas (rank_pattern / alpha_pattern in its metadata) are not "
                        "supported: a cosmos-nemo LoRA model has one rank and alpha")
    if config.get("use_dora"):
        raise LoRAError(f"{p} is a DoRA adapter (use_dora), not a plain LoRA")
    if "r" in config and "lora_alpha" in config:
        r, alpha = float(config["r"]), float(config["lora_alpha"])
        scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
        source = f"lora_alpha {alpha:g} / r {r:g} from its {METADATA_KEY} metadata"
    else:
        scale, source = 1.0, f"no lora_alpha in its metadata: scale 1, as diffusers reads it"
    return state, config, scale, source


def _span(blocks) -> str:
    blocks = sorted(blocks)
    return f"{blocks[0]}-{blocks[-1]} ({len(blocks)} blocks)" if blocks else "none"


@torch.no_grad()
def load_diffusers_lora(model, path: str | os.PathLike) -> dict:
    """Load a diffusers LoRA file into the LoRA DiT's adapters, strictly (any TP; this rank's slices). Every
    file key must map to one of the model's adapters and every adapter must be in the file, with the full
    shapes; otherwise a `LoRAError` says what differs and nothing is copied. B is rescaled by
    file scale / model scale when they differ. Returns a short report."""
    model = _bare(model)
    report = _report(model)
    state, _, file_scale, scale_source = read_diffusers_lora(path)
    blocks, modules = _global_modules(model)
    expected = {f"transformer_blocks.{b}.{m}.lora_{w}.weight" for b in blocks for m in modules for w in "AB"}
    _, tp_rank, tp_size = _tp_group()

    problems = []
    unexpected = sorted(set(state) - expected, key=_sort_key)
    missing = sorted(expected - set(state), key=_sort_key)
    parsed = [_KEY.match(k) for k in state]
    file_blocks = sorted({int(m.group(1)) for m in parsed if m})
    file_modules = sorted({m.group(2) for m in parsed if m})
    if file_blocks != blocks:
        problems.append(f"it adapts blocks {_span(file_blocks)}, this model's adapters are on blocks {_span(blocks)} "
                        f"of {report.num_blocks}")
    if file_modules != modules:
        problems.append(f"it adapts {file_modules or 'nothing'} in a block, this model's adapters are on {modules}")
    if unexpected:
        problems.append(f"{len(unexpected)} key(s) match no adapter of this model, e.g. {unexpected[:4]}")
    if missing:
        problems.append(f"{len(missing)} adapter matrices are not in the file, e.g. {missing[:4]}")

    plan = []  # (param, full tensor from the file, split axis) once everything checks out
    wrong = []
    for prefix, adapted, part, pair in _entries(model):
        for which, param, axis in zip("AB", (pair.lora_A, pair.lora_B), _split_axes(adapted.adapter.kind)):
            key = f"{prefix}.lora_{which}.weight"
            if key not in state:
                continue
            full = list(param.shape)
            if axis is not None:
                full[axis] *= tp_size
            if list(state[key].shape) != full:
                wrong.append(f"{key}: file {list(state[key].shape)}, model {full}")
            else:
                plan.append((key, param, axis))
    if wrong:
        problems.append(f"{len(wrong)} matrices have other shapes (rank {report.config.rank}), e.g. {wrong[:3]}")
    if problems:
        raise LoRAError(f"{path} does not fit this model's LoRA adapters, so none of it is applied: "
                        + "; ".join(problems))

    ratio = file_scale / report.config.scale
    for key, param, axis in plan:
        value = state[key].float()
        if axis is not None and tp_size > 1:
            local = param.shape[axis]
            value = value.narrow(axis, tp_rank * local, local)
        if ratio != 1.0 and ".lora_B." in key:
            value = value * ratio
        param.copy_(value.to(param.device))
    return {"keys": len(state), "file_scale": file_scale, "model_scale": report.config.scale,
            "scale_source": scale_source, "rescaled": ratio != 1.0}


# ---------------------------------------------------------------------------------------------------
# the commands: convert lora-export / lora-merge


def lora_checkpoint(source, ema: bool = False) -> tuple[Path, dict]:
    """(dist-ckpt folder, lora.json) of a LoRA run's checkpoint: a run folder or its checkpoints/ folder (the
    latest complete checkpoint), an iter_* folder, or its model/ folder; `ema` (or an ema/ folder named
    directly) takes the iter_* folder's ema/."""
    from cosmos_nemo.checkpoint import dist as dist_ckpt
    from cosmos_nemo.checkpoint.run import resolve_model_folder

    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    folder = resolve_model_folder(path) if path.is_dir() else None
    if folder is None:
        raise LoRAError(f"{path} is not a training checkpoint: give a LoRA run folder, its checkpoints/ folder, an "
                        "iter_* folder or its model/ folder")
    folder = Path(folder)
    if folder.name == "ema":  # an ema/ folder named directly: the EMA adapter
        ema = True
    if ema:
        folder = folder.parent / "ema"
        if not (folder / ".metadata").is_file():
            raise FileNotFoundError(f"{folder.parent} has no ema/ checkpoint: the run kept no EMA "
                                    "(trainer.ema_sigma_rel / trainer.ema_decay); drop --ema")
    info = dist_ckpt.read_lora_info(folder)
    if info is None:
        raise LoRAError(f"{folder.parent} is not a LoRA run's checkpoint (no {dist_ckpt.LORA_INFO} beside its "
                        f"weights): its weights are a whole model; export them with `cosmos-nemo convert dit-export "
                        f"--checkpoint {source} --model NAME [--layout diffusers]`")
    if info.get("family") != "dit":
        raise LoRAError(f"{folder.parent} is a LoRA adapter of the {info.get('family')!r} family; the diffusers LoRA "
                        "format and the released DiT layouts are the DiT's")
    return folder, info


def export_lora_run(source, output, ema: bool = False, dtype: torch.dtype = torch.float32, bake_scale: bool = False,
                    overwrite: bool = False) -> Path:
    """The work of `convert lora-export`: a LoRA run's adapter -> diffusers LoRA safetensors. The base model is
    built on the meta device (no memory, no base weights read): only the adapters are materialised and loaded
    (dist-ckpt, checked to fit the recorded LoRA config). Returns the written file."""
    from cosmos_nemo.checkpoint import dist as dist_ckpt
    from cosmos_nemo.checkpoint.convert import _single_process, _teardown
    from cosmos_nemo.models.family import get_family
    from cosmos_nemo.peft.lora import LoRAConfig, apply_lora

    folder, info = lora_checkpoint(source, ema)
    out = Path(output)
    target = out if out.suffix == ".safetensors" else out / DEFAULT_NAME
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists; pass --overwrite to replace it")
    family = get_family(info["family"])
    cfg = family.config_from_dict(dict(info["model"]))
    own = _single_process()
    try:
        with torch.device("meta"):
            model = family.build_model(cfg, True, True, torch.float32)
        apply_lora(model, LoRAConfig(**info["config"]), seed=0)
        for adapter in lora_adapters(model).values():
            for pair in adapter.pairs().values():
                pair.lora_A = torch.nn.Parameter(torch.zeros(pair.lora_A.shape), requires_grad=False)
                pair.lora_B = torch.nn.Parameter(torch.zeros(pair.lora_B.shape), requires_grad=False)
            adapter.mark_parallel()
        model.lora_info = info
        dist_ckpt.load_model([model], folder)  # adapters only, checked against lora.json
        return save_diffusers_lora(model, out, dtype=dtype, bake_scale=bake_scale, overwrite=overwrite)
    finally:
        _teardown(own)


def merge_lora_run(source, output, layout: str = "cosmos", ema: bool = False, dtype: Optional[torch.dtype] = None,
                   no_prefix: bool = False, overwrite: bool = False) -> Path:
    """The work of `convert lora-merge`: `dit-export` of a LoRA run (base + merged adapters, the model config
    from lora.json)."""
    from cosmos_nemo.checkpoint.dit_commands import export_dit
    from cosmos_nemo.models.family import get_family

    folder, info = lora_checkpoint(source, ema)
    cfg = get_family(info["family"]).config_from_dict(dict(info["model"]))
    return export_dit(str(folder.parent / "model"), cfg, output, layout=layout, ema=folder.name == "ema",
                      no_prefix=no_prefix, dtype=dtype, overwrite=overwrite)
