"""Synthetic sounding videos with known sync: a flash on screen and a click in the audio at the
same instants. Used by the demo and by tests that need ground truth about timing."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from svgen.config import DataConfig

CAPTIONS = ("a red square flashes with a click", "a blue square flashes with a click",
            "a green square flashes with a click")
COLOURS = ((230, 40, 40), (40, 80, 230), (40, 200, 60))


@dataclass
class SyntheticClip:
    frames: np.ndarray
    """(F, H, W, 3) uint8."""
    wave: np.ndarray
    """(N,) float32 mono in [-1, 1]."""
    caption: str
    events: list[float]
    """Times (s) of each flash/click."""


def make_clip(data: DataConfig, seed: int, events_per_second: float = 2.0) -> SyntheticClip:
    """A dark background; at each event a coloured square lights for one frame and a 5 ms
    decaying 1 kHz click starts at the same instant. Event times sit on frame boundaries."""
    rng = np.random.default_rng(seed)
    kind = int(rng.integers(len(CAPTIONS)))
    n_frames, n_samples, sr, fps = data.num_frames, data.num_samples, data.sample_rate, data.fps
    n_events = max(1, int(round(events_per_second * data.seconds)))
    frame_ids = np.sort(rng.choice(np.arange(n_frames), size=min(n_events, n_frames), replace=False))
    frames = np.full((n_frames, data.size, data.size, 3), 16, np.uint8)
    lo, hi = data.size // 4, 3 * data.size // 4
    wave = (rng.standard_normal(n_samples) * 0.003).astype(np.float32)
    t = np.arange(int(0.005 * sr)) / sr
    click = (np.sin(2 * np.pi * 1000 * t) * np.exp(-t / 0.0015)).astype(np.float32) * 0.8
    for fi in frame_ids:
        frames[fi, lo:hi, lo:hi] = COLOURS[kind]
        start = int(round(fi / fps * sr))
        seg = click[: max(0, n_samples - start)]
        wave[start:start + len(seg)] += seg
    return SyntheticClip(frames, np.clip(wave, -1, 1), CAPTIONS[kind], [fi / fps for fi in frame_ids])
