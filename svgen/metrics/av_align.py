"""AV-Align (METHOD.md): audio onsets against local maxima of the mean optical-flow magnitude
between consecutive frames; an onset and a peak match within +-1/fps; the score is the IoU
p*r / (p + r - p*r) of the matched fractions p (of onsets) and r (of peaks). No learned weights.

Onsets: half-wave-rectified spectral flux of the log-mel spectrogram, peak-picked (a local
maximum over +-30 ms, above mean + delta, at least 30 ms apart), as librosa's onset detector does.
Optical flow: dense Horn-Schunck on grey frames (pure torch, so no OpenCV dependency).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from svgen.media.audio import log_mel


def onset_strength(wave: np.ndarray, sample_rate: int, hop: int = 160) -> tuple[np.ndarray, float]:
    """Spectral-flux onset envelope and its frame rate (frames per second)."""
    mel = log_mel(torch.as_tensor(wave, dtype=torch.float32), sample_rate, 64, hop, 1024, sample_rate / 2)
    flux = (mel[1:] - mel[:-1]).clamp_min(0).mean(dim=1)
    env = torch.cat([flux.new_zeros(1), flux]).numpy()
    return env, sample_rate / hop


def _pick_peaks(env: np.ndarray, rate: float, window_s: float, delta: float, wait_s: float) -> list[int]:
    w, wait = max(1, int(round(window_s * rate))), max(1, int(round(wait_s * rate)))
    thresh = env.mean() + delta
    peaks, last = [], -wait - 1
    for i in range(len(env)):
        lo, hi = max(0, i - w), min(len(env), i + w + 1)
        if env[i] >= env[lo:hi].max() and env[i] > thresh and i - last > wait:
            peaks.append(i)
            last = i
    return peaks


def audio_onsets(wave: np.ndarray, sample_rate: int, delta: float | None = None) -> np.ndarray:
    """Onset times in seconds."""
    env, rate = onset_strength(wave, sample_rate)
    if env.max() <= 0:
        return np.zeros(0)
    env = env / env.max()
    return np.asarray(_pick_peaks(env, rate, 0.03, 0.07 if delta is None else delta, 0.03)) / rate


def horn_schunck(prev: torch.Tensor, nxt: torch.Tensor, alpha: float = 1.0, iters: int = 60) -> torch.Tensor:
    """Dense optical flow (P, 2, H, W) between grey frame pairs (P, H, W) in [0, 1], all pairs at once."""
    kx = torch.tensor([[-1.0, 1.0], [-1.0, 1.0]]) * 0.25
    ky = torch.tensor([[-1.0, -1.0], [1.0, 1.0]]) * 0.25
    a, b = prev[:, None], nxt[:, None]
    conv = lambda x, k: F.conv2d(F.pad(x, (0, 1, 0, 1), mode="replicate"), k[None, None])  # noqa: E731
    ix, iy = conv(a, kx) + conv(b, kx), conv(a, ky) + conv(b, ky)
    it = conv(b - a, torch.full((2, 2), 0.25))
    avg = torch.tensor([[1, 2, 1], [2, 0, 2], [1, 2, 1]], dtype=torch.float32)[None, None] / 12
    u = torch.zeros_like(a)
    v = torch.zeros_like(a)
    for _ in range(iters):
        ub, vb = F.conv2d(F.pad(u, (1, 1, 1, 1), mode="replicate"), avg), F.conv2d(F.pad(v, (1, 1, 1, 1), mode="replicate"), avg)
        common = (ix * ub + iy * vb + it) / (alpha ** 2 + ix ** 2 + iy ** 2)
        u, v = ub - ix * common, vb - iy * common
    return torch.cat([u, v], dim=1)


def motion_peaks(frames: np.ndarray, fps: float, size: int = 64, rel_threshold: float = 0.1) -> np.ndarray:
    """Times (s) of local maxima of the mean flow magnitude between consecutive frames; the
    magnitude of pair (k, k+1) is placed at frame k+1's time."""
    x = torch.as_tensor(frames).float().mean(dim=-1) / 255.0          # (F, H, W) grey
    x = F.interpolate(x[:, None], size=(size, size), mode="area")[:, 0]
    mags = horn_schunck(x[:-1], x[1:]).norm(dim=1).mean(dim=(1, 2)).numpy()
    if len(mags) == 0 or mags.max() <= 0:
        return np.zeros(0)
    out = []
    for k in range(len(mags)):
        left = mags[k - 1] if k > 0 else -np.inf
        right = mags[k + 1] if k + 1 < len(mags) else -np.inf
        if mags[k] > left and mags[k] >= right and mags[k] > rel_threshold * mags.max():
            out.append((k + 1) / fps)
    return np.asarray(out)


def av_align(frames: np.ndarray, wave: np.ndarray, fps: float, sample_rate: int) -> dict[str, float]:
    """AV-Align of one clip: frames (F, H, W, 3) uint8, mono wave (N,)."""
    onsets, peaks = audio_onsets(wave, sample_rate), motion_peaks(frames, fps)
    tol = 1.0 / fps + 1e-6
    if len(onsets) == 0 and len(peaks) == 0:
        return {"av_align": 1.0, "onsets": 0, "peaks": 0}
    if len(onsets) == 0 or len(peaks) == 0:
        return {"av_align": 0.0, "onsets": len(onsets), "peaks": len(peaks)}
    p = float(np.mean([np.min(np.abs(peaks - t)) <= tol for t in onsets]))
    r = float(np.mean([np.min(np.abs(onsets - t)) <= tol for t in peaks]))
    iou = p * r / (p + r - p * r) if p + r - p * r > 0 else 0.0
    return {"av_align": iou, "onsets": len(onsets), "peaks": len(peaks)}
