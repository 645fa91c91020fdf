"""The Cosmos DiT on megatron-core (models/dit) against independent references.

- Golden parity with NVIDIA's cosmos-predict1 `VideoExtendGeneralDIT` (../shared/golden/dit/dit7b_v2w):
  output, x0 (EDM), per-block hidden states, RoPE table and extra position embedding within 1e-4 (fp32),
  loaded from the Cosmos and the diffusers layouts, at TP=1 and TP=2.
- Predict2/2.5 parity with diffusers' `CosmosTransformer3DModel` (PyPI) at tiny size, weights from one
  random init, per-frame timesteps, text, condition and padding masks (diffusers' q/k-norm eps set to
  NVIDIA's 1e-6, no fps, as NVIDIA's network is called).
- Parameter counts of every named released config equal diffusers' model built on the meta device (+ the
  128-weight Predict1 log-variance head, which diffusers does not have).
- Bad inputs give clear errors.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from cosmos_nemo.parallel.launch import run_in_processes
from diffusers_peer import cosmos_transformer_class

TOL = 1e-4


def _golden_model(folder, weights: str, tp: int = 1):
    from cosmos_nemo import parallel
    from cosmos_nemo.models.dit import convert
    from cosmos_nemo.models.dit.config import dit_config
    from cosmos_nemo.models.dit.model import build_dit_model

    parallel.setup(tensor_parallel=tp)
    # The golden net is the tiny VideoExtendGeneralDIT (no log-variance head: that lives beside net. in model.pt).
    cfg = dit_config("tiny_predict1_v2w", logvar_head=False)
    model = build_dit_model(cfg).eval()
    report = convert.load_released(model, cfg, folder / weights)
    return cfg, model, report


def _golden_errors(folder, weights: str, tp: int) -> dict:
    torch.set_num_threads(1)
    from cosmos_nemo import parallel

    cfg, model, report = _golden_model(folder, weights, tp)
    i, o = load_file(str(folder / "inputs.safetensors")), load_file(str(folder / "outputs.safetensors"))
    aux = load_file(str(folder / "aux.safetensors"))
    with torch.no_grad():
        out, hidden = model(i["x"], i["timesteps"], i["crossattn_emb"], fps=i["fps"], padding_mask=i["padding_mask"],
                            condition_mask=i["condition_video_input_mask"], return_hidden=True)
        grid = tuple(hidden["x_embedder"].shape[1:4])
        rope = model.rope_table(grid, i["fps"], "cpu")
        pos = model.learnable_pos_emb(grid).reshape(*grid, -1)
    sigma, sd = i["sigma"].view(-1, 1, 1, 1, 1), 0.5  # EDM scaling, sigma_data 0.5
    x0 = sd**2 / (sigma**2 + sd**2) * i["xt"] + sigma * sd / (sigma**2 + sd**2).sqrt() * out
    errors = {"output": (out - o["output"]).abs().max().item(), "x0_pred": (x0 - o["x0_pred"]).abs().max().item(),
              "rope": (rope - aux["rope_emb"]).abs().max().item(),
              "extra_pos_emb": (pos - aux["extra_pos_emb"][0]).abs().max().item(),
              "layout": report["layout"]}
    errors.update({f"hidden.{k}": (v - o[f"hidden.{k}"]).abs().max().item() for k, v in hidden.items()})
    parallel.teardown()
    return errors


def _check(errors: dict, layout: str) -> None:
    assert errors.pop("layout") == layout
    assert {"output", "x0_pred", "hidden.x_embedder", "hidden.block0", "hidden.block1"} <= set(errors)
    bad = {k: v for k, v in errors.items() if not v <= TOL}
    assert not bad, f"golden mismatch above {TOL}: {bad}"


@pytest.mark.parametrize("weights, layout", [("weights_cosmos.safetensors", "cosmos1"),
                                             ("weights_diffusers.safetensors", "diffusers")])
def test_golden_tp1(golden, weights, layout):
    _check(run_in_processes(_golden_errors, 1, golden("dit", "dit7b_v2w"), weights, 1)[0], layout)


@pytest.mark.distributed
def test_golden_tp2(golden):
    for errors in run_in_processes(_golden_errors, 2, golden("dit", "dit7b_v2w"), "weights_cosmos.safetensors", 2):
        _check(errors, "cosmos1")


# ---------------------------------------------------------------------------------------------------
# Predict2 / 2.5 against diffusers


def _diffusers_parity(name: str) -> float:
    from cosmos_nemo import parallel
    from cosmos_nemo.models.common import keymap as km
    from cosmos_nemo.models.dit import convert
    from cosmos_nemo.models.dit.config import dit_config
    from cosmos_nemo.models.dit.model import build_dit_model

    peer_class = cosmos_transformer_class()
    torch.manual_seed(0)
    cfg = dit_config(name)
    peer = peer_class(**{k: v for k, v in convert.diffusers_config(cfg).items() if not k.startswith("_")}).eval()
    with torch.no_grad():
        for p in peer.parameters():
            p.normal_(0.0, 0.05)
    # diffusers builds the q/k RMSNorms with eps 1e-5; NVIDIA's networks (and ours) use 1e-6.
    for mod in peer.modules():
        if type(mod).__name__ == "RMSNorm" and getattr(mod, "eps", None) == 1e-5:
            mod.eps = 1e-6
    parallel.setup()
    ours = build_dit_model(cfg).eval()
    km.load_model(ours, peer.state_dict(), convert.dit_keymap(cfg, "diffusers"))
    B, T, H, W = 2, 3, 8, 12
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, 16, T, H, W, generator=g)
    t = torch.rand(B, T, generator=g)  # per-frame, in [0, 1] as diffusers takes them
    text = torch.randn(B, 10, cfg.crossattn_proj_in or cfg.context_dim, generator=g)
    text[1, 6:] = 0  # zero-padded prompt
    cond = torch.zeros(B, 1, T, H, W)
    cond[0, :, :1] = 1
    cond[1, :, :2] = 1
    pad = torch.zeros(1, 1, H * 8, W * 8)
    pad[..., -8:] = 1
    ours_t = t / cfg.timestep_scale if cfg.timestep_scale != 1 else t  # NVIDIA's net: 0..1000 x 0.001 for 2.5
    with torch.no_grad():
        a = ours(x, ours_t, text, padding_mask=pad, condition_mask=cond)
        b = peer(x, t.view(B, 1, T, 1, 1), text, condition_mask=cond, padding_mask=pad, fps=None).sample
    parallel.teardown()
    assert b.abs().max() > 0.5  # a real output, not a degenerate one
    return (a - b).abs().max().item()


@pytest.mark.medium
@pytest.mark.parametrize("name", ["tiny_predict2", "tiny_predict25"])
def test_predict2_parity_with_diffusers(name):
    if cosmos_transformer_class() is None:
        pytest.skip("diffusers (CosmosTransformer3DModel) is not installed")
    err = run_in_processes(_diffusers_parity, 1, name)[0]
    assert err <= TOL, f"{name}: max abs difference to diffusers {err}"


# ---------------------------------------------------------------------------------------------------
# Parameter counts


def _counts() -> dict:
    from cosmos_nemo.models.dit import convert
    from cosmos_nemo.models.dit.config import RELEASED, dit_config
    from cosmos_nemo.models.dit.model import count_parameters

    peer_class = cosmos_transformer_class()
    out = {}
    for name in RELEASED:
        cfg = dit_config(name)
        with torch.device("meta"):
            peer = peer_class(**{k: v for k, v in convert.diffusers_config(cfg).items() if not k.startswith("_")})
        out[name] = (count_parameters(cfg), sum(p.numel() for p in peer.parameters()),
                     cfg.logvar_channels if cfg.logvar_head else 0)
    return out


@pytest.mark.medium
def test_parameter_counts_match_diffusers():
    if cosmos_transformer_class() is None:
        pytest.skip("diffusers (CosmosTransformer3DModel) is not installed")
    counts = run_in_processes(_counts, 1)[0]
    for name, (ours, peer, logvar) in counts.items():
        assert ours == peer + logvar, f"{name}: ours {ours}, diffusers {peer} + logvar {logvar}"
    # Published sizes (diffusion_models.md §1.1, rounded there), and T2W vs V2W: only the patch embedding's extra channel.
    billions = {k: v[0] / 1e9 for k, v in counts.items()}
    assert round(billions["predict1_7b_v2w"], 1) == 7.2 and abs(billions["predict1_14b_v2w"] - 14.2) < 0.15
    assert abs(billions["predict2_2b"] - 1.9) < 0.1
    # Predict2.5 = Predict2 + the text projection Linear(100352 -> 1024, bias)
    assert counts["predict25_2b"][0] - counts["predict2_2b"][0] == 100_352 * 1024 + 1024
    assert counts["predict1_7b_v2w"][0] - counts["predict1_7b_t2w"][0] == 4096 * 1 * 2 * 2
    assert counts["predict1_14b_v2w"][0] - counts["predict1_14b_t2w"][0] == 5120 * 4


# ---------------------------------------------------------------------------------------------------
# Bad inputs


def _bad_inputs() -> list[str]:
    from cosmos_nemo import parallel
    from cosmos_nemo.models.dit.config import dit_config
    from cosmos_nemo.models.dit.model import build_dit_model

    parallel.setup()
    messages = []
    v2w = build_dit_model(dit_config("tiny_predict1_v2w")).eval()
    t2w = build_dit_model(dit_config("tiny_predict1_t2w")).eval()
    p2 = build_dit_model(dit_config("tiny_predict2")).eval()
    x, t, text = torch.randn(1, 16, 2, 4, 4), torch.ones(1), torch.randn(1, 5, 1024)
    cases = [
        lambda: v2w(torch.randn(1, 12, 2, 4, 4), t, text),  # wrong channel count
        lambda: v2w(torch.randn(1, 16, 2, 5, 4), t, text),  # odd latent height
        lambda: t2w(x, t, text, condition_mask=torch.zeros(1, 1, 2, 4, 4)),  # T2W has no condition mask
        lambda: v2w(x, t, torch.randn(1, 5, 512)),  # wrong text width
        lambda: v2w(x, torch.ones(1, 2), text),  # per-frame timesteps to Predict1
        lambda: p2(x, torch.ones(1, 3), text),  # per-frame timesteps of the wrong length
        lambda: v2w(torch.randn(1, 16, 130, 2, 2), t, text),  # more frames than the learnable tables
    ]
    with torch.no_grad():
        for case in cases:
            try:
                case()
                messages.append("no error")
            except ValueError as err:
                messages.append(str(err))
    parallel.teardown()
    return messages


def test_bad_inputs_are_refused_clearly():
    messages = run_in_processes(_bad_inputs, 1)[0]
    expected = ["12 channels", "divisible by the patch size", "Text2World model", "context must be text embeddings",
                "one timestep per sample", "per-frame timesteps must be", "exceeds the learnable position embedding"]
    for message, fragment in zip(messages, expected):
        assert fragment in message, (fragment, message)


def _parallel_refusal(sizes: dict) -> str:
    from cosmos_nemo import parallel
    from cosmos_nemo.models.dit.config import dit_config
    from cosmos_nemo.models.dit.model import build_dit_model

    parallel.setup(**sizes)
    try:
        build_dit_model(dit_config("tiny_predict2"))
        return "no error"
    except ValueError as err:
        return str(err)
    finally:
        parallel.teardown()


@pytest.mark.distributed
@pytest.mark.cpu_only
def test_pipeline_and_cpu_context_parallel_are_refused():
    for message in run_in_processes(_parallel_refusal, 2, dict(pipeline_parallel=2)):
        assert "does not support pipeline parallelism" in message
    for message in run_in_processes(_parallel_refusal, 2, dict(context_parallel=2)):
        assert "context parallelism of the DiT needs GPUs" in message


# ---------------------------------------------------------------------------------------------------
# Predict2.5's float32 paths in a bf16 model


def _fp32_paths() -> dict:
    from cosmos_nemo import parallel
    from cosmos_nemo.models.dit.config import dit_config
    from cosmos_nemo.models.dit.model import build_dit_model

    parallel.setup()
    torch.manual_seed(0)
    cfg = dit_config("tiny_predict25")
    ref = build_dit_model(cfg).eval()
    with torch.no_grad():  # weights exactly representable in bf16, so both models hold the same numbers
        for p in ref.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    half = build_dit_model(cfg, dtype=torch.bfloat16).eval()
    half.load_state_dict({k: v.to(torch.bfloat16) if torch.is_tensor(v) else v for k, v in ref.state_dict().items()})
    plain = build_dit_model(cfg.replace(fp32_time_and_final=False), dtype=torch.bfloat16).eval()
    plain.load_state_dict(half.state_dict())
    t = torch.tensor([[3.0, 500.0, 999.0]])
    with torch.no_grad():
        emb_ref, lora_ref = ref.time_embedding(t)
        emb_half, lora_half = half.time_embedding(t)
        emb_plain, lora_plain = plain.time_embedding(t)
    parallel.teardown()
    return {"half_equal": bool(torch.equal(emb_half, emb_ref.to(torch.bfloat16)) and
                               torch.equal(lora_half, lora_ref.to(torch.bfloat16))),
            "plain_err": float((lora_plain.float() - lora_ref).abs().max()),
            "half_err": float((lora_half.float() - lora_ref).abs().max()), "dtype": str(emb_half.dtype)}


def test_predict25_time_embedding_is_float32_in_a_bf16_model():
    out = run_in_processes(_fp32_paths, 1)[0]
    # computed in fp32 then rounded once: exactly the fp32 model's values in bf16; the all-bf16 path is not
    assert out["half_equal"] and out["dtype"] == "torch.bfloat16", out
    assert out["plain_err"] > out["half_err"], out
