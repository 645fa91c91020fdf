"""The AR model trains: gradients reach every parameter, and full activation recompute changes nothing."""

import pytest
import torch

GRID = (2, 3, 5)


def _state(name):
    from cosmos_nemo.models.ar.convert import expected_released_shapes
    from cosmos_nemo.models.ar.config import ar_config

    g = torch.Generator().manual_seed(1)
    shapes = expected_released_shapes(ar_config(name, num_layers=2))
    return {k: torch.randn(s, generator=g) * (0.05 if len(s) > 1 else 1.0) for k, s in shapes.items()}


def _grads(name, recompute, state):
    from cosmos_nemo.models.ar.convert import load_released
    from cosmos_nemo.models.ar.config import ar_config
    from cosmos_nemo.models.ar.model import build_ar_model

    cfg = ar_config(name, num_layers=2, recompute_granularity=recompute)
    model = build_ar_model(cfg)
    load_released(model, state)
    model.train()
    layout = cfg.layout(GRID)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 64000, (layout.num_video_tokens,), generator=g).tolist()
    if cfg.video2world:
        tokens = torch.tensor([layout.stored_tokens(ids)])
        inputs, labels = tokens[:, :-1], tokens[:, 1:].clone()
        kwargs = {"context": torch.randn(1, 5, cfg.context_dim, generator=g)}
    else:  # base: the clip's ids, the label of the last one taken from the next clip
        inputs, labels = torch.tensor([ids]), torch.tensor([ids[1:] + [7]])
        kwargs = {}
    mask = torch.tensor([layout.loss_mask()], dtype=torch.float32)
    labels[mask == 0] = 0  # PAD labels are masked out of the loss below
    loss = model(inputs, grid=GRID, labels=labels, **kwargs)
    (loss * mask).sum().div(mask.sum()).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("name", ["tiny", "tiny_v2w"])
def test_backward_reaches_every_parameter(single_process, name):
    grads = _grads(name, None, _state(name))
    for param, grad in grads.items():
        assert torch.isfinite(grad).all(), param
    # every parameter learns, including the cross-attention, its norms and the final norm
    silent = [n for n, grad in grads.items() if grad.abs().max() == 0]
    assert not silent, silent


@pytest.mark.medium
@pytest.mark.parametrize("name", ["tiny", "tiny_v2w"])
def test_full_recompute_gives_same_gradients(single_process, name):
    state = _state(name)
    plain, recomputed = _grads(name, None, state), _grads(name, "full", state)
    assert plain.keys() == recomputed.keys()
    for param, grad in plain.items():
        torch.testing.assert_close(recomputed[param], grad, atol=1e-6, rtol=1e-5, msg=param)


def test_labels_loss_is_the_per_token_cross_entropy_of_the_logits(single_process):
    """`forward(labels=)` (at TP=1 the fused projection + cross-entropy, models/common/linear_ce.py) gives, per token,
    −log softmax(logits)[label] of the same forward without labels."""
    from cosmos_nemo.models.ar.convert import load_released
    from cosmos_nemo.models.ar.config import ar_config
    from cosmos_nemo.models.ar.model import build_ar_model

    model = build_ar_model(ar_config("tiny", num_layers=2)).eval()
    load_released(model, _state("tiny"))
    g = torch.Generator().manual_seed(3)
    n = GRID[0] * GRID[1] * GRID[2]
    inputs, labels = torch.randint(0, 64000, (2, n), generator=g), torch.randint(0, 64000, (2, n), generator=g)
    with torch.no_grad():
        logits = model(inputs, grid=GRID).double()
        loss = model(inputs, grid=GRID, labels=labels)
    expected = -torch.log_softmax(logits, dim=-1).gather(-1, labels[..., None])[..., 0]
    assert loss.shape == labels.shape
    torch.testing.assert_close(loss.double(), expected, atol=1e-4, rtol=1e-5)


def test_megatron_optimizer_uses_torch_fused_adamw_and_steps(single_process):
    """Without TE/Apex megatron builds torch.optim.AdamW with its defaults; the harness switches it to the
    fused kernel, and a step with that kernel still moves every parameter that has a gradient."""
    from cosmos_nemo.models.ar.config import ar_config
    from cosmos_nemo.models.ar.model import build_ar_model
    from cosmos_nemo.training import harness
    from cosmos_nemo.training.config import OptimizerConfig

    cfg = ar_config("tiny", num_layers=1)
    chunks = harness.wrap_model(lambda pre, post: build_ar_model(cfg, pre, post))
    optimizer = harness.build_optimizer(chunks, OptimizerConfig(lr=1e-2))
    inners = [o.optimizer for o in getattr(optimizer, "chained_optimizers", [optimizer])]
    assert inners and all(type(o) is torch.optim.AdamW for o in inners)
    assert all(group["fused"] for o in inners for group in o.param_groups)
    before = {n: p.detach().clone() for n, p in chunks[0].module.named_parameters()}
    for p in chunks[0].module.parameters():
        p.main_grad.normal_()
    optimizer.step()
    moved = [n for n, p in chunks[0].module.named_parameters() if not torch.equal(p, before[n])]
    assert len(moved) == len(before)


def test_weight_decay_skips_biases_and_norms_as_megatron_schedules_it(single_process):
    """The trainer sets each group's lr and weight decay itself (it replaces megatron's param scheduler), so it
    must apply megatron's `wd_mult`: with zero gradients an AdamW step is pure decoupled decay, p *= 1 - lr * wd,
    on every matrix, and leaves the biases and 1-D parameters (norm weights) exactly as they were."""
    from cosmos_nemo.models.ar.config import ar_config
    from cosmos_nemo.models.ar.model import build_ar_model
    from cosmos_nemo.training import harness
    from cosmos_nemo.training.config import OptimizerConfig
    from cosmos_nemo.training.trainer import apply_schedule

    cfg = ar_config("tiny", num_layers=1)
    chunks = harness.wrap_model(lambda pre, post: build_ar_model(cfg, pre, post))
    optimizer = harness.build_optimizer(chunks, OptimizerConfig(lr=1e-2, weight_decay=0.5))
    apply_schedule(optimizer, 0.1, 0.5)
    before = {n: p.detach().clone() for n, p in chunks[0].module.named_parameters()}
    for p in chunks[0].module.parameters():
        p.main_grad.zero_()
    optimizer.step()
    after = dict(chunks[0].module.named_parameters())
    exempt = [n for n, p in before.items() if p.dim() == 1 or n.endswith(".bias")]
    assert any("layernorm" in n or "norm" in n for n in exempt), exempt
    for name, old in before.items():
        want = old if name in exempt else old * (1 - 0.1 * 0.5)
        torch.testing.assert_close(after[name].detach(), want, rtol=1e-6, atol=1e-7, msg=name)
