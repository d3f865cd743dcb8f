import math

import pytest
import torch
from diffusers import DDIMScheduler

from svgen.config import NoiseSchedule
from svgen.diffusion.schedule import Schedule, final_alpha
from svgen.config import load_config
from svgen.diffusion.timestep_adjust import adjusted_grids, base_grid, ddim_grid, ddim_step, transitions

from .conftest import ROOT

T = 1000
GH = load_config(ROOT / "configs" / "greatesthits.yaml").model
AUDIO, VIDEO = GH.audio.schedule, GH.video.schedule


def _ddim(cfg: NoiseSchedule, steps: int) -> DDIMScheduler:
    s = DDIMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_start=cfg.beta_start, beta_end=cfg.beta_end,
                      beta_schedule=cfg.beta_schedule, prediction_type=cfg.prediction_type, clip_sample=False,
                      set_alpha_to_one=False, steps_offset=cfg.steps_offset, timestep_spacing=cfg.timestep_spacing)
    s.set_timesteps(steps)
    return s


def test_each_base_keeps_its_own_grid():
    """Audio: AudioLDM's 'leading' + 1 (first step 981); video: 'linspace' as the reference forces
    (first step 999), each exactly as diffusers' DDIMScheduler spaces it."""
    grid_a, grid_v = adjusted_grids(50, 1.0, AUDIO, VIDEO)
    assert grid_a[0] == 981 and grid_a[-1] == 1
    assert grid_v[0] == 999 and grid_v[-1] == 0
    assert grid_a == _ddim(AUDIO, 50).timesteps.tolist()
    assert grid_v == _ddim(VIDEO, 50).timesteps.tolist()
    for spacing in ("leading", "linspace", "trailing"):
        cfg = NoiseSchedule(timestep_spacing=spacing)
        for steps in (7, 25, 50):
            assert base_grid(steps, cfg) == _ddim(cfg, steps).timesteps.tolist(), (spacing, steps)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("schedule", [
    dict(beta_start=0.0015, beta_end=0.0195, beta_schedule="scaled_linear"),
    dict(beta_start=0.00085, beta_end=0.012, beta_schedule="linear"),
])
def test_gamma_one_reproduces_plain_ddim(prediction, schedule):
    cfg = NoiseSchedule(prediction_type=prediction, **schedule)
    ours = Schedule(cfg)
    ref = _ddim(cfg, 50)
    grid_a, grid_v = adjusted_grids(50, 1.0, cfg, cfg)
    assert grid_a == grid_v == ref.timesteps.tolist()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=g)
    for t, t_prev in transitions(grid_a):
        out = torch.randn(x.shape, generator=g)  # any model output: the update rule is what's compared
        # Each step from the same input: float32 rounding then cannot accumulate over 50 steps
        # (chained, it reached 1.7e-5 on some CPUs), and each step is held to 1e-5.
        x_ref = ref.step(out, t, x).prev_sample
        x, _ = ddim_step(out, x, t=t, t_prev=t_prev, alphas_cumprod=ours.alphas_cumprod,
                         final_alpha_cumprod=final_alpha(ours), prediction_type=prediction)
        torch.testing.assert_close(x, x_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("gamma", [1.5, 2.0, 0.7])
@pytest.mark.parametrize("steps", [50, 25, 7])
def test_warped_grids_are_monotone_and_anchored(gamma, steps):
    tau_a, tau_v = base_grid(steps, AUDIO), base_grid(steps, VIDEO)
    grid_a, grid_v = adjusted_grids(steps, gamma, AUDIO, VIDEO)
    assert len(grid_a) == len(grid_v) == steps
    for grid in (grid_a, grid_v):
        assert all(a >= b for a, b in zip(grid, grid[1:])), grid
        assert 0 <= grid[-1] <= 10 and grid[0] <= T - 1  # ends near clean (tau=1 warps to <= 8)
        assert transitions(grid)[-1][1] == -1  # ...and the last step goes all the way to x_0
    for ta, tv, sa, sv in zip(grid_a, grid_v, tau_a, tau_v):
        assert tv == min(T - 1, round(T * (sv / T) ** math.sqrt(gamma)))
        assert ta == min(T - 1, round(T * (sa / T) ** (1 / math.sqrt(gamma))))
        if gamma > 1:
            assert tv <= sv and sa <= ta  # video is kept less noisy than audio at every step
        # t_v/T ~ (t_a/T)**gamma, each on its own base grid: both sides equal (tau/T)**sqrt(gamma)
        # up to rounding (the two base grids themselves differ: 981 ... 1 vs 999 ... 0).
        assert abs((ta / T) ** gamma - (sa / T) ** math.sqrt(gamma)) < 0.01


def test_lookup_stepping_follows_the_list_not_a_stride():
    grid_a, grid_v = adjusted_grids(10, 1.5, AUDIO, VIDEO)
    strides = {a - b for a, b in zip(grid_v, grid_v[1:])}
    assert len(strides) > 1  # warped grids are unevenly spaced
    assert [p for _, p in transitions(grid_v)] == grid_v[1:] + [-1]


def test_bad_arguments():
    with pytest.raises(ValueError, match="gamma"):
        adjusted_grids(10, 0.0, AUDIO, VIDEO)
    with pytest.raises(ValueError, match="num_steps"):
        ddim_grid(0)
