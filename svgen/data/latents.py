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
        return LatentBatch(*(t.to(device) for t in (self.x_a, self.x_v, self.text_a, self.text_v)))


def from_cached(batch: dict, device: torch.device) -> LatentBatch:
    """A batch of cached-latent shards -> LatentBatch (no encoder runs)."""
    return LatentBatch(*(batch[k].to(device) for k in ("latent_a", "latent_v", "text_a", "text_v")))
