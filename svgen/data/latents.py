"""The latent batch one training step consumes, and its reader for cached-latent shards
(launch/cache_latents.py). Raw clip batches become latents through the frozen encoders in
``svgen.system.JointSystem.encode``."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LatentBatch:
    """Clean latents and text conditioning for one step."""

    x_a: torch.Tensor
    """(B, Ca, T, F) audio VAE latents (scaled)."""
    x_v: torch.Tensor
    """(B, Cv, F, H, W) video VAE latents (scaled)."""
    text_a: torch.Tensor
    """(B, D) CLAP text embeddings."""
    text_v: torch.Tensor
    """(B, L, D) CLIP text hidden states."""

    def to(self, device: torch.device) -> "LatentBatch":
        return LatentBatch(*(t.to(device, non_blocking=True) for t in (self.x_a, self.x_v, self.text_a, self.text_v)))


def from_cached(batch: dict, device: torch.device, generator: torch.Generator | None = None) -> LatentBatch:
    """A batch of cached-latent shards -> LatentBatch, each latent drawn from its cached VAE
    posterior (mean + std * noise), as encoding the clip on the fly would (no encoder runs).
    Copies are asynchronous (from a pinned batch they do not wait for the GPU)."""
    if "latent_a_std" not in batch or "latent_v_std" not in batch:
        raise ValueError("these cached latents hold no posterior deviations (made before svgen sampled "
                         "training latents from the VAE posterior): re-run launch/cache_latents.py")

    def draw(name: str) -> torch.Tensor:
        mean, std = batch[name].to(device, non_blocking=True), batch[f"{name}_std"].to(device, non_blocking=True)
        return mean + std * torch.randn(mean.shape, generator=generator, device=device, dtype=mean.dtype)

    return LatentBatch(draw("latent_a"), draw("latent_v"), batch["text_a"].to(device, non_blocking=True),
                       batch["text_v"].to(device, non_blocking=True))
