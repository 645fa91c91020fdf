"""LoRA (cosmos_nemo/peft): each of the reference LoRA's silent failures is impossible here.

- step 0 equals the base model bit for bit (B = 0), also through an adapter checkpoint;
- after training the outputs differ, and only adapter tensors changed (a hash of every base tensor);
- TP=2 equals TP=1, merged equals unmerged;
- a missing or partial base, an adapter for other blocks, and a target that matches nothing are errors;
- the parameter counts are the references' (Predict2.5 2B r=32: 45,875,200; Predict1 7B q,v r=8: 6.65 M).
"""

from __future__ import annotations

import hashlib
import math
import os

import numpy as np
import pytest
import torch

from cosmos_nemo.parallel.launch import run_in_processes
from test_dit_training import write_dataset

TINY = "tiny_predict2"
T = torch.as_tensor  # results come back from run_in_processes as numpy arrays


def _inputs(cfg, seed: int = 1, batch: int = 2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 16, 2, 8, 8, generator=g)
    t = torch.rand(batch, 2, generator=g)
    text = torch.randn(batch, 6, cfg.crossattn_proj_in or cfg.context_dim, generator=g)
    return x, t, text


def _randomise_adapters(model, seed: int = 7, std: float = 0.05) -> None:
    """Give every B (and A) a deterministic random value, the same full matrices at every TP size."""
    from megatron.core import parallel_state

    from cosmos_nemo.peft.lora import lora_adapters

    rank, size = parallel_state.get_tensor_model_parallel_rank(), parallel_state.get_tensor_model_parallel_world_size()
    for i, (name, adapter) in enumerate(sorted(lora_adapters(model).items())):
        for j, (part, pair) in enumerate(pair_items(adapter)):
            g = torch.Generator().manual_seed(seed * 1000 + i * 10 + j)
            for p, axis in ((pair.lora_A, 1 if adapter.kind == "row" else None),
                            (pair.lora_B, 0 if adapter.kind == "column" else None)):
                shape = list(p.shape)
                if axis is not None:
                    shape[axis] *= size
                full = torch.randn(*shape, generator=g) * std
                if axis is not None and getattr(adapter, "gated", False) and p is pair.lora_B:
                    # a gated fc1's rows are [gate; up] on each rank: the full B is [gate_all; up_all]
                    half, local = shape[0] // 2, p.shape[0] // 2
                    full = torch.cat([full[rank * local:(rank + 1) * local], full[half + rank * local:half + (rank + 1) * local]])
                elif axis is not None:
                    full = full.narrow(axis, rank * p.shape[axis], p.shape[axis])
                p.data.copy_(full)


def pair_items(adapter):
    return sorted(adapter.pairs().items())


# ---------------------------------------------------------------------------------------------------
# the transform on a model


def _transform_checks(targets=None) -> dict:
    from cosmos_nemo import parallel
    from cosmos_nemo.models.dit.config import dit_config
    from cosmos_nemo.models.dit.model import build_dit_model
    from cosmos_nemo.peft.lora import LoRAConfig, apply_lora, merge_lora, unmerge_lora

    parallel.setup(seed=3)
    cfg = dit_config(TINY)
    model = build_dit_model(cfg).eval()
    x, t, text = _inputs(cfg)
    with torch.no_grad():
        base = model(x, t, text)
    report = apply_lora(model, LoRAConfig(rank=4, alpha=8, **({"targets": targets} if targets else {})), seed=5)
    out = {"summary": report.summary(), "trainable": report.trainable, "total": report.total}
    with torch.no_grad():
        out["step0_equal"] = torch.equal(model(x, t, text), base)
    out["trainable_names"] = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    out["A_nonzero"] = all(p.abs().sum() > 0 for n, p in model.named_parameters() if n.endswith("lora_A"))
    out["B_zero"] = all(p.abs().sum() == 0 for n, p in model.named_parameters() if n.endswith("lora_B"))
    out["adapter_dtypes"] = {str(p.dtype) for n, p in model.named_parameters() if p.requires_grad}
    _randomise_adapters(model)
    with torch.no_grad():
        adapted = model(x, t, text)
        out["adapted_diff"] = (adapted - base).abs().max().item()
        merge_lora(model)
        out["merged_err"] = (model(x, t, text) - adapted).abs().max().item()
        unmerge_lora(model)
        out["unmerged_err"] = (model(x, t, text) - adapted).abs().max().item()
    parallel.teardown()
    return out


