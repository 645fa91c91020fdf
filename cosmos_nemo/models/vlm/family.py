"""The Reasoner (VLM) family provider: what the shared trainer, checkpoint room and export take from it.

- `build_model`: a `VLMChunk` (models/vlm/model.py); tensor, pipeline and context parallel sizes must be 1 (the
  family trains data-parallel: `transformers`' Qwen3-VL layers are not megatron's parallel layers);
- `forward_step`: assistant-token cross-entropy (models/vlm/step.py);
- `build_data`: VideoPhy-2 or LLaVA-OV conversations (data/vlm_dataset.py);
- `load_released(model, cfg, path)`: a Hugging Face snapshot (folder of `*.safetensors`, sharded or not, or one
  file) filled in strictly: every parameter loaded, no key left over;
- `export_released`: the `transformers` state dict; `write_export` writes a folder `transformers` loads with
  `Qwen3VLForConditionalGeneration.from_pretrained` and `AutoProcessor.from_pretrained`.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from cosmos_nemo.models.family import FamilyData, unwrap
from cosmos_nemo.models.vlm.config import VLMModelConfig

# released Qwen-VL checkpoints written before transformers 4.52 keep the language model at the top level
_LEGACY_KEYS = ((re.compile(r"^model\.(?!language_model\.|visual\.)"), "model.language_model."),
                (re.compile(r"^visual\."), "model.visual."))


def _check_parallel() -> None:
    from megatron.core import parallel_state

    if not parallel_state.model_parallel_is_initialized():
        return
    sizes = {"tensor": parallel_state.get_tensor_model_parallel_world_size(),
             "pipeline": parallel_state.get_pipeline_model_parallel_world_size(),
             "context": parallel_state.get_context_parallel_world_size()}
    bad = {k: v for k, v in sizes.items() if v != 1}
    if bad:
        raise ValueError(f"the Reasoner (vlm) family trains data-parallel only; set parallel "
                         + ", ".join(f"{k}=1" for k in bad) + f" (got {bad}): every process holds the whole model")


def safetensors_files(path) -> list[Path]:
    path = Path(path)
    if path.is_file():
        return [path]
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{path} holds no *.safetensors files (a Hugging Face snapshot of the model)")
    return files


class VLMFamily:
    name = "vlm"
    metric_keys = ("loss", "accuracy")
    released_prefix = ""

    def build_model(self, cfg: VLMModelConfig, pre_process: bool, post_process: bool, dtype: torch.dtype):
        from cosmos_nemo.models.vlm.model import build_chunk

        _check_parallel()
        return build_chunk(cfg, dtype)

    def forward_step(self, cfg, trainer):
        from cosmos_nemo.models.vlm.step import VLMStep
        from cosmos_nemo.parallel import get_device

        return VLMStep(get_device())

    def build_data(self, cfg, data, dp_rank: int, dp_size: int) -> FamilyData:
        from cosmos_nemo.data.vlm_dataset import build_vlm_dataloaders
        from cosmos_nemo.models.vlm.processor import build_processor

        cfg.check()
        train, valid, notes = build_vlm_dataloaders(data, cfg, build_processor(cfg), dp_rank, dp_size)
        return FamilyData(train=train, valid=valid, notes=notes)

    def load_released(self, model, cfg, path: str) -> str:
        from cosmos_nemo.io.tensors import read_safetensors

        hf = unwrap(model).hf
        params = dict(hf.state_dict())
        loaded: dict[str, torch.Tensor] = {}
        files = safetensors_files(path)
        for f in files:
            for key, tensor in read_safetensors(f).items():
                name = key
                if name not in params:
                    for pattern, repl in _LEGACY_KEYS:
                        name = pattern.sub(repl, name)
                loaded[name] = tensor
        if getattr(hf.config, "tie_word_embeddings", False) and "lm_head.weight" not in loaded:
            loaded["lm_head.weight"] = loaded.get("model.language_model.embed_tokens.weight")
        missing = sorted(k for k in params if k not in loaded or loaded[k] is None)
        unexpected = sorted(k for k in loaded if k not in params)
        shapes = [f"{k}: {tuple(loaded[k].shape)} vs model {tuple(params[k].shape)}" for k in params
                  if k in loaded and loaded[k] is not None and loaded[k].shape != params[k].shape]
        if missing or unexpected or shapes:
            raise ValueError(f"{path} does not fit the model {cfg.name} ({cfg.model_name if cfg.name != 'tiny' else 'tiny'}): "
                             f"missing {len(missing)} {missing[:5]}, unexpected {len(unexpected)} {unexpected[:5]}, "
                             f"shape mismatches {shapes[:5]}")
        with torch.no_grad():
            for key, tensor in params.items():
                tensor.copy_(loaded[key].to(tensor.dtype))
        return f"initialised {len(params)} tensors from {path} ({len(files)} safetensors files)"

    def export_released(self, model, cfg) -> dict[str, torch.Tensor]:
        return {k: v.detach() for k, v in unwrap(model).hf.state_dict().items()}

    def write_export(self, state: dict, model, cfg, folder: Path) -> None:
        """A `transformers` folder: config.json, generation config, weights and the processor's files."""
        from cosmos_nemo.models.vlm.processor import build_processor

        hf = unwrap(model).hf
        hf.save_pretrained(str(folder), state_dict=dict(state))  # (transformers empties the dict it is given)
        build_processor(cfg).save_pretrained(str(folder))
        import dataclasses
        import json

        # how the run showed videos (frames, pixels), so `evaluate videophy2` on this folder shows them the same way
        (folder / "cosmos_nemo.json").write_text(json.dumps({"family": "vlm", "model": dataclasses.asdict(cfg)},
                                                            indent=1) + "\n")

    def probe_outputs(self, model, cfg) -> torch.Tensor:
        """Logits of a fixed 12-token text (no media)."""
        hf = unwrap(model).hf.eval()
        vocab = hf.config.text_config.vocab_size
        ids = torch.randint(300, 1000, (1, 12), generator=torch.Generator().manual_seed(0)) % vocab
        with torch.no_grad():
            return hf(input_ids=ids, use_cache=False).logits

    def flops_per_token(self, cfg) -> float:
        """6 x the language model's parameters (the vision tower's share is small per text token)."""
        from cosmos_nemo.models.vlm.model import hf_config

        t = hf_config(cfg).text_config
        h, inter, layers = t.hidden_size, t.intermediate_size, t.num_hidden_layers
        kv = t.num_key_value_heads * t.head_dim
        attn = h * t.num_attention_heads * t.head_dim * 2 + 2 * h * kv
        return 6.0 * (layers * (attn + 3 * h * inter) + 2 * h * t.vocab_size)

    def config_from_dict(self, fields: dict) -> VLMModelConfig:
        known = VLMModelConfig.__dataclass_fields__
        unknown = sorted(set(fields) - set(known))
        if unknown:
            raise ValueError(f"unknown vlm model fields {unknown}")
        return VLMModelConfig(**fields)


FAMILY = VLMFamily()
