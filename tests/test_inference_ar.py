"""AR generation: KV-cached greedy decoding equals full recomputation, and nucleus/top-k filtering and
sampling follow their definitions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cosmos_nemo.inference.ar import SamplingConfig, filter_logits, sample_next
from cosmos_nemo.parallel.launch import run_in_processes


def test_nucleus_keeps_the_smallest_set_reaching_top_p():
    probs = torch.tensor([0.5, 0.25, 0.15, 0.1])
    logits = probs.log()
    kept = torch.isfinite(filter_logits(logits[None], top_p=0.7))[0]
    # cumulative mass before each sorted token: 0, 0.5, 0.75, 0.9 -> keep those with mass before <= 0.7
    assert kept.tolist() == [True, True, False, False]
    kept = torch.isfinite(filter_logits(logits[None].flip(-1), top_p=0.8))[0].flip(-1)
    assert kept.tolist() == [True, True, True, False]
    assert torch.isfinite(filter_logits(logits[None], top_k=2))[0].tolist() == [True, True, False, False]


def test_sampling_frequencies_follow_the_renormalised_nucleus():
    probs = torch.tensor([0.4, 0.3, 0.2, 0.1])
    logits = probs.log().expand(20000, 4)
    g = torch.Generator().manual_seed(0)
    draws = sample_next(logits, SamplingConfig(temperature=1.0, top_p=0.6), g)
    freq = np.bincount(draws.numpy(), minlength=4) / len(draws)
    # mass before each token: 0, 0.4, 0.7, 0.9 -> the nucleus is {0, 1}, renormalised by 0.7
    np.testing.assert_allclose(freq, [0.4 / 0.7, 0.3 / 0.7, 0.0, 0.0], atol=0.015)
    assert sample_next(logits[:3], SamplingConfig(top_k=1)).tolist() == [0, 0, 0]


def _greedy(tp: int):
    torch.set_num_threads(1)
    from cosmos_nemo import parallel
    from cosmos_nemo.inference.ar import generate_tokens
    from cosmos_nemo.models.ar.config import ar_config
    from cosmos_nemo.models.ar.model import build_ar_model

    parallel.setup(tp, 1, seed=5)
    model = build_ar_model(ar_config("tiny", vocab_size=96, init_method_std=0.2)).eval()
    grid = (3, 2, 3)
    prompt = torch.tensor([[5, 17, 3, 40, 2, 9], [1, 1, 60, 7, 7, 30]])
    cached = generate_tokens(model, prompt, grid, num_tokens=12, sampling=SamplingConfig(top_k=1))
    # Reference without a cache: recompute the whole prefix each step and take the argmax.
    seq = prompt
    with torch.no_grad():
        while seq.shape[1] < prompt.shape[1] + 12:
            logits = model(seq, grid=grid)
            seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    parallel.teardown()
    return cached.tolist(), seq.tolist()


@pytest.mark.slow
@pytest.mark.parametrize("tp", [1, 2])
def test_kv_cached_greedy_equals_recomputation(tp):
    for cached, recomputed in run_in_processes(_greedy, tp, tp):
        assert cached == recomputed
        assert len(set(cached[0][6:])) > 1  # not a degenerate constant continuation
