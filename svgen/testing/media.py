"""Write test videos with exact control over timestamps: a flash on screen and a click in the audio
at known presentation times, an optional audio start offset, and variable frame rates."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def write_flash_click(path: Path, events: list[float], duration: float = 3.0, frame_times: list[float] | None = None,
                      audio_start: float = 0.0, audio: bool = True, video: bool = True, size: int = 64,
                      sample_rate: int = 22050, fps: int = 25, hold: float = 0.15, video_start: float = 0.0) -> Path:
    """Video frames at ``frame_times`` (default: every 1/fps from ``video_start``), white from each
    event time for ``hold`` seconds and black otherwise; a 3 ms click at each event time in the
    audio, whose stream starts at ``audio_start`` seconds (its first sample sits at that pts).
    Event times are on the shared presentation timeline. The container follows the suffix
    (.mkv: Matroska, else MP4)."""
    if frame_times is None:
        frame_times = [round(video_start + k / fps, 6) for k in range(int((duration - video_start) * fps))]
    fmt = "matroska" if Path(path).suffix == ".mkv" else "mp4"
    with av.open(str(path), "w", format=fmt) as out:
        if video:
            vs = out.add_stream("libx264", rate=1000)
            vs.width = vs.height = size
            vs.pix_fmt = "yuv420p"
            vs.time_base = Fraction(1, 1000)
            vs.codec_context.time_base = Fraction(1, 1000)
            vs.options = {"crf": "10", "bf": "0"}
        if audio:
            as_ = out.add_stream("aac", rate=sample_rate)
            as_.layout = "mono"
        if video:
            for i, t in enumerate(frame_times):
                t_next = frame_times[i + 1] if i + 1 < len(frame_times) else duration
                on = any(t_next > e + 1e-9 and t < e + hold - 1e-9 for e in events)
                img = np.full((size, size, 3), 255 if on else 0, np.uint8)
                fr = av.VideoFrame.from_ndarray(img, format="rgb24")
                fr.pts = int(round(t * 1000))
                fr.time_base = Fraction(1, 1000)
                out.mux(vs.encode(fr))
            out.mux(vs.encode())
        if audio:
            n = int((duration - audio_start) * sample_rate)
            wave = np.zeros(n, np.float32)
            click_t = np.arange(int(0.003 * sample_rate)) / sample_rate
            click = (np.sin(2 * np.pi * 1500 * click_t) * 0.9).astype(np.float32)
            for e in events:
                i = int(round((e - audio_start) * sample_rate))
                if 0 <= i < n:
                    wave[i:i + len(click)] += click[: n - i]
            pts0 = int(round(audio_start * sample_rate))
            for s in range(0, n, 1024):
                chunk = wave[s:s + 1024][None]
                af = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format="fltp", layout="mono")
                af.sample_rate = sample_rate
                af.pts = pts0 + s
                af.time_base = Fraction(1, sample_rate)
                out.mux(as_.encode(af))
            out.mux(as_.encode())
    return path


def onset_time(wave: np.ndarray, sample_rate: int, threshold: float = 0.3) -> float | None:
    idx = np.flatnonzero(np.abs(wave) > threshold)
    return float(idx[0]) / sample_rate if len(idx) else None


def write_benchmark_corpus(folder: Path, videos: int, seconds: float, size: int = 320) -> Path:
    """``videos`` flash/click clips of ``seconds`` at 30 fps and ``size`` px with 44.1 kHz audio,
    an event every 0.37 s from 1 s on: the corpus the data-prep benchmarks share."""
    folder.mkdir(parents=True, exist_ok=True)
    events = [1.0 + 0.37 * k for k in range(int(seconds) - 2)]
    for i in range(videos):
        write_flash_click(folder / f"v{i:03d}.mp4", events, duration=seconds, size=size, fps=30, sample_rate=44100)
    return folder
