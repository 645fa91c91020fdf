"""`--sft-toml FILE.toml`: NVIDIA's Cosmos3 structured SFT TOML (seed 000, `SFTExperimentConfig`), validated by a
pydantic schema and mapped onto this library's recipes.

    cosmos-nemo train --sft-toml examples/toml/dit_full.toml [key.path=value ...] [--nproc N]
    torchrun --nproc_per_node=N -m cosmos_nemo.train --sft-toml=examples/toml/dit_full.toml [key.path=value ...]

The sections and fields are the reference's, with its meanings: `[job]`, `[model]`, `[model.ema]`,
`[model.parallelism]`, `[model.compile]`, `[model.activation_checkpointing]`, `[model.tokenizer]`,
`[model.backbone]`, `[optimizer]`, `[optimizer.lr_multipliers]`, `[scheduler]`, `[trainer]`,
`[trainer.callbacks.compile_tokenizer]`, `[trainer.callbacks.grad_clip]`, `[checkpoint]`, `[dataloader_train]`.
Every section forbids unknown keys. `[job] task` picks the family: "vfm" (the generators: `[job] experiment`
names one of this library's recipes, `cosmos-nemo train --list`) or "vlm" (the Reasoner: `reasoner_*` recipes, or the
reference's names `videophy2_sft_nano` / `llava_ov`; its tail overrides `model.config.policy.backbone.model_name=` and
`data_setting.max_tokens=` are accepted). Fields left out keep the recipe's values, so a TOML is the recipe plus what it says.

Checks, all before any model is built, each naming the file, line and key:
- an unknown key (with the closest valid key), a value of the wrong type, a "???" left unfilled;
- `${oc.env:NAME}` / `${oc.env:NAME,default}` with NAME unset and no default (naming NAME and the key);
- a field of the other family (e.g. `[model] attn_implementation` with task = "vfm");
- a reference field this library cannot honour yet: an error saying "not supported yet", never ignored;
- the parallel degrees against the world size.

Additions of ours (the reference wires these in its experiment Python): `[job] output_root` (the run folder's
root; the reference reads IMAGINAIRE_OUTPUT_ROOT), `[dataloader_train] paths` (the dataset folders; the reference
reads DATASET_PATH), `[model.parallelism] tensor_parallel_degree` / `pipeline_parallel_degree` (megatron's TP/PP,
which the reference's FSDP stack does not have), `trainer.distributed_parallelism = "ddp"`.

Trailing `key.path=value` overrides apply after the file: a key of this schema (`trainer.max_iter=4`) changes
the TOML before it is validated; any other key is a recipe field (`data.paths=[...]`, `trainer.max_steps=4`, as
`cosmos-nemo train RECIPE` takes them), set on the mapped recipe.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

MISSING = "???"


class SFTConfigError(ValueError):
    """A TOML that cannot give a run; the message names the file, line and key."""


def _vfm(default=None, **kw):
    return Field(default, json_schema_extra={"family": "vfm"}, **kw)


def _vlm(default=None, **kw):
    return Field(default, json_schema_extra={"family": "vlm"}, **kw)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class JobSection(_Section):
    task: Literal["vfm", "vlm"]
    experiment: str
    project: Optional[str] = None
    group: Optional[str] = None
    name: Optional[str] = None
    wandb_mode: Optional[Literal["online", "offline", "disabled"]] = None
    output_root: Optional[str] = None  # ours: the reference reads IMAGINAIRE_OUTPUT_ROOT


class EMASection(_Section):
    enabled: Optional[bool] = None
    rate: Optional[float] = None
    iteration_shift: Optional[int] = None


class ParallelismSection(_Section):
    data_parallel_shard_degree: Optional[int] = None
    data_parallel_replicate_degree: Optional[int] = None
    context_parallel_shard_degree: Optional[int] = None
    cfg_parallel_shard_degree: Optional[int] = None
    fsdp_master_dtype: Optional[str] = None
    tensor_parallel_degree: Optional[int] = None  # ours (megatron TP)
    pipeline_parallel_degree: Optional[int] = None  # ours (megatron PP)


class CompileSection(_Section):
    enabled: Optional[bool] = None
    compile_dynamic: Optional[bool] = None


class ActivationCheckpointingSection(_Section):
    mode: Optional[Literal["none", "selective", "full"]] = None
    save_ops_regex: Optional[list[str]] = None
    preserve_rng_state: Optional[bool] = None
    determinism_check: Optional[str] = None


class TokenizerSection(_Section):
    vae_path: Optional[str] = _vfm()


class BackboneSection(_Section):
    safetensors_path: Optional[str] = _vlm()
    model_name: Optional[str] = _vlm()


class ModelSection(_Section):
    max_num_tokens_after_packing: Optional[int] = _vfm()
    joint_attn_implementation: Optional[Literal["two_way", "three_way", "flex"]] = _vfm()
    attn_implementation: Optional[Literal["cosmos", "flash_attention_2", "sdpa", "eager"]] = _vlm()
    lora_enabled: Optional[bool] = _vfm()
    lora_rank: Optional[int] = _vfm()
    lora_alpha: Optional[float] = _vfm()
    lora_target_modules: Optional[list[str]] = _vfm()
    precision: Optional[Literal["bfloat16", "float16", "float32"]] = None
    ema: Optional[EMASection] = None
    parallelism: Optional[ParallelismSection] = None
    compile: Optional[CompileSection] = None
    activation_checkpointing: Optional[ActivationCheckpointingSection] = None
    tokenizer: Optional[TokenizerSection] = _vfm()
    backbone: Optional[BackboneSection] = _vlm()


class OptimizerSection(_Section):
    lr: Optional[float] = None
    betas: Optional[tuple[float, float]] = None
    eps: Optional[float] = _vfm()
    fused: Optional[bool] = None
    weight_decay: Optional[float] = None
    keys_to_select: Optional[list[str]] = None
    lr_multipliers: Optional[dict[str, float]] = None


class SchedulerSection(_Section):
    cycle_lengths: Optional[list[int]] = None
    warm_up_steps: Optional[list[int]] = None
    f_max: Optional[list[float]] = None
    f_min: Optional[list[float]] = None
    f_start: Optional[list[float]] = None
    verbosity_interval: Optional[int] = _vfm()


class CompileTokenizerCallback(_Section):
    enabled: Optional[bool] = None
    compile_after_iterations: Optional[int] = None
    warmup_resolutions: Optional[list[Any]] = None


class GradClipCallback(_Section):
    clip_norm: Optional[float] = None
    force_finite: Optional[bool] = None


class CallbacksSection(_Section):
    compile_tokenizer: Optional[CompileTokenizerCallback] = _vfm()
    grad_clip: Optional[GradClipCallback] = None


class TrainerSection(_Section):
    max_iter: Optional[int] = None
    grad_accum_iter: Optional[int] = None
    logging_iter: Optional[int] = None
    distributed_parallelism: Optional[Literal["fsdp", "ddp"]] = None
    callbacks: Optional[CallbacksSection] = None


class CheckpointSection(_Section):
    load_path: Optional[str] = None
    save_iter: Optional[int] = None
    keys_to_skip_loading: Optional[list[str]] = None


class DataloaderTrainSection(_Section):
    max_samples_per_batch: Optional[int] = None
    max_sequence_length: Optional[int] = None
    seed: Optional[int] = _vfm()
    paths: Optional[list[str]] = None  # ours: the reference reads DATASET_PATH in its experiment Python


class SFTExperimentConfig(_Section):
    job: JobSection
    model: Optional[ModelSection] = None
    optimizer: Optional[OptimizerSection] = None
    scheduler: Optional[SchedulerSection] = None
    trainer: Optional[TrainerSection] = None
    checkpoint: Optional[CheckpointSection] = None
    dataloader_train: Optional[DataloaderTrainSection] = None


# --------------------------------------------------------------------------------------------------
# reading: lines, environment, overrides, validation


class _Source:
    """Where each key of a TOML came from: its line in the file, or a command-line override."""

    def __init__(self, path: str, text: str):
        self.path = path
        self.lines: dict[str, int] = {}
        self.overridden: dict[str, str] = {}
        section = ""
        for number, line in enumerate(text.splitlines(), 1):
            stripped = line.strip()
            header = re.match(r"^\[\s*([^\[\]]+?)\s*\]", stripped)
            if header:
                section = ".".join(p.strip().strip('"') for p in header.group(1).split("."))
                self.lines.setdefault(section, number)
                continue
            key = re.match(r'^([A-Za-z0-9_\-."]+)\s*=', stripped)
            if key:
                name = ".".join(p.strip().strip('"') for p in key.group(1).split("."))
                self.lines.setdefault(f"{section}.{name}" if section else name, number)

    def where(self, key: str) -> str:
        if key in self.overridden:
            return f"override {self.overridden[key]!r}"
        probe = key
        while probe:
            if probe in self.lines:
                return f"{self.path}:{self.lines[probe]}"
            probe = probe.rpartition(".")[0]
        return self.path

    def error(self, key: str, message: str) -> SFTConfigError:
        return SFTConfigError(f"{self.where(key)}: {key}: {message}")


_ENV = re.compile(r"\$\{oc\.env:([A-Za-z_][A-Za-z0-9_]*)(?:,([^}]*))?\}")


def _resolve(value, key: str, source: _Source, environ) -> Any:
    """`${oc.env:NAME}` / `${oc.env:NAME,default}` filled from the environment, and "???" refused."""
    if isinstance(value, dict):
        return {k: _resolve(v, f"{key}.{k}" if key else k, source, environ) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, key, source, environ) for v in value]
    if isinstance(value, str):
        def fill(match):
            name, default = match.group(1), match.group(2)
            if name in environ:
                return environ[name]
            if default is not None:
                return default
            raise source.error(key, f"uses ${{oc.env:{name}}}, but the environment variable {name} is not set "
                                    f"(export {name}=..., or write ${{oc.env:{name},DEFAULT}})")

        value = _ENV.sub(fill, value)
        if value == MISSING:
            raise source.error(key, f'is required: the file leaves it "{MISSING}" (the reference\'s MISSING); set it')
    return value


def _schema_field(path: list[str]):
    """(pydantic model class, field name) of a dotted schema key, or None when it is not one. A key inside a
    mapping field (`optimizer.lr_multipliers.<substring>`) returns the mapping field."""
    cls = SFTExperimentConfig
    for i, name in enumerate(path):
        if name not in cls.model_fields:
            return None
        inner = _model_class(cls.model_fields[name].annotation)
        if i == len(path) - 1:
            return cls, name
        if inner is None:
            return (cls, name) if _is_mapping(cls.model_fields[name].annotation) and i == len(path) - 2 else None
        cls = inner
    return None


def _model_class(annotation):
    import typing

    for arg in (annotation, *typing.get_args(annotation)):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def _is_mapping(annotation) -> bool:
    import typing

    return any(typing.get_origin(a) is dict for a in (annotation, *typing.get_args(annotation)))


def schema_keys(cls=SFTExperimentConfig, prefix: str = "") -> list[str]:
    """Every dotted key of the schema (`trainer.callbacks.grad_clip.clip_norm`)."""
    keys = []
    for name, info in cls.model_fields.items():
        inner = _model_class(info.annotation)
        if inner is not None:
            keys.extend(schema_keys(inner, f"{prefix}{name}."))
        else:
            keys.append(f"{prefix}{name}")
    return keys


def _closest(key: str, candidates) -> Optional[str]:
    candidates = list(candidates)
    leaf = [c for c in candidates if c.rsplit(".", 1)[-1] == key.rsplit(".", 1)[-1]]
    found = difflib.get_close_matches(key, leaf, n=1, cutoff=0.0) if leaf else []
    found = found or difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    return found[0] if found else None


def _set_path(table: dict, path: list[str], value) -> None:
    for name in path[:-1]:
        table = table.setdefault(name, {})
        if not isinstance(table, dict):
            raise SFTConfigError(f"{'.'.join(path)}: {name} is a value, not a section")
    table[path[-1]] = value


def _validate(raw: dict, source: _Source) -> SFTExperimentConfig:
    try:
        return SFTExperimentConfig.model_validate(raw)
    except ValidationError as err:
        messages = []
        for e in err.errors():
            loc = [str(p) for p in e["loc"] if not isinstance(p, int)]
            key = ".".join(loc)
            if e["type"] == "extra_forbidden":
                section = ".".join(loc[:-1])
                candidates = ([k for k in schema_keys() if k.startswith(section + ".")] if section
                              else list(SFTExperimentConfig.model_fields))
                guess = _closest(key, candidates) or _closest(key, schema_keys())
                hint = f"; did you mean {guess!r}?" if guess else ""
                messages.append(f"{source.where(key)}: unknown key {key!r}{hint} "
                                f"(valid keys in [{section or 'top level'}]: "
                                f"{', '.join(k[len(section) + 1 if section else 0:] for k in candidates)})")
            elif e["type"] == "missing":
                messages.append(f"{source.where(key)}: {key} is required")
            else:
                got = e.get("input")
                messages.append(f"{source.where(key)}: {key}: {e['msg']} (got {got!r})")
        raise SFTConfigError("\n".join(messages)) from None


def _check_family(node: BaseModel, task: str, source: _Source, prefix: str = "") -> None:
    """A field set for the other family is an error that says so."""
    for name in node.model_fields_set:
        info = type(node).model_fields[name]
        key = f"{prefix}{name}"
        family = (info.json_schema_extra or {}).get("family") if isinstance(info.json_schema_extra, dict) else None
        value = getattr(node, name)
        if family and family != task and value is not None:
            who = {"vfm": 'task = "vfm" (the generators)', "vlm": 'task = "vlm" (the Reasoner)'}
            raise source.error(key, f"applies to {who[family]} only, and this file has [job] task = {task!r}: "
                                    "remove it")
        if isinstance(value, BaseModel):
            _check_family(value, task, source, key + ".")


def read_sft_toml(path: str | os.PathLike, overrides=(), environ=None) -> tuple[SFTExperimentConfig, list[str], _Source]:
    """Parse, fill the environment, apply the schema-key overrides, validate. Returns (config, the overrides
    that are recipe fields, source)."""
    import tomllib

    import yaml

    from cosmos_nemo.recipes.overrides import split_override

    environ = os.environ if environ is None else environ
    path = str(path)
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise SFTConfigError(f"TOML file {path} not found") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise SFTConfigError(f"{path} is not valid TOML: {err}") from None
    source = _Source(path, text)
    raw = _resolve(raw, "", source, environ)
    recipe_overrides = []
    for item in overrides:
        key, value_text = split_override(item)
        parts = key.split(".")
        if parts[0] in SFTExperimentConfig.model_fields and _schema_field(parts) is not None:
            try:
                value = yaml.safe_load(value_text) if value_text.strip() else ""
            except yaml.YAMLError:
                value = value_text
            source.overridden[key] = item
            _set_path(raw, parts, _resolve(value, key, source, environ))
        else:
            recipe_overrides.append(item)
    cfg = _validate(raw, source)
    _check_family(cfg, cfg.job.task, source)
    return cfg, recipe_overrides, source


# --------------------------------------------------------------------------------------------------
# mapping onto a recipe


def _unsupported(source: _Source, key: str, why: str) -> SFTConfigError:
    return source.error(key, f"not supported yet: {why}")


# keys_to_skip_loading entries that name what a cosmos-nemo start never loads anyway: the EMA (it starts from
# the loaded weights, its own ema/ folder) and LoRA adapters (created after the base is loaded, B = 0)
_STRUCTURALLY_SKIPPED = {"net_ema.": "the EMA starts from the loaded weights", "lora_": "adapters are created after"}


def to_recipe(cfg: SFTExperimentConfig, source: _Source, world_size: Optional[int] = None):
    """The recipe `[job] experiment` with the TOML's fields set (a `nemo_run.Partial`), and notes."""
    from cosmos_nemo.recipes.registry import RECIPES, build_recipe

    job = cfg.job
    vlm_recipes = sorted(n for n in RECIPES if n.startswith("reasoner_"))
    experiment = VLM_EXPERIMENTS.get(job.experiment, job.experiment) if job.task == "vlm" else job.experiment
    if experiment not in RECIPES:
        pool = vlm_recipes + sorted(VLM_EXPERIMENTS) if job.task == "vlm" else sorted(RECIPES)
        guess = difflib.get_close_matches(job.experiment, pool, n=1, cutoff=0.3)
        raise source.error("job.experiment", f"unknown recipe {job.experiment!r}"
                           + (f"; did you mean {guess[0]!r}?" if guess else "")
                           + f" (cosmos-nemo train --list): {', '.join(pool)}")
    if (job.task == "vlm") != experiment.startswith("reasoner_"):
        raise source.error("job.task", f"task = {job.task!r} does not fit the recipe {experiment!r}: "
                           + ('task = "vlm" takes the Reasoner recipes: ' + ", ".join(vlm_recipes)
                              if job.task == "vlm" else 'the Reasoner recipes need task = "vlm"'))
    recipe = build_recipe(experiment)
    notes: list[str] = []
    is_dit = recipe.model.__fn_or_cls__.__name__ == "DiTModelConfig"
    is_vlm = job.task == "vlm"

    for field, target in (("project", "project"), ("group", "group"), ("name", "name"), ("output_root", "output_root")):
        if getattr(job, field) is not None:
            setattr(recipe.checkpoint, target, getattr(job, field))
    if job.wandb_mode is not None:
        recipe.log.wandb_mode = job.wandb_mode

    model = cfg.model or ModelSection()
    if model.max_num_tokens_after_packing not in (None, -1):
        raise _unsupported(source, "model.max_num_tokens_after_packing",
                           "cosmos-nemo batches whole clips of one latent grid and packs no tokens; -1 (no packing) "
                           "is what it does")
    if model.joint_attn_implementation is not None:
        raise _unsupported(source, "model.joint_attn_implementation",
                           "the Mixture-of-Transformers attention layouts belong to Cosmos3's model; the DiT and AR "
                           "recipes use megatron attention (TE on GPU, SDPA elsewhere)")
    if model.precision is not None:
        if model.precision == "float16":
            raise _unsupported(source, "model.precision", "float16 training; use bfloat16 or float32")
        recipe.trainer.precision = {"bfloat16": "bf16", "float32": "fp32"}[model.precision]
    if is_vlm:
        _map_vlm_model(recipe, model, source, notes)
    _map_lora(recipe, model, source)
    _map_ema(recipe, model.ema, source)
    if model.compile is not None and model.compile.enabled:
        raise _unsupported(source, "model.compile.enabled", "torch.compile of the megatron model; set enabled = false")
    ac = model.activation_checkpointing
    if ac is not None and ac.mode is not None:
        if ac.mode == "selective":
            raise _unsupported(source, "model.activation_checkpointing.mode",
                               'per-op selective checkpointing (save_ops_regex); use "full" (per-block recompute) or "none"')
        if is_vlm:
            recipe.model.gradient_checkpointing = ac.mode == "full"
        else:
            recipe.model.recompute_granularity = "full" if ac.mode == "full" else None
    if ac is not None and ac.save_ops_regex:
        raise _unsupported(source, "model.activation_checkpointing.save_ops_regex", "selective checkpointing")
    if ac is not None and ac.preserve_rng_state is False:
        raise _unsupported(source, "model.activation_checkpointing.preserve_rng_state",
                           "recomputing with other random numbers: megatron's recompute restores the RNG state; set true")
    if ac is not None and ac.determinism_check not in (None, "none"):
        raise _unsupported(source, "model.activation_checkpointing.determinism_check",
                           "torch.utils.checkpoint's recompute metadata check: megatron's recompute makes none; "
                           'set "none"')
    if model.tokenizer is not None and model.tokenizer.vae_path is not None:
        key = "model.tokenizer.vae_path"
        if not is_dit:
            raise source.error(key, f"applies to the DiT recipes (latent diffusion) only; {job.experiment} is an AR "
                                    "recipe, whose discrete tokenizer ran when the data was prepared")
        if not Path(model.tokenizer.vae_path).exists():
            raise source.error(key, f"{model.tokenizer.vae_path} does not exist")
        notes.append(f"VAE {model.tokenizer.vae_path}: the DiT trains on latents it encoded beforehand (`prepare "
                     "latents`); generation decodes with it")

    _map_parallel(recipe, model.parallelism, source, world_size, notes)

    opt = cfg.optimizer or OptimizerSection()
    for field, target in (("lr", "lr"), ("eps", "eps"), ("weight_decay", "weight_decay")):
        if getattr(opt, field) is not None:
            setattr(recipe.optim, target, getattr(opt, field))
    if opt.betas is not None:
        recipe.optim.beta1, recipe.optim.beta2 = opt.betas
    if opt.fused is False:
        raise _unsupported(source, "optimizer.fused", "choosing the unfused AdamW: megatron uses the fused kernel "
                                                      "where one is installed; set fused = true")
    if opt.keys_to_select is not None:
        recipe.optim.keys_to_select = list(opt.keys_to_select)
    if opt.lr_multipliers is not None:
        bad = {k: v for k, v in opt.lr_multipliers.items() if not v >= 0}
        if bad:
            raise source.error("optimizer.lr_multipliers", f"multipliers must be >= 0, got {bad}")
        recipe.optim.lr_multipliers = dict(opt.lr_multipliers)
    _map_scheduler(recipe, cfg.scheduler, source, cfg.trainer)

    trainer = cfg.trainer or TrainerSection()
    if trainer.max_iter is not None:
        recipe.trainer.max_steps = trainer.max_iter
    if trainer.logging_iter is not None:
        recipe.trainer.log_interval = trainer.logging_iter
    if trainer.distributed_parallelism == "fsdp":
        raise _unsupported(source, "trainer.distributed_parallelism",
                           'FSDP: cosmos-nemo trains with megatron DDP plus TP/PP/CP; write "ddp"')
    callbacks = trainer.callbacks or CallbacksSection()
    if callbacks.compile_tokenizer is not None and callbacks.compile_tokenizer.enabled:
        raise _unsupported(source, "trainer.callbacks.compile_tokenizer.enabled",
                           "the tokenizer does not run during training here (latents and tokens are prepared "
                           "beforehand); set enabled = false")
    if callbacks.grad_clip is not None:
        if callbacks.grad_clip.clip_norm is not None:
            recipe.optim.clip_grad = callbacks.grad_clip.clip_norm
        if callbacks.grad_clip.force_finite is not None:
            recipe.optim.zero_nonfinite_grads = callbacks.grad_clip.force_finite

    ck = cfg.checkpoint or CheckpointSection()
    if ck.load_path is not None:
        recipe.checkpoint.pretrained = ck.load_path or None
        recipe.checkpoint.mode = "finetune" if ck.load_path else "pretrain"
    if ck.save_iter is not None:
        recipe.checkpoint.save_interval = ck.save_iter
    for key in ck.keys_to_skip_loading or []:
        if key not in _STRUCTURALLY_SKIPPED:
            raise _unsupported(source, "checkpoint.keys_to_skip_loading",
                               f"skipping {key!r} when loading: starting weights load strictly; only "
                               f"{sorted(_STRUCTURALLY_SKIPPED)} are accepted, which cosmos-nemo never loads from the "
                               "base anyway (" + "; ".join(f"{k}: {v}" for k, v in _STRUCTURALLY_SKIPPED.items()) + ")")

    data = cfg.dataloader_train or DataloaderTrainSection()
    if data.paths is not None:
        recipe.data.paths = list(data.paths)
    if data.max_samples_per_batch is not None:
        recipe.data.micro_batch_size = data.max_samples_per_batch
    if data.seed is not None:
        recipe.data.seed = data.seed
    if data.max_sequence_length is not None and is_vlm:
        recipe.model.max_tokens = data.max_sequence_length  # the reference remaps it to the VLM packer's max_tokens
    elif data.max_sequence_length is not None:
        raise _unsupported(source, "dataloader_train.max_sequence_length",
                           "a token cap per packed sequence: sequences are whole clips of their latent grid")
    if trainer.grad_accum_iter is not None:
        if trainer.grad_accum_iter < 1:
            raise source.error("trainer.grad_accum_iter", f"must be >= 1, got {trainer.grad_accum_iter}")
        dp = _data_parallel(recipe, world_size)
        recipe.data.global_batch_size = trainer.grad_accum_iter * recipe.data.micro_batch_size * dp
    return recipe, notes