@pytest.mark.parametrize("targets", [None, ["q_proj", "v_proj"], ["FA[to_k]", "CA[to_v]", "mlp.layer2"]])
def test_lora_transform_on_the_dit(targets):
    out = run_in_processes(_transform_checks, 1, targets)[0]
    assert out["step0_equal"], "a fresh LoRA model must equal its base bit for bit (B = 0)"
    assert out["A_nonzero"] and out["B_zero"], "A is drawn at random, B starts at zero (never both zero)"
    assert out["adapter_dtypes"] == {"torch.float32"}
    assert out["trainable_names"] and all("_lora." in n for n in out["trainable_names"]), "the base must be frozen"
    # q, k, v of self-attention are separate pairs on the fused linear_qkv; cross-attention k, v on linear_kv
    names = out["trainable_names"]
    assert ("decoder.layers.0.self_attention.linear_qkv_lora.q.lora_A" in names) == (targets != ["FA[to_k]", "CA[to_v]", "mlp.layer2"])
    assert "decoder.layers.1.cross_attention.linear_kv_lora.v.lora_B" in names
    assert ("decoder.layers.1.cross_attention.linear_kv_lora.k.lora_B" in names) == (targets is None)
    assert out["adapted_diff"] > 1e-3
    assert out["merged_err"] <= 1e-5 and out["unmerged_err"] <= 1e-5
    assert "trainable" in out["summary"] and "%" in out["summary"]


def _optimizer_holds() -> dict:
    """What megatron's DDP and optimizer hold for a LoRA model, after one step."""
    from cosmos_nemo import parallel
    from cosmos_nemo.models.dit.config import dit_config
    from cosmos_nemo.models.dit.model import build_dit_model
    from cosmos_nemo.peft.lora import LoRAConfig, apply_lora
    from cosmos_nemo.training import harness
    from cosmos_nemo.training.config import OptimizerConfig

    parallel.setup()
    cfg = dit_config(TINY)

    def provide(pre, post):
        model = build_dit_model(cfg, pre, post)
        apply_lora(model, LoRAConfig(rank=2, alpha=2))
        return model

    chunks = harness.wrap_model(provide)
    optimizer = harness.build_optimizer(chunks, OptimizerConfig(lr=1e-3))
    names = {id(p): n for n, p in chunks[0].module.named_parameters()}
    x, t, text = _inputs(cfg)
    chunks[0].zero_grad_buffer()
    chunks[0](x, t, text).square().mean().backward()
    chunks[0].finish_grad_sync()
    optimizer.step()
    inner = getattr(optimizer, "chained_optimizers", [optimizer])
    in_optimizer = {names[id(p)] for opt in inner for g in opt.optimizer.param_groups for p in g["params"]}
    with_state = {names[id(p)] for opt in inner for p in opt.optimizer.state}
    in_ddp = {names[id(p)] for p in chunks[0].param_to_bucket_group} if hasattr(chunks[0], "param_to_bucket_group") else set()
    parallel.teardown()
    return {"optimizer": sorted(in_optimizer), "state": sorted(with_state), "ddp": sorted(in_ddp),
            "all": sorted(names.values())}


def test_only_adapters_reach_ddp_and_the_optimizer():
    out = run_in_processes(_optimizer_holds, 1)[0]
    adapters = sorted(n for n in out["all"] if "_lora." in n)
    assert adapters and out["optimizer"] == adapters and out["state"] == adapters
    assert not out["ddp"] or out["ddp"] == adapters


def _counts(name: str, targets, rank: int, alpha: float, first_n=None) -> int:
    from cosmos_nemo import parallel
    from cosmos_nemo.models.dit.config import dit_config
    from cosmos_nemo.models.dit.model import build_dit_model
    from cosmos_nemo.peft.lora import LoRAConfig, apply_lora

    parallel.setup()
    with torch.device("meta"):
        model = build_dit_model(dit_config(name))
    report = apply_lora(model, LoRAConfig(targets=targets, rank=rank, alpha=alpha, first_n_blocks=first_n))
    parallel.teardown()
    return report.trainable


