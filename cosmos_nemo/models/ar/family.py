"""The AR family's provider: what the shared trainer, checkpointing and inference need from it
(models/family.py).

Its data come from the AR token datasets of `data/` (imported where the loaders are built: the data room
sits above the models, and only this provider, never the model code, reaches it).
"""

from __future__ import annotations

import torch

from cosmos_nemo.models.ar.config import ARModelConfig, ar_config_from_dict


class ARFamily:
    name = "ar"
    metric_keys = ("loss", "accuracy")
    released_prefix = "model."  # NVIDIA's model.pt keys: model.layers.0.attention.wq.weight

    def build_model(self, cfg: ARModelConfig, pre_process: bool, post_process: bool, dtype: torch.dtype):
        from cosmos_nemo.models.ar.model import build_ar_model

        return build_ar_model(cfg, pre_process, post_process, dtype=dtype)

    def forward_step(self, cfg: ARModelConfig, trainer):
        from cosmos_nemo.models.ar.step import ARStep
        from cosmos_nemo.parallel import get_device

        return ARStep(z_loss=trainer.z_loss, device=get_device())

    def build_data(self, cfg: ARModelConfig, data, dp_rank: int, dp_size: int):
        from cosmos_nemo.data import build_ar_dataloaders, validate_for_model
        from cosmos_nemo.data.loader import resolve_dataset_paths
        from cosmos_nemo.models.family import FamilyData

        train, valid, _ = build_ar_dataloaders(data, dp_rank, dp_size)
        notes = validate_for_model(
            [str(p) for p in resolve_dataset_paths(data.paths)],
            cfg.output_vocab_size or cfg.vocab_size,
            max_seq_length=cfg.seq_length,
            split_string=data.split_string,
            model_task="video2world" if cfg.video2world else "base",
            model_embedding_rows=cfg.vocab_size,
        )
        return FamilyData(train=train, valid=valid, notes=list(notes))

    def check_dist_ckpt_start(self, cfg: ARModelConfig, path: str) -> None:
        """Starting from a dist-ckpt cannot resize vocabulary rows (only a released file can)."""
        if cfg.resize_vocab:
            raise ValueError(
                f"model.resize_vocab=true resizes a released Cosmos checkpoint's rows, but {path} is a dist-ckpt; "
                "export it first (cosmos-nemo convert ar-export) and pass the exported model.pt as checkpoint.pretrained"
            )

    def load_released(self, model, cfg: ARModelConfig, path: str) -> str:
        from cosmos_nemo.models.ar.convert import load_released

        report = load_released(model, path, resize_vocab=cfg.resize_vocab)
        resized = f" ({report['resized']})" if isinstance(report, dict) and report.get("resized") else ""
        return f"initialised from Cosmos checkpoint {path}{resized}"

    def export_released(self, model, cfg: ARModelConfig) -> dict[str, torch.Tensor]:
        from cosmos_nemo.models.ar.convert import export_released

        return export_released(model)

    def flops_per_token(self, cfg: ARModelConfig) -> float:
        """Training FLOPs per token: 6 x (non-embedding parameters) + 12 x layers x hidden x sequence."""
        d, hd, ff = cfg.hidden_size, cfg.head_dim, cfg.ffn_hidden_size
        q, kv = cfg.num_attention_heads * hd, cfg.num_query_groups * hd
        layer = 2 * d + q * d + 2 * kv * d + d * q + 2 * hd + 3 * ff * d
        if cfg.video2world:
            layer += d + q * d + 2 * kv * cfg.context_dim + d * q + 2 * hd
        params = cfg.num_layers * layer + d + cfg.output_vocab_size * d
        seq = cfg.layout(cfg.max_grid).input_length
        return 6.0 * params + 12.0 * cfg.num_layers * cfg.hidden_size * seq

    def config_from_dict(self, fields: dict) -> ARModelConfig:
        return ar_config_from_dict(fields)

    def named_config(self, name: str, **overrides) -> ARModelConfig:
        """A released (or tiny) architecture by name: 4b, 12b, 5b_v2w, 13b_v2w, tiny, tiny_v2w."""
        from cosmos_nemo.models.ar.config import ar_config

        return ar_config(name, **overrides)

    def shard_released(self, state: dict, cfg: ARModelConfig, tp: int) -> list[dict]:
        """A released checkpoint split into `tp` tensor-parallel shards by the reference split rules."""
        from cosmos_nemo.models.ar.convert import shard_released_tp

        return shard_released_tp(state, cfg, tp)

    def merge_released(self, shards: list[dict], cfg: ARModelConfig) -> dict:
        """The inverse of `shard_released`."""
        from cosmos_nemo.models.ar.convert import merge_released_tp

        return merge_released_tp(shards, cfg)


FAMILY = ARFamily()
