"""Timestep adjustment (METHOD.md, "Timestep adjustment").

Sampling walks one DDIM grid tau_k, warped per modality so that t_v/T ~ (t_a/T)**gamma:

    t_v = round(T * (tau/T) ** sqrt(gamma)),   t_a = round(T * (tau/T) ** (1/sqrt(gamma)))

Because the warped grids are not evenly strided, :func:`ddim_step` takes the previous timestep
explicitly, looked up in the warped list, instead of deriving it from a fixed stride.
"""

from __future__ import annotations

import math

import torch


def ddim_grid(num_steps: int, num_train_timesteps: int = 1000, steps_offset: int = 1) -> list[int]:
    """The plain DDIM grid, descending: diffusers' 'leading' spacing (as in SD and AudioLDM)."""
    if not 1 <= num_steps <= num_train_timesteps:
        raise ValueError(f"num_steps must be in [1, {num_train_timesteps}], got {num_steps}")
    ratio = num_train_timesteps // num_steps
    return [k * ratio + steps_offset for k in reversed(range(num_steps))]


def warp(grid: list[int], exponent: float, num_train_timesteps: int = 1000) -> list[int]:
    """t = round(T * (tau/T) ** exponent), clamped to [0, T-1]."""
    T = num_train_timesteps
    return [min(T - 1, max(0, round(T * (tau / T) ** exponent))) for tau in grid]


def adjusted_grids(num_steps: int, gamma: float, num_train_timesteps: int = 1000,
                   steps_offset: int = 1) -> tuple[list[int], list[int]]:
    """(audio grid, video grid), both descending and of equal length. gamma = 1 gives plain DDIM."""
    if gamma <= 0:
        raise ValueError(f"gamma must be > 0, got {gamma}")
    tau = ddim_grid(num_steps, num_train_timesteps, steps_offset)
    if gamma == 1.0:
        return list(tau), list(tau)
    root = math.sqrt(gamma)
    return warp(tau, 1.0 / root, num_train_timesteps), warp(tau, root, num_train_timesteps)


def transitions(grid: list[int]) -> list[tuple[int, int]]:
    """(t, t_prev) pairs along a descending grid, t_prev read from the list itself (-1 at the
    end), never from a fixed stride: the warped grids are unevenly spaced."""
    return list(zip(grid, grid[1:] + [-1]))


def ddim_step(model_output: torch.Tensor, x_t: torch.Tensor, t: int, t_prev: int,
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