def _all_counts(cases) -> list:
    return [_counts(*case) for case in cases]


@pytest.mark.medium
def test_parameter_counts_are_the_references():
    six = ["q_proj", "k_proj", "v_proj", "output_proj", "mlp.layer1", "mlp.layer2"]
    diffusers = ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2"]
    megatron = ["linear_qkv", "linear_q", "linear_kv", "linear_proj", "linear_fc1", "linear_fc2"]
    cases = [("predict25_2b", six, 32, 32), ("predict25_2b", diffusers, 32, 32), ("predict25_2b", megatron, 32, 32),
             ("predict1_7b_v2w", ["FA[to_q, to_v]", "CA[to_q, to_v]"], 8, 8, 28),
             ("predict1_7b_v2w", ["FA[to_q, to_v]"], 8, 8, 10)]
    counts = run_in_processes(_all_counts, 1, cases)[0]
    # the same targets by their reference, diffusers and megatron names
    assert counts[:3] == [45_875_200] * 3
    # Predict1 7B: q, v of self- and cross-attention, rank 8 = 8 (8192 + 8192 + 8192 + 5120) per block
    assert counts[3] == 28 * 8 * (8192 + 8192 + 8192 + 5120) == 6_651_904
    assert counts[4] == 10 * 8 * 2 * 8192


def _target_error(targets, first_n=None, model_name=TINY) -> str:
    from cosmos_nemo import parallel
    from cosmos_nemo.models.dit.config import dit_config
    from cosmos_nemo.models.dit.model import build_dit_model
    from cosmos_nemo.peft.lora import LoRAConfig, LoRAError, apply_lora

    parallel.setup()
    model = build_dit_model(dit_config(model_name))
    try:
        apply_lora(model, LoRAConfig(targets=targets, rank=2, alpha=2, first_n_blocks=first_n))
    except LoRAError as err:
        return str(err)
    finally:
        parallel.teardown()
    return ""


def _ar_target_error(targets) -> str:
    from cosmos_nemo import parallel
    from cosmos_nemo.models.ar.config import ar_config
    from cosmos_nemo.models.ar.model import build_ar_model
    from cosmos_nemo.peft.lora import LoRAConfig, LoRAError, apply_lora

    parallel.setup()
    model = build_ar_model(ar_config("tiny"))
    try:
        report = apply_lora(model, LoRAConfig(targets=targets, rank=2, alpha=2))
        return "ok:" + ",".join(sorted({a.kind for a in report.adapted}))
    except LoRAError as err:
        return str(err)
    finally:
        parallel.teardown()


def _all_target_errors() -> list[str]:
    """The four cases below in one process (each sets up and tears down its own parallel state): one process
    start-up instead of four."""
    return [_target_error(["to_qq"]), _target_error(["to_q"], 5), _ar_target_error(["cross_attn.to_q"]),
            _ar_target_error(["q_proj", "v_proj", "linear_proj", "linear_fc1"])]


@pytest.mark.medium
def test_targets_that_match_nothing_are_errors():
    unknown, too_many_blocks, no_cross_attention, ok = run_in_processes(_all_target_errors, 1)[0]
    assert "unknown LoRA target 'to_qq'" in unknown
    assert "first_n_blocks=5" in too_many_blocks
    # the tiny AR model has no cross-attention: its linear_q / cross_attn targets match nothing
    assert "match no linear" in no_cross_attention
    assert ok == "ok:mlp.linear_fc1,self_attention.linear_proj,self_attention.linear_qkv[q,v]", ok


# ---------------------------------------------------------------------------------------------------
# tensor parallelism