# the reference's Reasoner experiment names (its launch scripts launch_sft_videophy2_nano.sh / launch_sft_llava_ov.sh)
VLM_EXPERIMENTS = {"videophy2_sft_nano": "reasoner_8b_sft_videophy2", "sft_videophy2_nano": "reasoner_8b_sft_videophy2",
                   "videophy2": "reasoner_8b_sft_videophy2", "llava_ov": "reasoner_8b_sft_llava_ov",
                   "sft_llava_ov": "reasoner_8b_sft_llava_ov", "llava_ov_sft": "reasoner_8b_sft_llava_ov"}
# the reference's Hydra tail overrides for the Reasoner (not in its schema), and the recipe fields they set
VLM_TAIL_OVERRIDES = {"model.config.policy.backbone.model_name": "model.model_name",
                      "data_setting.max_tokens": "model.max_tokens"}


def _map_vlm_model(recipe, model: ModelSection, source: _Source, notes: list) -> None:
    """[model] attn_implementation and [model.backbone] onto a Reasoner recipe."""
    if model.attn_implementation is not None:
        if model.attn_implementation == "cosmos":
            raise _unsupported(source, "model.attn_implementation", '"cosmos" is cosmos-framework\'s own attention '
                                                                    'kernel; use "sdpa", "flash_attention_2" or "eager"')
        recipe.model.attn_implementation = model.attn_implementation
    backbone = model.backbone
    if backbone is None:
        return
    if backbone.model_name is not None:
        recipe.model.model_name = backbone.model_name
        recipe.checkpoint.pretrained = backbone.model_name
    if backbone.safetensors_path is not None:
        if not Path(backbone.safetensors_path).exists():
            raise source.error("model.backbone.safetensors_path", f"{backbone.safetensors_path} does not exist (a "
                                                                   "Qwen3-VL safetensors snapshot folder)")
        recipe.checkpoint.pretrained = backbone.safetensors_path
        recipe.checkpoint.mode = "finetune"
        if (Path(backbone.safetensors_path) / "config.json").is_file() and backbone.model_name is None:
            recipe.model.model_name = backbone.safetensors_path  # the snapshot's own config and processor
        notes.append(f"Reasoner weights from {backbone.safetensors_path}")


