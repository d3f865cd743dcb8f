"""Joint DDIM sampling with timestep adjustment and per-modality classifier-free guidance
(docs/method.md, "Sampling")."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from tqdm import tqdm

from svgen.config import SampleConfig
from svgen.diffusion.schedule import Schedule, final_alpha
from svgen.diffusion.timestep_adjust import adjusted_grids, ddim_step, transitions
from svgen.models.joint import JointInputs

if TYPE_CHECKING:
    from svgen.system import JointSystem


@dataclass
class Given:
    """A modality held fixed where ``mask`` is 1 (the replacement approach of the reference code):
    at every step that region is the clean latent re-noised to the modality's current timestep,
    and at the end it is the clean latent itself. mask = 1 everywhere: video-to-audio or
    audio-to-video; 1 on a time prefix: continuation of a clip."""

    latent: torch.Tensor
    mask: torch.Tensor

    @staticmethod
    def prefix(latent: torch.Tensor, fraction: float) -> "Given":
        """Hold the first ``fraction`` of the time axis (axis 2 in both latent layouts)."""
        mask = torch.zeros_like(latent)
        mask[:, :, : round(fraction * latent.shape[2])] = 1.0
        return Given(latent, mask)

    @staticmethod
    def whole(latent: torch.Tensor) -> "Given":
        return Given(latent, torch.ones_like(latent))


def _randn(shape: tuple, generator, device) -> torch.Tensor:
    """Noise for a batch; a list of generators gives each item its own stream, so an item comes
    out the same whatever batch it is sampled in."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}")
        return torch.stack([torch.randn(shape[1:], generator=g, device=device) for g in generator])
    return torch.randn(shape, generator=generator, device=device)


def _impose(z: torch.Tensor, given: Given | None, sched: Schedule, *, t: int, eps: torch.Tensor) -> torch.Tensor:
    if given is None:
        return z
    if t < 0:
        target = given.latent.float()
    else:
        target = sched.add_noise(given.latent.float(), eps, torch.full((z.shape[0],), t, device=z.device))
    return given.mask * target + (1 - given.mask) * z


@torch.no_grad()
def sample_latents(system: "JointSystem", *, text: tuple[torch.Tensor, torch.Tensor],
                   negative: tuple[torch.Tensor, torch.Tensor], shapes: tuple[tuple, tuple], cfg: SampleConfig,
                   generator=None, progress: bool = True, given_a: Given | None = None,
                   given_v: Given | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Generate (audio latents, video latents) of ``shapes`` for a batch of prompts.

    ``text`` = (audio (B, D), video (B, L, D)) prompt embeddings; ``negative`` the negative
    prompt's, used as the unconditional branch. Each modality steps on its own warped grid.
    ``generator``: one, or one per batch item (each item then independent of the batch).
    ``given_a`` / ``given_v`` hold (part of) a modality fixed: conditional generation.
    """
    model, sched_a, sched_v = system.model, system.sched_a, system.sched_v
    (text_a, text_v), (neg_a, neg_v), (shape_a, shape_v) = text, negative, shapes
    dev = text_a.device
    z_a, z_v = _randn(shape_a, generator, dev), _randn(shape_v, generator, dev)
    # One fixed noise per given modality: its re-noised versions lie on one forward trajectory.
    eps_a = _randn(shape_a, generator, dev) if given_a is not None else None
    eps_v = _randn(shape_v, generator, dev) if given_v is not None else None
    step_gen = generator[0] if isinstance(generator, (list, tuple)) else generator
    x0_a, x0_v = torch.zeros_like(z_a), torch.zeros_like(z_v)
    grid_a, grid_v = adjusted_grids(cfg.steps, cfg.gamma, sched_a.cfg, sched_v.cfg)
    b = shape_a[0]
    guided = cfg.guidance_audio != 1.0 or cfg.guidance_video != 1.0
    if guided:
        text_a = torch.cat([text_a, neg_a.expand_as(text_a)])
        text_v = torch.cat([text_v, neg_v.expand_as(text_v)])
    steps = list(zip(transitions(grid_a), transitions(grid_v)))
    for (t_a, prev_a), (t_v, prev_v) in tqdm(steps, desc="sampling", disable=not progress):
        z_a, z_v = (_impose(z_a, given_a, sched_a, t=t_a, eps=eps_a),
                    _impose(z_v, given_v, sched_v, t=t_v, eps=eps_v))
        if given_a is not None:
            x0_a = given_a.mask * given_a.latent.float() + (1 - given_a.mask) * x0_a
        if given_v is not None:
            x0_v = given_v.mask * given_v.latent.float() + (1 - given_v.mask) * x0_v
        reps = 2 if guided else 1
        ta = torch.full((b * reps,), t_a, device=dev, dtype=torch.long)
        tv = torch.full((b * reps,), t_v, device=dev, dtype=torch.long)
        enc_a, enc_v = torch.cat([z_a, x0_a], 1), torch.cat([z_v, x0_v], 1)
        za, zv = z_a, z_v
        if guided:
            za, zv, enc_a, enc_v = (torch.cat([x, x]) for x in (za, zv, enc_a, enc_v))
        out_a, out_v = model(JointInputs(z_a=za, z_v=zv, t_a=ta, t_v=tv, text_a=text_a, text_v=text_v, enc_a=enc_a,
                                          enc_v=enc_v, s_a=ta, s_v=tv))
        out_a, out_v = out_a.float(), out_v.float()
        if guided:
            (ca, ua), (cv, uv) = out_a.chunk(2), out_v.chunk(2)
            out_a = ua + cfg.guidance_audio * (ca - ua)
            out_v = uv + cfg.guidance_video * (cv - uv)
        z_a, x0_a = ddim_step(out_a, z_a, t=t_a, t_prev=prev_a, alphas_cumprod=sched_a.alphas_cumprod,
                              final_alpha_cumprod=final_alpha(sched_a), prediction_type=sched_a.prediction_type,
                              eta=cfg.eta, generator=step_gen)
        z_v, x0_v = ddim_step(out_v, z_v, t=t_v, t_prev=prev_v, alphas_cumprod=sched_v.alphas_cumprod,
                              final_alpha_cumprod=final_alpha(sched_v), prediction_type=sched_v.prediction_type,
                              eta=cfg.eta, generator=step_gen)
    return _impose(z_a, given_a, sched_a, t=-1, eps=eps_a), _impose(z_v, given_v, sched_v, t=-1, eps=eps_v)
