"""The diffusion samplers (inference/samplers.py) against diffusers' schedulers, step for step on the same model
outputs, and the EDM Heun sampler against the exact solution of a Gaussian toy problem."""

from __future__ import annotations

import pytest
import torch

from cosmos_nemo.inference import samplers
from diffusers_peer import cosmos_transformer_class

pytestmark = pytest.mark.skipif(cosmos_transformer_class() is None, reason="diffusers is not installed")


def _toy_net(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """A fixed nonlinear 'network' of its input and conditioning value (both samplers see the same one)."""
    return torch.tanh(0.7 * x + 0.3 * c) - 0.2 * x


def test_edm_euler_matches_diffusers():
    from diffusers import EDMEulerScheduler

    steps, sd = 12, 0.5
    sched = EDMEulerScheduler(sigma_min=0.002, sigma_max=80.0, sigma_data=sd, final_sigmas_type="sigma_min")
    sched.set_timesteps(steps)
    ours = samplers.edm_sigmas(steps, final="sigma_min")
    assert torch.allclose(ours, sched.sigmas.float(), rtol=1e-6)
    x0 = samplers.initial_noise((2, 3, 4), seed=7, dtype=torch.float64) * ours[0]  # float64: values reach 80

    def denoise(x, s):  # EDM preconditioning around the toy net
        c_in, c_skip = 1 / torch.sqrt(s**2 + sd**2), sd**2 / (s**2 + sd**2)
        c_out = s * sd / torch.sqrt(s**2 + sd**2)
        return c_skip * x + c_out * _toy_net(c_in * x, 0.25 * torch.log(s))

    trace = []
    ours_out = samplers.sample_edm(denoise, x0.clone(), ours, "euler", callback=lambda i, x: trace.append(x.clone()))
    x = x0.clone()
    for i, t in enumerate(sched.timesteps):
        out = _toy_net(sched.scale_model_input(x, t), t)
        x = sched.step(out, t, x).prev_sample
        # 1e-5 relative to values of up to ~80 (the schedules agree to float32 rounding)
        assert torch.allclose(x, trace[i], rtol=1e-5, atol=1e-5), i
    assert torch.allclose(ours_out, x, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("karras", [False, True])
def test_flow_unipc_matches_diffusers(karras):
    from diffusers import UniPCMultistepScheduler

    steps = 10
    kwargs = dict(use_karras_sigmas=True, sigma_min=0.01, sigma_max=200.0) if karras else dict(flow_shift=5.0)
    sched = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, **kwargs)
    sched.set_timesteps(steps)
    ours = samplers.flow_sigmas(steps, shift=5.0, karras=karras)
    assert torch.allclose(ours, sched.sigmas.float(), rtol=1e-5, atol=1e-7), (ours, sched.sigmas)
    x0 = samplers.initial_noise((2, 3, 4), seed=3)
    trace = []
    ours_out = samplers.sample_flow(lambda x, t: _toy_net(x, t), x0.clone(), ours, "unipc",
                                    callback=lambda i, x: trace.append(x.clone()))
    x = x0.clone()
    for i, t in enumerate(sched.timesteps):
        x = sched.step(_toy_net(x, sched.sigmas[i]), t, x).prev_sample
        assert (x - trace[i]).abs().max() <= 1e-5, (i, (x - trace[i]).abs().max())
    assert (ours_out - x).abs().max() <= 1e-5


def test_flow_euler_matches_diffusers():
    from diffusers import FlowMatchEulerDiscreteScheduler

    steps = 8
    sched = FlowMatchEulerDiscreteScheduler(shift=5.0)
    sched.set_timesteps(steps)
    sigmas = sched.sigmas.float()
    x0 = samplers.initial_noise((2, 5), seed=1)
    ours = samplers.sample_flow(lambda x, t: _toy_net(x, t), x0.clone(), sigmas, "euler")
    x = x0.clone()
    for i, t in enumerate(sched.timesteps):
        x = sched.step(_toy_net(x, sched.sigmas[i]), t, x).prev_sample
    assert (ours - x).abs().max() <= 1e-5


def test_edm_heun_is_second_order_on_a_gaussian():
    """Data ~ N(0, s_d^2): the exact denoiser is x s_d^2 / (s_d^2 + sigma^2) and the ODE solution from sigma_max is
    x(sigma) = x(sigma_max) sqrt((s_d^2 + sigma^2) / (s_d^2 + sigma_max^2)). Doubling the steps halves Euler's error
    (first order) and divides Heun's by about four (second order)."""
    sd = 0.5

    def denoise(x, s):
        return x * sd**2 / (sd**2 + s**2)

    def error(steps, solver):
        sigmas = samplers.edm_sigmas(steps, final="sigma_min").double()
        x = torch.full((1,), 80.0, dtype=torch.float64)
        exact = x * torch.sqrt((sd**2 + sigmas[-1] ** 2) / (sd**2 + sigmas[0] ** 2))
        return float((samplers.sample_edm(denoise, x, sigmas, solver) - exact).abs())

    euler, heun = error(20, "euler") / error(40, "euler"), error(20, "heun") / error(40, "heun")
    assert 1.7 < euler < 2.3 and heun > 3.5, (euler, heun)
    assert error(40, "heun") < 0.2 * error(40, "euler")


def test_cfg_and_seeds():
    cond, uncond = torch.tensor([1.0, 2.0]), torch.tensor([0.5, 2.5])
    assert torch.equal(samplers.cfg(cond, uncond, 7.0), cond + 7.0 * (cond - uncond))
    assert torch.equal(samplers.initial_noise((3, 4), 5), samplers.initial_noise((3, 4), 5))
    with pytest.raises(ValueError, match="flow solver"):
        samplers.sample_flow(lambda x, t: x, torch.zeros(1), samplers.flow_sigmas(2), "rk4")
