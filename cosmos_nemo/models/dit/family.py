"""The DiT family's provider: what the shared trainer, checkpointing and inference need from it
(models/family.py).

The model chunks, the diffusion step (models/dit/step.py: the config's EDM or rectified-flow objective and
frame conditioning), the precomputed latent datasets (data/dit_dataset.py), released-checkpoint import
(Cosmos Predict1/2/2.5 files, DCP folders and diffusers folders, strictly) and export, the run-folder
config and the FLOP count.
"""

from __future__ import annotations

import torch

from cosmos_nemo.models.dit.config import DiTModelConfig, dit_config, dit_config_from_dict

class DiTFamily:
    name = "dit"
    metric_keys = ("loss",)
    released_prefix = "net."  # NVIDIA's model.pt keys: net.blocks.block0... (logvar.* beside them)

    def build_model(self, cfg: DiTModelConfig, pre_process: bool, post_process: bool, dtype: torch.dtype):
        from cosmos_nemo.models.dit.model import build_dit_model

        return build_dit_model(cfg, pre_process, post_process, dtype=dtype)

    def forward_step(self, cfg: DiTModelConfig, trainer):
        from cosmos_nemo.models.dit.step import DiTStep
        from cosmos_nemo.parallel import get_device

        return DiTStep(cfg.objective, cfg.video2world, get_device())

    def build_data(self, cfg: DiTModelConfig, data, dp_rank: int, dp_size: int):
        from cosmos_nemo.data.dit_dataset import build_dit_dataloaders
        from cosmos_nemo.models.family import FamilyData

        train, valid, notes = build_dit_dataloaders(data, cfg, dp_rank, dp_size)
        return FamilyData(train=train, valid=valid, notes=notes)

    def load_released(self, model, cfg: DiTModelConfig, path: str, ema: bool = False) -> str:
        from cosmos_nemo.models.dit.convert import load_released

        report = load_released(model, cfg, path, ema=ema)
        extra = f", {report['logvar']}" if report.get("logvar") else ""
        return (f"initialised from {report['layout']} checkpoint {path} ({report.get('weights', 'weights')}, "
                f"{report['parameters_filled']} tensors{extra})")

    def export_released(self, model, cfg: DiTModelConfig) -> dict[str, torch.Tensor]:
        """The Cosmos layout with the released file's prefixes (`net.*`, `logvar.*`)."""
        from cosmos_nemo.models.dit.convert import export_released, with_cosmos_prefix

        return with_cosmos_prefix(export_released(model, cfg))

    def flops_per_token(self, cfg: DiTModelConfig, grid: tuple[int, int, int] = (16, 44, 80),
                        context_length: int = 512) -> float:
        """Training FLOPs per token (forward + backward = 3 x forward) at a token grid (default: Predict1's
        121 x 704 x 1280 clip, 16 x 44 x 80 tokens) and text length: 2 FLOPs per weight of the blocks and the
        patch/final linears, plus self-attention (4 x S x D per layer) and cross-attention (4 x L x D)."""
        d, layers = cfg.hidden_size, cfg.num_layers
        tokens = grid[0] * grid[1] * grid[2]
        per_layer = 4 * d * d + 2 * d * d + 2 * d * cfg.context_dim + 2 * d * cfg.ffn_hidden_size
        linear = layers * per_layer + d * cfg.patch_in_features + d * cfg.patch_out_features
        attention = layers * (4 * tokens * d + 4 * context_length * d)
        return 3.0 * (2.0 * linear + attention)

    def config_from_dict(self, fields: dict) -> DiTModelConfig:
        return dit_config_from_dict(fields)

    def named_config(self, name: str, **overrides) -> DiTModelConfig:
        """A released (or tiny) architecture by name (models/dit/config.py NAMED_CONFIGS)."""
        return dit_config(name, **overrides)


FAMILY = DiTFamily()
