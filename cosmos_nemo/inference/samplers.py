"""Diffusion samplers of the Cosmos DiT (diffusion_models.md §3.4), written against plain functions so that
they serve any network, parallel layout and guidance:

- EDM (Predict1): `edm_sigmas` (Karras, rho 7, [0.002, 80]) and `sample_edm` with Euler (diffusers'
  `EDMEulerScheduler`) or Heun (EDM's 2nd-order deterministic sampler) on a denoiser `x0 = D(x, sigma)`.
- Flow (Predict2/2.5): `flow_sigmas` (the shifted linear schedule, or Karras sigma in [0.01, 200] mapped by
  t = sigma / (1 + sigma), as `UniPCMultistepScheduler(use_flow_sigmas=True, use_karras_sigmas=True)`) and
  `sample_flow` with Euler (x += (t' - t) v) or the 2nd-order UniPC predictor-corrector (bh2, data
  prediction x0 = x - t v, lower order at the first and last steps), on a velocity `v = F(x, t)`.
- `cfg`: classifier-free guidance `cond + w (cond - uncond)` (w = 7 in the references; the unconditional
  branch is the zero text context where the reference does that).

Schedules are float32 tensors of length steps + 1 (the last is the final sigma: 0 or sigma_min). Every sampler
is deterministic given its inputs: the noise is drawn by the caller (`initial_noise`, one seeded CPU generator,
so a seed gives the same video on any device count or TP size).
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x, sigma scalar tensor) -> x0
Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x, t scalar tensor) -> v


def initial_noise(shape, seed: int, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """N(0, 1) noise of `shape` from a CPU generator seeded with `seed` (identical on every device and layout)."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(int(seed)), dtype=torch.float32).to(device, dtype)


