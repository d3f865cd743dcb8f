"""Encode clips to latents and decode latents to frames and waveforms with the frozen bases.

Encoding gives the VAE posterior (mean and standard deviation, both scaled by the VAE's scaling
factor): training samples from it (docs/method.md, "Training (one step)" step 5, as the reference does), conditional
generation uses its mean. Audio latents keep the clip's own length (400 mel frames -> 100); the
joint model pads them to the UNet's downsampling itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange

from svgen.config import DataConfig
from svgen.media.audio import LogMel, mel_to_wave, pad_frames
from svgen.models.bases import AudioBase, VideoBase


def _scaling(vae) -> float:
    return float(vae.config.scaling_factor)


def audio_latent_frames(audio: AudioBase, data: DataConfig) -> int:
    """Latent time length: mel frames / VAE scale (rounded up; 400 -> 100 for 4 s clips)."""
    return -(-data.mel_frames // audio.vae_scale)


@dataclass
class Posterior:
    """A diagonal Gaussian over scaled latents."""

    mean: torch.Tensor
    std: torch.Tensor

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        eps = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=torch.float32)
        return (self.mean.float() + self.std.float() * eps).to(self.mean.dtype)


def _posterior(dist, scaling: float) -> Posterior:
    return Posterior(dist.mean * scaling, dist.std * scaling)


def latent_shapes(audio: AudioBase, video: VideoBase, data: DataConfig, batch: int) -> tuple[tuple, tuple]:
    """Shapes of the audio (B, Ca, T, F) and video (B, Cv, frames, H, W) latents of one clip."""
    shape_a = (batch, audio.latent_channels, audio_latent_frames(audio, data), data.n_mels // audio.vae_scale)
    s = data.size // video.vae_scale
    shape_v = (batch, video.latent_channels, data.num_frames, s, s)
    return shape_a, shape_v


@torch.no_grad()
def audio_posterior(audio: AudioBase, wave: torch.Tensor, data: DataConfig) -> Posterior:
    """(B, N) waveform -> posterior over (B, Ca, T, F) scaled latents."""
    mel = LogMel(data).to(wave.device)(wave)
    mel = pad_frames(mel, audio.vae_scale)  # a whole number of latent frames (400 already is)
    vae = audio.vae
    return _posterior(vae.encode(mel[:, None].to(vae.dtype)).latent_dist, _scaling(vae))


@torch.no_grad()
def video_posterior(video: VideoBase, frames: torch.Tensor, chunk: int = 16) -> Posterior:
    """(B, F, H, W, 3) uint8 frames -> posterior over (B, Cv, F, H/8, W/8) scaled latents,
    frame by frame."""
    b = frames.shape[0]
    x = rearrange(frames, "b f h w c -> (b f) c h w").float() / 127.5 - 1.0
    vae = video.vae
    dists = [vae.encode(c.to(vae.dtype)).latent_dist for c in x.split(chunk)]
    s = _scaling(vae)
    per_clip = lambda t: rearrange(torch.cat(t) * s, "(b f) c h w -> b c f h w", b=b)  # noqa: E731
    return Posterior(per_clip([d.mean for d in dists]), per_clip([d.std for d in dists]))


def encode_audio(audio: AudioBase, wave: torch.Tensor, data: DataConfig) -> torch.Tensor:
    """(B, N) waveform -> (B, Ca, T, F) scaled latents, the posterior mean (deterministic)."""
    return audio_posterior(audio, wave, data).mean


def encode_video(video: VideoBase, frames: torch.Tensor, chunk: int = 16) -> torch.Tensor:
    """(B, F, H, W, 3) uint8 frames -> (B, Cv, F, H/8, W/8) scaled latents, the posterior mean."""
    return video_posterior(video, frames, chunk).mean


@torch.no_grad()
def decode_video(video: VideoBase, z: torch.Tensor, chunk: int = 16) -> torch.Tensor:
    """(B, Cv, F, h, w) latents -> (B, F, H, W, 3) uint8 frames."""
    b = z.shape[0]
    x = rearrange(z, "b c f h w -> (b f) c h w") / _scaling(video.vae)
    vae = video.vae
    img = torch.cat([vae.decode(part.to(vae.dtype)).sample.float() for part in x.split(chunk)])
    img = ((img.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return rearrange(img, "(b f) c h w -> b f h w c", b=b)


@torch.no_grad()
def decode_audio(audio: AudioBase, z: torch.Tensor, num_samples: int, data: DataConfig | None = None) -> torch.Tensor:
    """(B, Ca, T, F) latents -> (B, num_samples) float waveform: VAE -> mel -> vocoder (HiFi-GAN,
    or Griffin-Lim with ``data``'s mel settings when the base has none), then cut or padded."""
    vae = audio.vae
    mel = vae.decode((z / _scaling(vae)).to(vae.dtype)).sample.float()       # (B, 1, frames, n_mels)
    voc = audio.vocoder
    if voc is None:
        if data is None:
            raise ValueError("this audio base has no vocoder (model.audio.vocoder=griffin_lim): decoding needs "
                             "the data config's mel settings")
        wave = mel_to_wave(mel[:, 0], sample_rate=data.sample_rate, n_mels=data.n_mels, hop_length=data.hop_length,
                           win_length=data.win_length, fmax=data.fmax)
    else:
        wave = voc(mel[:, 0].to(voc.dtype)).float()
    if wave.ndim == 1:
        wave = wave[None]
    if wave.shape[-1] < num_samples:
        wave = torch.nn.functional.pad(wave, (0, num_samples - wave.shape[-1]))
    return wave[:, :num_samples]
