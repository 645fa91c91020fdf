"""Generating latents with a Cosmos DiT: the network wrapped as the denoiser (EDM) or velocity (flow) that the
samplers of inference/samplers.py integrate, with frame conditioning and classifier-free guidance as the
references do it (diffusion_models.md §3.4, §4):

- Text2World / Image2World / Video2World is the number of conditional latent frames (0 / 1 / 2 for
  Predict2.5; a Text2World checkpoint takes 0). Conditional frames hold the given clean latents: EDM
  (Predict1) feeds them augmented with sigma_aug = 0.001 and replaces x0 there by them; flow feeds them clean
  (at `conditional_frame_timestep` when the objective sets one) with zero velocity. The output's conditional
  frames are the given latents.
- Guidance: `cond + w (cond - uncond)` on x0 (EDM) or on the velocity (flow), the unconditional branch with a
  zero text context (the references' `use_empty_string=False` / dropout-to-zero convention), or with the
  embeddings of a negative prompt when one is given (`uncond_context`).
- The initial noise comes from one seeded CPU generator, so a seed gives the same latents at any TP size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from cosmos_nemo.inference import samplers


@dataclass
class GenerationSettings:
    steps: int = 35
    guidance: float = 7.0
    seed: int = 1
    solver: Optional[str] = None  # EDM: euler | heun (default euler); flow: euler | unipc (default unipc)
    shift: float = 5.0
    karras: bool = False  # flow: Karras sigma in [0.01, 200] (Predict2.5's use_kerras_sigma_at_inference)
    condition_augment_sigma: float = 0.001  # EDM: sigma of the conditional frames at inference (Predict1)


def _frame_mask(n_cond: int, shape, device) -> torch.Tensor:
    B, _, T, H, W = shape
    ind = torch.zeros(B, 1, T, 1, 1, device=device)
    ind[:, :, :n_cond] = 1
    return ind


@torch.no_grad()
def generate_latents(model, context: torch.Tensor, shape, settings: GenerationSettings = GenerationSettings(),
                     condition: Optional[torch.Tensor] = None, fps: Optional[float] = None,
                     padding_mask: Optional[torch.Tensor] = None, callback=None,
                     uncond_context: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Latents [B, C, T, H, W] of `shape` for text embeddings `context` [B, L, D]. `condition` [B, C, n, H, W]
    holds the clean latents of the first n frames (None: Text2World). `uncond_context` (same shape as
    `context`; None: zeros) is the text of guidance's unconditional branch, e.g. negative prompts."""
    from cosmos_nemo.models.family import unwrap

    net = unwrap(model)
    cfg = net.dit_config
    objective = cfg.objective
    B, C, T, H, W = shape
    device = next(net.parameters()).device
    dtype = net.config.params_dtype
    n_cond = 0 if condition is None else int(condition.shape[2])
    if n_cond and not cfg.video2world:
        raise ValueError(f"the {cfg.name!r} DiT is a Text2World model: it takes no conditional frames")
    if n_cond >= T:
        raise ValueError(f"{n_cond} conditional frames leave nothing to generate in {T} latent frames")
    if n_cond and tuple(condition.shape) != (B, C, n_cond, H, W):
        raise ValueError(f"condition must be [B, C, n, H, W] = {(B, C, n_cond, H, W)}, got {tuple(condition.shape)}")
    ind = _frame_mask(n_cond, shape, device)
    x0_cond = torch.zeros(shape, device=device)
    if n_cond:
        x0_cond[:, :, :n_cond] = condition.to(device, torch.float32)
    cond_mask = ind.expand(B, 1, T, H, W).to(dtype) if cfg.video2world else None
    ctx = context.to(device, dtype)
    if uncond_context is not None and tuple(uncond_context.shape) != tuple(ctx.shape):
        raise ValueError(f"uncond_context {tuple(uncond_context.shape)} must have the context's shape {tuple(ctx.shape)}")
    uncond = torch.zeros_like(ctx) if uncond_context is None else uncond_context.to(device, dtype)
    contexts = [ctx] if settings.guidance == 0 else [ctx, uncond]

    def run_net(x_in: torch.Tensor, timesteps: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for c in contexts:
            outs.append(net(x_in.to(dtype), timesteps, c, fps=fps, padding_mask=padding_mask,
                            condition_mask=cond_mask).float())
        return outs

    def guide(outs: list[torch.Tensor]) -> torch.Tensor:
        return outs[0] if len(outs) == 1 else samplers.cfg(outs[0], outs[1], settings.guidance)

    noise = samplers.initial_noise(shape, settings.seed).to(device)
    if objective.kind == "edm":
        sd = objective.sigma_data
        sigmas = samplers.edm_sigmas(settings.steps).to(device)
        s_aug = settings.condition_augment_sigma
        aug = x0_cond + s_aug * samplers.initial_noise(shape, settings.seed + 1).to(device)

        def denoise(x, sigma):
            c_in = 1 / torch.sqrt(sigma**2 + sd**2)
            c_skip, c_out = sd**2 / (sigma**2 + sd**2), sigma * sd / torch.sqrt(sigma**2 + sd**2)
            x_in = ind * (aug / torch.sqrt(torch.tensor(s_aug**2 + sd**2)) / c_in) + (1 - ind) * x
            c_noise = (0.25 * torch.log(sigma)).expand(B)
            x0 = c_skip * x_in + c_out * guide(run_net(c_in * x_in, c_noise))
            return ind * x0_cond + (1 - ind) * x0

        x = samplers.sample_edm(denoise, noise * sigmas[0], sigmas, settings.solver or "euler", callback)
    else:
        sigmas = samplers.flow_sigmas(settings.steps, shift=settings.shift, karras=settings.karras).to(device)
        scale = objective.timestep_input_scale

        def velocity(x, t):
            x_in = ind * x0_cond + (1 - ind) * x
            frame_t = t.float().expand(B, T).clone()
            if objective.conditional_frame_timestep >= 0 and n_cond:
                frame_t[:, :n_cond] = objective.conditional_frame_timestep / scale
            v = guide(run_net(x_in, frame_t * scale))
            return (1 - ind) * v

        x = samplers.sample_flow(velocity, noise, sigmas, settings.solver or "unipc", callback)
    return ind * x0_cond + (1 - ind) * x