def _tp_forward_backward(tp: int) -> dict:
    from megatron.core import parallel_state

    from cosmos_nemo import parallel
    from cosmos_nemo.models.dit.config import dit_config
    from cosmos_nemo.models.dit.model import build_dit_model
    from cosmos_nemo.peft.lora import LoRAConfig, apply_lora, lora_adapters, merge_lora

    parallel.setup(tensor_parallel=tp, seed=3)
    cfg = dit_config(TINY)
    model = build_dit_model(cfg)
    apply_lora(model, LoRAConfig(rank=4, alpha=8), seed=5)
    first_a = {n: p.detach().clone() for n, p in model.named_parameters() if n.endswith("lora_A")}
    _randomise_adapters(model)
    x, t, text = _inputs(cfg)
    out = model(x, t, text)
    out.square().mean().backward()
    grads = {}
    for name, adapter in lora_adapters(model).items():
        for part, pair in adapter.pairs().items():
            for which, p in (("A", pair.lora_A), ("B", pair.lora_B)):
                g = p.grad
                axis = 1 if (which == "A" and adapter.kind == "row") else 0 if (which == "B" and adapter.kind == "column") else None
                if axis is not None and tp > 1:
                    parts = [torch.empty_like(g) for _ in range(tp)]
                    torch.distributed.all_gather(parts, g.contiguous(), group=parallel_state.get_tensor_model_parallel_group())
                    g = torch.cat(parts, dim=axis)
                grads[f"{name}.{part}.{which}"] = g
    # the first-drawn A (full matrix) must not depend on the TP size either
    a_full = {}
    for name, adapter in lora_adapters(model).items():
        for part, pair in adapter.pairs().items():
            a = first_a[f"{name}.{part}.lora_A"]
            if adapter.kind == "row" and tp > 1:
                parts = [torch.empty_like(a) for _ in range(tp)]
                torch.distributed.all_gather(parts, a.contiguous(), group=parallel_state.get_tensor_model_parallel_group())
                a = torch.cat(parts, dim=1)
            a_full[f"{name}.{part}"] = a
    with torch.no_grad():
        merge_lora(model)
        merged = model(x, t, text)
    rank = torch.distributed.get_rank()
    parallel.teardown()
    return {"out": out.detach(), "merged": merged, "grads": grads, "a": a_full, "rank": rank}


@pytest.mark.medium
@pytest.mark.distributed
def test_lora_at_tp2_equals_tp1():
    one = run_in_processes(_tp_forward_backward, 1, 1)[0]
    two = run_in_processes(_tp_forward_backward, 2, 2)
    for r in two:
        assert (T(r["out"]) - T(one["out"])).abs().max() <= 1e-5
        assert (T(r["merged"]) - T(one["out"])).abs().max() <= 1e-5
        assert r["grads"].keys() == one["grads"].keys()
        for k, g in one["grads"].items():
            assert torch.allclose(T(r["grads"][k]), T(g), atol=1e-6, rtol=1e-4), k
        for k, a in one["a"].items():
            assert torch.equal(T(r["a"][k]), T(a)), f"initial A of {k} differs between TP sizes"


# ---------------------------------------------------------------------------------------------------
# training through the shared trainer


def _train(root: str, name: str, steps: int, pretrained=None, peft=None, lr: float = 2e-3, precision: str = "fp32",
           model_overrides: dict | None = None, ema: bool = True):
    torch.set_num_threads(1)
    from cosmos_nemo.data.dit_dataset import DiTDataConfig
    from cosmos_nemo.models.dit.config import dit_config
    from cosmos_nemo.training.config import CheckpointConfig, LogConfig, OptimizerConfig, ParallelConfig, TrainerConfig
    from cosmos_nemo.training.trainer import train

    return train(dit_config(TINY, **(model_overrides or {})),
                 DiTDataConfig(paths=[root + "/data"], split_string="1,0,0", micro_batch_size=2, global_batch_size=4),
                 OptimizerConfig(lr=lr, warmup_steps=0, schedule="constant", weight_decay=0.0),
                 TrainerConfig(max_steps=steps, val_interval=0, seed=1, precision=precision,
                               ema_sigma_rel=0.1 if ema else None),
                 CheckpointConfig(output_root=root + "/runs", name=name, save_interval=3, keep_last=0,
                                  mode="finetune" if pretrained else "pretrain", pretrained=pretrained),
                 ParallelConfig(), LogConfig(progress_bar=False, tensorboard=False), peft=peft)


