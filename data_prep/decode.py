"""Decode stage: every window of one input as a clip (frames + waveform + metadata) or an error
record. Audio is cut from its own timeline and video frames are picked by pts, each stream's
start offset honoured.

    decode_clips(probe, windows, data, prep) -> iterator of (Clip, None) | (None, ErrorRecord)
    decode_first_clip(path, data, prep)      -> Clip (raises DecodeError): the whole path for one clip
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import av
import numpy as np

from data_prep.audio import decode_audio_span
from data_prep.probe import Probe, probe
from data_prep.records import ErrorRecord
from data_prep.video import decord_reader, pick_frames, prepare_frames, pyav_frames
from data_prep.windows import Window, plan_windows
from svgen.config import DataConfig, PrepConfig


MAX_UNCOVERED = 0.005
"""Seconds of a window's audio that may lack decoded samples inside the stream (rounding)."""
MAX_EDGE_GAP = 0.05
"""Seconds of silence allowed before the stream's first decoded sample and after its last: AAC
encoder priming (1024 samples, 21 ms at 48 kHz) or a first packet the decoder drops leave the
first decoded frame a little after the declared start. ffmpeg pads such an edge with silence and
keeps the audio in place; so do we (recorded as ``audio_edge_pad`` in the clip's metadata). Less
than half a frame at 8 fps; a longer edge, or any hole inside, is missing audio."""


class DecodeError(ValueError):
    """An input yields no clip; the message names the input, the stage and why."""


@dataclass
class Clip:
    frames: np.ndarray            # uint8 (F, H, W, 3)
    wave: np.ndarray              # float32 (N,)
    meta: dict = field(default_factory=dict)


def _damage(times: list[float], backend: str = "pyav") -> str:
    where = ", ".join(f"{t:.3f}s" for t in sorted(set(round(t, 3) for t in times))[:5])
    tried = ("PyAV only: decord is not tried on a window PyAV found damaged, since decord cannot tell a damaged "
             "frame from a good one" if backend == "pyav" else "decord, then PyAV")
    return (f"corrupted or truncated video data near {where}: the decoder could not read part of this window, "
            f"which is skipped rather than kept with stale or concealed frames (decoders tried: {tried})")


def _unreadable(e: Exception) -> str:
    return f"corrupted or truncated video data: neither decoder could read the frames ({type(e).__name__}: {e})"


def _video_hole(targets: np.ndarray, picked: np.ndarray, tol: float, end: float) -> tuple[float, float] | None:
    """(from, to) seconds of the first stretch of the window whose target times have no frame
    within ``tol`` (the frame shown there is older, or, before the first frame, later), or None.
    From: the last frame before the hole; to: the next frame's time, or the window's ``end``
    when none comes before it."""
    bad = np.abs(targets - picked) > tol
    if not bad.any():
        return None
    i = int(np.argmax(bad))
    j = i + int(np.argmax(~bad[i:])) if (~bad[i:]).any() else len(bad)
    if picked[i] > targets[i]:                      # before the first frame
        return float(targets[i]), float(picked[i])
    return float(picked[i]), float(picked[j]) if j < len(bad) else float(end)


def _uncovered(covered: np.ndarray, offset: int, stream: np.ndarray, rate: int) -> tuple[int, float]:
    """(samples missing inside the stream, seconds of edge padding) of a window whose coverage is
    ``covered``, starting at sample ``offset`` of the decoded span ``stream``: samples before the
    stream's first decoded sample or after its last are edge (ffmpeg pads them with silence)
    while they stay within MAX_EDGE_GAP; every other uncovered sample is missing."""
    have = np.flatnonzero(stream)
    if len(have) == 0:
        return len(covered), 0.0
    first, last = have[0] - offset, have[-1] - offset          # in window samples
    idx = np.arange(len(covered))
    edge = ~covered & ((idx < first) | (idx > last))
    if edge.sum() > MAX_EDGE_GAP * rate:
        return int((~covered).sum()), 0.0
    return int((~covered & ~edge).sum()), float(edge.sum()) / rate


