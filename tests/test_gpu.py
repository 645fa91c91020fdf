"""The GPU tier: the same library on CUDA with NCCL (skipped with the reason where torch sees no GPU).

Every check runs in fresh processes launched with `run_in_processes(..., backend="nccl")` (one GPU per
rank), so nothing from the CPU tests run in the pytest process (the CPU adapter, a gloo group) leaks in:

- the Transformer Engine layer spec computes what the local spec computes (weights copied across the two
  layouts by the AR key map; TE fuses the pre-norms into `linear_qkv`/`linear_fc1`);
- a bf16 run of `train()` lowers the loss;
- a dist-ckpt written on the GPU reloads bit-identically;
- with two GPUs, TP=2 over NCCL matches one GPU's losses (local spec in strict fp32, and TE);
- the DiT (local and TE specs) gives the golden reference output on the GPU, and with two GPUs context
  parallelism (tokens split by latent frames, TE attention) matches one GPU.
"""

from __future__ import annotations

import importlib.util
import math
import os

import pytest
import torch

from cosmos_nemo.data import ARDataConfig, write_pattern_dataset
from cosmos_nemo.models.ar.config import ar_config
from cosmos_nemo.parallel.launch import run_in_processes
from cosmos_nemo.training.config import CheckpointConfig, LogConfig, OptimizerConfig, ParallelConfig, TrainerConfig

pytestmark = [pytest.mark.gpu, pytest.mark.distributed]

VOCAB = 64
GRID = (2, 4, 4)
HAVE_TE = importlib.util.find_spec("transformer_engine") is not None
needs_te = pytest.mark.skipif(not HAVE_TE, reason="Transformer Engine is not installed (pip install .[gpu])")


def _gpus() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _strict_fp32() -> None:
    """Full-precision fp32 matmuls in this (fresh) process: NGC containers set
    TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1, which torch reads once, at its first cuBLAS call."""
    os.environ.pop("TORCH_ALLOW_TF32_CUBLAS_OVERRIDE", None)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu")
    write_pattern_dataset(root / "data", 40, grid=GRID, vocab_size=VOCAB, seed=0, pattern="ramp")
    return root


def test_gloo_is_refused_where_cuda_is_visible():
    from cosmos_nemo import parallel

    with pytest.raises(RuntimeError, match="CUDA is visible"):
        parallel.resolve_backend("gloo")
    assert parallel.resolve_backend() == "nccl"


# -------------------------------------------------------------------------------------------------
# Transformer Engine spec vs local spec


