"""What the ablation measures on a sounding video (issue 12), real or generated.

- **AV-Align**, the project's metric (svgen.metrics.av_align), unchanged.
- **Visual impacts**, read off the picture the way the corpus draws it (launch/ablation/hits.py):
  the ball is what differs from the clip's background above the floor; its centroid drops to the
  floor and squashes on an impact frame, so an impact is a frame whose centroid row is lower than
  the frame before (by ``min_drop`` pixels over the two frames before) and not higher than the
  frame after. At t = frame / fps: the corpus starts each sound at that instant.
- **Audio onsets**, detected as AV-Align detects them (librosa's defaults at 22,050 Hz), less
  those in the first ``START_SKIP`` seconds: librosa marks one at 0.07 s in every clip, real or
  not (the clip's start against its zero padding); the corpus has no impact before 0.25 s.
- **Timing**: for each visual impact, the nearest onset within ``pair_window`` seconds; the
  absolute differences in ms (pooled over a set of clips: median and 90th percentile).
- **Match rates**: the fraction of impacts with an onset within one frame (1 / fps, AV-Align's
  tolerance) and the fraction of onsets with an impact within one frame.

On the real test clips the detectors are checked against the generator's ground truth
(impacts.json), which is what makes the generated-sample figures readable.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from svgen.metrics.av_align import audio_onsets, av_align

START_SKIP = 0.1


def ball_rows(frames: np.ndarray, floor: int, threshold: float = 40.0) -> np.ndarray:
    """Centroid row of the foreground above the floor per frame (NaN where none): foreground is
    what differs from the clip's median colour above the floor by more than ``threshold`` (sum
    of absolute RGB differences)."""
    sky = frames[:, :floor].astype(np.float32)
    background = np.median(sky.reshape(-1, 3), axis=0)
    mask = np.abs(sky - background).sum(-1) > threshold          # (F, floor, W)
    rows = np.arange(floor, dtype=np.float32)[None, :, None]
    count = mask.sum((1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        centroid = (mask * rows).sum((1, 2)) / count
    return np.where(count >= 4, centroid, np.nan)


def visual_impacts(frames: np.ndarray, fps: float, min_drop: float = 1.0) -> np.ndarray:
    """Impact times (s) of (F, H, W, 3) uint8 frames of the hits corpus's geometry."""
    size = frames.shape[1]
    floor = size - max(3, size // 8)  # hits.make_clip's floor row
    y = ball_rows(frames, floor)
    hits = []
    for f in range(1, len(y)):
        before = y[max(0, f - 2):f]
        after = y[f + 1] if f + 1 < len(y) else y[f]
        if np.isnan(y[f]) or np.all(np.isnan(before)):
            continue
        if y[f] - np.nanmin(before) >= min_drop and y[f] > y[f - 1] and not (after > y[f]):
            hits.append(f / fps)
    return np.asarray(hits)


def pair_errors(impacts: np.ndarray, onsets: np.ndarray, window: float) -> list[float]:
    """|onset - impact| in seconds for each impact's nearest onset within ``window``."""
    out = []
    for t in impacts:
        if len(onsets):
            d = float(np.min(np.abs(onsets - t)))
            if d < window:
                out.append(d)
    return out


@dataclass
class ClipMeasures:
    av_align: float
    impacts: list[float]
    onsets: list[float]
    errors: list[float]
    """Seconds, one per impact paired with an onset."""
    hits_matched: int
    """Impacts with an onset within one frame."""
    sounds_matched: int
    """Onsets with an impact within one frame."""


def measure_clip(frames: np.ndarray, wave: np.ndarray, fps: float, sample_rate: int,
                 pair_window: float = 0.25) -> ClipMeasures:
    impacts = visual_impacts(frames, fps)
    onsets = audio_onsets(wave, sample_rate)
    onsets = onsets[onsets >= START_SKIP]
    tol = 1.0 / fps
    return ClipMeasures(
        av_align=av_align(frames, wave, fps, sample_rate)["av_align"],
        impacts=[float(t) for t in impacts], onsets=[float(t) for t in onsets],
        errors=pair_errors(impacts, onsets, pair_window),
        hits_matched=int(sum(np.any(np.abs(onsets - t) < tol) for t in impacts)) if len(onsets) else 0,
        sounds_matched=int(sum(np.any(np.abs(impacts - t) < tol) for t in onsets)) if len(impacts) else 0)


@dataclass
class SetMeasures:
    """One set of clips (a variant x gamma x seed, or the ceiling / floor) summarised."""

    clips: int = 0
    av_align: float = 0.0
    timing_err_ms_median: float | None = None
    timing_err_ms_p90: float | None = None
    pairs: int = 0
    hit_match: float | None = None
    sound_match: float | None = None
    impacts_per_clip: float = 0.0
    onsets_per_clip: float = 0.0
    extra: dict = field(default_factory=dict)


def summarise(clips: list[ClipMeasures]) -> SetMeasures:
    errors = [e * 1000.0 for c in clips for e in c.errors]
    impacts = sum(len(c.impacts) for c in clips)
    onsets = sum(len(c.onsets) for c in clips)
    n = max(len(clips), 1)
    return SetMeasures(
        clips=len(clips),
        av_align=float(np.mean([c.av_align for c in clips])) if clips else 0.0,
        timing_err_ms_median=float(np.median(errors)) if errors else None,
        timing_err_ms_p90=float(np.percentile(errors, 90)) if errors else None,
        pairs=len(errors),
        hit_match=sum(c.hits_matched for c in clips) / impacts if impacts else None,
        sound_match=sum(c.sounds_matched for c in clips) / onsets if onsets else None,
        impacts_per_clip=impacts / n, onsets_per_clip=onsets / n)


def detector_check(clips: list[ClipMeasures], truth: list[list[float]], fps: float) -> dict[str, float]:
    """Precision and recall of the visual-impact detector against ground-truth impact times
    (matches within half a frame)."""
    tol = 0.5 / fps
    found = sum(len(c.impacts) for c in clips)
    real = sum(len(t) for t in truth)
    hit = sum(sum(np.any(np.abs(np.asarray(c.impacts) - t) < tol) for t in tr) if c.impacts else 0
              for c, tr in zip(clips, truth))
    return {"impact_recall": hit / real if real else 1.0,
            "impact_precision": min(1.0, hit / found) if found else 1.0}
