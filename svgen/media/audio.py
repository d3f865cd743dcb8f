"""Log-mel features in AudioLDM's convention (METHOD.md, "Data"); the maths lives with the shard
schema (``svgen.shards.log_mel``) so data prep and training compute the same feature."""

from __future__ import annotations

import torch

from svgen.config import DataConfig
from svgen.shards import LOG_FLOOR, log_mel

__all__ = ["LOG_FLOOR", "LogMel", "pad_frames"]


class LogMel(torch.nn.Module):
    """Waveform (B, N) at cfg.sample_rate -> log-mel (B, N // hop, n_mels)."""

    def __init__(self, cfg: DataConfig):
        super().__init__()
        self.cfg = cfg

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        c = self.cfg
        return log_mel(wave, c.sample_rate, c.n_mels, c.hop_length, c.win_length, c.fmax)


def pad_frames(mel: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad (B, frames, n_mels) with silence up to a multiple of ``multiple`` frames."""
    extra = (-mel.shape[1]) % multiple
    if extra == 0:
        return mel
    pad = mel.new_full((mel.shape[0], extra, mel.shape[2]), LOG_FLOOR)
    return torch.cat([mel, pad], dim=1)
