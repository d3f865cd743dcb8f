"""Prompts -> sounding videos: joint sampling, decoding, mp4 files."""

from __future__ import annotations

from pathlib import Path

import torch

from svgen.config import DataConfig, SampleConfig
from svgen.media.mp4 import write_mp4
from svgen.models.codec import decode_audio, decode_video, latent_shapes
from svgen.system import Given, JointSystem


@torch.no_grad()
def generate(system: JointSystem, prompts: list[str], data: DataConfig, cfg: SampleConfig,
             seed: int | list[int] | None = None, progress: bool = True, given_a: Given | None = None,
             given_v: Given | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns frames (B, F, H, W, 3) uint8 and waveforms (B, N) float for the prompts.
    ``seed``: one seed for the batch, or one per prompt (each video then independent of batching).
    ``given_a`` / ``given_v``: latents held fixed (video-to-audio, audio-to-video, continuation)."""
    was_training = system.model.training
    system.model.eval()
    dev = next(system.model.parameters()).device
    if isinstance(seed, (list, tuple)):
        gen = [torch.Generator(device=dev).manual_seed(s) for s in seed]
    else:
        gen = torch.Generator(device=dev).manual_seed(cfg.seed if seed is None else seed)
    shape_a, shape_v = latent_shapes(system.audio, system.video, data, len(prompts))
    if given_a is not None and given_a.latent.shape[0] != len(prompts):
        given_a = Given(given_a.latent.expand(shape_a), given_a.mask.expand(shape_a))
    if given_v is not None and given_v.latent.shape[0] != len(prompts):
        given_v = Given(given_v.latent.expand(shape_v), given_v.mask.expand(shape_v))
    z_a, z_v = system.sample(text=system.encode_text(prompts), negative=system.encode_text([cfg.negative_prompt]),
                             shapes=(shape_a, shape_v), cfg=cfg, generator=gen, progress=progress,
                             given_a=given_a, given_v=given_v)
    frames = decode_video(system.video, z_v)
    wave = decode_audio(system.audio, z_a, data.num_samples, data)
    system.model.train(was_training)
    return frames, wave


def save_sounding_videos(out_dir: str | Path, frames: torch.Tensor, wave: torch.Tensor, data: DataConfig,
                         stem: str = "sample") -> list[Path]:
    """One mp4 per batch item; the waveform is peak-normalised to avoid clipping."""
    paths = []
    for i in range(frames.shape[0]):
        w = wave[i]
        w = w / w.abs().max().clamp_min(1.0)
        paths.append(write_mp4(Path(out_dir) / f"{stem}_{i:03d}.mp4", frames[i], fps=data.fps, wave=w,
                               sample_rate=data.sample_rate))
    return paths
