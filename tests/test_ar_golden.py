"""Golden parity with NVIDIA's cosmos-predict1 AR transformer (../shared/golden/ar/ar4b_base).

Our megatron model, loaded from the golden `weights.safetensors` through the checkpoint import path,
must give the golden logits, per-layer hidden states and KV-cache prefill+decode logits within 1e-5
(float32), at TP=1, TP=2 and PP=2 (the last through megatron's pipeline schedule).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cosmos_nemo.parallel.launch import run_in_processes

TOL = 1e-5


def golden_config(folder: Path):
    """An ARModelConfig from the golden's recorded native config (no size special-casing)."""
    from cosmos_nemo.models.ar.config import ar_config_from_reference

    recorded = json.loads((folder / "config.json").read_text())
    cfg = ar_config_from_reference(recorded["model_config"], recorded["tokenizer_config"], name="golden")
    vocab = recorded["derived"]["vocab"]
    assert (cfg.vocab_size, cfg.output_vocab_size) == (vocab["tok_embeddings_rows"], vocab["output_rows"])
    return cfg


def _build_loaded(folder: Path, tp: int = 1, pp: int = 1):
    from cosmos_nemo import parallel
    from cosmos_nemo.models.ar.convert import load_released
    from cosmos_nemo.models.ar.model import build_ar_model

    parallel.setup(tensor_parallel=tp, pipeline_parallel=pp)
    cfg = golden_config(folder)
    model = build_ar_model(cfg)
    load_released(model, folder / "weights.safetensors")
    model.eval()
    return cfg, model


def _forward_with_hidden(model, tokens, grid):
    hidden = {}
    hooks = [layer.register_forward_hook(lambda m, a, o, i=i: hidden.__setitem__(f"hidden.layer{i}", o[0].transpose(0, 1)))
             for i, layer in enumerate(model.decoder.layers)]
    hooks.append(model.decoder.final_layernorm.register_forward_hook(
        lambda m, a, o: hidden.__setitem__("hidden.final_norm", o.transpose(0, 1))))
    with torch.no_grad():
        logits = model(tokens, grid=grid)
    for h in hooks:
        h.remove()
    return logits, hidden


def _decode(model, tokens, grid, prefill: int):
    from cosmos_nemo.models.ar.model import make_inference_context

    ctx = make_inference_context(tokens.shape[0], tokens.shape[1])
    with torch.no_grad():
        prefill_logits = model(tokens[:, :prefill], grid=grid, inference_context=ctx)
        ctx.sequence_len_offset += prefill
        steps = []
        for p in range(prefill, tokens.shape[1]):
            steps.append(model(tokens[:, p : p + 1], grid=grid, inference_context=ctx))
            ctx.sequence_len_offset += 1
    return prefill_logits, torch.cat(steps, dim=1)


def _max_errors(folder: Path, tp: int) -> dict:
    """Run at the given TP in this process (rank of a group); return max abs errors against the golden."""
    torch.set_num_threads(1)
    from cosmos_nemo import parallel

    cfg, model = _build_loaded(folder, tp=tp)
    grid = cfg.max_grid
    inp, out = load_file(str(folder / "inputs.safetensors")), load_file(str(folder / "outputs.safetensors"))
    logits, hidden = _forward_with_hidden(model, inp["tokens"], grid)
    errors = {"logits": (logits - out["logits"]).abs().max().item()}
    errors.update({k: (v - out[k]).abs().max().item() for k, v in hidden.items()})
    prefill_logits, decode_logits = _decode(model, inp["tokens"], grid, int(inp["decode_prefill_len"]))
    errors["decode_prefill_logits"] = (prefill_logits - out["decode_prefill_logits"]).abs().max().item()
    errors["decode_logits"] = (decode_logits - out["decode_logits"]).abs().max().item()
    parallel.teardown()
    return errors


def _check(errors: dict) -> None:
    expected = {"logits", "hidden.layer0", "hidden.layer1", "hidden.final_norm", "decode_prefill_logits", "decode_logits"}
    assert expected <= set(errors), errors
    bad = {k: v for k, v in errors.items() if not v <= TOL}
    assert not bad, f"golden mismatch above {TOL}: {bad}"


@pytest.mark.medium
def test_golden_tp1(golden):
    _check(run_in_processes(_max_errors, 1, golden("ar", "ar4b_base"), 1)[0])


@pytest.mark.slow
@pytest.mark.distributed
def test_golden_tp2(golden):
    results = run_in_processes(_max_errors, 2, golden("ar", "ar4b_base"), 2)
    for errors in results:
        _check(errors)


def _pp2_losses(folder: Path) -> list:
    """PP=2 through megatron's forward-only pipeline schedule: per-token CE of the golden labels."""
    torch.set_num_threads(1)
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from cosmos_nemo import parallel

    cfg, model = _build_loaded(folder, pp=2)
    tokens = load_file(str(folder / "inputs.safetensors"))["tokens"]
    labels = torch.roll(tokens, -1, dims=1)
    grid = cfg.max_grid

    def forward_step(data_iterator, model):
        batch = next(data_iterator)
        loss = model(batch["tokens"], grid=grid, labels=batch["labels"])
        return loss, lambda out: (out.sum(), {"per_token": out.detach().clone()})

    with torch.no_grad():
        results = get_forward_backward_func()(
            forward_step_func=forward_step, data_iterator=iter([{"tokens": tokens, "labels": labels}]), model=[model],
            num_microbatches=1, seq_length=tokens.shape[1], micro_batch_size=tokens.shape[0], forward_only=True,
        )
    from cosmos_nemo.models.ar.convert import export_released

    exported = {k: v.numpy() for k, v in export_released(model, prefix="").items()}
    parallel.teardown()
    # numpy, not tensors: torch's shared-memory handles would not outlive this worker
    return [r["per_token"].numpy() for r in results], exported


@pytest.mark.slow
@pytest.mark.distributed
def test_golden_pp2_pipeline_schedule(golden):
    folder = golden("ar", "ar4b_base")
    (first, stage0), (last, stage1) = run_in_processes(_pp2_losses, 2, folder)
    assert first == []  # only the last stage computes the loss
    # each stage exports its own layers under global indices; merged, they are the golden weights
    from cosmos_nemo.models.ar.convert import merge_pipeline_exports

    weights = load_file(str(folder / "weights.safetensors"))
    assert "layers.1.attention.wq.weight" in stage1 and "layers.1.attention.wq.weight" not in stage0
    merged = merge_pipeline_exports([{k: torch.from_numpy(v) for k, v in part.items()} for part in (stage0, stage1)],
                                    golden_config(folder), prefix="")
    assert merged.keys() == weights.keys() and all(torch.equal(merged[k], weights[k]) for k in weights)
    tokens = load_file(str(folder / "inputs.safetensors"))["tokens"]
    logits = load_file(str(folder / "outputs.safetensors"))["logits"]
    labels = torch.roll(tokens, -1, dims=1)
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="none")
    torch.testing.assert_close(torch.from_numpy(last[0]).reshape(-1), expected, atol=TOL, rtol=0)
