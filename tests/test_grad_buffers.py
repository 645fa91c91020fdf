"""Gradient buffers left unfilled and overwritten (parallel/grad_buffers.py) and clipping folded into the fused
AdamW (training/harness.py::optimizer_step), each against megatron's own zero-fill / clip-then-step."""

from types import SimpleNamespace

import pytest
import torch

from cosmos_nemo.parallel import cpu_adapter, grad_buffers


def _fake_ddp(*params):
    """The parts of megatron's DDP that grad_buffers touches."""
    return SimpleNamespace(params_with_grad=list(params), bucket_groups=[],
                           ddp_config=SimpleNamespace(overlap_grad_reduce=False))


def _param(shape, seed):
    p = torch.nn.Parameter(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)))
    p.main_grad = torch.zeros(*shape)
    p.grad_added_to_main_grad = False
    return p


def test_stale_buffers_are_overwritten_and_unwritten_ones_zeroed():
    cpu_adapter.install()
    fused, hooked = _param((6, 5), 0), _param((5,), 1)
    ddp = _fake_ddp(fused, hooked)
    g = torch.Generator().manual_seed(2)
    x, dy = torch.randn(7, 5, generator=g), torch.randn(7, 6, generator=g)

    def backward(use_fused=True):
        if use_fused:  # megatron's linear with gradient-accumulation fusion (the CPU kernel), then its flag
            cpu_adapter.CpuWgradAccumulation.wgrad_gemm_accum_fp32(x, dy, fused.main_grad)
            fused.grad_added_to_main_grad = True
        hooked.main_grad.add_(torch.ones(5))  # DDP's hook: adds autograd's gradient into the buffer

    # Step 1: nothing known yet: everything filled with zeros, then accumulated.
    grad_buffers.zero_grad_buffer(ddp)
    backward()
    backward()  # a second micro-batch accumulates
    grad_buffers.settle_grad_buffers(ddp)
    torch.testing.assert_close(fused.main_grad, 2 * dy.t() @ x)
    torch.testing.assert_close(hooked.main_grad, torch.full((5,), 2.0))

    # Step 2: the fused weight's buffer is not filled (poison it to prove its values are never read);
    # the hooked one is.
    fused.main_grad.fill_(float("nan"))
    grad_buffers.zero_grad_buffer(ddp)
    assert torch.isnan(fused.main_grad).all()
    assert torch.count_nonzero(hooked.main_grad) == 0
    backward()
    backward()
    grad_buffers.settle_grad_buffers(ddp)
    torch.testing.assert_close(fused.main_grad, 2 * dy.t() @ x)
    expected = torch.zeros(6, 5).addmm_(dy.t(), x).addmm_(dy.t(), x)
    assert torch.equal(fused.main_grad, expected)  # bit for bit what fill-then-add gives
    torch.testing.assert_close(hooked.main_grad, torch.full((5,), 2.0))

    # Step 3: the fused weight gets no gradient at all: settling zeros it (no stale values survive) ...
    grad_buffers.zero_grad_buffer(ddp)
    backward(use_fused=False)
    grad_buffers.settle_grad_buffers(ddp)
    assert torch.count_nonzero(fused.main_grad) == 0
    # ... and, not written last step, it is zero-filled again at the next.
    fused.main_grad.fill_(3.0)
    grad_buffers.zero_grad_buffer(ddp)
    assert torch.count_nonzero(fused.main_grad) == 0


def test_overlapped_reduction_keeps_megatrons_zeroing():
    """With buckets reduced during the backward nothing may be left stale: megatron's own fill runs."""
    cpu_adapter.install()
    fused = _param((6, 5), 0)
    setattr(fused, grad_buffers._OVERWRITTEN, True)
    calls = []
    ddp = _fake_ddp(fused)
    ddp.ddp_config.overlap_grad_reduce = True
    ddp.zero_grad_buffer = lambda: calls.append("megatron")
    assert not grad_buffers.lazy_zeroing_supported(ddp)
    grad_buffers.zero_grad_buffer(ddp)
    assert calls == ["megatron"] and not getattr(fused.main_grad, grad_buffers._STALE, False)


