import math

import pytest
import torch
from diffusers import DDIMScheduler

from svgen.config import NoiseSchedule
from svgen.diffusion.schedule import Schedule, final_alpha
from svgen.diffusion.timestep_adjust import adjusted_grids, ddim_grid, ddim_step, transitions

T = 1000


def _ddim(cfg: NoiseSchedule, steps: int) -> DDIMScheduler:
    s = DDIMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_start=cfg.beta_start, beta_end=cfg.beta_end,
                      beta_schedule=cfg.beta_schedule, prediction_type=cfg.prediction_type, clip_sample=False,
                      set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading")
    s.set_timesteps(steps)
    return s


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("schedule", [
    dict(beta_start=0.0015, beta_end=0.0195, beta_schedule="scaled_linear"),
    dict(beta_start=0.00085, beta_end=0.012, beta_schedule="linear"),
])
def test_gamma_one_reproduces_plain_ddim(prediction, schedule):
    cfg = NoiseSchedule(prediction_type=prediction, **schedule)
    ours = Schedule(cfg)
    ref = _ddim(cfg, 50)
    grid_a, grid_v = adjusted_grids(50, 1.0, T)
    assert grid_a == grid_v == ref.timesteps.tolist()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=g)
    for t, t_prev in transitions(grid_a):
        out = torch.randn(x.shape, generator=g)  # any model output: the update rule is what's compared
        # Each step from the same input: float32 rounding then cannot accumulate over 50 steps
        # (chained, it reached 1.7e-5 on some CPUs), and each step is held to 1e-5.
        x_ref = ref.step(out, t, x).prev_sample
        x, _ = ddim_step(out, x, t, t_prev, ours.alphas_cumprod, final_alpha(ours), prediction)
        torch.testing.assert_close(x, x_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("gamma", [1.5, 2.0, 0.7])
@pytest.mark.parametrize("steps", [50, 25, 7])
def test_warped_grids_are_monotone_and_anchored(gamma, steps):
    tau = ddim_grid(steps, T)
    grid_a, grid_v = adjusted_grids(steps, gamma, T)
    assert len(grid_a) == len(grid_v) == steps
    for grid in (grid_a, grid_v):
        assert all(a >= b for a, b in zip(grid, grid[1:])), grid
        assert 0 <= grid[-1] <= 10 and grid[0] <= T - 1  # ends near clean (tau=1 warps to <= 8)
        assert transitions(grid)[-1][1] == -1  # ...and the last step goes all the way to x_0
    # Both start at the warped image of the plain grid's first step (anchored at T: T -> T).
    lo, hi = sorted([grid_a[0], grid_v[0]])
    assert lo <= tau[0] <= hi
    for ta, tv, t in zip(grid_a, grid_v, tau):
        assert tv == round(T * (t / T) ** math.sqrt(gamma))
        assert ta == round(T * (t / T) ** (1 / math.sqrt(gamma)))
        if gamma > 1:
            assert tv <= t <= ta  # video is kept less noisy than audio at every step
        # t_v/T ~ (t_a/T)**gamma (exact before rounding)
        assert abs(tv / T - (ta / T) ** gamma) < 0.01


def test_lookup_stepping_follows_the_list_not_a_stride():
    grid_a, grid_v = adjusted_grids(10, 1.5, T)
    strides = {a - b for a, b in zip(grid_v, grid_v[1:])}
    assert len(strides) > 1  # warped grids are unevenly spaced
    assert [p for _, p in transitions(grid_v)] == grid_v[1:] + [-1]


def test_bad_arguments():
    with pytest.raises(ValueError, match="gamma"):
        adjusted_grids(10, 0.0)
    with pytest.raises(ValueError, match="num_steps"):
        ddim_grid(0)