def _map_lora(recipe, model: ModelSection, source: _Source) -> None:
    import nemo_run as run

    from cosmos_nemo.peft.lora import LoRAConfig, LoRAError, parse_targets

    given = {k: getattr(model, k) for k in ("lora_rank", "lora_alpha", "lora_target_modules") if getattr(model, k) is not None}
    peft = recipe.__arguments__.get("peft")
    if model.lora_enabled is False:
        if given:
            raise source.error(f"model.{next(iter(given))}", "set with lora_enabled = false: remove it or enable LoRA")
        recipe.peft = None
        return
    if model.lora_enabled is None and not given:
        return
    if peft is None:
        if model.lora_enabled is None:
            raise source.error(f"model.{next(iter(given))}", "needs lora_enabled = true (the recipe has no LoRA)")
        peft = run.Config(LoRAConfig)
    if model.lora_rank is not None:
        peft.rank = model.lora_rank
    if model.lora_alpha is not None:
        peft.alpha = model.lora_alpha
    if model.lora_target_modules is not None:
        try:
            parse_targets(model.lora_target_modules)
        except LoRAError as err:
            raise source.error("model.lora_target_modules", str(err)) from None
        peft.targets = list(model.lora_target_modules)
    recipe.peft = peft


def _map_ema(recipe, ema: Optional[EMASection], source: _Source) -> None:
    if ema is None:
        return
    if ema.iteration_shift not in (None, 0):
        raise _unsupported(source, "model.ema.iteration_shift", "a shifted power-EMA step counter; post-training "
                                                                "restarts it (0), as the references do")
    if ema.rate is not None and not 0.0 < ema.rate < 0.28:
        raise source.error("model.ema.rate", f"the power EMA's sigma_rel must lie in (0, 0.28), got {ema.rate}")
    current = recipe.trainer.ema_sigma_rel
    if ema.enabled is False:
        recipe.trainer.ema_sigma_rel, recipe.trainer.ema_decay = None, None
    elif ema.enabled:
        recipe.trainer.ema_sigma_rel = ema.rate if ema.rate is not None else (current or 0.1)
        recipe.trainer.ema_decay = None
    elif ema.rate is not None:
        if current is None:
            raise source.error("model.ema.rate", "needs enabled = true: the recipe keeps no EMA")
        recipe.trainer.ema_sigma_rel = ema.rate


