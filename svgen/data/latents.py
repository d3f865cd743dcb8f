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


def latent_stream(system: JointSystem, batches: Iterable[dict], data: DataConfig) -> Iterator[LatentBatch]:
    for batch in batches:
        yield to_latents(system, batch, data)
