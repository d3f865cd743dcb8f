"""Joint DDIM sampling with timestep adjustment and per-modality classifier-free guidance
(METHOD.md, "Sampling")."""

from __future__ import annotations

import torch
from tqdm import tqdm

from svgen.config import SampleConfig
from svgen.diffusion.schedule import Schedule
from svgen.diffusion.timestep_adjust import adjusted_grids, ddim_step, transitions
from svgen.models.joint import JointInputs


def final_alpha(sched: Schedule) -> float:
    """alpha_bar after the last step; SD and AudioLDM use set_alpha_to_one=False."""
    return sched.alphas_cumprod[0].item()


@torch.no_grad()
def sample_latents(model, sched_a: Schedule, sched_v: Schedule, text_a: torch.Tensor, text_v: torch.Tensor,
                   neg_a: torch.Tensor, neg_v: torch.Tensor, shape_a: tuple, shape_v: tuple,
                   cfg: SampleConfig, generator: torch.Generator | None = None,
                   progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Generate (audio latents, video latents) for a batch of prompts.

    text_a (B, D) / text_v (B, L, D) are the prompt embeddings; neg_a / neg_v the negative
    prompt's, used as the unconditional branch. Each modality steps on its own warped grid.
    """
    dev = text_a.device
    dtype = torch.float32
    z_a = torch.randn(shape_a, generator=generator, device=dev, dtype=dtype)
    z_v = torch.randn(shape_v, generator=generator, device=dev, dtype=dtype)
    x0_a, x0_v = torch.zeros_like(z_a), torch.zeros_like(z_v)
    grid_a, grid_v = adjusted_grids(cfg.steps, cfg.gamma, sched_a.num_train_timesteps)
    b = shape_a[0]
    guided = cfg.guidance_audio != 1.0 or cfg.guidance_video != 1.0
    if guided:
        text_a = torch.cat([text_a, neg_a.expand_as(text_a)])
        text_v = torch.cat([text_v, neg_v.expand_as(text_v)])
    steps = list(zip(transitions(grid_a), transitions(grid_v)))
    for (t_a, prev_a), (t_v, prev_v) in tqdm(steps, desc="sampling", disable=not progress):
        reps = 2 if guided else 1
        ta = torch.full((b * reps,), t_a, device=dev, dtype=torch.long)
        tv = torch.full((b * reps,), t_v, device=dev, dtype=torch.long)
        enc_a, enc_v = torch.cat([z_a, x0_a], 1), torch.cat([z_v, x0_v], 1)
        za, zv = z_a, z_v
        if guided:
            za, zv, enc_a, enc_v = (torch.cat([x, x]) for x in (za, zv, enc_a, enc_v))
        out_a, out_v = model(JointInputs(za, zv, ta, tv, text_a, text_v, enc_a, enc_v, ta, tv))
        out_a, out_v = out_a.float(), out_v.float()
        if guided:
            (ca, ua), (cv, uv) = out_a.chunk(2), out_v.chunk(2)
            out_a = ua + cfg.guidance_audio * (ca - ua)
            out_v = uv + cfg.guidance_video * (cv - uv)
        z_a, x0_a = ddim_step(out_a, z_a, t_a, prev_a, sched_a.alphas_cumprod,
                              final_alpha(sched_a), sched_a.prediction_type, cfg.eta, generator)
        z_v, x0_v = ddim_step(out_v, z_v, t_v, prev_v, sched_v.alphas_cumprod,
                              final_alpha(sched_v), sched_v.prediction_type, cfg.eta, generator)
    return z_a, z_v