def _window_errors(p: Probe, windows: list[Window], stage: str, why: object) -> Iterator[tuple[None, ErrorRecord]]:
    """One error record per window, for a failure that costs every window of the input."""
    for w in windows:
        yield None, ErrorRecord(p.path, stage, f"window {w.index} at {w.start:.3f}s: {why}")


AUDIO_CONTEXT = 0.05
"""Seconds of audio decoded on each side of a group of windows (resampling context)."""
GROUP_SECONDS = 60.0
"""Windows are decoded in groups spanning about this long: memory per input is bounded by a
group, not by the input's length (a 20-minute input no longer holds all its frames and audio at
once). Each group after the first is reached by seeking, not by decoding from the start."""


def _groups(windows: list[Window], seconds: float) -> Iterator[list[Window]]:
    group: list[Window] = []
    for w in windows:
        if group and w.end - group[0].start > seconds:
            yield group
            group = []
        group.append(w)
    if group:
        yield group


def decode_clips(p: Probe, windows: list[Window], data: DataConfig, prep: PrepConfig,
                 group_seconds: float = GROUP_SECONDS) -> Iterator[tuple[Clip | None, ErrorRecord | None]]:
    """Every window of one input as (clip, None) or (None, error), group by group (GROUP_SECONDS):
    each group's audio decoded once, its video frames picked by pts (decord per window, or one
    PyAV pass per group)."""
    if not windows:
        return
    # decord applies a display rotation itself (svgen would turn the frames twice) and fails on
    # 180 degrees: rotated inputs always take PyAV, whose frames match what ffmpeg displays.
    upright = p.rotation % 360 == 0
    reader = decord_reader(p.path) if prep.video_backend in ("auto", "decord") and upright else None
    if reader is None and prep.video_backend == "decord" and upright:
        yield from _window_errors(p, windows, "decode_video", "decord could not read valid frame timestamps")
        return
    for n, group in enumerate(_groups(windows, group_seconds)):
        yield from _decode_group(p, group, data, reader=reader, upright=upright, seek=n > 0)


