"""Window stage: fixed-length windows inside the A/V overlap of one probed input.

    plan_windows(probe, data, prep) -> ([Window], None) | ([], ErrorRecord)
"""

from __future__ import annotations

from dataclasses import dataclass

from data_prep.probe import Probe
from data_prep.records import ErrorRecord
from svgen.config import DataConfig, PrepConfig


@dataclass
class Window:
    index: int
    start: float
    end: float


def plan_windows(p: Probe, data: DataConfig, prep: PrepConfig) -> tuple[list[Window], dict | None]:
    """Fixed-length windows inside the A/V overlap (video alone when audio is replaced by silence)."""
    start, end = p.video_start, p.video_end
    if p.has_audio:
        start, end = max(start, p.audio_start), min(end, p.audio_end)
    length = data.seconds
    need = prep.min_seconds or length
    span = end - start
    if span < need - 1e-6:
        return [], ErrorRecord(p.path, "window", f"A/V overlap of {max(span, 0):.3f}s is shorter than one "
                                           f"window ({need:.3f}s)")
    stride = prep.stride or length
    windows, k = [], 0
    while start + k * stride + length <= end + 1e-6:
        t0 = start + k * stride
        windows.append(Window(k, t0, t0 + length))
        k += 1
    if not windows:  # min_seconds < length: one window padded at the end
        windows.append(Window(0, start, start + length))
    return windows, None