def test_model_writers_overwrite_stale_buffers():
    """The fused output-layer loss and embedding backward (models/common) honour a stale buffer too."""
    from cosmos_nemo.models.common.linear_ce import linear_cross_entropy
    from cosmos_nemo.models.common.main_grad import _EmbeddingLookup

    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(9, 8, generator=g, requires_grad=True)
    weight = torch.randn(30, 8, generator=g, requires_grad=True)
    labels = torch.randint(0, 30, (9,), generator=g)
    ids = torch.randint(0, 30, (4, 5), generator=g)

    def grads():
        weight.main_grad = torch.zeros(30, 8)
        weight.grad_added_to_main_grad = False
        linear_cross_entropy(hidden, weight, labels).ce.sum().backward()
        _EmbeddingLookup.apply(ids, weight).sum().backward()
        return weight.main_grad.clone()

    reference = grads()
    weight.main_grad.fill_(float("nan"))
    setattr(weight.main_grad, grad_buffers._STALE, True)
    weight.grad_added_to_main_grad = False
    linear_cross_entropy(hidden, weight, labels).ce.sum().backward()
    _EmbeddingLookup.apply(ids, weight).sum().backward()
    assert torch.equal(weight.main_grad, reference)

    # the embedding alone as the first writer
    weight.main_grad.fill_(float("nan"))
    setattr(weight.main_grad, grad_buffers._STALE, True)
    _EmbeddingLookup.apply(ids, weight).sum().backward()
    expected = torch.zeros(30, 8).index_add_(0, ids.reshape(-1), torch.ones(20, 8))
    assert torch.equal(weight.main_grad, expected)


def test_a_step_that_fails_midway_leaves_nothing_stale_for_the_next(single_process):
    """A backward interrupted after the embedding wrote its rows (and before the step settled) must not
    leave those rows behind: the next step zeroes the whole buffer, not last settled step's rows."""
    from cosmos_nemo.models.common.main_grad import _EmbeddingLookup

    cpu_adapter.install()
    weight = _param((30, 4), 4)
    ddp = _fake_ddp(weight)
    step_ids = [torch.tensor([1, 2, 2]), torch.tensor([5, 6]), torch.tensor([9])]

    def backward(ids):
        _EmbeddingLookup.apply(ids, weight).sum().backward()

    grad_buffers.zero_grad_buffer(ddp)
    backward(step_ids[0])
    grad_buffers.settle_grad_buffers(ddp)
    assert getattr(weight.main_grad, grad_buffers._DIRTY).tolist() == [1, 2, 2]
    grad_buffers.zero_grad_buffer(ddp)
    backward(step_ids[1])  # ... and the step fails here: never settled
    grad_buffers.zero_grad_buffer(ddp)
    backward(step_ids[2])
    grad_buffers.settle_grad_buffers(ddp)
    expected = torch.zeros(30, 4)
    expected[9] = 1.0
    assert torch.equal(weight.main_grad, expected)


def _train(monkeypatch, lazy=True, fold=True, steps=3, clip=0.05, norm=None):
    from cosmos_nemo.models.ar.config import ar_config
    from cosmos_nemo.models.ar.model import build_ar_model
    from cosmos_nemo.models.ar.step import ARStep
    from cosmos_nemo.training import harness
    from cosmos_nemo.training.config import OptimizerConfig

    with monkeypatch.context() as patch:
        if not lazy:  # megatron's own zeroing: fill every buffer
            patch.setattr(grad_buffers, "lazy_zeroing_supported", lambda ddp: False)
        if not fold:  # megatron's own step: clip in place, then step
            patch.setattr(harness, "_fused_torch_adamws", lambda optimizer: None)
        if norm is not None:  # pretend the gradient norm is this (megatron's chained step asks this method)
            from megatron.core.optimizer.optimizer import ChainedOptimizer

            patch.setattr(ChainedOptimizer, "get_grad_norm", lambda self: norm)
        grid = (2, 4, 4)
        cfg = ar_config("tiny", num_layers=2, vocab_size=512)
        torch.manual_seed(0)
        chunks = harness.wrap_model(lambda pre, post: build_ar_model(cfg, pre, post))
        optimizer = harness.build_optimizer(chunks, OptimizerConfig(lr=1e-3, clip_grad=clip))
        assert type(optimizer).__name__ == "ChainedOptimizer"
        n = grid[0] * grid[1] * grid[2]
        g = torch.Generator().manual_seed(6)
        history = []
        for _ in range(steps):
            batches = [{"tokens": torch.randint(0, 512, (2, n), generator=g),
                        "labels": torch.randint(0, 512, (2, n), generator=g),
                        "loss_mask": torch.ones(2, n), "grid": grid} for _ in range(2)]
            out = harness.train_step(ARStep(), iter(batches), chunks, optimizer, 2, n, 2)
            model = chunks[0].module
            history.append({"grad_norm": out["grad_norm"], "loss": out["loss"],
                            "grads": {k: p.main_grad.clone() for k, p in model.named_parameters()},
                            "params": {k: p.detach().clone() for k, p in model.named_parameters()},
                            "overwritten": {k: getattr(p, grad_buffers._OVERWRITTEN, False)
                                            for k, p in model.named_parameters()},
                            "dirty_rows": {k: getattr(p.main_grad, grad_buffers._DIRTY, None)
                                           for k, p in model.named_parameters()}})
        return history


