"""Data-prep stages: pure functions over one input or clip that return an error record instead of
raising (video2dataset's contract, STYLE.md convention 8).

    probe(path)                    -> (Probe, None) | (None, error)
    plan_windows(probe, data, prep)-> ([Window], None) | ([], error)
    decode_clip(path, probe, w, .) -> (Clip, None) | (None, error)

The timeline is presentation time in seconds, as the container states it. A window [t0, t0+L)
lies inside the overlap of the video and audio streams. Video frames are picked by presentation
timestamp (the frame on screen at t0 + k/fps, so variable frame rates stay in sync) and audio is
cut from the same window of its own timeline, each stream's start offset honoured.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Iterator

import av
import numpy as np
import torch
import torch.nn.functional as F
import torchaudio

from svgen.config import DataConfig, PrepConfig


@dataclass
class Probe:
    """What probing one input found."""

    path: str
    video_start: float
    video_end: float
    fps: float
    width: int
    height: int
    rotation: int
    audio_start: float | None
    audio_end: float | None
    sample_rate: int | None
    channels: int | None
    video_codec: str = ""
    audio_codec: str | None = None

    @property
    def has_audio(self) -> bool:
        return self.audio_start is not None

    @property
    def av_offset(self) -> float:
        """Audio start minus video start, seconds."""
        return (self.audio_start - self.video_start) if self.has_audio else 0.0


@dataclass
class Window:
    index: int
    start: float
    end: float


@dataclass
class Clip:
    frames: np.ndarray            # uint8 (F, H, W, 3)
    wave: np.ndarray              # float32 (N,)
    meta: dict = field(default_factory=dict)


def error(path: str, stage: str, message: str) -> dict:
    return {"input": path, "stage": stage, "message": message}


# ------------------------------------------------------------------------------------------------
# probe
# ------------------------------------------------------------------------------------------------


def _stream_span(container, stream) -> tuple[float, float] | None:
    """(first, last end) presentation time of a stream from its packets (no decoding)."""
    first, last = math.inf, -math.inf
    tb = float(stream.time_base)
    for pkt in container.demux(stream):
        if pkt.pts is None or pkt.size == 0:
            continue
        t = pkt.pts * tb
        first = min(first, t)
        last = max(last, t + (pkt.duration or 0) * tb)
    return (first, last) if first < math.inf else None


def probe(path: str) -> tuple[Probe | None, dict | None]:
    """Streams, spans, fps, size and rotation of one input, read from its packets."""
    if not os.path.isfile(path):
        return None, error(path, "probe", "not a readable file" if os.path.exists(path) else "file does not exist")
    if os.path.getsize(path) == 0:
        return None, error(path, "probe", "zero-length file")
    try:
        with av.open(path) as c:
            if not c.streams.video:
                return None, error(path, "probe", "no video stream")
            vs = c.streams.video[0]
            vspan = _stream_span(c, vs)
            fps = float(vs.average_rate or vs.guessed_rate or 0)
            width, height, vcodec = vs.codec_context.width, vs.codec_context.height, vs.codec_context.name
        rotation = _first_frame_rotation(path)  # also proves that a frame decodes
        aspan, sr, ch, acodec = None, None, None, None
        with av.open(path) as c:
            if c.streams.audio:
                a = c.streams.audio[0]
                sr, ch, acodec = a.codec_context.sample_rate, a.codec_context.channels, a.codec_context.name
                aspan = _stream_span(c, a)
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as e:
        return None, error(path, "probe", f"unreadable container: {e}")
    if vspan is None or vspan[1] <= vspan[0]:
        return None, error(path, "probe", "video stream has no frames")
    if rotation is None:
        return None, error(path, "probe", "no decodable video frame")
    return Probe(path, vspan[0], vspan[1], fps, width, height, rotation,
                 aspan[0] if aspan else None, aspan[1] if aspan else None, sr, ch, vcodec, acodec), None


def _first_frame_rotation(path: str) -> int | None:
    """Display rotation (degrees) of the first decodable frame; None if no frame decodes."""
    with av.open(path) as c:
        for pkt in c.demux(c.streams.video[0]):
            try:
                for fr in pkt.decode():
                    return int(round(getattr(fr, "rotation", 0) or 0))
            except av.error.FFmpegError:
                continue
    return None


# ------------------------------------------------------------------------------------------------
# windows
# ------------------------------------------------------------------------------------------------


def plan_windows(p: Probe, data: DataConfig, prep: PrepConfig) -> tuple[list[Window], dict | None]:
    """Fixed-length windows inside the A/V overlap (video alone when audio is replaced by silence)."""
    start, end = p.video_start, p.video_end
    if p.has_audio:
        start, end = max(start, p.audio_start), min(end, p.audio_end)
    length = data.seconds
    need = prep.min_seconds or length
    span = end - start
    if span < need - 1e-6:
        return [], error(p.path, "window", f"A/V overlap of {max(span, 0):.3f}s is shorter than one "
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


# ------------------------------------------------------------------------------------------------
# decode
# ------------------------------------------------------------------------------------------------


def _resize_crop(frames: torch.Tensor, size: int) -> torch.Tensor:
    """(F, H, W, 3) uint8 -> (F, size, size, 3): resize the short side to size, centre-crop."""
    f, h, w, _ = frames.shape
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    x = frames.permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
    top, left = (nh - size) // 2, (nw - size) // 2
    x = x[:, :, top:top + size, left:left + size]
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


def _prepare(frames: np.ndarray, rotation: int, size: int) -> np.ndarray:
    if rotation % 360:
        frames = np.ascontiguousarray(np.rot90(frames, k=(rotation // 90) % 4, axes=(1, 2)))
    return _resize_crop(torch.from_numpy(frames), size).numpy()


def _pick(times: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Index of the frame on screen at each target time (last frame with pts <= t; first if none)."""
    idx = np.searchsorted(times, targets + 1e-6, side="right") - 1
    return np.clip(idx, 0, len(times) - 1)


