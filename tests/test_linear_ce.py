"""The fused output projection + cross-entropy and the main_grad-accumulating backward passes, checked
against torch's own `F.cross_entropy` / `F.embedding` autograd on materialised logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cosmos_nemo.models.common import linear_ce
from cosmos_nemo.models.common.linear_ce import linear_cross_entropy
from cosmos_nemo.parallel.main_grad import _EmbeddingLookup


def _inputs(dtype, rows=40, hidden=16, vocab=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(rows, hidden, generator=g).to(dtype).requires_grad_(True)
    w = (torch.randn(vocab, hidden, generator=g) * 0.5).to(dtype).requires_grad_(True)
    labels = torch.randint(0, vocab, (rows,), generator=g)
    weights = torch.rand(rows, generator=g)
    weights[::7] = 0.0  # masked tokens: zero gradient rows
    return h, w, labels, weights


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_values_and_gradients_equal_cross_entropy_of_the_logits(dtype):
    h, w, labels, weights = _inputs(dtype)
    out = linear_cross_entropy(h, w, labels, want_hit=True)
    # A per-token weighted loss plus a z-loss, so both outputs carry non-uniform gradients.
    (out.ce * weights).sum().add(1e-2 * (out.lse**2).sum()).backward()
    got = (h.grad.clone(), w.grad.clone())

    h.grad = w.grad = None
    logits = (h @ w.t()).float()
    ce = F.cross_entropy(logits, labels, reduction="none")
    lse = torch.logsumexp(logits, dim=-1)
    (ce * weights).sum().add(1e-2 * (lse**2).sum()).backward()

    torch.testing.assert_close(out.ce, ce.detach(), atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(out.lse, lse.detach(), atol=2e-5, rtol=1e-5)
    tol = dict(atol=1e-6, rtol=1e-5) if dtype == torch.float32 else dict(atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(got[0], h.grad, **tol)
    torch.testing.assert_close(got[1], w.grad, **tol)
    label_logit = logits.gather(1, labels[:, None])[:, 0]
    assert torch.equal(out.hit, label_logit >= logits.amax(dim=-1))
    assert out.ce.dtype == out.lse.dtype == torch.float32


def test_hit_is_the_argmax_accuracy_and_empty_unless_asked():
    h, w, _, _ = _inputs(torch.float32, seed=1)
    logits = h.detach() @ w.detach().t()
    labels = logits.argmax(-1)
    labels[::2] = (labels[::2] + 1) % w.shape[0]  # half wrong on purpose
    out = linear_cross_entropy(h, w, labels, want_hit=True)
    assert out.hit.tolist() == [i % 2 == 1 for i in range(h.shape[0])]
    assert linear_cross_entropy(h, w, labels).hit.numel() == 0


def test_no_grad_path_gives_the_same_values():
    h, w, labels, _ = _inputs(torch.float32, seed=2)
    with_graph = linear_cross_entropy(h, w, labels, want_hit=True)
    with torch.no_grad():
        without = linear_cross_entropy(h, w, labels, want_hit=True)
    assert without.ce.grad_fn is None
    for a, b in zip(with_graph, without):
        assert torch.equal(a.detach(), b)


def test_workspace_is_reused_between_steps_and_can_be_freed():
    linear_ce.clear_workspace()
    h, w, labels, _ = _inputs(torch.float32, seed=3)
    grads, buffers = [], []
    for _ in range(2):
        out = linear_cross_entropy(h, w, labels)
        assert not linear_ce._POOL.get((h.shape[0], w.shape[0], h.device))  # taken while the graph lives
        out.ce.sum().backward()
        pooled = linear_ce._POOL[(h.shape[0], w.shape[0], h.device)]
        assert len(pooled) == 1
        buffers.append(pooled[0].data_ptr())
        grads.append((h.grad.clone(), w.grad.clone()))
        h.grad = w.grad = None
    assert buffers[0] == buffers[1]  # the second step ran in the first step's workspace
    assert all(torch.equal(a, b) for a, b in zip(*grads))  # the reused buffer leaves no trace
    linear_ce.clear_workspace()
    assert not linear_ce._POOL


def test_workspace_pool_is_bounded_across_shapes():
    """Batches of changing grids (token counts) keep at most two workspaces, of the latest shapes."""
    linear_ce.clear_workspace()
    for rows in (8, 16, 24, 32):
        h, w, labels, _ = _inputs(torch.float32, rows=rows, seed=rows)
        linear_cross_entropy(h, w, labels).ce.sum().backward()
    assert sorted(key[0] for key in linear_ce._POOL) == [24, 32]
    assert sum(len(v) for v in linear_ce._POOL.values()) == 2
    linear_ce.clear_workspace()


def test_a_second_backward_through_one_forward_is_refused():
    h, w, labels, _ = _inputs(torch.float32, seed=4)
    loss = linear_cross_entropy(h, w, labels).ce.sum()
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        loss.backward()


def test_shape_errors_are_clear():
    h, w, labels, _ = _inputs(torch.float32)
    with pytest.raises(ValueError, match=r"hidden \[N, h\] and weight \[V, h\]"):
        linear_cross_entropy(h, w[:, :5], labels)
    with pytest.raises(ValueError, match="labels"):
        linear_cross_entropy(h, w, labels[:-1])


def test_embedding_gradient_equals_f_embedding_and_goes_into_main_grad():
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(0, 20, (3, 11), generator=g)
    ids[0, :4] = 7  # repeated ids accumulate
    weight = torch.randn(20, 6, generator=g, requires_grad=True)
    upstream = torch.randn(3, 11, 6, generator=g)

    out = _EmbeddingLookup.apply(ids, weight)
    assert torch.equal(out, F.embedding(ids, weight))
    out.backward(upstream)
    ours = weight.grad.clone()
    weight.grad = None
    F.embedding(ids, weight).backward(upstream)
    torch.testing.assert_close(ours, weight.grad)

    # Under megatron's DDP: accumulate into the persistent buffer, flag it, hand autograd a placeholder.
    weight.grad = None
    weight.main_grad = torch.ones(20, 6)
    weight.grad_added_to_main_grad = False
    _EmbeddingLookup.apply(ids, weight).backward(upstream)
    torch.testing.assert_close(weight.main_grad, 1.0 + ours)
    assert weight.grad_added_to_main_grad is True
    weight.zero_out_wgrad = True
    weight.grad = None
    _EmbeddingLookup.apply(ids, weight).backward(upstream)
    assert torch.count_nonzero(weight.grad) == 0
    torch.testing.assert_close(weight.main_grad, 1.0 + 2 * ours)


def test_ddp_main_grads_equal_plain_autograd_through_materialised_logits(single_process):
    """One training micro-batch through the trainer's harness (megatron DDP, the schedule, ARStep: fused
    loss; embedding and output gradients written into main_grad) against plain autograd on a copy of the
    model with the logits materialised and torch's cross-entropy: every gradient agrees."""
    from cosmos_nemo.models.ar.config import ar_config
    from cosmos_nemo.models.ar.model import build_ar_model
    from cosmos_nemo.models.ar.step import ARStep
    from cosmos_nemo.training import harness

    grid = (2, 4, 4)
    cfg = ar_config("tiny", num_layers=2, vocab_size=512)
    torch.manual_seed(0)
    chunks = harness.wrap_model(lambda pre, post: build_ar_model(cfg, pre, post))
    model = chunks[0].module
    plain = build_ar_model(cfg)
    plain.load_state_dict(model.state_dict())

    g = torch.Generator().manual_seed(6)
    n = grid[0] * grid[1] * grid[2]
    tokens = torch.randint(0, 512, (2, n), generator=g)
    labels = torch.randint(0, 512, (2, n), generator=g)
    mask = torch.ones(2, n)
    mask[0, 5:9] = 0
    batch = {"tokens": tokens, "labels": labels, "loss_mask": mask, "grid": grid}
    chunks[0].zero_grad_buffer()
    harness._schedule(ARStep(), iter([batch]), chunks, 1, n, 2, False)

    logits = plain(tokens, grid=grid)
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), reduction="none")
    ((ce * mask.reshape(-1)).sum() / mask.sum()).backward()

    reference = dict(plain.named_parameters())
    checked = 0
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.main_grad, reference[name].grad, atol=2e-6, rtol=1e-4, msg=name)
        checked += 1
    assert checked == len(reference)
    assert model.embedding.word_embeddings.weight.grad_added_to_main_grad
    assert model.output_layer.weight.grad_added_to_main_grad
