"""Log-mel features in AudioLDM's convention (docs/method.md, "Data"). Data prep (the ``mel.npy`` of a
shard), training, evaluation and sampling all import this one function, so they compute the same
feature."""

from __future__ import annotations

import functools
import math

import torch
import torchaudio

from svgen.config import DataConfig

__all__ = ["LOG_FLOOR", "LogMel", "log_mel", "mel_to_wave", "pad_frames"]

LOG_FLOOR = math.log(1e-5)
"""log(clamp(x, 1e-5)): the value of silence in a log-mel, also used to pad mel frames."""


def log_mel(wave: torch.Tensor, *, sample_rate: int, n_mels: int, hop_length: int, win_length: int,
            fmax: float) -> torch.Tensor:
    """Waveform (..., N) -> log-mel (..., N // hop, n_mels) in AudioLDM's convention (docs/method.md):
    magnitude STFT, Slaney mel scale and norm (as librosa, which AudioLDM's STFT uses),
    log(clamp(x, 1e-5)). What ``mel.npy`` in a shard holds."""
    mel = _mel_transform(sample_rate=sample_rate, n_mels=n_mels, hop_length=hop_length, win_length=win_length,
                         fmax=fmax).to(wave.device)(wave.float())
    frames = wave.shape[-1] // hop_length
    return torch.log(mel[..., :frames].clamp_min(1e-5)).transpose(-1, -2)


@functools.lru_cache(maxsize=8)
def _mel_transform(*, sample_rate: int, n_mels: int, hop_length: int, win_length: int, fmax: float):
    # Built once per setting: the filterbank costs more than one clip's STFT.
    return torchaudio.transforms.MelSpectrogram(
        sample_rate=sample_rate, n_fft=win_length, win_length=win_length, hop_length=hop_length,
        f_min=0.0, f_max=fmax, n_mels=n_mels, power=1.0, norm="slaney", mel_scale="slaney", center=True)


def mel_to_wave(mel: torch.Tensor, *, sample_rate: int, n_mels: int, hop_length: int, win_length: int,
                fmax: float, n_iter: int = 64) -> torch.Tensor:
    """Log-mel (..., frames, n_mels) in ``log_mel``'s convention -> waveform (..., frames * hop):
    the mel filterbank inverted by least squares, then Griffin-Lim phase recovery. The vocoder
    of bases without a trained one (model.audio.vocoder=griffin_lim); slower and rougher than
    HiFi-GAN, but onsets and spectra survive."""
    mag = torch.exp(mel.float()).transpose(-1, -2)                              # (..., n_mels, frames)
    linear = _inverse_mel(sample_rate, n_mels, win_length, fmax).to(mel.device)(mag).clamp_min(0)
    gl = _griffin_lim(win_length, hop_length, n_iter).to(mel.device)
    wave = gl(linear)
    return wave[..., : mel.shape[-2] * hop_length]


@functools.lru_cache(maxsize=8)
def _inverse_mel(sample_rate: int, n_mels: int, win_length: int, fmax: float):
    return torchaudio.transforms.InverseMelScale(n_stft=win_length // 2 + 1, n_mels=n_mels, sample_rate=sample_rate,
                                                 f_min=0.0, f_max=fmax, norm="slaney", mel_scale="slaney")


@functools.lru_cache(maxsize=8)
def _griffin_lim(win_length: int, hop_length: int, n_iter: int):
    return torchaudio.transforms.GriffinLim(n_fft=win_length, win_length=win_length, hop_length=hop_length,
                                            power=1.0, n_iter=n_iter, momentum=0.99, rand_init=False)


class LogMel(torch.nn.Module):
    """Waveform (B, N) at cfg.sample_rate -> log-mel (B, N // hop, n_mels)."""

    def __init__(self, cfg: DataConfig):
        super().__init__()
        self.cfg = cfg

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        c = self.cfg
        return log_mel(wave, sample_rate=c.sample_rate, n_mels=c.n_mels, hop_length=c.hop_length,
                       win_length=c.win_length, fmax=c.fmax)


def pad_frames(mel: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad (B, frames, n_mels) with silence up to a multiple of ``multiple`` frames."""
    extra = (-mel.shape[1]) % multiple
    if extra == 0:
        return mel
    pad = mel.new_full((mel.shape[0], extra, mel.shape[2]), LOG_FLOOR)
    return torch.cat([mel, pad], dim=1)