def _map_scheduler(recipe, sched: Optional[SchedulerSection], source: _Source, trainer) -> None:
    import nemo_run as run

    from cosmos_nemo.training.config import LambdaLinearConfig
    from cosmos_nemo.training.schedules import check_lambda_linear

    if sched is None:
        return
    if sched.verbosity_interval not in (None, 0):
        raise _unsupported(source, "scheduler.verbosity_interval", "a separate scheduler log: the learning rate is "
                                                                   "logged with every step's metrics (trainer.logging_iter)")
    names = ("warm_up_steps", "cycle_lengths", "f_start", "f_max", "f_min")
    given = [n for n in names if getattr(sched, n) is not None]
    if not given:
        return
    missing = [n for n in names if n not in given]
    if missing:
        raise source.error("scheduler", f"the LambdaLinear schedule needs all of {', '.join(names)} (one entry per "
                                        f"cycle); missing: {', '.join(missing)}")
    ll = LambdaLinearConfig(**{n: list(getattr(sched, n)) for n in names})
    max_steps = trainer.max_iter if trainer is not None and trainer.max_iter is not None else recipe.trainer.max_steps
    try:
        check_lambda_linear(ll, max_steps)
    except ValueError as err:
        raise source.error("scheduler", str(err)) from None
    recipe.optim.schedule = "lambda_linear"
    recipe.optim.lambda_linear = run.Config(LambdaLinearConfig, **{n: getattr(ll, n) for n in names})


