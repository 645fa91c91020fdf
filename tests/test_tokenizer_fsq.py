"""FSQ: the index formula, the round trip, the range, and the code sets, against independent computations."""

from __future__ import annotations

import itertools

import numpy as np
import torch

from cosmos_nemo.tokenizers.fsq import FSQuantizer

LEVELS = [8, 8, 8, 5, 5, 5]


def test_constants():
    q = FSQuantizer(LEVELS)
    assert q.codebook_size == 64000
    assert q._basis.tolist() == [1, 8, 64, 512, 2560, 12800]
    assert q._levels.dtype == torch.int32 and q._basis.dtype == torch.int32


def test_index_formula_matches_mixed_radix_enumeration():
    # Independent reference: enumerate every integer level tuple in mixed-radix order (first digit fastest).
    q = FSQuantizer(LEVELS)
    half = np.array([4, 4, 4, 2, 2, 2])
    tuples = np.array(list(itertools.product(*[range(v) for v in reversed(LEVELS)])))[:, ::-1]  # digit 0 fastest
    expected_index = np.arange(len(tuples))
    codes = torch.from_numpy((tuples - half) / half).float()
    got = q.codes_to_indices(codes)
    assert got.dtype == torch.int32
    np.testing.assert_array_equal(got.numpy(), expected_index)
    # and by the written formula idx = Σ (q_i + hw_i)·basis_i on a few entries
    for row in (0, 1, 7, 8, 511, 12345, 63999):
        ints = tuples[row]
        assert sum(int(v) * b for v, b in zip(ints, [1, 8, 64, 512, 2560, 12800])) == row


def test_round_trip_and_range():
    q = FSQuantizer(LEVELS)
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(3, 6, 4, 5, 7, generator=gen) * 3
    indices, codes, _ = q(z)
    assert indices.shape == (3, 4, 5, 7) and indices.dtype == torch.int32
    assert int(indices.min()) >= 0 and int(indices.max()) <= 63999
    torch.testing.assert_close(q.indices_to_codes(indices), codes, rtol=0, atol=0)
    # codes → indices → codes is the identity on every code of the codebook
    all_idx = torch.arange(64000)
    back = q.codes_to_indices(q.indices_to_codes_last(all_idx))
    assert torch.equal(back.long(), all_idx)
    # extreme latents hit both ends of the range
    lo, _, _ = q(torch.full((1, 6, 1, 1, 1), -50.0))
    hi, _, _ = q(torch.full((1, 6, 1, 1, 1), 50.0))
    assert int(lo) == 0 and int(hi) == 63999


def test_code_sets():
    q = FSQuantizer(LEVELS)
    cb = q.implicit_codebook
    assert cb.shape == (64000, 6)
    for i in range(3):
        assert sorted(set(cb[:, i].tolist())) == [-1.0, -0.75, -0.5, -0.25, 0.0, 0.25, 0.5, 0.75]
    for i in range(3, 6):
        assert sorted(set(cb[:, i].tolist())) == [-1.0, -0.5, 0.0, 0.5, 1.0]


def test_bound_and_rounding_formula():
    # bound(z) = tanh(z + atanh(offset/half_l))·half_l − offset, computed here in float64 with numpy
    q = FSQuantizer(LEVELS)
    z = np.linspace(-4, 4, 97)[:, None].repeat(6, 1)
    levels = np.array(LEVELS, dtype=np.float64)
    half_l = (levels - 1) * (1 + 1e-3) / 2
    offset = np.where(levels % 2 == 0, 0.5, 0.0)
    bounded = np.tanh(z + np.arctanh(offset / half_l)) * half_l - offset
    got = q.bound(torch.from_numpy(z).float()).double().numpy()
    np.testing.assert_allclose(got, bounded, atol=2e-6)
    codes = q.quantize(torch.from_numpy(z).float()).numpy()
    np.testing.assert_array_equal(codes, np.round(bounded) / (levels // 2))


def test_straight_through_gradient():
    q = FSQuantizer(LEVELS)
    z = torch.randn(2, 6, 3, requires_grad=True)
    codes = q.quantize(z.movedim(1, -1))
    codes.sum().backward()
    assert z.grad is not None and torch.all(z.grad > 0)  # d bound/dz > 0 passes through the rounding