def _lora(rank: int = 4):
    from cosmos_nemo.peft.lora import LoRAConfig

    return LoRAConfig(rank=rank, alpha=rank)


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    write_dataset(root / "data", n=8)
    out = run_in_processes(_train, 1, str(root), "base", 3)[0]
    return root, out["run_dir"]


def _outputs_and_hashes(run_dir: str, weights: str = "model") -> dict:
    """The fine-tuned model of a run folder (for a LoRA run: base + merged adapters) on fixed inputs, and a
    hash of every tensor."""
    from cosmos_nemo import parallel
    from cosmos_nemo.inference.loading import load_trained_model

    parallel.setup()
    model, cfg, _ = load_trained_model(run_dir, weights)
    x, t, text = _inputs(cfg)
    with torch.no_grad():
        out = model(x, t, text)
    hashes = {k: hashlib.sha256(v.detach().float().numpy().tobytes()).hexdigest() for k, v in model.state_dict().items()
              if torch.is_tensor(v)}
    parallel.teardown()
    return {"out": out, "hashes": hashes}


def _released_outputs(path: str):
    """Our DiT loaded from a released-layout file, on the fixed inputs."""
    from cosmos_nemo import parallel
    from cosmos_nemo.models.dit.config import dit_config
    from cosmos_nemo.models.dit.family import FAMILY

    parallel.setup()
    cfg = dit_config(TINY)
    model = FAMILY.build_model(cfg, True, True, torch.float32)
    FAMILY.load_released(model, cfg, path)
    x, t, text = _inputs(cfg)
    with torch.no_grad():
        out = model.eval()(x, t, text)
    parallel.teardown()
    return out


def _base_tensor_hashes(run_dir: str) -> dict:
    """Hashes of the base weights a LoRA model trains on, read from the LoRA model during a run."""
    from cosmos_nemo import parallel
    from cosmos_nemo.checkpoint import dist as dist_ckpt
    from cosmos_nemo.checkpoint import run as run_folder
    from cosmos_nemo.peft.lora import LoRAConfig, apply_lora

    parallel.setup()
    family, cfg = run_folder.read_model_config(run_dir)
    latest = run_folder.latest_checkpoint(__import__("pathlib").Path(run_dir) / "checkpoints")
    info = dist_ckpt.read_lora_info(latest / "model")
    model = family.build_model(cfg, True, True, torch.float32)
    run_folder.load_pretrained([model], family, cfg, info["base"])
    apply_lora(model, LoRAConfig(**info["config"]))
    model.lora_info = info
    dist_ckpt.load_model([model], latest / "model")
    hashes = {k: hashlib.sha256(v.detach().float().numpy().tobytes()).hexdigest()
              for k, v in model.state_dict().items() if torch.is_tensor(v) and "_lora." not in k}
    adapters = {k: v.clone() for k, v in model.state_dict().items() if "_lora." in k}
    parallel.teardown()
    return {"hashes": hashes, "adapters": adapters}


