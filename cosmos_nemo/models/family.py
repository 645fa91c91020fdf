"""What a model family gives the shared trainer, checkpointing and inference, and where families are found.

A model config names its family (`cfg.family`, e.g. "ar"); `get_family(cfg.family)` returns the provider.
The trainer (`training/trainer.py`), the checkpoint room and inference call only the methods below, so a
new family (the DiT) is a new provider, not a second trainer:

- `build_model(cfg, pre_process, post_process, dtype)`: this rank's model chunk, a megatron module with
  `config` (a `TransformerConfig`), `model_type`, `share_embeddings_and_output_weights`,
  `set_input_tensor` (pipeline stages) and `sharded_state_dict()` (what megatron's DDP, schedules,
  gradient finalisation and dist-ckpt use; a megatron `GPTModel` has them all);
- `forward_step(cfg, trainer)`: the step function megatron's schedules call,
  `forward_step(data_iterator, model) -> (output, loss_fn)`, where `loss_fn(output) -> (loss, metrics)`
  and `metrics` holds a detached value for every key of `metric_keys`;
- `build_data(cfg, data, dp_rank, dp_size)`: a `FamilyData` of train/valid loaders of this DP rank and
  notes; every data-vs-model mismatch is raised here, before a model is built;
- `load_released(model, cfg, path)`: fill this rank's chunk from released weights (strict), and
  `export_released(model, cfg)`: the released layout of this rank's chunk (a collective over TP);
- `flops_per_token(cfg)`: training FLOPs per sample position, for the throughput log;
- `config_from_dict(fields)`: the model config back from a run folder's `config.yaml`.

Optional: `released_prefix` (the key prefix of the family's released files, e.g. "model."), and
`check_dist_ckpt_start(cfg, path)` (raise when a run may not start from a dist-ckpt, e.g. a vocabulary
resize that only a released file can do).

A loader is an iterator of micro-batches with `num_micro_batches`, `seq_length()` (the sequence length
of the next global batch, what megatron's pipeline schedule sizes its messages by), `state_dict()` and
`load_state_dict()` (an exact, resumable position; `"epoch"` in it counts finished passes).

Families are registered by name (`register_family`); a name that is not registered is imported as a
module holding `FAMILY` (how a test-only family or a plug-in is found in every process of a run).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Protocol, runtime_checkable

import torch

# forward_step(data_iterator, model) -> (output_tensor, loss_fn); loss_fn(output) -> (loss, metrics dict).
ForwardStep = Callable[[Iterator, torch.nn.Module], tuple]


@dataclass
class FamilyData:
    """A family's data for one DP rank: the train loader, the validation loader (None without a
    validation split) and notes for the run log (what was checked, what was skipped)."""

    train: Any
    valid: Any = None
    notes: list[str] = field(default_factory=list)


@runtime_checkable
class ModelFamily(Protocol):
    name: str
    metric_keys: tuple[str, ...]  # "loss" first; every key is logged and averaged over micro-batches and DP

    def build_model(self, cfg, pre_process: bool, post_process: bool, dtype: torch.dtype) -> torch.nn.Module: ...

    def forward_step(self, cfg, trainer) -> ForwardStep: ...

    def build_data(self, cfg, data, dp_rank: int, dp_size: int) -> FamilyData: ...

    def load_released(self, model: torch.nn.Module, cfg, path: str) -> str: ...

    def export_released(self, model: torch.nn.Module, cfg) -> dict[str, torch.Tensor]: ...

    def flops_per_token(self, cfg) -> float: ...

    def config_from_dict(self, fields: dict): ...


_BUILTIN = {"ar": "cosmos_nemo.models.ar.family", "dit": "cosmos_nemo.models.dit.family",
            "vlm": "cosmos_nemo.models.vlm.family"}
_REGISTRY: dict[str, ModelFamily] = {}


def register_family(family: ModelFamily) -> ModelFamily:
    """Make `family` known by its name (a later registration of the same name replaces it)."""
    missing = [m for m in ("build_model", "forward_step", "build_data", "load_released", "export_released",
                           "flops_per_token", "config_from_dict") if not callable(getattr(family, m, None))]
    if missing or not getattr(family, "name", None) or not getattr(family, "metric_keys", None):
        raise TypeError(f"{family!r} is not a model family: missing {missing or 'name/metric_keys'}")
    _REGISTRY[family.name] = family
    return family


def get_family(name: str) -> ModelFamily:
    """The family registered as `name`, a built-in one, or the `FAMILY` of the module `name`."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    module_name = _BUILTIN.get(name, name)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and module_name.startswith(err.name):
            raise KeyError(f"unknown model family {name!r}; built-in families: {', '.join(sorted(_BUILTIN))}") from err
        raise
    family = getattr(module, "FAMILY", None)
    if family is None:
        raise KeyError(f"module {module_name} defines no FAMILY, so it is not a model family")
    if name not in _REGISTRY:
        register_family(family)
        _REGISTRY[name] = family
    return family


def family_of(cfg) -> ModelFamily:
    """The family a model config names (`cfg.family`)."""
    name = getattr(cfg, "family", None)
    if not name:
        raise ValueError(f"{type(cfg).__name__} names no model family (a `family` field such as 'ar')")
    return get_family(name)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The family's model inside megatron's DDP / Float16Module wrappers."""
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    return model


def pipeline_flags(pre_process: Optional[bool] = None, post_process: Optional[bool] = None) -> tuple[bool, bool]:
    """`pre_process`/`post_process` for this rank's pipeline stage where not given."""
    from megatron.core import parallel_state

    if pre_process is None:
        pre_process = parallel_state.is_pipeline_first_stage(ignore_virtual=True)
    if post_process is None:
        post_process = parallel_state.is_pipeline_last_stage(ignore_virtual=True)
    return pre_process, post_process