def _randomise(model, seed: int) -> None:
    """Weights whose every part matters to the output: matrices ~ N(0, 1/fan_in), norm gains 1 + N(0, 0.2²)
    (all-ones gains, as initialised, would hide a norm copied to the wrong place)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            noise = torch.randn(p.shape, generator=g)
            value = 1 + 0.2 * noise if p.dim() == 1 else noise / math.sqrt(p.shape[-1])
            p.copy_(value.to(p.device, p.dtype))


def _te_vs_local() -> dict:
    from cosmos_nemo import parallel
    from cosmos_nemo.models.ar.convert import export_released, load_released
    from cosmos_nemo.models.ar.model import build_ar_model

    _strict_fp32()
    parallel.setup(seed=5)
    local_cfg = ar_config("tiny", vocab_size=VOCAB, use_te=False)
    te_cfg = ar_config("tiny", vocab_size=VOCAB, use_te=True)
    local, te = build_ar_model(local_cfg).cuda(), build_ar_model(te_cfg).cuda()
    te_keys, local_keys = set(te.state_dict()), set(local.state_dict())
    _randomise(local, seed=0)
    released = {k: v.detach().clone() for k, v in export_released(local).items()}
    load_released(te, released)
    back = export_released(te)
    same_export = back.keys() == released.keys() and all(torch.equal(back[k], released[k]) for k in released)

    length = local_cfg.layout(GRID).input_length
    g = torch.Generator(device="cpu").manual_seed(1)
    tokens = torch.randint(0, VOCAB, (2, length), generator=g).cuda()
    labels = torch.randint(0, VOCAB, (2, length), generator=g).cuda()
    local.eval()
    te.eval()
    with torch.no_grad():
        a, b = local(tokens, GRID).float(), te(tokens, GRID).float()
        loss_a, loss_b = local(tokens, GRID, labels=labels).mean(), te(tokens, GRID, labels=labels).mean()
    out = dict(
        te_fused_norms=any(k.endswith("self_attention.linear_qkv.layer_norm_weight") for k in te_keys)
        and any(k.endswith("mlp.linear_fc1.layer_norm_weight") for k in te_keys),
        local_separate_norms=any(k.endswith("input_layernorm.weight") for k in local_keys)
        and not any(k.endswith("layer_norm_weight") for k in local_keys),
        same_export=same_export,
        logits_rel=float((a - b).norm() / a.norm()),
        logits_std=float(a.std()),
        loss_local=float(loss_a),
        loss_te=float(loss_b),
        shape=tuple(a.shape),
    )
    parallel.teardown()
    return out


@needs_te
def test_transformer_engine_spec_matches_local_spec():
    out = run_in_processes(_te_vs_local, 1, backend="nccl")[0]
    assert out["te_fused_norms"] and out["local_separate_norms"], out
    assert out["same_export"], "load_released/export_released did not round-trip through the TE layout"
    assert out["shape"][-1] == VOCAB and out["logits_std"] > 0.3, out  # logits that every weight shapes
    # TE runs fp32 GEMMs in TF32 (cublaslt_gemm.cu: CUBLAS_COMPUTE_32F_FAST_TF32), 10-bit mantissas: a
    # relative error around 1e-3 on these logits; a layout or norm mistake moves them by O(1).
    assert out["logits_rel"] < 5e-3, out
    assert abs(out["loss_te"] - out["loss_local"]) <= 2e-3 * abs(out["loss_local"]), out


# -------------------------------------------------------------------------------------------------
# Training through train(), and dist-ckpt, on the GPU


def _train(data_dir: str, out_root: str, name: str, max_steps: int, precision: str = "fp32", tp: int = 1,
           use_te=None, init: str | None = None, write_init: bool = False, strict_fp32: bool = False) -> dict:
    from cosmos_nemo.training.trainer import train

    if strict_fp32:
        _strict_fp32()
    model = ar_config("tiny", vocab_size=VOCAB, use_te=use_te)
    if write_init:
        _write_weights(model, init, seed=11)
    out = train(
        model,
        ARDataConfig(paths=[data_dir], split_string="1,0,0", micro_batch_size=2, global_batch_size=4, seed=5),
        OptimizerConfig(lr=3e-3, warmup_steps=1, eps=1e-5),
        TrainerConfig(max_steps=max_steps, precision=precision, val_interval=0, seed=3),
        CheckpointConfig(output_root=out_root, name=name, save_interval=0, keep_last=1,
                         mode="finetune" if init else "pretrain", pretrained=init),
        ParallelConfig(tensor=tp),
        LogConfig(progress_bar=False, tensorboard=False),
    )
    out["max_memory_allocated"] = torch.cuda.max_memory_allocated()
    return out


def _train_kw(kwargs: dict) -> dict:
    return _train(**kwargs)


def _write_weights(cfg, folder: str, seed: int, dtype: torch.dtype = torch.float32) -> None:
    from megatron.core import dist_checkpointing

    from cosmos_nemo import parallel
    from cosmos_nemo.models.ar.model import build_ar_model

    parallel.setup(seed=seed)
    model = build_ar_model(cfg, dtype=dtype)
    os.makedirs(folder)
    dist_checkpointing.save(model.sharded_state_dict(), folder)
    parallel.teardown()


def test_bf16_training_lowers_the_loss(dataset):
    out = run_in_processes(_train_kw, 1, dict(data_dir=str(dataset / "data"), out_root=str(dataset / "runs"),
                                              name="bf16", max_steps=8, precision="bf16"), backend="nccl")[0]
    losses = out["losses"]
    assert len(losses) == 8 and all(math.isfinite(x) for x in losses), losses
    assert losses[0] > 0.8 * math.log(VOCAB), losses  # starts near chance ...
    assert losses[-1] < losses[0] - 0.5, losses  # ... and learns the pattern
    assert out["max_memory_allocated"] > 0  # the model and its activations lived on the GPU
    assert os.path.isfile(os.path.join(out["checkpoint"], "model", ".metadata"))


def _tensors(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if torch.is_tensor(v) and "_extra_state" not in k}


def _dist_ckpt_roundtrip(folder: str, dtype_name: str) -> dict:
    from megatron.core import dist_checkpointing

    from cosmos_nemo import parallel
    from cosmos_nemo.models.ar.model import build_ar_model

    dtype = getattr(torch, dtype_name)
    cfg = ar_config("tiny", vocab_size=VOCAB)  # the GPU's default spec: Transformer Engine when installed
    parallel.setup(seed=1)
    written = build_ar_model(cfg, dtype=dtype)
    expected = _tensors(written)
    os.makedirs(folder)
    dist_checkpointing.save(written.sharded_state_dict(), folder)
    del written
    parallel.teardown()

    parallel.setup(seed=2)  # another seed: other initial weights, replaced by the load
    model = build_ar_model(cfg, dtype=dtype)
    before = _tensors(model)
    loaded = dist_checkpointing.load(model.sharded_state_dict(), folder, strict="raise_all")
    model.load_state_dict(loaded, strict=True)
    after = _tensors(model)
    out = dict(
        keys=len(after),
        same_keys=after.keys() == expected.keys(),
        devices=sorted({v.device.type for v in after.values()}),
        dtypes=sorted({str(v.dtype) for v in after.values() if v.is_floating_point()}),
        matrices=sum(v.dim() >= 2 for v in after.values()),
        # Norm gains start at 1 in both builds; every weight matrix must have been replaced by the load.
        unchanged_matrices=[k for k in after if after[k].dim() >= 2 and torch.equal(before[k], after[k])],
        mismatched=[k for k in expected if not torch.equal(expected[k], after[k])],
    )
    parallel.teardown()
    return out


@pytest.mark.parametrize("dtype_name", ["float32", "bfloat16"])
def test_dist_ckpt_save_and_load_on_the_gpu(tmp_path, dtype_name):
    out = run_in_processes(_dist_ckpt_roundtrip, 1, str(tmp_path / "ckpt"), dtype_name, backend="nccl")[0]
    assert out["keys"] > 10 and out["same_keys"] and out["devices"] == ["cuda"], out
    assert out["dtypes"] == [f"torch.{dtype_name}"], out
    assert out["matrices"] >= 8 and out["unchanged_matrices"] == [], out  # the load replaced other weights
    assert out["mismatched"] == [], out  # every tensor is the saved one, bit for bit


# -------------------------------------------------------------------------------------------------
# TP=2 over NCCL


@pytest.mark.skipif(_gpus() < 2, reason="TP=2 with NCCL needs two GPUs")
@pytest.mark.parametrize("use_te,rtol", [
    # torch fp32 matmuls in full precision: only the reduction order differs, as on the CPU.
    (False, 1e-5),
    # TE's fp32 GEMMs run in TF32, and TP=2 splits them at other sizes: ~1e-4 on the mean loss.
    pytest.param(True, 2e-3, marks=needs_te),
])
def test_tp2_nccl_matches_one_gpu(dataset, use_te, rtol):
    tag = "te" if use_te else "local"
    common = dict(data_dir=str(dataset / "data"), out_root=str(dataset / "runs"), max_steps=5, use_te=use_te,
                  init=str(dataset / f"init_{tag}"), strict_fp32=not use_te)
    ref = run_in_processes(_train_kw, 1, dict(common, name=f"tp1_{tag}", write_init=True), backend="nccl")[0]
    tp2 = run_in_processes(_train_kw, 2, dict(common, name=f"tp2_{tag}", tp=2), backend="nccl")
    assert tp2[0]["losses"] == tp2[1]["losses"]
    assert ref["losses"][-1] < ref["losses"][0] - 0.5, ref["losses"]
    for step, (a, b) in enumerate(zip(tp2[0]["losses"], ref["losses"], strict=True), start=1):
        assert abs(a - b) <= rtol * abs(b), f"step {step}: TP=2 {a} vs TP=1 {b}"


# -------------------------------------------------------------------------------------------------
# The DiT on the GPU: the Transformer Engine spec against the golden reference, and context parallelism


def _dit_golden_on_gpu(folder: str, use_te: bool, cp: int) -> dict:
    from pathlib import Path

    from safetensors.torch import load_file

    from cosmos_nemo import parallel
    from cosmos_nemo.models.dit import convert
    from cosmos_nemo.models.dit.config import dit_config
    from cosmos_nemo.models.dit.model import build_dit_model

    _strict_fp32()
    parallel.setup(context_parallel=cp)
    folder = Path(folder)
    cfg = dit_config("tiny_predict1_v2w", logvar_head=False, use_te=use_te)
    model = build_dit_model(cfg).cuda().eval()
    convert.load_released(model, cfg, folder / "weights_cosmos.safetensors")
    i = {k: v.cuda() for k, v in load_file(str(folder / "inputs.safetensors")).items()}
    expected = load_file(str(folder / "outputs.safetensors"))["output"]
    with torch.no_grad():
        out = model(i["x"], i["timesteps"], i["crossattn_emb"], fps=i["fps"], padding_mask=i["padding_mask"],
                    condition_mask=i["condition_video_input_mask"]).cpu()
    parallel.teardown()
    return {"max_abs": float((out - expected).abs().max()), "scale": float(expected.abs().max())}


@pytest.mark.parametrize("use_te", [False, pytest.param(True, marks=needs_te)])
def test_dit_golden_on_the_gpu(golden, use_te):
    out = run_in_processes(_dit_golden_on_gpu, 1, str(golden("dit", "dit7b_v2w")), use_te, 1, backend="nccl")[0]
    # local spec in strict fp32: the CPU tolerance; TE's fp32 GEMMs are TF32 (~1e-3 relative)
    assert out["max_abs"] <= (5e-3 * out["scale"] if use_te else 1e-4), out


@needs_te
def test_dit_context_parallel_matches_one_gpu(golden):
    if _gpus() < 2:
        pytest.skip("context parallelism needs 2 GPUs")
    folder = str(golden("dit", "dit7b_v2w"))
    one = run_in_processes(_dit_golden_on_gpu, 1, folder, True, 1, backend="nccl")[0]
    for out in run_in_processes(_dit_golden_on_gpu, 2, folder, True, 2, backend="nccl"):
        assert abs(out["max_abs"] - one["max_abs"]) <= 5e-3 * one["scale"], (out, one)