def test_training_with_unfilled_buffers_equals_megatrons_fill_bit_for_bit(single_process, monkeypatch):
    """Three harness steps of two micro-batches (clipping active): every gradient, norm and parameter is
    identical to megatron's zero-fill."""
    ours = _train(monkeypatch, lazy=True, fold=False)
    theirs = _train(monkeypatch, lazy=False, fold=False)
    for a, b in zip(ours, theirs):
        assert a["grad_norm"] == b["grad_norm"] and a["loss"] == b["loss"]
        for name in a["grads"]:
            assert torch.equal(a["grads"][name], b["grads"][name]), name
            assert torch.equal(a["params"][name], b["params"][name]), name
    # The fast path really ran: linear, embedding and output weights are overwritten (not filled) from
    # step 2; the norms' weights, whose gradients come through DDP's hook, are filled.
    overwritten = ours[0]["overwritten"]
    assert overwritten["embedding.word_embeddings.weight"] and overwritten["output_layer.weight"]
    assert overwritten["decoder.layers.0.mlp.linear_fc1.weight"]
    assert not overwritten["decoder.final_layernorm.weight"]
    assert not any(theirs[0]["overwritten"].values())
    # The embedding's buffer is cleared by rows: those of the step's tokens (both micro-batches).
    dirty = ours[0]["dirty_rows"]
    assert dirty["output_layer.weight"] is None and dirty["decoder.layers.0.mlp.linear_fc1.weight"] is None
    assert dirty["embedding.word_embeddings.weight"].numel() == 2 * 2 * 32
    nonzero = ours[0]["grads"]["embedding.word_embeddings.weight"].abs().sum(1).nonzero().flatten()
    assert set(nonzero.tolist()) <= set(dirty["embedding.word_embeddings.weight"].tolist())


@pytest.mark.parametrize("clip", [0.05, 100.0])
def test_clipping_folded_into_fused_adamw_equals_megatrons_clip_then_step(single_process, monkeypatch, clip):
    """megatron multiplies the gradients by clip / (norm + 1e-6); the fused AdamW divides them by its
    inverse as it reads them (and stores them): the same clipped gradients and update to a rounding step.
    (Later steps are not compared: Adam divides by sqrt(v), which magnifies rounding-level differences in
    near-zero gradient entries.) Without clipping (coefficient >= 1) nothing is scaled: identical."""
    ours = _train(monkeypatch, fold=True, steps=1, clip=clip)[0]
    theirs = _train(monkeypatch, fold=False, steps=1, clip=clip)[0]
    assert ours["grad_norm"] == theirs["grad_norm"]
    clipped = torch.sqrt(sum(g.double().square().sum() for g in ours["grads"].values()))
    assert float(clipped) == pytest.approx(min(clip, ours["grad_norm"]), rel=1e-5)  # the stored gradients are clipped
    for name in ours["grads"]:
        if clip > ours["grad_norm"]:
            assert torch.equal(ours["grads"][name], theirs["grads"][name]), name
            assert torch.equal(ours["params"][name], theirs["params"][name]), name
        else:
            torch.testing.assert_close(ours["grads"][name], theirs["grads"][name], rtol=1e-6, atol=0, msg=name)
            torch.testing.assert_close(ours["params"][name], theirs["params"][name], rtol=0, atol=1e-7, msg=name)


def test_an_infinite_gradient_norm_zeroes_the_clipped_gradients_as_megatron_does(single_process, monkeypatch):
    """clip / inf = 0: megatron multiplies every gradient by 0 and steps (weight decay only); the folded
    step divides by inf: the same zero gradients and parameters, and no division error."""
    ours = _train(monkeypatch, fold=True, steps=1, norm=float("inf"))[0]
    theirs = _train(monkeypatch, fold=False, steps=1, norm=float("inf"))[0]
    for name in ours["grads"]:
        assert torch.count_nonzero(ours["grads"][name]) == 0 and torch.count_nonzero(theirs["grads"][name]) == 0
        assert torch.equal(ours["params"][name], theirs["params"][name]), name
