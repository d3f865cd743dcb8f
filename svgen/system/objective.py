"""The training objective of one joint step (docs/method.md, "Training (one step)")."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from svgen.config import LossConfig
from svgen.data.latents import LatentBatch
from svgen.models.joint import JointInputs

if TYPE_CHECKING:
    from svgen.system import JointSystem


def _bernoulli(p: float, n: int, device, generator) -> torch.Tensor:
    return torch.rand(n, device=device, generator=generator) < p


def _where(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.reshape((-1,) + (1,) * (a.ndim - 1)), a, b)


def joint_loss(system: "JointSystem", batch: LatentBatch, cfg: LossConfig, *,
               generator: torch.Generator | None = None, model: torch.nn.Module | None = None,
               skip_unused_pass: bool = True) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Total loss and per-modality parts (detached) for one batch.

    ``model`` runs the forward (default ``system.model``; the training loop passes the DeepSpeed
    engine). The system's empty-prompt embeddings replace dropped captions.
    ``skip_unused_pass``: skip the x0_hat pass when every estimate would be zeroed. Callers whose
    forward is collective (ZeRO-3 gathers weights in it) pass False, since ranks draw different masks.
    """
    model = system.model if model is None else model
    sched_a, sched_v, empty_a, empty_v = system.sched_a, system.sched_v, system.empty_a, system.empty_v
    x_a, x_v = batch.x_a, batch.x_v
    b, dev = x_a.shape[0], x_a.device
    T = sched_a.num_train_timesteps
    randint = lambda: torch.randint(0, T, (b,), device=dev, generator=generator)  # noqa: E731
    eps_a = torch.randn(x_a.shape, device=dev, generator=generator, dtype=x_a.dtype)
    eps_v = torch.randn(x_v.shape, device=dev, generator=generator, dtype=x_v.dtype)
    t, s_a, s_v = randint(), randint(), randint()                # shared t; independent s_m
    z_a, z_v = sched_a.add_noise(x_a, eps_a, t), sched_v.add_noise(x_v, eps_v, t)
    zc_a, zc_v = sched_a.add_noise(x_a, eps_a, s_a), sched_v.add_noise(x_v, eps_v, s_v)

    drop = _bernoulli(cfg.caption_dropout, b, dev, generator)  # one caption feeds both branches
    text_a = _where(drop, empty_a.expand_as(batch.text_a), batch.text_a)
    text_v = _where(drop, empty_v.expand_as(batch.text_v), batch.text_v)

    keep_a = ~_bernoulli(cfg.x0_zero_prob, b, dev, generator)
    keep_v = ~_bernoulli(cfg.x0_zero_prob, b, dev, generator)
    x0_a, x0_v = torch.zeros_like(zc_a), torch.zeros_like(zc_v)
    if not skip_unused_pass or keep_a.any() or keep_v.any():  # wasted when every estimate is zeroed
        with torch.no_grad():
            out_a, out_v = model(JointInputs(z_a=z_a, z_v=z_v, t_a=t, t_v=t, text_a=text_a, text_v=text_v,
                                             enc_a=torch.cat([zc_a, x0_a], 1), enc_v=torch.cat([zc_v, x0_v], 1),
                                             s_a=s_a, s_v=s_v))
            x0_a = _where(keep_a, sched_a.predict_x0(z_a, out_a, t).to(zc_a.dtype), x0_a)
            x0_v = _where(keep_v, sched_v.predict_x0(z_v, out_v, t).to(zc_v.dtype), x0_v)

    out_a, out_v = model(JointInputs(z_a=z_a, z_v=z_v, t_a=t, t_v=t, text_a=text_a, text_v=text_v,
                                     enc_a=torch.cat([zc_a, x0_a], 1), enc_v=torch.cat([zc_v, x0_v], 1),
                                     s_a=s_a, s_v=s_v))
    loss_a = F.mse_loss(out_a.float(), sched_a.target(x_a, eps_a, t).float())
    loss_v = F.mse_loss(out_v.float(), sched_v.target(x_v, eps_v, t).float())
    loss = cfg.audio_weight * loss_a + cfg.video_weight * loss_v
    return loss, {"loss": loss.detach(), "loss_audio": loss_a.detach(), "loss_video": loss_v.detach()}