def _decode_group(p: Probe, windows: list[Window], data: DataConfig, *, reader, upright: bool, seek: bool
                  ) -> Iterator[tuple[Clip | None, ErrorRecord | None]]:
    # The audio is decoded a little beyond the group on both sides, so the resampler has context
    # at its edges: a window's samples do not depend on where its group starts or ends.
    span0, span1 = windows[0].start - AUDIO_CONTEXT, windows[-1].end + AUDIO_CONTEXT
    audio = None
    if p.has_audio:
        try:
            audio = decode_audio_span(p.path, span0, span1, data.sample_rate, seek=seek)
        except (av.error.FFmpegError, ValueError, RuntimeError) as e:
            yield from _window_errors(p, windows, "decode_audio", e)
            return
    offsets = np.arange(data.num_frames) / data.fps
    backend = "decord" if reader is not None else "pyav"
    decoded, damaged = None, []
    frame_gap = 1.0 / (p.fps if p.fps > 0 else data.fps)
    # A target time whose frame on screen is further away than this has no frame of its own:
    # two output frames (two source frames for a source slower than the output). Half a frame
    # rejected real phone footage whose camera holds its first frame 0.185 s (a 1 s hole in the
    # packets is 8 output frames; one stale frame in a row is what variable-rate footage shows).
    hole_tol = max(2.0 / data.fps, 2.0 * frame_gap if p.fps > 0 else 0.0)
    if reader is None:
        # Overlapping windows (stride < length) share frames: decode each target time once.
        targets, inverse = np.unique(np.concatenate([w.start + offsets for w in windows]), return_inverse=True)
        try:
            frames_u, picked_u, damaged = pyav_frames(p.path, targets, p.rotation, data.size, seek=seek)
            decoded = (frames_u[inverse], picked_u[inverse])
        except (av.error.FFmpegError, ValueError, RuntimeError) as e:
            reader = decord_reader(p.path) if upright else None  # the other decoder before giving up
            if reader is None:
                yield from _window_errors(p, windows, "decode_video", _unreadable(e))
                return
    for i, w in enumerate(windows):
        hit = [t for t in damaged if w.start - frame_gap < t < w.end]
        if hit:
            yield next(_window_errors(p, [w], "decode_video", _damage(hit)))
            continue
        window_backend = backend
        try:
            if reader is not None:
                vr, times = reader
                idx = pick_frames(times, w.start + offsets)
                frames = prepare_frames(vr.get_batch(list(idx)).asnumpy(), p.rotation, data.size)
                picked = times[idx]
            else:
                sl = slice(i * data.num_frames, (i + 1) * data.num_frames)
                frames, picked = decoded[0][sl], decoded[1][sl]
        except Exception as e:  # noqa: BLE001 - decord raises its own error types mid-file
            try:  # decord failed on this window: PyAV for it, before giving up
                frames, picked, hit = pyav_frames(p.path, w.start + offsets, p.rotation, data.size, seek=True)
                hit = [t for t in hit if w.start - frame_gap < t < w.end]
                window_backend = "pyav"
            except (av.error.FFmpegError, ValueError, RuntimeError):
                hit = None
            if hit is None or hit:
                yield next(_window_errors(p, [w], "decode_video", _damage(hit, "decord") if hit else _unreadable(e)))
                continue
        hole = _video_hole(w.start + offsets, np.asarray(picked, dtype=float), hole_tol, w.end)
        if hole is not None:
            yield next(_window_errors(p, [w], "decode_video",
                                      f"video missing between {hole[0]:.3f}s and {hole[1]:.3f}s (no frame there: "
                                      "packets lost or dropped); the window is skipped rather than filled with "
                                      "repeats of the frame before"))
            continue
        edge_pad = 0.0
        if audio is not None:
            a0 = int(round((w.start - span0) * data.sample_rate))
            wave = audio.wave[a0:a0 + data.num_samples]
            covered = np.pad(audio.covered[a0:a0 + data.num_samples], (0, max(0, data.num_samples - len(wave))))
            missing, edge_pad = _uncovered(covered, a0, audio.covered, data.sample_rate)
            if missing > MAX_UNCOVERED * data.sample_rate:
                yield next(_window_errors(p, [w], "decode_audio",
                                          f"audio missing or undecodable for {missing / data.sample_rate:.3f}s of the "
                                          f"window (of {data.seconds:g}s): corrupted or truncated audio data, or a gap "
                                          f"in the stream; the window is skipped rather than padded with silence"))
                continue
            wave = np.pad(wave, (0, data.num_samples - len(wave)))
        else:
            wave = np.zeros(data.num_samples, np.float32)
        meta = {"source": p.path, "window": w.index, "start": round(w.start, 6), "end": round(w.end, 6),
                "fps": data.fps, "sample_rate": data.sample_rate, "av_offset": round(p.av_offset, 6),
                "frame_pts": [round(float(t), 6) for t in picked], "video_backend": window_backend,
                "silent": not p.has_audio, "audio_edge_pad": round(edge_pad, 6)}
        yield Clip(frames, wave, meta), None


def decode_first_clip(path: str, data: DataConfig, prep: PrepConfig) -> Clip:
    """The first window of ``path``, decoded exactly as data prep decodes it."""
    p, err = probe(path)
    windows: list[Window] = []
    if err is None:
        windows, err = plan_windows(p, data, prep)
    if err is None:
        clip, err = next(decode_clips(p, windows[:1], data, prep))
    if err is not None:
        raise DecodeError(f"'{path}': {err.stage}: {err.message}")
    return clip
