"""PANNs CNN14 (Kong et al., AudioSet tagging) as the audio feature network of PANNs-FD.

Layout and state_dict keys follow the published ``Cnn14`` checkpoints (``conv_block1.conv1.weight``,
``bn0.running_mean``, ``fc1.weight``, ``fc_audioset.weight``, ...; the files hold them under
'model'). The front end (periodic Hann STFT, power spectrogram, Slaney mel filter bank,
10 log10) is computed here; when the checkpoint carries its own mel matrix
(``logmel_extractor.melW``) that matrix is used, and its fixed STFT convolution weights are
not needed. The defaults match ``Cnn14_16k_mAP=0.438.pth`` (16 kHz, 512-point window, hop 160,
64 mel bins, 50-8000 Hz); the feature is the 2048-d embedding (after fc1), one per clip.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchaudio

from svgen.metrics.weights import load_state, read_state, width_of


class ConvBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn1, self.bn2 = nn.BatchNorm2d(cout), nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor, pool: tuple[int, int]) -> torch.Tensor:
        x = F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))
        return F.avg_pool2d(x, pool) if pool != (1, 1) else x


class Cnn14(nn.Module):
    """CNN14 up to its embedding; ``width`` scales the channels (1.0 is the published network)."""

    def __init__(self, sample_rate: int = 16000, window: int = 512, hop: int = 160, mel_bins: int = 64,
                 fmin: float = 50.0, fmax: float = 8000.0, classes: int = 527, width: float = 1.0):
        super().__init__()
        self.window, self.hop = window, hop
        c = [max(2, int(round(n * width))) for n in (64, 128, 256, 512, 1024, 2048)]
        self.register_buffer("hann", torch.hann_window(window, periodic=True), persistent=False)
        fb = torchaudio.functional.melscale_fbanks(window // 2 + 1, fmin, fmax, mel_bins, sample_rate,
                                                   norm="slaney", mel_scale="slaney")
        self.register_buffer("mel_fb", fb)  # (freq, mel), the checkpoint's logmel_extractor.melW
        self.bn0 = nn.BatchNorm2d(mel_bins)
        cin = 1
        for i, cout in enumerate(c, 1):
            setattr(self, f"conv_block{i}", ConvBlock(cin, cout))
            cin = cout
        self.fc1 = nn.Linear(cin, cin)
        self.fc_audioset = nn.Linear(cin, classes)

    def log_mel(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, N) waveform -> (B, 1, frames, mel) log-mel, as torchlibrosa computes it."""
        spec = torch.stft(wave, self.window, self.hop, self.window, self.hann, center=True, pad_mode="reflect",
                          return_complex=True).abs().square()            # (B, freq, frames)
        mel = spec.transpose(1, 2) @ self.mel_fb                          # (B, frames, mel)
        return 10.0 * torch.log10(mel.clamp_min(1e-10))[:, None]

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, N) waveform at the network's rate -> (B, 2048) embedding."""
        x = self.bn0(self.log_mel(wave).transpose(1, 3)).transpose(1, 3)
        for i in range(1, 7):
            x = getattr(self, f"conv_block{i}")(x, (2, 2) if i < 6 else (1, 1))
        x = x.mean(dim=3)
        x = x.max(dim=2).values + x.mean(dim=2)
        return F.relu(self.fc1(x))


def load_panns(path: str | Path, **front_end) -> Cnn14:
    """CNN14 with weights from a local checkpoint (config key ``eval.panns_path``)."""
    what, key = "PANNs CNN14", "eval.panns_path"
    state = read_state(path, what, key)
    net = Cnn14(width=width_of(state, "conv_block1.conv1.weight", 64, path=path, what=what, key=key), **front_end)
    # The STFT weights are fixed (computed here); the mel matrix is taken from the file when present.
    load_state(net, state, path=path, what=what, key=key,
               ignore=("spectrogram_extractor.", "num_batches_tracked", "mel_fb"),
               rename={"logmel_extractor.melW": "mel_fb"})
    return net.eval()


@torch.no_grad()
def panns_embeddings(net: Cnn14, waves: list[np.ndarray]) -> np.ndarray:
    """(N, 2048) embeddings of N equally long waveforms (at the network's sample rate)."""
    dev = next(net.parameters()).device
    x = torch.stack([torch.as_tensor(w, dtype=torch.float32) for w in waves]).to(dev)
    return net(x).float().cpu().numpy()
