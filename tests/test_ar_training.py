"""The AR model trains: gradients through the V2W path, and full activation recompute changes nothing."""

import pytest
import torch


@pytest.fixture(scope="module")
def single_process():
    torch.set_num_threads(2)
    from cosmos_nemo import parallel

    parallel.setup()
    yield
    parallel.teardown()


def _grads(recompute, state):
    from cosmos_nemo.checkpoint.cosmos_ar import load_cosmos_checkpoint
    from cosmos_nemo.models.ar.config import ar_config
    from cosmos_nemo.models.ar.model import build_ar_model

    cfg = ar_config("tiny_v2w", num_layers=2, recompute_granularity=recompute)
    model = build_ar_model(cfg)
    load_cosmos_checkpoint(model, state)
    model.train()
    layout = cfg.layout((2, 3, 5))
    g = torch.Generator().manual_seed(0)
    tokens = torch.tensor([layout.stored_tokens(torch.randint(0, 64000, (30,), generator=g).tolist())])
    inputs, labels = tokens[:, :-1], tokens[:, 1:].clone()
    mask = torch.tensor([layout.loss_mask()], dtype=torch.float32)
    labels[mask == 0] = 0  # PAD labels are masked out of the loss below
    context = torch.randn(1, 5, 384, generator=g)
    loss = model(inputs, grid=(2, 3, 5), context=context, labels=labels)
    (loss * mask).sum().div(mask.sum()).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def _state():
    from cosmos_nemo.checkpoint.cosmos_ar import cosmos_expected_shapes
    from cosmos_nemo.models.ar.config import ar_config

    g = torch.Generator().manual_seed(1)
    shapes = cosmos_expected_shapes(ar_config("tiny_v2w", num_layers=2))
    return {k: torch.randn(s, generator=g) * (0.05 if len(s) > 1 else 1.0) for k, s in shapes.items()}


def test_backward_reaches_every_parameter(single_process):
    grads = _grads(None, _state())
    for name, grad in grads.items():
        assert torch.isfinite(grad).all(), name
    # every parameter learns, including the cross-attention, its norms and the final norm
    silent = [n for n, grad in grads.items() if grad.abs().max() == 0]
    assert not silent, silent


def test_full_recompute_gives_same_gradients(single_process):
    state = _state()
    plain, recomputed = _grads(None, state), _grads("full", state)
    assert plain.keys() == recomputed.keys()
    for name, grad in plain.items():
        torch.testing.assert_close(recomputed[name], grad, atol=1e-6, rtol=1e-5, msg=name)