@pytest.mark.slow
def test_lora_trains_adapters_only_and_resumes_exactly(base_run):
    root, base_dir = base_run
    base = run_in_processes(_outputs_and_hashes, 1, base_dir)[0]

    # step 0 through an adapter checkpoint: lr 0 keeps B = 0, so the run's model is the base, bit for bit
    still = run_in_processes(_train, 1, str(root), "lora_lr0", 1, base_dir, _lora(), 0.0)[0]
    zero = run_in_processes(_outputs_and_hashes, 1, still["run_dir"])[0]
    assert torch.equal(T(zero["out"]), T(base["out"]))

    full = run_in_processes(_train, 1, str(root), "lora", 6, base_dir, _lora(), 1e-2)[0]
    assert all(math.isfinite(v) for v in full["losses"])
    trained = run_in_processes(_outputs_and_hashes, 1, full["run_dir"])[0]
    assert (T(trained["out"]) - T(base["out"])).abs().max() > 1e-4, "LoRA training must change the outputs"
    inside = run_in_processes(_base_tensor_hashes, 1, full["run_dir"])[0]
    assert inside["hashes"] == base["hashes"], "a base tensor changed during LoRA training"
    assert any(T(v).abs().sum() > 0 for k, v in inside["adapters"].items() if k.endswith("lora_B"))
    # the EMA copy is the adapters' EMA on the same base
    ema = run_in_processes(_outputs_and_hashes, 1, full["run_dir"], "ema")[0]
    assert not torch.equal(T(ema["out"]), T(trained["out"]))

    # the references' consolidated files of a LoRA run hold the merged model (regular and EMA)
    from cosmos_nemo.cli import main

    out_dir = root / "consolidated"
    assert main(["convert", "dcp-to-pt", full["run_dir"], str(out_dir)]) == 0
    released = run_in_processes(_released_outputs, 1, str(out_dir / "model_ema_fp32.pt"))[0]
    assert (T(released) - T(ema["out"])).abs().max() <= 1e-6

    # resume: 3 steps, then 3 more from the adapter checkpoint, give the 6-step run's losses exactly
    first = run_in_processes(_train, 1, str(root), "lora_resumed", 3, base_dir, _lora(), 1e-2)[0]
    second = run_in_processes(_train, 1, str(root), "lora_resumed", 6, base_dir, _lora(), 1e-2)[0]
    assert first["losses"] + second["losses"] == full["losses"]

    # the checkpoint holds adapters only (and their optimizer state)
    from cosmos_nemo.checkpoint import dist as dist_ckpt

    model_dir = __import__("pathlib").Path(full["checkpoint"]) / "model"
    info = dist_ckpt.read_lora_info(model_dir)
    assert info["adapter"]["num_blocks"] == 2 and info["adapter"]["rank"] == 4
    size = sum(p.stat().st_size for p in model_dir.glob("*.distcp"))
    assert size < 0.2 * sum(p.stat().st_size for p in (__import__("pathlib").Path(base_dir) / "checkpoints").glob(
        "iter_*/model/*.distcp")), "the adapter checkpoint must not hold the base weights"


def _adapter_into(run_dir: str, num_layers: int) -> str:
    """Load a LoRA run's adapter into a LoRA model with another block count."""
    from cosmos_nemo import parallel
    from cosmos_nemo.checkpoint import dist as dist_ckpt
    from cosmos_nemo.checkpoint import run as run_folder
    from cosmos_nemo.models.dit.config import dit_config
    from cosmos_nemo.models.dit.model import build_dit_model
    from cosmos_nemo.peft.lora import LoRAConfig, LoRAError, apply_lora

    parallel.setup()
    latest = run_folder.latest_checkpoint(__import__("pathlib").Path(run_dir) / "checkpoints")
    info = dist_ckpt.read_lora_info(latest / "model")
    model = build_dit_model(dit_config(TINY, num_layers=num_layers))
    apply_lora(model, LoRAConfig(**info["config"]))
    try:
        dist_ckpt.load_model([model], latest / "model")
    except LoRAError as err:
        return str(err)
    finally:
        parallel.teardown()
    return ""


@pytest.mark.slow
def test_lora_refuses_a_missing_or_partial_base_and_a_mismatched_adapter(base_run, tmp_path):
    from safetensors.torch import load_file, save_file

    root, base_dir = base_run
    # no base at all: refused before anything is built
    with pytest.raises(ValueError, match="never starts from random weights"):
        _train(str(root), "nobase", 1, None, _lora())
    with pytest.raises(RuntimeError, match="not found"):
        run_in_processes(_train, 1, str(root), "missing", 1, str(tmp_path / "nothing.pt"), _lora())
    # a released file that covers only block 0 of 2
    from cosmos_nemo.cli import main

    full = tmp_path / "full.safetensors"
    assert main(["convert", "dit-export", "--checkpoint", base_dir, "--model", TINY, "--output", str(full)]) == 0
    state = load_file(str(full))
    partial = {k: v for k, v in state.items() if ".blocks.1." not in k}
    assert len(partial) < len(state)
    save_file(partial, str(tmp_path / "partial.safetensors"))
    with pytest.raises(RuntimeError, match="blocks.1"):
        run_in_processes(_train, 1, str(root), "partial", 1, str(tmp_path / "partial.safetensors"), _lora())
    # a dist-ckpt of a 1-block model as the base of a 2-block model
    one = run_in_processes(_train, 1, str(root), "oneblock", 1, None, None, 2e-3, "fp32", {"num_layers": 1})[0]
    with pytest.raises(RuntimeError, match="(?i)missing|not found|shape"):
        run_in_processes(_train, 1, str(root), "short_base", 1, one["run_dir"], _lora())
    # an adapter trained on 2 blocks, loaded into a 3-block model (predict1#132's 28 vs 27): nothing applied
    lora_run = run_in_processes(_train, 1, str(root), "lora_for_mismatch", 1, base_dir, _lora())[0]
    msg = run_in_processes(_adapter_into, 1, lora_run["run_dir"], 3)[0]
    assert "does not fit" in msg and "2 blocks" in msg and "3" in msg, msg


