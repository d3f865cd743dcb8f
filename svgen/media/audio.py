"""Log-mel features in AudioLDM's convention (METHOD.md, "Data")."""

from __future__ import annotations

import math

import torch
import torchaudio

from svgen.config import DataConfig

LOG_FLOOR = math.log(1e-5)
"""log(clamp(x, 1e-5)): the value of silence, also used to pad mel frames."""


class LogMel(torch.nn.Module):
    """Waveform (B, N) at cfg.sample_rate -> log-mel (B, frames, n_mels), frames = N // hop.

    Magnitude (power 1) STFT, Slaney mel scale and norm (as librosa, which AudioLDM's STFT uses),
    log(clamp(x, 1e-5)).
    """

    def __init__(self, cfg: DataConfig):
        super().__init__()
        self.hop = cfg.hop_length
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=cfg.sample_rate, n_fft=cfg.win_length, win_length=cfg.win_length,
            hop_length=cfg.hop_length, f_min=0.0, f_max=cfg.fmax, n_mels=cfg.n_mels, power=1.0,
            norm="slaney", mel_scale="slaney", center=True,
        )

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        frames = wave.shape[-1] // self.hop
        m = self.mel(wave.float())[..., :frames]
        return torch.log(m.clamp_min(1e-5)).transpose(-1, -2)


def pad_frames(mel: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad (B, frames, n_mels) with silence up to a multiple of ``multiple`` frames."""
    extra = (-mel.shape[1]) % multiple
    if extra == 0:
        return mel
    pad = mel.new_full((mel.shape[0], extra, mel.shape[2]), LOG_FLOOR)
    return torch.cat([mel, pad], dim=1)
