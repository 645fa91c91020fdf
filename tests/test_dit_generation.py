"""Latent generation with a DiT (inference/diffusion.py): reproducible seeds, conditional frames kept, guidance,
and TP=2 equal to TP=1."""

from __future__ import annotations

import pytest
import torch

from cosmos_nemo.parallel.launch import run_in_processes


def _generate(name: str, tp: int, n_cond: int, guidance: float, seeds, solver=None) -> dict:
    """Latents for each seed of `seeds` (one model, one process)."""
    torch.set_num_threads(1)
    from cosmos_nemo import parallel
    from cosmos_nemo.inference.diffusion import GenerationSettings, generate_latents
    from cosmos_nemo.models.dit.config import dit_config
    from cosmos_nemo.models.dit.model import build_dit_model
    from cosmos_nemo.models.common import keymap as km
    from cosmos_nemo.models.dit import convert

    cfg = dit_config(name)
    # the same weights on every layout: a seeded state in the released layout, loaded at `tp`
    g = torch.Generator().manual_seed(0)
    kmap = convert.dit_keymap(cfg)
    weights = {k: 0.05 * torch.randn(s, generator=g) for k, s in sorted(kmap.released_shapes().items())}
    parallel.setup(tensor_parallel=tp)
    model = build_dit_model(cfg).eval()
    km.load_model(model, weights, kmap)
    g = torch.Generator().manual_seed(3)
    shape = (2, 16, 3, 4, 6)
    width = cfg.crossattn_proj_in or cfg.context_dim
    context = torch.randn(2, 5, width, generator=g)
    condition = torch.randn(2, 16, n_cond, 4, 6, generator=g) if n_cond else None
    outs = [generate_latents(model, context, shape, GenerationSettings(steps=4, guidance=guidance, seed=seed,
                                                                       solver=solver), condition=condition, fps=24.0)
            for seed in ([seeds] if isinstance(seeds, int) else seeds)]
    parallel.teardown()
    return {"out": outs[0], "outs": torch.stack(outs), "condition": condition if condition is not None else torch.zeros(0)}


def _run(*args, nprocs: int = 1) -> list[dict]:
    return [{k: torch.from_numpy(v) for k, v in r.items()} for r in run_in_processes(_generate, nprocs, *args)]


@pytest.mark.parametrize("name, solver", [("tiny_predict1_v2w", "euler"), ("tiny_predict1_v2w", "heun"),
                                          ("tiny_predict25", "unipc"), ("tiny_predict25", "euler")])
def test_seeded_generation_keeps_conditional_frames(name, solver):
    r = _run(name, 1, 1, 7.0, [5, 5, 6], solver)[0]
    a, b, c = r["outs"]
    assert torch.isfinite(a).all() and a.shape == (2, 16, 3, 4, 6)
    assert torch.equal(a, b)  # a seed gives the same latents
    assert not torch.allclose(a, c)  # and another seed others
    assert torch.equal(a[:, :, :1], r["condition"])  # the conditional frame is the given latent


@pytest.mark.medium
def test_guidance_changes_the_result():
    g7 = _run("tiny_predict25", 1, 0, 7.0, 5)[0]["out"]
    g0 = _run("tiny_predict25", 1, 0, 0.0, 5)[0]["out"]
    assert not torch.allclose(g7, g0)


@pytest.mark.medium
@pytest.mark.distributed
def test_generation_at_tp2_equals_tp1():
    one = _run("tiny_predict25", 1, 2, 7.0, 5)[0]["out"]
    for result in _run("tiny_predict25", 2, 2, 7.0, 5, nprocs=2):
        assert (result["out"] - one).abs().max() <= 1e-4 * one.abs().max()


def test_text2world_models_refuse_conditional_frames():
    with pytest.raises(RuntimeError, match="Text2World model"):
        run_in_processes(_generate, 1, "tiny_predict1_t2w", 1, 1, 7.0, 5)


def _with_uncond() -> dict:
    torch.set_num_threads(1)
    from cosmos_nemo import parallel
    from cosmos_nemo.inference.diffusion import GenerationSettings, generate_latents
    from cosmos_nemo.models.dit.config import dit_config
    from cosmos_nemo.models.dit.model import build_dit_model

    parallel.setup(seed=0)
    model = build_dit_model(dit_config("tiny_predict25")).eval()
    g = torch.Generator().manual_seed(3)
    context = torch.randn(1, 5, 512, generator=g)
    negative = torch.randn(1, 5, 512, generator=g)
    settings = GenerationSettings(steps=3, guidance=7.0, seed=2)
    shape = (1, 16, 2, 4, 6)
    out = {"default": generate_latents(model, context, shape, settings),
           "zeros": generate_latents(model, context, shape, settings, uncond_context=torch.zeros_like(context)),
           "negative": generate_latents(model, context, shape, settings, uncond_context=negative)}
    parallel.teardown()
    return out


def test_negative_prompt_is_the_unconditional_branch():
    out = {k: torch.from_numpy(v) for k, v in run_in_processes(_with_uncond, 1)[0].items()}
    assert torch.equal(out["default"], out["zeros"])  # no negative prompt: the zero context
    assert not torch.allclose(out["default"], out["negative"])
