"""A test-only model family: a tiny regression MLP on megatron's parallel linears.

It implements the provider protocol of `cosmos_nemo/models/family.py` with nothing shared with the AR
family, to show that `training.trainer.train` serves any family (TP, PP, DP, resume, logging, starting
weights). Its config names it by module (`family="family_regression"`), so every process of a run finds
it by importing this module (tests/ is on the path of pytest and of the processes it spawns).

Model: x [B, in] -> `input` (replicated Linear, first stage) -> per layer (`layer{i}`, i global) a
residual ColumnParallelLinear(h -> 2h) -> GELU -> RowParallelLinear(2h -> h) -> `head` (replicated Linear,
last stage) -> y_hat [B, out]. Between pipeline stages the activations travel as [1, B, h] (sequence length 1).
Data: x_i ~ N(0, 1) from (seed, i), y_i = tanh(x_i A) B with a fixed random teacher (A, B).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.enums import ModelType
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig

from cosmos_nemo.models.family import FamilyData, unwrap


@dataclass
class RegressionModelConfig:
    name: str = "regression"
    family: str = "family_regression"
    in_features: int = 6
    hidden_size: int = 16
    num_layers: int = 2
    out_features: int = 3


@dataclass
class RegressionDataConfig:
    num_samples: int = 48
    valid_samples: int = 8
    micro_batch_size: int = 2
    global_batch_size: int = 4
    seed: int = 0
    teacher_seed: int = 99


class _Block(MegatronModule):  # a MegatronModule, so dist-ckpt sees its linears' TP sharding
    def __init__(self, config: TransformerConfig):
        super().__init__(config=config)
        h = config.hidden_size
        init = config.init_method
        self.fc1 = ColumnParallelLinear(h, 2 * h, config=config, init_method=init, bias=True, gather_output=False)
        self.fc2 = RowParallelLinear(2 * h, h, config=config, init_method=init, bias=True, input_is_parallel=True,
                                     skip_bias_add=False)

    def forward(self, x):
        y, _ = self.fc1(x)
        y, _ = self.fc2(torch.nn.functional.gelu(y))
        return x + y


class RegressionModel(MegatronModule):
    def __init__(self, cfg: RegressionModelConfig, config: TransformerConfig, pre_process: bool, post_process: bool):
        super().__init__(config=config)
        self.cfg, self.pre_process, self.post_process = cfg, pre_process, post_process
        # What megatron's schedules and gradient finalisation ask of a model chunk:
        self.model_type = ModelType.encoder_or_decoder
        self.share_embeddings_and_output_weights = False
        pp_size = parallel_state.get_pipeline_model_parallel_world_size()
        per_stage = cfg.num_layers // pp_size
        first = parallel_state.get_pipeline_model_parallel_rank() * per_stage
        # Keys carry the global layer index, so a checkpoint's keys do not depend on the pipeline layout.
        self.layer_names = [f"layer{first + i}" for i in range(per_stage)]
        for name in self.layer_names:
            self.add_module(name, _Block(config))
        self.input = torch.nn.Linear(cfg.in_features, cfg.hidden_size) if pre_process else None
        self.head = torch.nn.Linear(cfg.hidden_size, cfg.out_features) if post_process else None
        self.input_tensor = None

    def set_input_tensor(self, tensor):
        self.input_tensor = tensor[0] if isinstance(tensor, (list, tuple)) else tensor

    def forward(self, x):
        h = self.input(x).unsqueeze(0) if self.pre_process else self.input_tensor  # [1, B, h]
        for name in self.layer_names:
            h = getattr(self, name)(h)
        return self.head(h[0]) if self.post_process else h


class RegressionStep:
    def __init__(self, device):
        self.device = device

    def __call__(self, data_iterator, model):
        batch = next(data_iterator)
        x, y = batch["x"].to(self.device), batch["y"].to(self.device)
        out = model(x)

        def loss_fn(pred):
            err = pred.float() - y
            loss = err.square().mean()
            return loss, {"loss": loss.detach().clone(), "mae": err.abs().mean().detach()}

        return out, loss_fn


def teacher(cfg: RegressionDataConfig, model: RegressionModelConfig):
    g = torch.Generator().manual_seed(cfg.teacher_seed)
    return torch.randn(model.in_features, 8, generator=g), torch.randn(8, model.out_features, generator=g) / 3


def sample(cfg: RegressionDataConfig, model: RegressionModelConfig, index: int):
    a, b = teacher(cfg, model)
    x = torch.randn(model.in_features, generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + index))
    return x, torch.tanh(x @ a) @ b


class RegressionLoader:
    """Micro-batches of this DP rank: global batch g is samples g*G .. g*G+G-1 (mod the split), rank r
    takes its contiguous share. The position is (global batch, micro-batch within it)."""

    def __init__(self, cfg: RegressionDataConfig, model: RegressionModelConfig, first: int, count: int,
                 dp_rank: int, dp_size: int):
        per_rank = cfg.global_batch_size // dp_size
        if cfg.global_batch_size % (cfg.micro_batch_size * dp_size):
            raise ValueError("global_batch_size must be a multiple of micro_batch_size x DP")
        self.cfg, self.model, self.first, self.count = cfg, model, first, count
        self.dp_rank, self.per_rank = dp_rank, per_rank
        self.num_micro_batches = per_rank // cfg.micro_batch_size
        self.position = {"global_batch": 0, "micro": 0}

    def seq_length(self) -> int:
        return 1

    def __iter__(self):
        return self

    def __next__(self):
        g, m = self.position["global_batch"], self.position["micro"]
        start = g * self.cfg.global_batch_size + self.dp_rank * self.per_rank + m * self.cfg.micro_batch_size
        xs, ys = zip(*(sample(self.cfg, self.model, self.first + (start + k) % self.count)
                       for k in range(self.cfg.micro_batch_size)))
        m += 1
        if m == self.num_micro_batches:
            g, m = g + 1, 0
        self.position = {"global_batch": g, "micro": m}
        return {"x": torch.stack(xs), "y": torch.stack(ys)}

    def state_dict(self) -> dict:
        epoch = self.position["global_batch"] * self.cfg.global_batch_size // self.count
        return {**self.position, "epoch": epoch}

    def load_state_dict(self, state: dict) -> None:
        self.position = {"global_batch": int(state["global_batch"]), "micro": int(state["micro"])}


def _tp_shard(full: torch.Tensor, param) -> torch.Tensor:
    if not getattr(param, "tensor_model_parallel", False):
        return full
    rank = parallel_state.get_tensor_model_parallel_rank()
    size = parallel_state.get_tensor_model_parallel_world_size()
    return torch.chunk(full, size, dim=param.partition_dim)[rank]


class RegressionFamily:
    name = "family_regression"
    metric_keys = ("loss", "mae")

    def build_model(self, cfg, pre_process, post_process, dtype):
        config = TransformerConfig(
            num_layers=cfg.num_layers, hidden_size=cfg.hidden_size, num_attention_heads=4,
            tensor_model_parallel_size=parallel_state.get_tensor_model_parallel_world_size(),
            pipeline_model_parallel_size=parallel_state.get_pipeline_model_parallel_world_size(),
            pipeline_dtype=dtype, params_dtype=dtype, bf16=dtype == torch.bfloat16,
            use_cpu_initialization=True, init_method_std=0.3,
        )
        return RegressionModel(cfg, config, pre_process, post_process).to(dtype)

    def forward_step(self, cfg, trainer):
        from cosmos_nemo.parallel import get_device

        return RegressionStep(get_device())

    def build_data(self, cfg, data, dp_rank, dp_size):
        if data.num_samples < data.global_batch_size:
            raise ValueError(f"{data.num_samples} samples cannot fill a global batch of {data.global_batch_size}")
        train = RegressionLoader(data, cfg, 0, data.num_samples, dp_rank, dp_size)
        valid = RegressionLoader(data, cfg, data.num_samples, data.valid_samples, dp_rank, dp_size) \
            if data.valid_samples else None
        return FamilyData(train=train, valid=valid, notes=[f"regression data: {data.num_samples} samples"])

    def load_released(self, model, cfg, path):
        """A safetensors file with the TP=1 names of this model's parameters (all of them, strictly)."""
        from safetensors.torch import load_file

        state = load_file(path)
        params = dict(unwrap(model).named_parameters())
        stage_keys = set(params)
        missing = sorted(stage_keys - set(state))
        foreign = sorted(k for k in state if k not in stage_keys and not _other_stage_key(k, cfg))
        if missing or foreign:
            raise ValueError(f"{path}: missing {missing}, unexpected {foreign}")
        with torch.no_grad():
            for name, param in params.items():
                param.copy_(_tp_shard(state[name], param))
        return f"initialised from {path}"

    def export_released(self, model, cfg):
        out = {}
        group = parallel_state.get_tensor_model_parallel_group()
        size = parallel_state.get_tensor_model_parallel_world_size()
        for name, param in unwrap(model).named_parameters():
            local = param.detach().contiguous()
            if size > 1 and getattr(param, "tensor_model_parallel", False):
                parts = [torch.empty_like(local) for _ in range(size)]
                dist.all_gather(parts, local, group=group)
                local = torch.cat(parts, dim=param.partition_dim)
            out[name] = local.cpu()
        return out

    def flops_per_token(self, cfg) -> float:
        h = cfg.hidden_size
        return 6.0 * (cfg.in_features * h + cfg.num_layers * 4 * h * h + h * cfg.out_features)

    def config_from_dict(self, fields: dict) -> RegressionModelConfig:
        return RegressionModelConfig(**fields)


def _other_stage_key(key: str, cfg: RegressionModelConfig) -> bool:
    """Keys another pipeline stage holds (they are in the file but not in this stage's model)."""
    if key.startswith(("input.", "head.")):
        return True
    return key.startswith("layer") and 0 <= int(key.split(".")[0][len("layer"):]) < cfg.num_layers


FAMILY = RegressionFamily()
