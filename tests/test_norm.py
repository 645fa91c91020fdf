"""The local spec's RMSNorm (models/common/norm.py) against torch.nn.RMSNorm: values and gradients."""

import pytest
import torch

from cosmos_nemo.models.common.norm import LocalNorm, RMSNorm


@pytest.mark.parametrize("shape", [(7, 3, 16), (5, 2, 4, 8)])
def test_values_and_gradients_equal_torch_rmsnorm(shape):
    g = torch.Generator().manual_seed(0)
    hidden = shape[-1]
    ours, theirs = RMSNorm(hidden, eps=1e-5), torch.nn.RMSNorm(hidden, eps=1e-5)
    with torch.no_grad():
        ours.weight.copy_(torch.rand(hidden, generator=g) + 0.5)
        theirs.weight.copy_(ours.weight)
    x = (torch.randn(*shape, generator=g) * 3).requires_grad_()
    dy = torch.randn(*shape, generator=g)
    y_ours = ours(x)
    (dx_ours,) = torch.autograd.grad(y_ours, x, dy, retain_graph=True)
    y_ours.backward(dy)
    y_theirs = theirs(x)
    (dx_theirs,) = torch.autograd.grad(y_theirs, x, dy, retain_graph=True)
    y_theirs.backward(dy)
    torch.testing.assert_close(y_ours, y_theirs, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(dx_ours, dx_theirs, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.weight.grad, theirs.weight.grad, rtol=1e-5, atol=1e-5)
    # and against the formula, in float64
    x64, w64 = x.detach().double().requires_grad_(), ours.weight.detach().double().requires_grad_()
    y64 = x64 * torch.rsqrt(x64.square().mean(-1, keepdim=True) + 1e-5) * w64
    y64.backward(dy.double())
    torch.testing.assert_close(dx_ours.double(), x64.grad, rtol=1e-5, atol=1e-6)


def test_other_paths_are_torch_and_the_module_is_a_drop_in():
    norm = RMSNorm(8, eps=1e-6)
    assert isinstance(norm, torch.nn.RMSNorm) and list(norm.state_dict()) == ["weight"]
    x = torch.randn(3, 8)
    with torch.no_grad():  # evaluation: torch's forward, same values
        torch.testing.assert_close(norm(x), torch.nn.functional.rms_norm(x, (8,), norm.weight, 1e-6))
    bf16 = RMSNorm(8).to(torch.bfloat16)
    xb = torch.randn(3, 8, dtype=torch.bfloat16, requires_grad=True)
    assert bf16(xb).grad_fn.name() != "_RMSNormFunctionBackward"


def test_local_norm_follows_megatrons_choice():
    from megatron.core.transformer import TransformerConfig

    rms = TransformerConfig(num_layers=1, hidden_size=8, num_attention_heads=2, normalization="RMSNorm")
    layer = TransformerConfig(num_layers=1, hidden_size=8, num_attention_heads=2, normalization="LayerNorm")
    assert type(LocalNorm(rms, 8, eps=1e-5)) is RMSNorm and LocalNorm(rms, 8, eps=1e-5).eps == 1e-5
    assert type(LocalNorm(layer, 8)) is torch.nn.LayerNorm
