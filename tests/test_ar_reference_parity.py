"""Our megatron model against an independent pure-torch transcription of the reference forward.

`reference_forward` below follows cosmos-predict1's `Transformer.forward` step by step on the released
key layout (no megatron, no code shared with the library): embedding; per layer, optional abs-PE add,
`h = x + attn(attention_norm(x))` with per-head RMSNorm on q/k before rotate-half RoPE, GQA by
repeat_interleave, causal mask; V2W `h += cross_attn(cross_attention_norm(h), context)` without RoPE;
`out = h + w2(silu(w1 x) * w3 x)`; final norm; output. It is first checked against the golden outputs
of NVIDIA's code, then used for what the golden folder does not cover: Video2World (cross-attention to
384-wide context, abs-PE before every layer, BOV/PAD zero rows, 64064/64000 vocab) and YaRN.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

TOL = 1e-5


# --------------------------------------------------------------------------------------------------
# Independent reference


def _rms(x, w, eps=1e-5):
    return (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)).type_as(x) * w


def _ref_rope_cos_sin(grid, head_dim, theta, yarn, prefix, length):
    """Reference `RotaryPositionEmbedding` 3D tables (float32), BOV row and padding as zero angles."""
    T, H, W = grid
    dim_h = head_dim // 6 * 2
    dim_t = head_dim - 2 * dim_h
    spatial = 1.0 / (theta ** (torch.arange(0, dim_h, 2)[: dim_h // 2].float() / dim_h))
    temporal = 1.0 / (theta ** (torch.arange(0, dim_t, 2)[: dim_t // 2].float() / dim_t))
    if yarn is not None:
        def factors(f, L):
            hi, lo = 2 * math.pi * yarn["beta_fast"] / L, 2 * math.pi * yarn["beta_slow"] / L
            m = torch.clamp((f - lo) / (hi - lo), min=0, max=1)
            return (1 - m) / yarn["scale"] + m
        spatial = spatial * factors(spatial, yarn["original"][1])
        temporal = temporal * factors(temporal, yarn["original"][0])
    seq = torch.arange(max(grid), dtype=torch.float)
    et, eh, ew = torch.outer(seq[:T], temporal), torch.outer(seq[:H], spatial), torch.outer(seq[:W], spatial)
    emb = torch.cat([et[:, None, None].expand(T, H, W, -1), eh[None, :, None].expand(T, H, W, -1),
                     ew[None, None].expand(T, H, W, -1)] * 2, dim=-1).reshape(T * H * W, head_dim)
    emb = torch.cat([torch.zeros(prefix, head_dim), emb, torch.zeros(length - prefix - T * H * W, head_dim)])
    return torch.cos(emb), torch.sin(emb)


def _ref_abs_pe(grid, dim, prefix, length):
    """Reference `SinCosPosEmbAxisTE`: float64 numpy tables stored in bfloat16."""
    T, H, W = grid
    dim_h = dim // 6 * 2
    dim_t = dim - 2 * dim_h

    def table(d, n):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", np.arange(n).astype(np.float64), omega)
        return torch.from_numpy(np.concatenate([np.sin(out), np.cos(out)], axis=1)).to(torch.bfloat16)

    t, h, w = table(dim_t, T), table(dim_h, H), table(dim_h, W)
    emb = torch.cat([t[:, None, None].expand(T, H, W, -1), h[None, :, None].expand(T, H, W, -1),
                     w[None, None].expand(T, H, W, -1)], dim=-1).reshape(T * H * W, dim)
    z = lambda n: torch.zeros(n, dim, dtype=torch.bfloat16)  # noqa: E731
    return torch.cat([z(prefix), emb, z(length - prefix - T * H * W)])


def _rotate(x, cos, sin):
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


def _attention(sd, p, x, kv_in, heads, kv_heads, hd, cos=None, sin=None, causal=True, mask=None):
    b, s, _ = x.shape
    sk = kv_in.shape[1]
    q = (x @ sd[p + "wq.weight"].T).view(b, s, heads, hd)
    k = (kv_in @ sd[p + "wk.weight"].T).view(b, sk, kv_heads, hd)
    v = (kv_in @ sd[p + "wv.weight"].T).view(b, sk, kv_heads, hd)
    q, k = _rms(q, sd[p + "q_norm.weight"]), _rms(k, sd[p + "k_norm.weight"])
    if cos is not None:
        q, k = _rotate(q, cos[:, None], sin[:, None]), _rotate(k, cos[:, None], sin[:, None])
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    k, v = k.repeat_interleave(heads // kv_heads, 1), v.repeat_interleave(heads // kv_heads, 1)
    attn_mask = torch.tril(torch.ones(s, sk, dtype=torch.bool)) if causal else mask
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=1 / math.sqrt(hd))
    return out.transpose(1, 2).reshape(b, s, heads * hd) @ sd[p + "wo.weight"].T


def reference_forward(sd, tokens, grid, *, layers, heads, kv_heads, hd, theta=500000.0, yarn=None,
                      v2w=False, context=None, context_mask=None, pad_to=64):
    L = tokens.shape[1]
    n = grid[0] * grid[1] * grid[2]
    prefix = 1 if v2w else 0
    length = -(-(prefix + n) // pad_to) * pad_to if v2w else n
    cos, sin = _ref_rope_cos_sin(grid, hd, theta, yarn, prefix, length)
    cos, sin = cos[:L], sin[:L]
    abs_pe = _ref_abs_pe(grid, sd["tok_embeddings.weight"].shape[1], prefix, length)[:L] if v2w else None
    h = sd["tok_embeddings.weight"][tokens]
    hidden = []
    for i in range(layers):
        p = f"layers.{i}."
        if v2w:
            h = h + abs_pe
        h = h + _attention(sd, p + "attention.", _rms(h, sd[p + "attention_norm.weight"]),
                           _rms(h, sd[p + "attention_norm.weight"]), heads, kv_heads, hd, cos, sin)
        if v2w:
            mask = None if context_mask is None else context_mask[:, None, None, :]
            h = h + _attention(sd, p + "cross_attention.", _rms(h, sd[p + "cross_attention_norm.weight"]), context,
                               heads, kv_heads, hd, causal=False, mask=mask)
        x = _rms(h, sd[p + "ffn_norm.weight"])
        w1, w2, w3 = (sd[p + f"feed_forward.{n_}.weight"] for n_ in ("w1", "w2", "w3"))
        h = h + (torch.nn.functional.silu(x @ w1.T) * (x @ w3.T)) @ w2.T
        hidden.append(h)
    h = _rms(h, sd["norm.weight"])
    return h @ sd["output.weight"].T, hidden


def random_cosmos_state(cfg, seed=0):
    """Random weights in the released layout, scaled so activations stay O(1)."""
    from cosmos_nemo.models.ar.convert import expected_released_shapes

    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, shape in sorted(expected_released_shapes(cfg).items()):
        if len(shape) == 1:
            out[k] = 1.0 + 0.1 * torch.randn(shape, generator=g)
        else:
            out[k] = torch.randn(shape, generator=g) / math.sqrt(shape[-1]) * (1.0 if "tok_emb" not in k else math.sqrt(shape[-1]))
    return out


# --------------------------------------------------------------------------------------------------
# Tests


def test_reference_transcription_matches_golden(golden):
    folder = golden("ar", "ar4b_base")
    sd = load_file(str(folder / "weights.safetensors"))
    inp, out = load_file(str(folder / "inputs.safetensors")), load_file(str(folder / "outputs.safetensors"))
    logits, hidden = reference_forward(sd, inp["tokens"], (3, 4, 6), layers=2, heads=4, kv_heads=2, hd=64)
    torch.testing.assert_close(logits, out["logits"], atol=TOL, rtol=0)
    torch.testing.assert_close(hidden[1], out["hidden.layer1"], atol=TOL, rtol=0)


def _load_model(cfg, sd):
    from cosmos_nemo.models.ar.convert import load_released
    from cosmos_nemo.models.ar.model import build_ar_model

    model = build_ar_model(cfg)
    load_released(model, sd)
    return model.eval()


def test_v2w_tiny_matches_reference_with_384_wide_context(single_process):
    from cosmos_nemo.models.ar.config import ar_config
    from cosmos_nemo.tokenizers.grid import v2w_layout

    cfg = ar_config("tiny_v2w", num_layers=2)  # context_dim 384 (MiniLM width), 64064 rows, 64000 outputs
    assert cfg.context_dim == 384 and cfg.vocab_size == 64064 and cfg.output_vocab_size == 64000
    sd = random_cosmos_state(cfg, seed=1)
    model = _load_model(cfg, sd)
    grid = (2, 3, 5)
    layout = v2w_layout(grid)  # 1 + 30 -> 64 input tokens
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 64000, (2, layout.num_video_tokens), generator=g)
    tokens = torch.tensor([layout.stored_tokens(row.tolist())[:-1] for row in ids])
    assert tokens.shape == (2, 64) and (tokens[:, 0] == 64000).all() and (tokens[:, -1] == 64002).all()
    context = torch.randn(2, 7, 384, generator=g)
    context[1, 5:] = 0  # padded T5 positions are zero and unmasked, as in the reference
    with torch.no_grad():
        logits = model(tokens, grid=grid, context=context)
    ref, _ = reference_forward(sd, tokens, grid, layers=2, heads=4, kv_heads=2, hd=64, v2w=True, context=context)
    assert logits.shape == (2, 64, 64000)
    torch.testing.assert_close(logits, ref, atol=TOL, rtol=0)

    # A context mask (True = attend) reaches the cross-attention.
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 5:] = False
    with torch.no_grad():
        masked = model(tokens, grid=grid, context=context, context_mask=mask)
    ref_masked, _ = reference_forward(sd, tokens, grid, layers=2, heads=4, kv_heads=2, hd=64, v2w=True,
                                      context=context, context_mask=mask)
    torch.testing.assert_close(masked, ref_masked, atol=TOL, rtol=0)
    assert not torch.allclose(masked[1], logits[1], atol=1e-4)

    # KV-cache generation reproduces the full forward (cross-attention K/V cached after the prefill).
    from cosmos_nemo.models.ar.model import make_inference_context

    ctx = make_inference_context(2, 64)
    with torch.no_grad():
        steps = [model(tokens[:, :20], grid=grid, context=context, inference_context=ctx)]
        ctx.sequence_len_offset += 20
        for p in range(20, 24):
            steps.append(model(tokens[:, p : p + 1], grid=grid, context=context, inference_context=ctx))
            ctx.sequence_len_offset += 1
    torch.testing.assert_close(torch.cat(steps, 1), logits[:, :24], atol=TOL, rtol=0)
    # last_token_only: the prefill materialises only the last position's logits
    ctx = make_inference_context(2, 64, last_token_only=True)
    with torch.no_grad():
        last = model(tokens[:, :20], grid=grid, context=context, inference_context=ctx)
    assert last.shape == (2, 1, 64000)
    torch.testing.assert_close(last[:, 0], logits[:, 19], atol=TOL, rtol=0)

    # With labels the model returns megatron's per-token vocab-parallel cross-entropy.
    labels = torch.randint(0, 64000, tokens.shape, generator=g)
    with torch.no_grad():
        loss = model(tokens, grid=grid, context=context, labels=labels)
    expected = torch.nn.functional.cross_entropy(ref.reshape(-1, 64000), labels.reshape(-1), reduction="none")
    torch.testing.assert_close(loss.reshape(-1), expected, atol=1e-4, rtol=1e-5)


def test_yarn_model_matches_reference(single_process):
    from cosmos_nemo.models.ar.config import ARModelConfig
    from cosmos_nemo.models.common.rope import YarnConfig

    yarn = YarnConfig(scale=2.0, beta_fast=4.0, beta_slow=1.0, original_latent_shape=(2, 4, 6))
    cfg = ARModelConfig(name="tiny_yarn", num_layers=2, hidden_size=128, num_attention_heads=4, num_query_groups=2,
                        kv_channels=32, ffn_hidden_size=256, vocab_size=500, yarn=yarn, max_grid=(3, 8, 6))
    sd = random_cosmos_state(cfg, seed=3)
    model = _load_model(cfg, sd)
    grid = (3, 8, 6)
    tokens = torch.randint(0, 500, (1, 144), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        logits = model(tokens, grid=grid)
    y = dict(scale=2.0, beta_fast=4.0, beta_slow=1.0, original=(2, 4, 6))
    ref, _ = reference_forward(sd, tokens, grid, layers=2, heads=4, kv_heads=2, hd=32, yarn=y)
    torch.testing.assert_close(logits, ref, atol=TOL, rtol=0)
    ref_plain, _ = reference_forward(sd, tokens, grid, layers=2, heads=4, kv_heads=2, hd=32)
    assert (ref_plain - logits).abs().max() > 1e-3  # YaRN really changes the positions


def test_grid_is_a_forward_input(single_process):
    """The same weights on two grids of equal size give different logits; a grid too small is refused."""
    from cosmos_nemo.models.ar.config import ar_config

    cfg = ar_config("tiny", num_layers=1, vocab_size=300)
    sd = random_cosmos_state(cfg, seed=5)
    model = _load_model(cfg, sd)
    tokens = torch.randint(0, 300, (1, 24), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        a = model(tokens, grid=(2, 3, 4))
        b = model(tokens, grid=(2, 4, 3))
        c = model(tokens, grid=[(2, 3, 4)])  # per-sample grids of one batch
    ref_a, _ = reference_forward(sd, tokens, (2, 3, 4), layers=1, heads=4, kv_heads=2, hd=64)
    ref_b, _ = reference_forward(sd, tokens, (2, 4, 3), layers=1, heads=4, kv_heads=2, hd=64)
    torch.testing.assert_close(a, ref_a, atol=TOL, rtol=0)
    torch.testing.assert_close(b, ref_b, atol=TOL, rtol=0)
    assert torch.equal(a, c) and not torch.allclose(a, b)
    with pytest.raises(ValueError, match="exceed the 12-token layout of a 1x3x4 grid"):
        model(tokens, grid=(1, 3, 4))
    with pytest.raises(ValueError, match="one latent grid"):
        model(torch.cat([tokens, tokens]), grid=[(2, 3, 4), (2, 4, 3)])
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 300\)"):
        model(tokens + 300, grid=(2, 3, 4))
    with pytest.raises(ValueError, match="non-Video2World"):
        model(tokens, grid=(2, 3, 4), context=torch.zeros(1, 2, 8))


def test_batch_grid_forms():
    import numpy as np

    from cosmos_nemo.models.ar.model import batch_grid
    from cosmos_nemo.tokenizers.grid import LatentGrid

    g = LatentGrid(2, 3, 4)
    for form in [(2, 3, 4), [2, 3, 4], torch.tensor([2, 3, 4]), np.array([2, 3, 4]), tuple(torch.tensor([2, 3, 4])),
                 torch.tensor([[2, 3, 4]] * 3), tuple(torch.tensor([[2, 3, 4]] * 3)), [(2, 3, 4), (2, 3, 4)]]:
        assert batch_grid(form) == g, form
    with pytest.raises(ValueError, match="per-sample grids for a batch of 2"):
        batch_grid(torch.tensor([[2, 3, 4]] * 3), batch_size=2)
    with pytest.raises(ValueError, match="grid must be"):
        batch_grid("2x3x4")
