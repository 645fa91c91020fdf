"""3D RoPE / YaRN and the V2W sin/cos table against the golden reference tables and direct formulas."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from cosmos_nemo.models.common.embeddings import abs_pos_emb_3d, abs_pos_split
from cosmos_nemo.models.common.rope import (
    YarnConfig,
    apply_rotate_half,
    rope_3d_angles,
    rope_inv_freqs,
    rope_split,
)


def test_splits():
    assert rope_split(128) == (44, 42, 42)
    assert rope_split(64) == (24, 20, 20)
    assert abs_pos_split(4096) == (1368, 1364, 1364)
    assert abs_pos_split(5120) == (1708, 1706, 1706)


def test_golden_rope_tables_equal(golden):
    folder = golden("ar", "ar4b_base")
    cfg = json.loads((folder / "config.json").read_text())["derived"]["rope"]
    aux = load_file(str(folder / "aux.safetensors"))
    temporal, spatial = rope_inv_freqs(64, cfg["theta"])
    assert temporal.tolist() == pytest.approx(cfg["temporal_inv_freq"], rel=0, abs=0)
    assert spatial.tolist() == pytest.approx(cfg["spatial_inv_freq"], rel=0, abs=0)
    angles = rope_3d_angles(cfg["latent_shape_THW"], 64, cfg["theta"], total_length=cfg["table_len"])
    cos = torch.cos(angles)[:, 0, 0, :][None, :, None, :]
    sin = torch.sin(angles)[:, 0, 0, :][None, :, None, :]
    assert torch.equal(cos, aux["rope.cos"]) and torch.equal(sin, aux["rope.sin"])


def _direct_angle(t, h, w, head_dim, theta, yarn=None):
    """Per-token formula in float64, written independently of the module."""
    dim_h = head_dim // 6 * 2
    dim_t = head_dim - 2 * dim_h

    def freqs(dim, original):
        out = []
        for k in range(dim // 2):
            f = theta ** (-(2 * k) / dim)
            if yarn is not None:
                lo, hi = 2 * math.pi * yarn.beta_slow / original, 2 * math.pi * yarn.beta_fast / original
                m = min(max((f - lo) / (hi - lo), 0.0), 1.0)
                f *= (1 - m) / yarn.scale + m
            out.append(f)
        return out

    orig = yarn.original_latent_shape if yarn else (1, 1, 1)
    half = [t * f for f in freqs(dim_t, orig[0])] + [h * f for f in freqs(dim_h, orig[1])] + [
        w * f for f in freqs(dim_h, orig[1])
    ]
    return half + half


@pytest.mark.parametrize("grid,yarn", [((2, 3, 5), None), ((4, 2, 7), YarnConfig())])
def test_non_default_grid_against_formula(grid, yarn):
    T, H, W = grid
    table = rope_3d_angles(grid, 128, 500_000.0, yarn=yarn, num_prefix=1, total_length=T * H * W + 9)
    assert table.shape == (T * H * W + 9, 1, 1, 128)
    assert torch.count_nonzero(table[0]) == 0 and torch.count_nonzero(table[1 + T * H * W :]) == 0
    for t in range(T):
        for h in range(H):
            for w in range(W):
                row = table[1 + t * H * W + h * W + w, 0, 0].double()
                expected = torch.tensor(_direct_angle(t, h, w, 128, 500_000.0, yarn), dtype=torch.float64)
                torch.testing.assert_close(row, expected, rtol=2e-6, atol=1e-6)


def test_changing_grid_changes_positions():
    a = rope_3d_angles((5, 40, 64), 128)
    b = rope_3d_angles((5, 64, 40), 128)
    assert a.shape == b.shape
    # token 64 is (t=0, h=1, w=0) on a 5x40x64 grid but (t=0, h=1, w=24) on 5x64x40
    assert not torch.equal(a[64], b[64])
    assert torch.equal(a[64], rope_3d_angles((1, 2, 64), 128)[64])


def test_yarn_factors_match_documented_values():
    base_t, base_s = rope_inv_freqs(128, 500_000.0)
    yarn_t, yarn_s = rope_inv_freqs(128, 500_000.0, YarnConfig())
    factors = (yarn_s / base_s).tolist()
    assert factors[0] == pytest.approx(1.0) and factors[1] == pytest.approx(0.901, abs=1e-3)
    assert factors[2] == pytest.approx(0.637, abs=1e-3) and all(f == pytest.approx(0.5) for f in factors[3:])
    assert all(f == pytest.approx(0.5) for f in (yarn_t / base_t).tolist())


def test_rotate_half_is_a_rotation_of_pairs():
    x = torch.randn(3, 2, 1, 64, dtype=torch.float64)
    ang = rope_3d_angles((1, 1, 3), 64)[:, :, :, :].double()
    y = apply_rotate_half(x, ang)
    # pair (i, i+32) rotates by angle[i]
    i = 5
    c, s = torch.cos(ang[..., i]), torch.sin(ang[..., i])
    torch.testing.assert_close(y[..., i], x[..., i] * c - x[..., i + 32] * s)
    torch.testing.assert_close(y[..., i + 32], x[..., i + 32] * c + x[..., i] * s)


def test_abs_pos_emb_formula_and_bf16_rounding():
    grid, dim = (2, 3, 4), 48  # split t 16, h 16, w 16
    table = abs_pos_emb_3d(grid, dim, num_prefix=1, total_length=30)
    assert table.dtype == torch.bfloat16 and table.shape == (30, dim)
    assert torch.count_nonzero(table[0]) == 0 and torch.count_nonzero(table[25:]) == 0

    def sincos(d, p):
        om = [1.0 / 10000 ** (i / (d / 2)) for i in range(d // 2)]
        return [math.sin(p * o) for o in om] + [math.cos(p * o) for o in om]

    T, H, W = grid
    for t in range(T):
        for h in range(H):
            for w in range(W):
                expected = torch.tensor(sincos(16, t) + sincos(16, h) + sincos(16, w), dtype=torch.float64)
                assert torch.equal(table[1 + t * H * W + h * W + w], expected.to(torch.bfloat16))
    fp32 = abs_pos_emb_3d(grid, dim, table_dtype=torch.float32)
    assert not torch.equal(fp32, table[1:25].float())  # the bf16 rounding is real
    torch.testing.assert_close(fp32, table[1:25].float(), atol=4e-3, rtol=0)