def _map_parallel(recipe, par: Optional[ParallelismSection], source: _Source, world_size, notes) -> None:
    if par is None:
        return
    if par.cfg_parallel_shard_degree not in (None, 1):
        raise _unsupported(source, "model.parallelism.cfg_parallel_shard_degree", "classifier-free-guidance "
                                                                                  "parallelism; set 1")
    if par.fsdp_master_dtype not in (None, "float32"):
        raise _unsupported(source, "model.parallelism.fsdp_master_dtype", f"{par.fsdp_master_dtype!r} master weights: "
                                                                          "the optimizer keeps float32 main weights")
    if par.tensor_parallel_degree is not None:
        recipe.parallel.tensor = par.tensor_parallel_degree
    if par.pipeline_parallel_degree is not None:
        recipe.parallel.pipeline = par.pipeline_parallel_degree
    if par.context_parallel_shard_degree is not None:
        recipe.parallel.context = par.context_parallel_shard_degree
    tp, pp, cp = recipe.parallel.tensor, recipe.parallel.pipeline, recipe.parallel.context
    replicate = par.data_parallel_replicate_degree or 1
    shard = par.data_parallel_shard_degree
    if min(tp, pp, cp, replicate) < 1 or shard is not None and shard != -1 and shard < 1:
        raise source.error("model.parallelism", "parallel degrees must be >= 1 (data_parallel_shard_degree may be "
                                                "-1: chosen from the world size)")
    explicit = shard not in (None, -1)
    if world_size is None:
        return
    model_parallel = tp * pp * cp * replicate
    if not explicit:
        if world_size % model_parallel:
            raise source.error("model.parallelism", f"the world size {world_size} is not divisible by tensor {tp} x "
                                                    f"pipeline {pp} x context {cp} x data_parallel_replicate {replicate}")
        shard = world_size // model_parallel
    product = shard * model_parallel
    if product != world_size:
        raise source.error("model.parallelism", f"data_parallel_shard_degree {shard} x data_parallel_replicate_degree "
                                                f"{replicate} x context_parallel_shard_degree {cp} x tensor "
                                                f"{tp} x pipeline {pp} = {product}, but the world size is {world_size}: "
                                                "the degrees must multiply to it")
    notes.append(f"data parallel {shard * replicate} = shard {shard} x replicate {replicate} (megatron DDP: weights "
                 "replicated on every data-parallel rank)")


