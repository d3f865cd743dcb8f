"""Tiny pre-trained bases for the ablation (issue 12): small AudioLDM- and AnimateDiff-class models
trained, each alone, on the hits corpus, then frozen and saved in the real diffusers layout, so
that joint training reads them exactly as it reads real checkpoints.

This module holds the autoencoder stage: the image VAE on frames and the mel VAE on log-mels,
each trained from its random initialisation (svgen.models.tiny) to reconstruct the corpus, with
its latent scaling factor set so the training latents have unit variance (as SD's 0.18215 does
for SD's VAE). The audio base decodes mels with Griffin-Lim (model.audio.vocoder=griffin_lim).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch
from diffusers import AutoencoderKL
from einops import rearrange

from svgen.config import DataConfig
from svgen.media.audio import LogMel, pad_frames


@dataclass
class FitResult:
    steps: int
    loss_first: float
    """Mean reconstruction loss of the first 10 steps."""
    loss_last: float
    """Mean reconstruction loss of the last 10 steps."""
    scaling_factor: float


def frames_to_images(frames: torch.Tensor) -> torch.Tensor:
    """(B, F, H, W, 3) uint8 -> (B*F, 3, H, W) in [-1, 1], as svgen.models.codec feeds the VAE."""
    return rearrange(frames, "b f h w c -> (b f) c h w").float() / 127.5 - 1.0


def waves_to_mels(wave: torch.Tensor, data: DataConfig, multiple: int) -> torch.Tensor:
    """(B, N) waveform -> (B, 1, frames, n_mels) log-mel, as svgen.models.codec feeds the VAE."""
    return pad_frames(LogMel(data)(wave), multiple)[:, None]


def fit_vae(vae: AutoencoderKL, inputs: Iterator[torch.Tensor], steps: int, lr: float = 1e-3,
            kl_weight: float = 1e-6, progress: Callable[[int, float], None] | None = None) -> FitResult:
    """Train ``vae`` to reconstruct ``inputs`` (MSE + a small KL, as SD's VAE objective without
    the adversarial and perceptual terms, which a 64-pixel corpus does not need), then set its
    scaling factor to 1 / std of the latents of a last batch. Leaves it frozen in eval mode."""
    vae.train()
    vae.requires_grad_(True)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    losses = []
    for step in range(steps):
        x = next(inputs)
        dist = vae.encode(x).latent_dist
        recon = vae.decode(dist.sample()).sample
        rec = torch.nn.functional.mse_loss(recon, x)
        loss = rec + kl_weight * dist.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(rec.item())
        if progress is not None:
            progress(step, losses[-1])
    vae.eval()
    vae.requires_grad_(False)
    with torch.no_grad():
        std = float(vae.encode(next(inputs)).latent_dist.mean.std())
    vae.register_to_config(scaling_factor=1.0 / max(std, 1e-6))
    head, tail = losses[: min(10, len(losses))], losses[-min(10, len(losses)):]
    return FitResult(steps, sum(head) / len(head), sum(tail) / len(tail), 1.0 / max(std, 1e-6))


def cycle(batches: Iterable[dict], key: str, convert: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[torch.Tensor]:
    """Converted ``key`` tensors of ``batches``, round and round."""
    while True:
        empty = True
        for batch in batches:
            empty = False
            yield convert(batch[key])
        if empty:
            raise ValueError("no training batches: the corpus is empty")


def pretrain_autoencoders(audio_dir: Path, video_dir: Path, batches: Iterable[dict], data: DataConfig, steps: int,
                          seed: int = 0, lr: float = 1e-3) -> dict[str, FitResult]:
    """Fit the mel VAE under ``audio_dir``/vae and the image VAE under ``video_dir``/vae on
    ``batches`` (dicts with 'frames' (B, F, H, W, 3) uint8 and 'wave' (B, N)) and save both back
    in place (diffusers layout)."""
    results = {}
    torch.manual_seed(seed)
    video_vae = AutoencoderKL.from_pretrained(video_dir / "vae")
    results["video"] = fit_vae(video_vae, cycle(batches, "frames", frames_to_images), steps, lr)
    video_vae.save_pretrained(video_dir / "vae")
    audio_vae = AutoencoderKL.from_pretrained(audio_dir / "vae")
    multiple = 2 ** (len(audio_vae.config.block_out_channels) - 1)
    results["audio"] = fit_vae(audio_vae, cycle(batches, "wave", lambda w: waves_to_mels(w, data, multiple)), steps, lr)
    audio_vae.save_pretrained(audio_dir / "vae")
    return results
