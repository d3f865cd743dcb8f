"""Timestep adjustment (docs/method.md, "Timestep adjustment").

Sampling walks a DDIM grid tau_k per modality, each in its base scheduler's own spacing (audio:
AudioLDM's 'leading' + 1, 981 ... 1; video: 'linspace', 999 ... 0, as the reference forces),
warped so that t_v/T ~ (t_a/T)**gamma:

    t_v = round(T * (tau_v/T) ** sqrt(gamma)),   t_a = round(T * (tau_a/T) ** (1/sqrt(gamma)))

Because the warped grids are not evenly strided, :func:`ddim_step` takes the previous timestep
explicitly, looked up in the warped list, instead of deriving it from a fixed stride.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from svgen.config import NoiseSchedule


def ddim_grid(num_steps: int, num_train_timesteps: int = 1000, steps_offset: int = 1,
              spacing: str = "leading") -> list[int]:
    """The plain DDIM grid, descending, as diffusers' DDIMScheduler.set_timesteps spaces it:
    'leading' (k * T//n + offset), 'linspace' (round(linspace(0, T-1, n))), 'trailing'."""
    T = num_train_timesteps
    if not 1 <= num_steps <= T:
        raise ValueError(f"num_steps must be in [1, {T}], got {num_steps}")
    if spacing == "leading":
        return [k * (T // num_steps) + steps_offset for k in reversed(range(num_steps))]
    if spacing == "linspace":
        return [int(t) for t in np.linspace(0, T - 1, num_steps).round()[::-1]]
    if spacing == "trailing":
        return [int(t) - 1 for t in np.round(np.arange(T, 0, -T / num_steps))]
    raise ValueError(f"unknown timestep spacing {spacing!r}; use leading, linspace or trailing")


def base_grid(num_steps: int, schedule: NoiseSchedule) -> list[int]:
    """A base model's own DDIM grid."""
    return ddim_grid(num_steps, schedule.num_train_timesteps, schedule.steps_offset, schedule.timestep_spacing)


def warp(grid: list[int], exponent: float, num_train_timesteps: int = 1000) -> list[int]:
    """t = round(T * (tau/T) ** exponent), clamped to [0, T-1]."""
    T = num_train_timesteps
    return [min(T - 1, max(0, round(T * (tau / T) ** exponent))) for tau in grid]


def adjusted_grids(num_steps: int, gamma: float, audio: NoiseSchedule, video: NoiseSchedule
                   ) -> tuple[list[int], list[int]]:
    """(audio grid, video grid), both descending and of equal length: each base's own grid, warped.
    gamma = 1 gives each base's plain DDIM grid."""
    if gamma <= 0:
        raise ValueError(f"gamma must be > 0, got {gamma}")
    tau_a, tau_v = base_grid(num_steps, audio), base_grid(num_steps, video)
    if gamma == 1.0:
        return tau_a, tau_v
    root = math.sqrt(gamma)
    return warp(tau_a, 1.0 / root, audio.num_train_timesteps), warp(tau_v, root, video.num_train_timesteps)


def transitions(grid: list[int]) -> list[tuple[int, int]]:
    """(t, t_prev) pairs along a descending grid, t_prev read from the list itself (-1 at the
    end), never from a fixed stride: the warped grids are unevenly spaced."""
    return list(zip(grid, grid[1:] + [-1]))


def ddim_step(model_output: torch.Tensor, x_t: torch.Tensor, *, t: int, t_prev: int,
              alphas_cumprod: torch.Tensor, final_alpha_cumprod: float, prediction_type: str,
              eta: float = 0.0, generator: torch.Generator | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """One DDIM update from t to t_prev (t_prev = -1 means the end). Returns (x_prev, x0_hat).

    Same maths as diffusers' DDIMScheduler.step with clip_sample=False, but with t_prev given.
    """
    a_t = alphas_cumprod[t].item()
    a_prev = alphas_cumprod[t_prev].item() if t_prev >= 0 else final_alpha_cumprod
    b_t = 1 - a_t
    x, out = x_t.float(), model_output.float()
    if prediction_type == "epsilon":
        x0 = (x - b_t ** 0.5 * out) / a_t ** 0.5
        eps = out
    elif prediction_type == "v_prediction":
        x0 = a_t ** 0.5 * x - b_t ** 0.5 * out
        eps = a_t ** 0.5 * out + b_t ** 0.5 * x
    else:
        raise ValueError(f"unknown prediction_type {prediction_type!r}")
    variance = (1 - a_prev) / b_t * (1 - a_t / a_prev)
    sigma = eta * variance ** 0.5
    x_prev = a_prev ** 0.5 * x0 + (1 - a_prev - sigma ** 2) ** 0.5 * eps
    if eta > 0:
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x_prev = x_prev + sigma * noise
    return x_prev.to(x_t.dtype), x0
