"""RMSNorm for the local (non-Transformer-Engine) layer spec, with a hand-written backward.

megatron's local spec builds `torch.nn.RMSNorm` (through `WrappedTorchNorm`). Its backward is autograd's
trace of the forward's pieces (square, mean, rsqrt, two products): about ten passes over the activations
per norm. `RMSNorm` here is the same module (a subclass: same parameter, same state dict, same forward
values) whose float32 training path keeps the normalised input and the inverse RMS and computes

    y = x_hat * w,  x_hat = x * r,  r = 1 / sqrt(mean(x^2) + eps)
    dw = sum over rows of dy * x_hat
    dx = r * (g - x_hat * mean(g * x_hat)),  g = dy * w

(the standard RMSNorm gradient); `tests/test_norm.py` checks values and gradients against torch's module
and a float64 formula. Other dtypes, and evaluation, take torch's path. It is a CPU speed-up: the layer
specs use it only with the CPU adapter's `rmsnorm_backward` acceleration (parallel/cpu_adapter.py).
"""

from __future__ import annotations

import torch
from megatron.core.transformer.torch_norm import WrappedTorchNorm

from cosmos_nemo.parallel import cpu_adapter


class _RMSNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps):
        inv_rms = torch.rsqrt(x.square().mean(-1, keepdim=True).add_(eps))
        x_hat = x * inv_rms
        ctx.save_for_backward(x_hat, inv_rms, weight)
        return x_hat * weight

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        x_hat, inv_rms, weight = ctx.saved_tensors
        d_weight = None
        if ctx.needs_input_grad[1]:
            d_weight = (dy * x_hat).reshape(-1, weight.shape[0]).sum(0)
        d_x = None
        if ctx.needs_input_grad[0]:
            g = dy * weight
            d_x = g.sub_(x_hat * (g * x_hat).mean(-1, keepdim=True)).mul_(inv_rms)
        return d_x, d_weight, None


class RMSNorm(torch.nn.RMSNorm):
    """`torch.nn.RMSNorm` over the last dimension with the hand-written backward above (float32, with a
    weight, while autograd records); otherwise torch's forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        if (weight is not None and x.dtype == torch.float32 and weight.dtype == torch.float32
                and len(self.normalized_shape) == 1 and torch.is_grad_enabled()
                and (x.requires_grad or weight.requires_grad)):
            eps = self.eps if self.eps is not None else torch.finfo(x.dtype).eps
            return _RMSNormFunction.apply(x, weight, eps)
        return super().forward(x)


class LocalNorm:
    """A drop-in for megatron's `WrappedTorchNorm` in layer specs: `RMSNorm` above when the config asks
    for RMSNorm and the CPU acceleration is on, megatron's choice (with its checks) otherwise."""

    def __new__(cls, config, hidden_size: int, eps: float = 1e-5, **kwargs):
        module = WrappedTorchNorm(config, hidden_size, eps, **kwargs)  # megatron's checks and choice
        if type(module) is not torch.nn.RMSNorm or not cpu_adapter.acceleration("rmsnorm_backward"):
            return module
        norm = RMSNorm(hidden_size, eps=eps)
        norm.load_state_dict(module.state_dict())
        return norm