# ---------------------------------------------------------------------------------------------------
# the AR family: LoRA through the CPU adapter's speed-ups (frozen embedding and output layer) and without


def _ar_lora_runs(data_dir: str, out_root: str) -> dict:
    torch.set_num_threads(1)
    from cosmos_nemo import parallel
    from cosmos_nemo.checkpoint import dist as dist_ckpt
    from cosmos_nemo.data import ARDataConfig
    from cosmos_nemo.models.ar.config import ar_config
    from cosmos_nemo.models.ar.model import build_ar_model
    from cosmos_nemo.peft.lora import LoRAConfig
    from cosmos_nemo.training.config import CheckpointConfig, LogConfig, OptimizerConfig, ParallelConfig, TrainerConfig
    from cosmos_nemo.training.trainer import train

    cfg = ar_config("tiny", vocab_size=64)

    def run(name, steps, peft=None, pretrained=None, accelerations=True):
        return train(cfg, ARDataConfig(paths=[data_dir], split_string="1,0,0", micro_batch_size=1, global_batch_size=2,
                                       seed=3),
                     OptimizerConfig(lr=1e-2, warmup_steps=0, schedule="constant", eps=1e-5, weight_decay=0.0),
                     TrainerConfig(max_steps=steps, val_interval=0, cpu_accelerations=accelerations),
                     CheckpointConfig(output_root=out_root, name=name, save_interval=0,
                                      mode="finetune" if pretrained else "pretrain", pretrained=pretrained),
                     ParallelConfig(), LogConfig(progress_bar=False, tensorboard=False), peft=peft)

    base = run("ar_base", 2)
    out = {}
    for accelerations in (True, False):
        lora = LoRAConfig(targets=["linear_qkv", "linear_proj", "linear_fc1", "linear_fc2"], rank=4, alpha=8)
        summary = run(f"ar_lora_{accelerations}", 4, lora, base["run_dir"], accelerations)
        parallel.setup()
        merged = build_ar_model(cfg)
        dist_ckpt.load_model([merged], summary["checkpoint"] + "/model")  # base + merged adapters
        out[accelerations] = (summary["losses"], {k: v.detach().clone() for k, v in merged.named_parameters()})
        parallel.teardown()
    parallel.setup()
    plain = build_ar_model(cfg)
    dist_ckpt.load_model([plain], base["checkpoint"] + "/model")
    out["base"] = {k: v.detach().clone() for k, v in plain.named_parameters()}
    parallel.teardown()
    return out


@pytest.mark.slow
def test_ar_lora_trains_with_and_without_cpu_accelerations(tmp_path):
    from cosmos_nemo.data import write_pattern_dataset

    write_pattern_dataset(tmp_path / "data", 16, grid=(2, 3, 4), vocab_size=64, seed=1, pattern="ramp")
    out = run_in_processes(_ar_lora_runs, 1, str(tmp_path / "data"), str(tmp_path / "runs"))[0]
    (fast, fast_w), (plain, plain_w), base = out[True], out[False], out["base"]
    assert len(fast) == 4 and all(math.isfinite(v) for v in fast)
    for a, b in zip(fast, plain):
        assert abs(a - b) <= 1e-5 * abs(b), (fast, plain)
    changed = {k for k in base if not np.array_equal(T(fast_w[k]), T(base[k]))}
    # only the adapted linears' weights move (they carry the merged update); embeddings, norms, output stay
    assert changed and all(k.endswith(("linear_qkv.weight", "linear_proj.weight", "linear_fc1.weight",
                                       "linear_fc2.weight")) for k in changed), sorted(changed)
    for key in plain_w:
        np.testing.assert_allclose(fast_w[key], plain_w[key], rtol=1e-5, atol=1e-6, err_msg=key)