def _karras(n: int, sigma_min: float, sigma_max: float, rho: float) -> np.ndarray:
    ramp = np.linspace(0, 1, n)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def edm_sigmas(steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
               final: str = "zero") -> torch.Tensor:
    """Karras sigmas from sigma_max down to sigma_min (`steps` of them), then the final sigma (0 or sigma_min)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if final not in ("zero", "sigma_min"):
        raise ValueError(f"final must be 'zero' or 'sigma_min', got {final!r}")
    ramp = torch.linspace(0, 1, steps)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    last = torch.zeros(1) if final == "zero" else sigmas[-1:].clone()
    return torch.cat([sigmas, last]).float()


def flow_sigmas(steps: int, shift: float = 5.0, karras: bool = False, sigma_min: float = 0.01,
                sigma_max: float = 200.0, rho: float = 7.0, num_train_timesteps: int = 1000,
                final: str = "zero") -> torch.Tensor:
    """Flow times t in (0, 1], decreasing, then the final one (0, or the last t with final="sigma_min").

    Shifted linear: t_k = shift u / (1 + (shift - 1) u) over u = linspace(1, 1/N, steps + 1) without its last
    value (N training timesteps), t = 1 moved to 1 - 1e-6, as diffusers' UniPC flow schedule; `karras`: Karras sigma in
    [sigma_min, sigma_max] mapped to t = sigma / (1 + sigma) (Predict2.5's `use_kerras_sigma_at_inference`)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if karras:
        s = _karras(steps, sigma_min, sigma_max, rho)
        t = s / (s + 1)
    else:
        u = np.linspace(1, 1 / num_train_timesteps, steps + 1)[:-1]
        t = shift * u / (1 + (shift - 1) * u)
        if abs(t[0] - 1) < 1e-6:
            t[0] -= 1e-6  # t = 1 has log(alpha) = -inf, which the multistep solver's lambda cannot take
    last = 0.0 if final == "zero" else t[-1]
    return torch.from_numpy(np.concatenate([t, [last]]).astype(np.float32))


def cfg(cond: torch.Tensor, uncond: torch.Tensor, guidance: float) -> torch.Tensor:
    """Classifier-free guidance in the references' convention: cond + w (cond - uncond)."""
    return cond + guidance * (cond - uncond)


# ---------------------------------------------------------------------------------------------------
# EDM


@torch.no_grad()
def sample_edm(denoise: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, solver: str = "euler",
               callback: Optional[Callable[[int, torch.Tensor], None]] = None) -> torch.Tensor:
    """Integrate the probability-flow ODE dx/dsigma = (x - D(x, sigma)) / sigma from sigmas[0] to sigmas[-1];
    `x` starts at noise x sigmas[0]. Euler, or Heun (a second evaluation at the next sigma unless it is 0)."""
    if solver not in ("euler", "heun"):
        raise ValueError(f"EDM solver must be 'euler' or 'heun', got {solver!r}")
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        d = (x - denoise(x, s)) / s
        x_next = x + (s_next - s) * d
        if solver == "heun" and float(s_next) > 0:
            d_next = (x_next - denoise(x_next, s_next)) / s_next
            x_next = x + (s_next - s) * (d + d_next) / 2
        x = x_next
        if callback is not None:
            callback(i, x)
    return x


# ---------------------------------------------------------------------------------------------------
# Flow


@torch.no_grad()
def sample_flow(velocity: Velocity, x: torch.Tensor, sigmas: torch.Tensor, solver: str = "unipc",
                callback: Optional[Callable[[int, torch.Tensor], None]] = None) -> torch.Tensor:
    """Integrate dx/dt = v(x, t) from t = sigmas[0] (x = noise there) to sigmas[-1] with Euler or UniPC-2."""
    if solver == "euler":
        for i in range(len(sigmas) - 1):
            x = x + (sigmas[i + 1] - sigmas[i]) * velocity(x, sigmas[i])
            if callback is not None:
                callback(i, x)
        return x
    if solver != "unipc":
        raise ValueError(f"flow solver must be 'euler' or 'unipc', got {solver!r}")
    return _unipc(velocity, x, sigmas.double(), callback)


def _lam(t: torch.Tensor) -> torch.Tensor:
    """log(alpha / sigma) of flow time t (alpha = 1 - t, sigma = t)."""
    return torch.log(1 - t) - torch.log(t)


def _unipc_coeffs(h: torch.Tensor, rks: list, order: int):
    """(B_h, h_phi_1, solution of the order conditions) of UniPC-bh2 for step h in lambda."""
    hh = -h  # data prediction
    h_phi_1 = torch.expm1(hh)
    b_h = torch.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    factorial = 1
    rows, rhs = [], []
    r = torch.stack([*rks, torch.ones((), dtype=h.dtype)])
    for k in range(1, order + 1):
        rows.append(r ** (k - 1))
        rhs.append(h_phi_k * factorial / b_h)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    return b_h, h_phi_1, torch.stack(rows), torch.stack(rhs)


def _unipc(velocity: Velocity, x: torch.Tensor, sigmas: torch.Tensor, callback) -> torch.Tensor:
    n = len(sigmas) - 1
    dtype = x.dtype
    models: list[torch.Tensor] = []  # data predictions m_k = x_k - t_k v_k
    last_x: Optional[torch.Tensor] = None
    last_order = 0
    for i in range(n):
        t = sigmas[i]
        m = x - t.to(dtype) * velocity(x, sigmas[i].float())
        if i > 0 and last_x is not None:  # corrector: refine x_i with m_i
            x = _unipc_correct(x, last_x, m, models, sigmas, i, last_order)
        models = (models + [m])[-2:]
        order = min(2, n - i, i + 1)  # lower order at the first step and at the last (lower_order_final)
        last_x, last_order = x, order
        x = _unipc_predict(x, models, sigmas, i, order)
        if callback is not None:
            callback(i, x)
    return x


def _unipc_terms(x_from, models, sigmas, i_from, i_to, order):
    """What the UniPC predictor (from step i to i+1) and corrector (from i-1 to i) share: the first-order
    update `(t_to / t_from) x_from - alpha_to h_phi_1 m0` of the data prediction m0 at t_from, the scale
    `alpha_to B_h` of the higher-order terms, the order conditions (rows, rhs) and the scaled difference D1
    to the data prediction one step further back (order 2)."""
    t_from, t_to = sigmas[i_from], sigmas[i_to]
    alpha_to = 1 - t_to
    lam_from = _lam(t_from)
    h = _lam(t_to) - lam_from
    m0 = models[-1]
    rks, d1 = [], None
    if order == 2:
        rk = (_lam(sigmas[i_from - 1]) - lam_from) / h
        rks.append(rk)
        d1 = (models[-2] - m0) / rk.to(x_from.dtype)
    b_h, h_phi_1, rows, rhs = _unipc_coeffs(h, rks, order)
    base = (t_to / t_from).to(x_from.dtype) * x_from - (alpha_to * h_phi_1).to(x_from.dtype) * m0
    return base, (alpha_to * b_h).to(x_from.dtype), rows, rhs, d1, m0


def _unipc_predict(x, models, sigmas, i, order):
    base, scale, _, _, d1, _ = _unipc_terms(x, models, sigmas, i, i + 1, order)
    return base if d1 is None else base - scale * 0.5 * d1  # order 2: rho_p = 1/2


def _unipc_correct(x, last_x, m, models, sigmas, i, order):
    base, scale, rows, rhs, d1, m0 = _unipc_terms(last_x, models, sigmas, i - 1, i, order)
    rhos = torch.tensor([0.5], dtype=rows.dtype) if order == 1 else torch.linalg.solve(rows, rhs)
    corr = rhos[-1].to(x.dtype) * (m - m0)
    if d1 is not None:
        corr = corr + rhos[0].to(x.dtype) * d1
    return base - scale * corr


def timesteps_of(sigmas: torch.Tensor, kind: str) -> torch.Tensor:
    """What the network is told at each step: c_noise = 0.25 ln sigma (EDM) or t (flow; the DiT scales it)."""
    if kind == "edm":
        return 0.25 * torch.log(sigmas.clamp_min(1e-20))
    return sigmas.clone()