def _data_parallel(recipe, world_size: Optional[int]) -> int:
    par = recipe.parallel
    return max(1, (world_size or 1) // (par.tensor * par.pipeline * par.context))


def _vlm_tail(item: str) -> str:
    key, sep, value = item.partition("=")
    target = VLM_TAIL_OVERRIDES.get(key.strip().lstrip("-"))
    return f"{target}={value}" if target and sep else item


def load_sft_toml(path, overrides=(), world_size: Optional[int] = None, environ=None):
    """`path` + trailing overrides -> (recipe, validated config, notes); every error names file, line and key."""
    from cosmos_nemo.recipes.overrides import OverrideError, apply_overrides

    cfg, recipe_overrides, source = read_sft_toml(path, overrides, environ)
    recipe, notes = to_recipe(cfg, source, world_size)
    if cfg.job.task == "vlm":
        recipe_overrides = [_vlm_tail(o) for o in recipe_overrides]
    try:
        apply_overrides(recipe, recipe_overrides)
    except OverrideError as err:
        key = next((o.split("=", 1)[0] for o in recipe_overrides if repr(o.split("=", 1)[0].strip()) in str(err)), None)
        guess = _closest(key, schema_keys()) if key else None
        also = f"; as a TOML key, the closest is {guess!r}" if guess else ""
        raise SFTConfigError(f"override: {err}{also}") from None
    return recipe, cfg, notes


def main(argv=None) -> int:
    """`python -m cosmos_nemo.recipes.sft_toml --check FILE.toml [KEY=VALUE ...] [--world-size N]`: validate a TOML
    (and, for task = "vfm", map it onto its recipe) without building or launching anything."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m cosmos_nemo.recipes.sft_toml", description=main.__doc__)
    parser.add_argument("--check", required=True, metavar="FILE", help="the SFT TOML to validate")
    parser.add_argument("--world-size", "--world_size", type=int, default=None,
                        help="check the parallel degrees and grad_accum_iter against this many processes")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    try:
        cfg, recipe_overrides, source = read_sft_toml(args.check, args.overrides)
        recipe, _, notes = load_sft_toml(args.check, args.overrides, world_size=args.world_size)
    except (SFTConfigError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for note in notes:
        print(f"note: {note}")
    print(f"{args.check}: valid; recipe {cfg.job.experiment}\n{recipe}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
