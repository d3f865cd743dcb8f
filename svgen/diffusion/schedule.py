"""Per-base DDPM noise schedules (docs/method.md, "Base models": each base keeps its own)."""

from __future__ import annotations

import torch
from diffusers import DDPMScheduler

from svgen.config import NoiseSchedule


class Schedule:
    """alphas_cumprod of one base plus the forward-process helpers the objective needs.

    diffusers' DDPMScheduler builds the betas (so 'scaled_linear' means exactly what AudioLDM
    and SD mean by it); the helpers below index them by a per-sample timestep tensor.
    """

    def __init__(self, cfg: NoiseSchedule):
        self.cfg = cfg
        self.scheduler = DDPMScheduler(
            num_train_timesteps=cfg.num_train_timesteps,
            beta_start=cfg.beta_start,
            beta_end=cfg.beta_end,
            beta_schedule=cfg.beta_schedule,
            prediction_type=cfg.prediction_type,
            clip_sample=False,
        )
        self.alphas_cumprod = self.scheduler.alphas_cumprod.to(torch.float64)
        self.num_train_timesteps = cfg.num_train_timesteps
        self.prediction_type = cfg.prediction_type

    def _coeffs(self, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.alphas_cumprod.to(like.device)[t.long()]
        shape = (-1,) + (1,) * (like.ndim - 1)
        sa = a.sqrt().to(torch.float32).reshape(shape)
        s1a = (1 - a).sqrt().to(torch.float32).reshape(shape)
        return sa, s1a

    def add_noise(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """q(x_t | x_0) with the given noise, per-sample t."""
        sa, s1a = self._coeffs(t, x0)
        return (sa * x0.float() + s1a * eps.float()).to(x0.dtype)

    def target(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the base UNet is trained to predict at t."""
        if self.prediction_type == "epsilon":
            return eps
        sa, s1a = self._coeffs(t, x0)
        return (sa * eps.float() - s1a * x0.float()).to(x0.dtype)

    def predict_x0(self, x_t: torch.Tensor, out: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The clean estimate x0_hat from the UNet output at t (fp32)."""
        sa, s1a = self._coeffs(t, x_t)
        x_t, out = x_t.float(), out.float()
        if self.prediction_type == "epsilon":
            return (x_t - s1a * out) / sa
        return sa * x_t - s1a * out


def final_alpha(sched: Schedule) -> float:
    """alpha_bar after the last step; SD and AudioLDM use set_alpha_to_one=False."""
    return sched.alphas_cumprod[0].item()
