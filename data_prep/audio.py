"""Audio of one input over a time span: decoded, mixed down to mono, placed on the timeline,
resampled, with a record of which samples the stream actually covered.

Placement. Frames follow each other sample by sample from the first frame's timestamp; a frame
whose timestamp jumps ahead of that running position (by more than 0.1 s) *and* is followed by
frames that continue regularly from it marks a real gap, which stays silent and uncovered.
Timestamps that do not advance with the sample count are not trusted: some Ogg/Vorbis files
carry such timestamps (and thousands of empty packets) at the start, and placing frames by them
scattered the audio across the timeline, leaving clips 35-79 % exact zeros.

Empty packets are skipped: sent to the decoder, an empty packet means 'flush', after which the
decoder refuses every later packet. A window whose audio is not fully covered becomes an error
record (data_prep/decode.py), never padded silence.

Downmix: ffmpeg's (``-ac 1``, libswresample's default matrix, which follows ITU-R BS.775):
front left and right 1/sqrt(2), centre 1, surrounds and backs 1/2 (the -3 dB stereo fold-down,
then L and R summed at -3 dB), LFE 0, scaled to unit sum as ffmpeg scales it for integer output.
So the centre sits at sqrt(2) x a front channel, as in the standard, not below it. A track whose
channels carry no layout is read as ffmpeg reads it: the default layout for its channel count
(6 channels: 5.1, the fourth channel the LFE).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import av
import numpy as np
import torch
import torchaudio

GAP = 0.1
"""A timestamp this far ahead of the running position (seconds), continued regularly, is a gap."""
REGULAR = 0.002
"""Timestamps agreeing with the sample count within this (seconds) are trusted."""
_HALF = 2 ** -0.5
_WEIGHTS = {"FL": _HALF, "FR": _HALF, "FC": 1.0, "LFE": 0.0, "LFE2": 0.0,
            "FLC": _HALF, "FRC": _HALF, "SL": 0.5, "SR": 0.5, "BL": 0.5, "BR": 0.5, "BC": 0.5}
"""ffmpeg's mono fold-down weights before scaling; channels not listed (top, wide) count 1/2."""
DEFAULT_LAYOUTS = {1: ["FC"], 2: ["FL", "FR"], 3: ["FL", "FR", "FC"], 4: ["FL", "FR", "FC", "BC"],
                   5: ["FL", "FR", "FC", "BL", "BR"], 6: ["FL", "FR", "FC", "LFE", "BL", "BR"],
                   7: ["FL", "FR", "FC", "LFE", "BC", "SL", "SR"], 8: ["FL", "FR", "FC", "LFE", "BL", "BR", "SL", "SR"]}
"""ffmpeg's default layout per channel count (av_channel_layout_default), for untagged tracks."""


def channel_weights(names: list[str]) -> np.ndarray:
    """Mono downmix weights (summing to 1) for channels named as FFmpeg names them; unnamed
    channels ('NONE', an untagged track) take the default layout of their count."""
    if len(names) == 1:
        return np.ones(1, np.float32)
    if not any(n in _WEIGHTS for n in names) and len(names) in DEFAULT_LAYOUTS:
        names = DEFAULT_LAYOUTS[len(names)]
    w = np.array([_WEIGHTS.get(n, 0.5) for n in names], np.float32)
    if w.sum() <= 0:
        w = np.ones(len(names), np.float32)
    return w / w.sum()


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
    names = [c.name for c in fr.layout.channels]
    return channel_weights(names) @ x


@dataclass
class AudioSpan:
    """Mono samples of a span at the target rate, and which of them the stream covered."""

    wave: np.ndarray
    """float32 (N,)."""
    covered: np.ndarray
    """bool (N,): False where the stream had no audio (before its start, after its end, gaps)."""


SEEK_MARGIN = 1.0
"""Seconds decoded before a span when seeking to it (the decoder's start-up and frame edges)."""


def _frames(path: str, stop: float, seek: float | None = None):
    """(timestamp or None, mono samples) of every decodable frame, until ``stop`` seconds; and the
    stream's sample rate and declared start time. With ``seek``, decoding starts near that time
    (a keyframe before it) instead of at the stream's start."""
    out = []
    with av.open(path) as c:
        a = c.streams.audio[0]
        sr = a.codec_context.sample_rate
        start = float(a.start_time * a.time_base) if a.start_time is not None else None
        if seek is not None:
            c.seek(int(seek / a.time_base), stream=a, backward=True)
        samples = 0
        for pkt in c.demux(a):
            if pkt.size == 0:
                continue
            try:
                decoded = pkt.decode()
            except av.error.FFmpegError:
                continue
            for fr in decoded:
                out.append((fr.time, _to_mono_float(fr)))
                samples += len(out[-1][1])
            # Stop past ``stop`` only when both the timestamp and the sample count say so: either
            # alone can run ahead (garbage timestamps; or a gap, where samples lag the timeline).
            t = out[-1][0] if out else None
            first = out[0][0] if out and out[0][0] is not None else None
            origin = (first if first is not None else seek) if seek is not None else \
                (start if start is not None else (first if first is not None else 0.0))
            if t is not None and min(t, origin + samples / sr) > stop + 1.0:
                break
    return out, sr, start


