"""Diffusion training objectives of the Cosmos DiT and its frame conditioning (diffusion_models.md §3-4).

`DiffusionObjective` is one config for the three references:

- `kind="edm"` (Predict1): ln sigma ~ N(p_mean, p_std), times `sqrt(T_latent)` with `video_noise_multiplier`
  ("sqrt_t"); x_t = x0 + sigma eps; the net sees c_in x_t and c_noise = 0.25 ln sigma; x0_hat = c_skip x_t +
  c_out F with sigma_data 0.5; loss lambda(sigma) (x0 - x0_hat)^2 with lambda = (sigma^2 + sigma_d^2) /
  (sigma sigma_d)^2, per sample averaged over C,T,H,W, then with the learned log-variance u(c_noise)
  (Kendall, `logvar=True`): loss e^-u + u (hence negative losses), mean over the batch.
  Conditional latent frames (Video2World): the first n frames are augmented clean latents
  (sigma_aug = exp(N(-3, 2)), the net input there is (x0 + sigma_aug eps') c_in(sigma_aug)), the condition mask
  channel marks them, and x0_hat there is replaced by the ground truth (no loss).
- `kind="rf"` (Predict2.5; Predict2 with `time_distribution="lognormal_sigma"` and `loss_scale=10`):
  t = s u / (1 + (s - 1) u) with u = sigmoid(N(0,1)) (logit-normal, shift s = 5), or t = sigma / (1 + sigma)
  with the EDM sigma above; x_t = t eps + (1 - t) x0, target velocity v = eps - x0; the net sees x_t and
  `timestep_input_scale` x t per latent frame (1000 for Predict2.5, whose net scales by 0.001).
  Conditional frames: x_t there is x0, their timestep is `conditional_frame_timestep` when >= 0, and the
  predicted velocity there is replaced by the target (no loss). Loss mean((v_hat - v)^2) x `loss_scale`.

The number of conditional frames is drawn per sample from `conditional_frames_probs` ({0: p0, 1: p1, 2: p2};
0 = Text2World, 1 = Image2World, 2 = Video2World); a Text2World model always has 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch

KINDS = ("edm", "rf")
TIME_DISTRIBUTIONS = ("logitnormal", "lognormal_sigma")


@dataclass
class DiffusionObjective:
    kind: str = "edm"
    sigma_data: float = 0.5
    p_mean: float = 0.0
    p_std: float = 1.0
    video_noise_multiplier: str = "none"  # "none" | "sqrt_t": sigma x sqrt(latent frames) (Predict1 V2W, Predict2)
    logvar: bool = True  # Kendall weighting with the model's log-variance head (Predict1)
    time_distribution: str = "logitnormal"  # rf: logitnormal (Predict2.5) | lognormal_sigma (Predict2)
    shift: float = 5.0
    loss_scale: float = 1.0
    timestep_input_scale: float = 1000.0  # rf: what the net's timesteps are (t x this)
    conditional_frames_probs: dict = field(default_factory=lambda: {0: 1.0})
    conditional_frame_timestep: float = -1.0  # rf: timestep of the conditional frames (< 0: theirs)
    augment_sigma_mean: float = -3.0  # edm: ln sigma_aug ~ N(mean, std) on the conditional frames
    augment_sigma_std: float = 2.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"objective kind must be one of {KINDS}, got {self.kind!r}")
        if self.time_distribution not in TIME_DISTRIBUTIONS:
            raise ValueError(f"time_distribution must be one of {TIME_DISTRIBUTIONS}, got {self.time_distribution!r}")
        if self.video_noise_multiplier not in ("none", "sqrt_t"):
            raise ValueError(f"video_noise_multiplier must be 'none' or 'sqrt_t', got {self.video_noise_multiplier!r}")
        probs = {int(k): float(v) for k, v in dict(self.conditional_frames_probs).items()}
        if not probs or any(k < 0 for k in probs) or any(v < 0 for v in probs.values()) or sum(probs.values()) <= 0:
            raise ValueError(f"conditional_frames_probs must map frame counts >= 0 to weights >= 0, got "
                             f"{self.conditional_frames_probs}")
        self.conditional_frames_probs = probs

    # ------------------------------------------------------------------------------------------------
    def draw_condition_frames(self, batch: int, frames: int, video2world: bool, generator) -> torch.Tensor:
        """[B] number of conditional latent frames per sample."""
        if not video2world:
            return torch.zeros(batch, dtype=torch.long)
        counts = sorted(self.conditional_frames_probs)
        weights = torch.tensor([self.conditional_frames_probs[c] for c in counts], dtype=torch.float64)
        picks = torch.multinomial(weights, batch, replacement=True, generator=generator)
        n = torch.tensor(counts, dtype=torch.long)[picks]
        if int(n.max()) >= frames:
            raise ValueError(f"{int(n.max())} conditional frames leave no frame to generate in a {frames}-frame latent")
        return n

    def draw_sigma(self, batch: int, frames: int, generator) -> torch.Tensor:
        sigma = torch.exp(self.p_mean + self.p_std * torch.randn(batch, generator=generator, dtype=torch.float64))
        if self.video_noise_multiplier == "sqrt_t":
            sigma = sigma * math.sqrt(frames)
        return sigma

    def draw_t(self, batch: int, frames: int, generator) -> torch.Tensor:
        """rf: t in (0, 1) per sample."""
        if self.time_distribution == "logitnormal":
            u = torch.sigmoid(torch.randn(batch, generator=generator, dtype=torch.float64))
            return self.shift * u / (1 + (self.shift - 1) * u)
        sigma = self.draw_sigma(batch, frames, generator)
        return sigma / (1 + sigma)


@dataclass
class PreparedStep:
    """What the objective hands the network, and what its loss needs afterwards."""

    net_input: torch.Tensor
    timesteps: torch.Tensor
    condition_mask: Optional[torch.Tensor]
    loss: callable  # net output -> (loss, metrics)


def _frame_indicator(n: torch.Tensor, frames: int) -> torch.Tensor:
    """[B, 1, T, 1, 1] float: 1 on the first n[b] latent frames."""
    return (torch.arange(frames)[None, :] < n[:, None]).float()[:, None, :, None, None]


def prepare(objective: DiffusionObjective, model, x0: torch.Tensor, video2world: bool, generator) -> PreparedStep:
    """Noise a batch of clean latents x0 [B, C, T, H, W] (float32) for one training step of `model`."""
    B, _, T = x0.shape[:3]
    n_cond = objective.draw_condition_frames(B, T, video2world, generator)
    ind = _frame_indicator(n_cond, T).to(x0.device)
    eps = torch.randn(x0.shape, generator=generator, dtype=torch.float32).to(x0.device)
    metrics_extra = {"cond_frames": n_cond.float().mean()}

    if objective.kind == "edm":
        sd = objective.sigma_data
        sigma = objective.draw_sigma(B, T, generator).float().to(x0.device)
        s = sigma.view(-1, 1, 1, 1, 1)
        c_in = 1 / torch.sqrt(s**2 + sd**2)
        c_skip = sd**2 / (s**2 + sd**2)
        c_out = s * sd / torch.sqrt(s**2 + sd**2)
        c_noise = 0.25 * torch.log(sigma)
        x_t = x0 + s * eps
        if video2world:
            sigma_aug = torch.exp(objective.augment_sigma_mean + objective.augment_sigma_std
                                  * torch.randn(B, generator=generator)).to(x0.device).view(-1, 1, 1, 1, 1)
            eps_aug = torch.randn(x0.shape, generator=generator).to(x0.device)
            z_aug = (x0 + sigma_aug * eps_aug) / torch.sqrt(sigma_aug**2 + sd**2) / c_in
            x_t = ind * z_aug + (1 - ind) * x_t
        weight = (s**2 + sd**2) / (s * sd) ** 2
        uses_logvar = objective.logvar and getattr(model, "logvar", None) is not None

        def edm_loss(out: torch.Tensor):
            x0_hat = c_skip * x_t + c_out * out.float()
            if video2world:
                x0_hat = ind * x0 + (1 - ind) * x0_hat
            per_sample = (weight * (x0 - x0_hat) ** 2).mean(dim=(1, 2, 3, 4))
            metrics = {"edm_loss": per_sample.mean().detach(), **metrics_extra}
            if uses_logvar:
                u = model.log_variance(c_noise).float()
                per_sample = per_sample * torch.exp(-u) + u
                metrics["logvar"] = u.mean().detach()
            loss = per_sample.mean()
            return loss, {"loss": loss.detach(), **metrics}

        cond = ind.expand(B, 1, T, *x0.shape[3:]) if video2world else None
        return PreparedStep(net_input=c_in * x_t, timesteps=c_noise, condition_mask=cond, loss=edm_loss)

    t = objective.draw_t(B, T, generator).float().to(x0.device)
    tt = t.view(-1, 1, 1, 1, 1)
    x_t = tt * eps + (1 - tt) * x0
    v = eps - x0
    frame_t = t[:, None].expand(B, T).clone()
    if video2world:
        x_t = ind * x0 + (1 - ind) * x_t
        if objective.conditional_frame_timestep >= 0:
            cond_frames = ind[:, 0, :, 0, 0] > 0
            frame_t[cond_frames] = objective.conditional_frame_timestep / objective.timestep_input_scale

    def rf_loss(out: torch.Tensor):
        v_hat = out.float()
        if video2world:
            v_hat = ind * v + (1 - ind) * v_hat
        loss = ((v_hat - v) ** 2).mean() * objective.loss_scale
        return loss, {"loss": loss.detach(), "t": t.mean(), **metrics_extra}

    cond = ind.expand(B, 1, T, *x0.shape[3:]) if video2world else None
    return PreparedStep(net_input=x_t, timesteps=frame_t * objective.timestep_input_scale, condition_mask=cond,
                        loss=rf_loss)
