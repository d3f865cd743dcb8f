"""Fréchet distances between embedding sets (FAD with VGGish embeddings; the same maths serves
PANNs-FD and FVD) and the VGGish feature network, loaded from a local weight file.

The networks' weights are never downloaded: a config names a local path, and a missing file is
an error that names it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from svgen.metrics.weights import FeatureWeightsError, load_state, read_state, width_of
from svgen.media.audio import log_mel

__all__ = ["FeatureWeightsError", "VGGish", "frechet_distance", "kernel_distance", "load_vggish", "vggish_embeddings"]


def kernel_distance(x: np.ndarray, y: np.ndarray, degree: int = 3, subsets: int = 100,
                    subset_size: int = 1000, seed: int = 0) -> float:
    """Unbiased squared MMD with the polynomial kernel k(a, b) = (a.b / D + 1)^degree (KVD on I3D
    features, as KID on Inception features). Sets larger than ``subset_size`` are scored on
    ``subsets`` random subsets and averaged, as the reference implementations do."""
    x, y = torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(y, dtype=torch.float64)
    if len(x) < 2 or len(y) < 2:
        raise ValueError(f"kernel distance needs >= 2 samples per set, got {len(x)} and {len(y)}")
    d = x.shape[1]
    m = min(len(x), len(y), subset_size)
    g = torch.Generator().manual_seed(seed)
    whole = len(x) <= subset_size and len(y) <= subset_size
    scores = []
    for _ in range(1 if whole else subsets):
        a = x if whole else x[torch.randperm(len(x), generator=g)[:m]]
        b = y if whole else y[torch.randperm(len(y), generator=g)[:m]]
        kxx, kyy, kxy = ((a @ a.T / d + 1) ** degree, (b @ b.T / d + 1) ** degree, (a @ b.T / d + 1) ** degree)
        na, nb = len(a), len(b)
        scores.append((kxx.sum() - kxx.diagonal().sum()) / (na * (na - 1))
                      + (kyy.sum() - kyy.diagonal().sum()) / (nb * (nb - 1)) - 2 * kxy.mean())
    return float(torch.stack(scores).mean())


def frechet_distance(x: np.ndarray, y: np.ndarray) -> float:
    """||mu_x - mu_y||^2 + Tr(S_x + S_y - 2 (S_x S_y)^1/2) of Gaussian fits to two (N, D) sets."""
    x, y = torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(y, dtype=torch.float64)
    mx, my = x.mean(0), y.mean(0)
    sx, sy = torch.cov(x.T).reshape(x.shape[1], -1), torch.cov(y.T).reshape(y.shape[1], -1)
    # Tr((S_x S_y)^1/2) = sum of sqrt of eigenvalues of S_x^1/2 S_y S_x^1/2 (symmetric PSD).
    ex, vx = torch.linalg.eigh(sx)
    root = (vx * ex.clamp_min(0).sqrt()) @ vx.T
    mid = torch.linalg.eigvalsh(root @ sy @ root).clamp_min(0).sqrt().sum()
    return float((mx - my).square().sum() + torch.trace(sx) + torch.trace(sy) - 2 * mid)


class VGGish(nn.Module):
    """The VGGish architecture (log-mel patches of 96 frames x 64 bins -> 128-d embedding);
    ``width`` scales it down for tests (1.0 is the published network)."""

    def __init__(self, width: float = 1.0, embedding: int = 128):
        super().__init__()
        c = [max(4, int(w * width)) for w in (64, 128, 256, 512)]
        layers, cin = [], 1
        for cout, n in ((c[0], 1), (c[1], 1), (c[2], 2), (c[3], 2)):
            for _ in range(n):
                layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU()]
                cin = cout
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        hidden = max(16, int(4096 * width))
        self.embeddings = nn.Sequential(nn.Linear(cin * 6 * 4, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                        nn.Linear(hidden, embedding))

    def forward(self, patches: torch.Tensor) -> torch.Tensor:  # (N, 96, 64)
        x = self.features(patches[:, None])
        return self.embeddings(x.permute(0, 2, 3, 1).flatten(1))


def load_vggish(path: str | Path) -> VGGish:
    """VGGish from a local state_dict file (config key ``eval.vggish_path``)."""
    what, key = "VGGish", "eval.vggish_path"
    state = read_state(path, what, key)
    net = VGGish(width_of(state, "features.0.weight", 64, path=path, what=what, key=key))
    load_state(net, state, path=path, what=what, key=key)
    return net.eval()


@torch.no_grad()
def vggish_embeddings(net: VGGish, wave: np.ndarray, sample_rate: int = 16000) -> np.ndarray:
    """0.96 s log-mel patches (10 ms hop, 64 bins) -> one embedding per patch."""
    mel = log_mel(torch.as_tensor(wave, dtype=torch.float32), sample_rate=sample_rate, n_mels=64,
                  hop_length=sample_rate // 100,
                  win_length=sample_rate // 40 * 2 if sample_rate >= 16000 else 512, fmax=min(7500.0, sample_rate / 2))
    n = mel.shape[0] // 96
    if n == 0:
        mel = torch.nn.functional.pad(mel, (0, 0, 0, 96 - mel.shape[0]), value=float(mel.min()))
        n = 1
    return net(mel[: n * 96].reshape(n, 96, 64)).numpy()
