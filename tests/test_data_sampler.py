"""Splits, blends and the grid-grouped sampler: determinism, epochs, resume, DP sharding, grid grouping."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest

from cosmos_nemo.data.sampler import (
    BlendSource,
    GridBatchSampler,
    SamplerError,
    apportion,
    parse_split_string,
    split_ranges,
)


def _source(n, grids=((2, 3, 4),), offset=0, tag="a"):
    g = np.asarray([grids[i % len(grids)] for i in range(n)], dtype=np.int64)
    return BlendSource(doc_ids=np.arange(offset, offset + n), grids=g, fingerprint=tag)


def _take(sampler, n):
    return [next(sampler) for _ in range(n)]


def _global_batches(sampler, count):
    """[(grid, keys of the whole global batch on this rank)] for `count` global batches."""
    out = []
    for _ in range(count):
        micro = _take(sampler, sampler.num_micro_batches)
        grids = {g for g, _ in micro}
        assert len(grids) == 1, "a global batch mixed grids"
        out.append((grids.pop(), [k for _, keys in micro for k in keys]))
    return out


# ---------------------------------------------------------------------------------------------- splits


def test_split_string_parsing():
    assert parse_split_string("98,1,1") == pytest.approx((0.98, 0.01, 0.01))
    assert parse_split_string("4, 1, 1") == pytest.approx((4 / 6, 1 / 6, 1 / 6))
    assert parse_split_string("1") == (1.0, 0.0, 0.0)
    for bad in ("a,b", "1,2,3,4", "0,0,0", "-1,1,1"):
        with pytest.raises(SamplerError):
            parse_split_string(bad)


@pytest.mark.parametrize("n, spec", [(100, "98,1,1"), (10, "8,1,1"), (37, "10,1,1"), (1000, "4,1,1"), (5, "1,0,0")])
def test_split_ranges_are_contiguous_and_match_rounding(n, spec):
    r = split_ranges(n, spec)
    w = np.array([float(x) for x in spec.split(",")])
    bounds = np.round(np.cumsum(w / w.sum()) * n).astype(int)  # independent formula
    assert (r["train"].start, r["train"].stop) == (0, bounds[0])
    assert (r["valid"].start, r["valid"].stop) == (bounds[0], bounds[1])
    assert (r["test"].start, r["test"].stop) == (bounds[1], n)
    assert split_ranges(n, spec) == r  # deterministic


def test_empty_split_names_itself():
    with pytest.raises(SamplerError, match="split 'valid' of split_string '98,1,1' is empty .* 10 documents"):
        split_ranges(10, "98,1,1")
    with pytest.raises(SamplerError, match="split 'train'"):
        split_ranges(1, "1,1,1")
    assert len(split_ranges(10, "9,1,0")["test"]) == 0  # weight 0 is allowed to be empty


# ---------------------------------------------------------------------------------------------- sampler


def test_determinism_and_seed():
    mk = lambda seed: GridBatchSampler([_source(24, ((2, 3, 4), (1, 2, 2)))], 2, 4, seed=seed)
    a, b, c = mk(1), mk(1), mk(2)
    seq_a, seq_b, seq_c = _take(a, 30), _take(b, 30), _take(c, 30)
    assert seq_a == seq_b
    assert seq_a != seq_c


def test_each_epoch_covers_every_document_once_and_reshuffles():
    s = GridBatchSampler([_source(24, ((2, 3, 4), (1, 2, 2)))], 2, 4, seed=0)
    per_epoch = s.micro_batches_per_epoch(0)
    assert per_epoch == 24 // 2
    e0 = [k for _, keys in _take(s, per_epoch) for k in keys]
    e1 = [k for _, keys in _take(s, per_epoch) for k in keys]
    assert sorted(e0) == sorted(e1) == [(0, d) for d in range(24)]
    assert e0 != e1
    assert s.epoch == 2 and s.batch_in_epoch == 0


def test_grid_grouping_never_mixes_grids():
    grids = ((2, 3, 4), (1, 2, 2), (3, 1, 1))
    src = _source(45, grids)
    s = GridBatchSampler([src], 3, 6, seed=5)
    lookup = {int(d): tuple(g) for d, g in zip(src.doc_ids, src.grids)}
    for grid, keys in _global_batches(s, 3 * s.global_batches_in_epoch(0)):
        assert all(lookup[d] == grid for _, d in keys)
    # 15 documents per grid, global batch 6: 2 full batches per grid, 3 dropped each
    assert s.global_batches_in_epoch(0) == 6 and s.plan(0).dropped == 9


def test_eval_mode_fills_and_keeps_order():
    src = _source(7, ((2, 3, 4), (1, 2, 2)))
    s = GridBatchSampler([src], 2, 4, shuffle=False, drop_last=False, name="valid")
    batches = _global_batches(s, s.global_batches_in_epoch(0))
    seen = {d for _, keys in batches for _, d in keys}
    assert seen == set(range(7))  # every document evaluated
    assert [g for g, _ in batches] == [(1, 2, 2), (2, 3, 4)]  # 3 docs (filled to 4) and 4 docs
    assert batches[0][1] == [(0, 1), (0, 3), (0, 5), (0, 1)]  # grid 1x2x2 docs in order, filled from its start


def test_dp_ranks_split_the_global_batch():
    src = _source(64, ((2, 3, 4), (1, 2, 2)))
    one = GridBatchSampler([src], 2, 8, dp_rank=0, dp_size=1, seed=3)
    r0 = GridBatchSampler([src], 2, 8, dp_rank=0, dp_size=2, seed=3)
    r1 = GridBatchSampler([src], 2, 8, dp_rank=1, dp_size=2, seed=3)
    assert (one.num_micro_batches, r0.num_micro_batches) == (4, 2)
    for (g, full), (g0, k0), (g1, k1) in zip(_global_batches(one, 12), _global_batches(r0, 12), _global_batches(r1, 12)):
        assert g == g0 == g1
        assert not set(k0) & set(k1)
        assert Counter(k0 + k1) == Counter(full)
        assert len(k0) == len(k1) == 4


def test_resume_mid_epoch_gives_identical_continuation():
    src = _source(30, ((2, 3, 4), (1, 2, 2), (1, 1, 1)))
    ref = GridBatchSampler([src], 2, 6, seed=9)
    expected = _take(ref, 40)  # crosses epoch boundaries (4 or so global batches per epoch)
    for cut in (1, 3, 7, 13, 22):  # mid-global-batch (3 micro per global) and on boundaries
        a = GridBatchSampler([src], 2, 6, seed=9)
        head = _take(a, cut)
        state = a.state_dict()
        b = GridBatchSampler([src], 2, 6, seed=9)
        b.load_state_dict(state)
        assert head + _take(b, 40 - cut) == expected


def test_resume_at_boundary_with_other_dp_size():
    src = _source(48, ((2, 3, 4), (1, 2, 2)))
    single = GridBatchSampler([src], 2, 8, seed=1)
    _take(single, 4 * 3)  # 3 global batches
    state = single.state_dict()
    expected = _global_batches(single, 2)
    r0 = GridBatchSampler([src], 2, 8, dp_rank=0, dp_size=2, seed=1)
    r1 = GridBatchSampler([src], 2, 8, dp_rank=1, dp_size=2, seed=1)
    r0.load_state_dict(state)
    r1.load_state_dict(state)
    for (g, full), (_, k0), (_, k1) in zip(expected, _global_batches(r0, 2), _global_batches(r1, 2)):
        assert Counter(k0 + k1) == Counter(full)


def test_resume_refusals():
    src = _source(20)
    s = GridBatchSampler([src], 1, 4, seed=1)
    _take(s, 2)  # mid global batch
    state = s.state_dict()
    with pytest.raises(SamplerError, match="seed=1, this run has 2"):
        GridBatchSampler([src], 1, 4, seed=2).load_state_dict(state)
    with pytest.raises(SamplerError, match="global_batch_size=4, this run has 8"):
        GridBatchSampler([src], 1, 8, seed=1).load_state_dict(state)
    with pytest.raises(SamplerError, match="different data"):
        GridBatchSampler([_source(20, tag="b")], 1, 4, seed=1).load_state_dict(state)
    with pytest.raises(SamplerError, match="inside a global batch"):
        GridBatchSampler([src], 1, 4, dp_rank=0, dp_size=2, seed=1).load_state_dict(state)


def test_blend_weights_apportion_samples():
    a, b = _source(10, tag="a"), _source(30, offset=100, tag="b")
    s = GridBatchSampler([a, b], 2, 4, weights=[3, 1], seed=0)
    plan = s.plan(0)
    in_batches = plan.source[plan.batches.reshape(-1)]
    counts = Counter(in_batches.tolist())
    assert counts == {0: 30, 1: 10}  # 40 samples split 3:1
    docs_a = Counter(plan.doc[plan.batches.reshape(-1)][in_batches == 0].tolist())
    assert set(docs_a.values()) == {3}  # the small dataset repeats 3 times, every doc equally
    assert set(plan.doc[plan.batches.reshape(-1)][in_batches == 1]) <= set(range(100, 130))
    # deterministic and different per epoch
    again = GridBatchSampler([a, b], 2, 4, weights=[3, 1], seed=0).plan(0)
    assert np.array_equal(again.batches, plan.batches) and np.array_equal(again.doc, plan.doc)
    assert not np.array_equal(s.plan(1).doc[s.plan(1).batches], plan.doc[plan.batches])


def test_apportion_matches_largest_remainder():
    assert apportion(10, [1, 1, 1]) == [4, 3, 3]
    assert apportion(40, [3, 1]) == [30, 10]
    assert sum(apportion(17, [0.2, 0.5, 0.3])) == 17


def test_configuration_errors():
    with pytest.raises(SamplerError, match="multiple of micro_batch_size × DP = 2 × 2 = 4"):
        GridBatchSampler([_source(20)], 2, 6, dp_size=2)
    with pytest.raises(SamplerError, match="no latent grid has enough documents .*'2x3x4': 3"):
        GridBatchSampler([_source(3)], 1, 4)
    with pytest.raises(SamplerError, match="DP rank 2 is outside"):
        GridBatchSampler([_source(8)], 1, 2, dp_rank=2, dp_size=2)
    with pytest.raises(SamplerError, match="2 blend weights for 1 datasets"):
        GridBatchSampler([_source(8)], 1, 2, weights=[1, 1])


def test_num_epochs_stops():
    s = GridBatchSampler([_source(8)], 2, 4, num_epochs=2, seed=0)
    assert len(list(itertools.islice(s, 100))) == 8
