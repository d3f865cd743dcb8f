"""What the ablation measures on a sounding video, real or generated, and against what chance
would score (issues 12 and 20).

Events of one clip:
- **visual impacts**, read off the picture the way the corpus draws it (hits.py): the ball is
  what differs from the clip's background above the floor; its centroid drops to the floor and
  squashes on an impact frame, so an impact is a frame whose centroid row is lower than the frame
  before (by ``min_drop`` pixels over the two frames before) and not higher than the frame after;
- **audio onsets**, as AV-Align detects them (librosa's defaults at 22,050 Hz), less those in the
  first ``START_SKIP`` seconds (librosa marks one at 0.07 s in every clip, real or not);
- **motion peaks**, AV-Align's optical-flow peaks (for AV-Align itself).

Scores of a pairing (onsets of one clip against the impacts of the same clip, or of another):
- **F1 at one frame** (the primary measure): precision = onsets with an impact within 1 / fps,
  recall = impacts with an onset within 1 / fps, F1 their harmonic mean (0 when either is empty).
  Both halves count, so adding events cannot raise it the way a one-sided rate rises;
- hits with a sound (recall) and sounds with a hit (precision) alone;
- the median |onset - impact| over impacts paired with their nearest onset within ``window``;
- AV-Align from the onsets and the motion peaks (svgen.metrics.av_align.match_score).

**The null.** Dense noise scores well on any of these: 16 random onsets a clip meet most
impacts within a frame. So every score of a clip is also taken with the clip's onsets against
the impacts (and peaks) of other clips of the same set with the same caption (the same
material, other timing): the same densities, no sync. The clip's excess over that null is what
the ablation compares; a variant at chance has an excess of 0 whatever its event density.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from svgen.metrics.av_align import audio_onsets, match_score, motion_peaks

START_SKIP = 0.1
PRIMARY = "f1"
"""The primary measure, named before the run (issue 20): onset-impact F1 at one frame."""
SCORES = ("f1", "hit_match", "sound_match", "timing_ms", "av_align")
"""Every per-clip score; all but timing_ms are better higher."""


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


@dataclass
class ClipEvents:
    """The events of one clip (times in seconds)."""

    impacts: list[float]
    onsets: list[float]
    peaks: list[float]
    caption: str = ""


def clip_events(frames: np.ndarray, wave: np.ndarray, fps: float, sample_rate: int, caption: str = "") -> ClipEvents:
    onsets = audio_onsets(wave, sample_rate)
    return ClipEvents(impacts=[float(t) for t in visual_impacts(frames, fps)],
                      onsets=[float(t) for t in onsets[onsets >= START_SKIP]],
                      peaks=[float(t) for t in motion_peaks(frames, fps)], caption=caption)


def pair_errors(impacts: np.ndarray, onsets: np.ndarray, window: float) -> list[float]:
    """|onset - impact| in seconds for each impact's nearest onset within ``window``."""
    out = []
    for t in impacts:
        if len(onsets):
            d = float(np.min(np.abs(onsets - t)))
            if d < window:
                out.append(d)
    return out


def score(onsets: list[float], impacts: list[float], peaks: list[float], fps: float,
          window: float = 0.25) -> dict[str, float | None]:
    """Every score of onsets against impacts (and motion peaks); None where undefined."""
    on, im = np.asarray(onsets), np.asarray(impacts)
    tol = 1.0 / fps
    hits = int(sum(np.any(np.abs(on - t) < tol) for t in im)) if len(on) else 0
    sounds = int(sum(np.any(np.abs(im - t) < tol) for t in on)) if len(im) else 0
    recall = hits / len(im) if len(im) else None
    precision = sounds / len(on) if len(on) else None
    if recall is None or precision is None:
        f1 = 0.0
    else:
        f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    errors = pair_errors(im, on, window)
    return {"f1": f1, "hit_match": recall, "sound_match": precision,
            "timing_ms": float(np.median(errors)) * 1000 if errors else None,
            "av_align": match_score(on, np.asarray(peaks), fps)}


def partners(events: list[ClipEvents], i: int) -> list[int]:
    """The clips a clip's null pairs it with: the others of its set with its caption (all the
    others when it has none)."""
    same = [j for j, e in enumerate(events) if j != i and e.caption == events[i].caption]
    return same or [j for j in range(len(events)) if j != i]


def clip_scores(events: list[ClipEvents], fps: float) -> list[dict]:
    """Per clip: each score, its null (the mean over the clip's partners) and the excess."""
    out = []
    for i, e in enumerate(events):
        own = score(e.onsets, e.impacts, e.peaks, fps)
        nulls = [score(e.onsets, events[j].impacts, events[j].peaks, fps) for j in partners(events, i)]
        row: dict = {"impacts": len(e.impacts), "onsets": len(e.onsets), "partners": len(nulls)}
        for key in SCORES:
            vals = [n[key] for n in nulls if n[key] is not None]
            null = float(np.mean(vals)) if vals else None
            row[key], row[key + "_null"] = own[key], null
            row[key + "_excess"] = own[key] - null if own[key] is not None and null is not None else None
        out.append(row)
    return out


@dataclass
class SetSummary:
    """One set of clips (a variant x seed x gamma, or the real clips) summarised: for each score
    the mean over clips of the score, of its null and of the excess."""

    clips: int = 0
    impacts_per_clip: float = 0.0
    onsets_per_clip: float = 0.0
    values: dict = field(default_factory=dict)


def summarise(rows: list[dict]) -> SetSummary:
    n = max(len(rows), 1)
    values = {}
    for key in SCORES:
        # Over the clips where both the score and its null are defined, so value - null = excess.
        both = [r for r in rows if r[key + "_excess"] is not None]
        for suffix in ("", "_null", "_excess"):
            values[key + suffix] = float(np.mean([r[key + suffix] for r in both])) if both else None
    return SetSummary(clips=len(rows), impacts_per_clip=sum(r["impacts"] for r in rows) / n,
                      onsets_per_clip=sum(r["onsets"] for r in rows) / n, values=values)


def detector_check(events: list[ClipEvents], truth: list[list[float]], fps: float) -> dict[str, float]:
    """Precision and recall of the visual-impact detector against ground-truth impact times
    (matches within half a frame)."""
    tol = 0.5 / fps
    found = sum(len(e.impacts) for e in events)
    real = sum(len(t) for t in truth)
    hit = sum(sum(np.any(np.abs(np.asarray(e.impacts) - t) < tol) for t in tr) if e.impacts else 0
              for e, tr in zip(events, truth))
    return {"impact_recall": hit / real if real else 1.0,
            "impact_precision": min(1.0, hit / found) if found else 1.0}