def _decord_reader(path: str):
    """A decord reader and its frame times, or None when decord mis-times the file (AVI without
    pts, some ogg): the caller then falls back to PyAV."""
    import decord

    try:
        vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
        times = vr.get_frame_timestamp(range(len(vr)))[:, 0].astype(np.float64)
    except Exception:  # noqa: BLE001 - decord raises bare DECORDError / RuntimeError on bad metadata
        return None
    if len(times) == 0 or not np.all(np.isfinite(times)) or times.min() < -1.0 or np.any(np.diff(times) < 0):
        return None
    return vr, times


def _pyav_frames(path: str, targets: np.ndarray, rotation: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One PyAV pass (tolerating broken packets) keeping, resized, the frames on screen at the
    sorted target times; memory stays bounded by the number of targets."""
    out = np.zeros((len(targets), size, size, 3), np.uint8)
    picked = np.full(len(targets), np.nan)
    prev = None  # (time, frame) of the last decoded frame
    k = 0
    with av.open(path) as c:
        for pkt in c.demux(c.streams.video[0]):
            try:
                decoded = pkt.decode()
            except av.error.FFmpegError:
                continue
            for fr in decoded:
                t = fr.time if fr.time is not None else ((prev[0] + 1e-3) if prev else 0.0)
                # Every target before this frame's time shows the previous frame (or this one
                # when nothing came before: the first frame stands in for earlier times).
                while k < len(targets) and targets[k] + 1e-6 < t:
                    src_t, src = prev if prev is not None else (t, fr)
                    out[k] = _prepare(src.to_ndarray(format="rgb24")[None], rotation, size)[0]
                    picked[k] = src_t
                    k += 1
                prev = (t, fr)
            if k == len(targets):
                break
    while k < len(targets) and prev is not None:
        out[k] = _prepare(prev[1].to_ndarray(format="rgb24")[None], rotation, size)[0]
        picked[k] = prev[0]
        k += 1
    if prev is None:
        raise ValueError("no decodable video frame")
    return out, picked


def _to_mono_float(fr) -> np.ndarray:
    x = fr.to_ndarray()
    if x.dtype == np.uint8:
        x = (x.astype(np.float32) - 128.0) / 128.0
    elif x.dtype == np.int16:
        x = x.astype(np.float32) / 32768.0
    elif x.dtype == np.int32:
        x = x.astype(np.float32) / 2147483648.0
    else:
        x = x.astype(np.float32)
    chans = fr.layout.nb_channels
    x = x.reshape(chans, -1) if fr.format.is_planar else x.reshape(-1, chans).T
    return x.mean(axis=0)


def decode_audio_span(path: str, t0: float, t1: float, sample_rate: int) -> np.ndarray:
    """Mono float32 samples of [t0, t1) at sample_rate. Decoded frames are placed on the timeline
    by their own pts, so the stream's start offset and any gaps are honoured (silence where no
    audio); then one torchaudio resample of the whole span."""
    with av.open(path) as c:
        a = c.streams.audio[0]
        sr = a.codec_context.sample_rate
        n = int(round((t1 - t0) * sr))
        buf = np.zeros(n, np.float32)
        cursor = None
        for pkt in c.demux(a):
            try:
                decoded = pkt.decode()
            except av.error.FFmpegError:
                continue
            for fr in decoded:
                mono = _to_mono_float(fr)
                t = fr.time if fr.time is not None else (cursor or 0.0)
                cursor = t + len(mono) / sr
                i0 = int(round((t - t0) * sr))
                lo, hi = max(i0, 0), min(i0 + len(mono), n)
                if hi > lo:
                    buf[lo:hi] = mono[lo - i0:hi - i0]
            if cursor is not None and cursor > t1 + 0.5:
                break
    wave = torch.from_numpy(buf)
    if sr != sample_rate:
        wave = torchaudio.functional.resample(wave, sr, sample_rate)
    want = int(round((t1 - t0) * sample_rate))
    return np.pad(wave.numpy(), (0, max(0, want - wave.shape[0])))[:want].astype(np.float32)


def decode_clips(p: Probe, windows: list[Window], data: DataConfig, prep: PrepConfig
                 ) -> Iterator[tuple[Clip | None, dict | None]]:
    """Every window of one input as (clip, None) or (None, error). The audio of the whole span is
    decoded once; video frames are picked by pts (decord per window, or one PyAV pass)."""
    if not windows:
        return
    span0, span1 = windows[0].start, windows[-1].end
    wave_all = None
    if p.has_audio:
        try:
            wave_all = decode_audio_span(p.path, span0, span1, data.sample_rate)
        except (av.error.FFmpegError, ValueError, RuntimeError) as e:
            for w in windows:
                yield None, error(p.path, "decode_audio", f"window {w.index} at {w.start:.3f}s: {e}")
            return
    offsets = np.arange(data.num_frames) / data.fps
    reader = _decord_reader(p.path) if prep.video_backend in ("auto", "decord") else None
    if reader is None and prep.video_backend == "decord":
        for w in windows:
            yield None, error(p.path, "decode_video", "decord could not read valid frame timestamps")
        return
    backend = "decord" if reader is not None else "pyav"
    pyav_frames = None
    if reader is None:
        # Overlapping windows (stride < length) share frames: decode each target time once.
        targets, inverse = np.unique(np.concatenate([w.start + offsets for w in windows]), return_inverse=True)
        try:
            frames_u, picked_u = _pyav_frames(p.path, targets, p.rotation, data.size)
            pyav_frames = (frames_u[inverse], picked_u[inverse])
        except (av.error.FFmpegError, ValueError, RuntimeError) as e:
            for w in windows:
                yield None, error(p.path, "decode_video", f"window {w.index} at {w.start:.3f}s: {e}")
            return
    for i, w in enumerate(windows):
        try:
            if reader is not None:
                vr, times = reader
                idx = _pick(times, w.start + offsets)
                frames = _prepare(vr.get_batch(list(idx)).asnumpy(), p.rotation, data.size)
                picked = times[idx]
            else:
                sl = slice(i * data.num_frames, (i + 1) * data.num_frames)
                frames, picked = pyav_frames[0][sl], pyav_frames[1][sl]
        except Exception as e:  # noqa: BLE001 - decord raises its own error types mid-file
            yield None, error(p.path, "decode_video", f"window {w.index} at {w.start:.3f}s: {e}")
            continue
        if wave_all is not None:
            a0 = int(round((w.start - span0) * data.sample_rate))
            wave = wave_all[a0:a0 + data.num_samples]
            wave = np.pad(wave, (0, data.num_samples - len(wave)))
        else:
            wave = np.zeros(data.num_samples, np.float32)
        meta = {"source": p.path, "window": w.index, "start": round(w.start, 6), "end": round(w.end, 6),
                "fps": data.fps, "sample_rate": data.sample_rate, "av_offset": round(p.av_offset, 6),
                "frame_pts": [round(float(t), 6) for t in picked], "video_backend": backend,
                "silent": not p.has_audio}
        yield Clip(frames, wave, meta), None
