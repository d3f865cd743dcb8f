"""Encode clips to latents and decode latents to frames and waveforms with the frozen bases."""

from __future__ import annotations

import torch
from einops import rearrange

from svgen.config import DataConfig
from svgen.media.audio import LogMel, pad_frames
from svgen.models.bases import AudioBase, VideoBase


def _scaling(vae) -> float:
    return float(vae.config.scaling_factor)


def audio_latent_frames(audio: AudioBase, data: DataConfig) -> int:
    """Latent time length: mel frames / VAE scale, padded to the UNet's total downsampling."""
    mult = audio.vae_scale * audio.unet_downsample
    mel_frames = data.mel_frames + (-data.mel_frames) % mult
    return mel_frames // audio.vae_scale


def latent_shapes(audio: AudioBase, video: VideoBase, data: DataConfig, batch: int) -> tuple[tuple, tuple]:
    """Shapes of the audio (B, Ca, T, F) and video (B, Cv, frames, H, W) latents of one clip."""
    shape_a = (batch, audio.latent_channels, audio_latent_frames(audio, data), data.n_mels // audio.vae_scale)
    s = data.size // video.vae_scale
    shape_v = (batch, video.latent_channels, data.num_frames, s, s)
    return shape_a, shape_v


@torch.no_grad()
def encode_audio(audio: AudioBase, wave: torch.Tensor, data: DataConfig) -> torch.Tensor:
    """(B, N) waveform -> (B, Ca, T, F) scaled latents (posterior mode: deterministic)."""
    mel = LogMel(data).to(wave.device)(wave)
    mel = pad_frames(mel, audio.vae_scale * audio.unet_downsample)
    vae = audio.vae
    post = vae.encode(mel[:, None].to(vae.dtype)).latent_dist
    return post.mode() * _scaling(vae)


@torch.no_grad()
def encode_video(video: VideoBase, frames: torch.Tensor, chunk: int = 16) -> torch.Tensor:
    """(B, F, H, W, 3) uint8 frames -> (B, Cv, F, H/8, W/8) scaled latents, frame by frame."""
    b = frames.shape[0]
    x = rearrange(frames, "b f h w c -> (b f) c h w").float() / 127.5 - 1.0
    vae = video.vae
    lat = torch.cat([vae.encode(c.to(vae.dtype)).latent_dist.mode() for c in x.split(chunk)])
    lat = lat * _scaling(vae)
    return rearrange(lat, "(b f) c h w -> b c f h w", b=b)


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
def decode_audio(audio: AudioBase, z: torch.Tensor, num_samples: int) -> torch.Tensor:
    """(B, Ca, T, F) latents -> (B, num_samples) float waveform: VAE -> mel -> vocoder, then cut."""
    vae = audio.vae
    mel = vae.decode((z / _scaling(vae)).to(vae.dtype)).sample.float()       # (B, 1, frames, n_mels)
    voc = audio.vocoder
    wave = voc(mel[:, 0].to(voc.dtype)).float()
    if wave.ndim == 1:
        wave = wave[None]
    if wave.shape[-1] < num_samples:
        wave = torch.nn.functional.pad(wave, (0, num_samples - wave.shape[-1]))
    return wave[:, :num_samples]