def _placement(frames: list, sr: int, declared_start: float | None) -> list[float]:
    """Start time of each frame (see the module docstring)."""
    times = [t for t, _ in frames]
    lengths = [len(x) / sr for _, x in frames]
    regular = [t is not None and i + 1 < len(frames) and times[i + 1] is not None
               and abs(times[i + 1] - t - lengths[i]) < REGULAR for i, t in enumerate(times)]
    if frames and regular[0]:
        cursor = times[0]
    else:
        first = next((times[i] for i in range(len(frames)) if regular[i]), None)
        cursor = declared_start if declared_start is not None else (first if first is not None else 0.0)
    starts = []
    for i, t in enumerate(times):
        if t is not None and regular[i] and t - cursor > GAP:
            cursor = t  # a real gap: the stream resumes later
        starts.append(cursor)
        cursor += lengths[i]
    return starts


def _seekable(frames: list, sr: int, t0: float) -> bool:
    """Frames decoded after a seek can be placed on their own: they start at or before ``t0`` and
    their timestamps advance with their sample counts."""
    if len(frames) < 2 or frames[0][0] is None or frames[0][0] > t0:
        return False
    return all(frames[i][0] is not None and frames[i + 1][0] is not None
               and abs(frames[i + 1][0] - frames[i][0] - len(frames[i][1]) / sr) < REGULAR for i in range(min(8, len(frames) - 1)))


def decode_audio_span(path: str, t0: float, t1: float, sample_rate: int, seek: bool = False) -> AudioSpan:
    """Mono float32 samples of [t0, t1) at ``sample_rate`` and their coverage. ``seek``: start
    decoding near ``t0`` rather than at the stream's start (memory and time bounded by the span,
    not by where it lies in the file); when the frames after the seek cannot be placed on their
    own (irregular timestamps), the stream is decoded from its start instead."""
    frames = None
    if seek and t0 > SEEK_MARGIN:
        frames, sr, _ = _frames(path, t1, seek=t0 - SEEK_MARGIN)
        if _seekable(frames, sr, t0):
            declared = frames[0][0]
        else:
            frames = None
    if frames is None:
        frames, sr, declared = _frames(path, t1)
    # Samples live on the stream's absolute grid (sample i at i / sr), and the buffer starts at
    # a multiple of the resampler's input period, so each output sample is the same whatever
    # span it was decoded in (a window decoded in a group reached by seeking equals one decoded
    # in a pass from the start). Frames are placed by their start (rounded to a sample) and
    # snapped onto the previous frame's end when within a sample of it: float timestamps must
    # not open one-sample holes or overlaps between frames that follow each other.
    g = math.gcd(sr, sample_rate)
    period_in, period_out = sr // g, sample_rate // g
    first = math.floor(t0 * sr / period_in) * period_in            # absolute input index of buf[0]
    n = max(0, math.ceil(t1 * sr) + 64 * period_in - first)        # + context for the resampler's right edge
    buf = np.zeros(n, np.float32)
    covered = np.zeros(n, bool)
    end = None
    for start, (_, mono) in zip(_placement(frames, sr, declared), frames):
        pos = int(round(start * sr))
        if end is not None and abs(pos - end) <= 1:
            pos = end
        end = pos + len(mono)
        lo, hi = max(pos - first, 0), min(pos - first + len(mono), n)
        if hi > lo:
            buf[lo:hi] = mono[lo - (pos - first):hi - (pos - first)]
            covered[lo:hi] = True
    want = int(round((t1 - t0) * sample_rate))
    out0 = first // period_in * period_out                          # absolute output index of out[0]
    skip = int(round(t0 * sample_rate)) - out0
    if sr != sample_rate:
        wave = torchaudio.functional.resample(torch.from_numpy(buf), sr, sample_rate).numpy()
        idx = np.minimum(((np.arange(len(wave)) + out0) * sr) // sample_rate - first, max(n - 1, 0))
        covered = covered[idx] if n else np.zeros(len(wave), bool)
    else:
        wave = buf
    wave = np.pad(wave[skip:skip + want], (0, max(0, want - len(wave[skip:skip + want])))).astype(np.float32)
    covered = np.pad(covered[skip:skip + want], (0, max(0, want - len(covered[skip:skip + want]))))
    return AudioSpan(wave, covered)
