"""Raw clip batches (frames, waveforms, captions) -> latent batches via the frozen VAEs and text
encoders, for training from raw shards."""

from __future__ import annotations

from typing import Iterable, Iterator

import torch

from svgen.config import DataConfig
from svgen.diffusion.objective import LatentBatch
from svgen.media.codec import encode_audio, encode_video
from svgen.models.build import JointSystem


@torch.no_grad()
def to_latents(system: JointSystem, batch: dict, data: DataConfig) -> LatentBatch:
    dev = next(system.model.parameters()).device
    text_a, text_v = system.encode_text(batch["caption"])
    return LatentBatch(encode_audio(system.audio, batch["wave"].to(dev), data),
                       encode_video(system.video, batch["frames"].to(dev)), text_a, text_v)


def encoder_fingerprint(system: JointSystem, data: DataConfig) -> str:
    """Hash of everything a cached latent depends on: the frozen VAEs' and text encoders' weights
    and the clip/feature settings. A cache made with other encoders or settings is stale."""
    import hashlib
    import json

    h = hashlib.sha1(json.dumps({k: getattr(data, k) for k in ("seconds", "fps", "size", "sample_rate", "n_mels",
                                                                "hop_length", "win_length", "fmax")}, sort_keys=True).encode())
    for module in (system.audio.vae, system.audio.text_encoder, system.video.vae, system.video.text_encoder):
        for name, t in sorted(module.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def from_cached(batch: dict, device: torch.device) -> LatentBatch:
    """A batch of cached-latent shards -> LatentBatch (no encoder runs)."""
    return LatentBatch(*(batch[k].to(device) for k in ("latent_a", "latent_v", "text_a", "text_v")))


def latent_stream(system: JointSystem, batches: Iterable[dict], data: DataConfig) -> Iterator[LatentBatch]:
    for batch in batches:
        yield to_latents(system, batch, data)