def _ar_tp(tp: int, base: str, lora: bool = True, targets=None) -> dict:
    """The tiny AR V2W model with LoRA at TP=tp; the base weights are TP=1's (written to / read from the
    dist-ckpt folder `base`, which re-shards them, fused SwiGLU included)."""
    from cosmos_nemo import parallel
    from cosmos_nemo.checkpoint import dist as dist_ckpt
    from cosmos_nemo.models.ar.config import ar_config
    from cosmos_nemo.models.ar.model import build_ar_model
    from cosmos_nemo.peft.lora import LoRAConfig, apply_lora

    parallel.setup(tensor_parallel=tp, seed=3)
    cfg = ar_config("tiny_v2w")
    model = build_ar_model(cfg).eval()
    if tp == 1:
        dist_ckpt.save_model([model], base)
    else:
        dist_ckpt.load_model([model], base)
    if lora:
        # the six reference targets by default: self- and cross-attention, the MLP
        apply_lora(model, LoRAConfig(rank=4, alpha=8, **({"targets": targets} if targets else {})), seed=5)
        _randomise_adapters(model)
    g = torch.Generator().manual_seed(2)
    grid = (2, 3, 4)
    tokens = torch.randint(0, 1000, (2, 24), generator=g)
    context = torch.randn(2, 5, cfg.context_dim, generator=g)
    with torch.no_grad():
        logits = model(tokens, grid, context=context)
    out = {"logits": logits}
    if lora and tp == 2:  # the adapter checkpoint re-shards: TP=2 writes it ...
        model.lora_info = {"adapter": model.lora_report.describe()}
        dist_ckpt.save_model([model], base + "_adapter")
    elif lora and tp == 1 and os.path.isdir(base + "_adapter"):  # ... and TP=1 reads it
        dist_ckpt.load_model([model], base + "_adapter")
        with torch.no_grad():
            out["reloaded"] = model(tokens, grid, context=context)
    parallel.teardown()
    return out


@pytest.mark.medium
@pytest.mark.distributed
def test_ar_lora_at_tp2_equals_tp1(tmp_path):
    """The tiny AR Video2World model (GQA, SwiGLU, cross-attention) with adapters on the six reference targets."""
    one = run_in_processes(_ar_tp, 1, 1, str(tmp_path / "base"))[0]
    for r in run_in_processes(_ar_tp, 2, 2, str(tmp_path / "base")):
        assert (T(r["logits"]) - T(one["logits"])).abs().max() <= 1e-4
    again = run_in_processes(_ar_tp, 1, 1, str(tmp_path / "base"))[0]  # loads the TP=2 adapter checkpoint
    assert (T(again["reloaded"]) - T(one["logits"])).abs().max() <= 1e-4


@pytest.mark.slow
def test_lora_trains_in_bf16_with_fp32_adapters(base_run):
    """bf16 weights and compute with fp32 adapters: megatron's mixed-precision optimizer keeps them as they are."""
    root, base_dir = base_run
    out = run_in_processes(_train, 1, str(root), "lora_bf16", 2, base_dir, _lora(), 1e-2, "bf16")[0]
    assert len(out["losses"]) == 2 and all(math.isfinite(v) for v in out["losses"])
    inside = run_in_processes(_base_tensor_hashes, 1, out["run_dir"])[0]
    assert {str(T(v).dtype) for v in inside["adapters"].values()} == {"torch.float32"}
    assert any(T(v).abs().sum() > 0 for k, v in inside["adapters"].items() if k.endswith("lora_B"))
