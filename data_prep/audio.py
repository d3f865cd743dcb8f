"""Audio of one input over a time span: decoded frames placed on the timeline by their own pts
(so the stream's start offset and gaps are honoured), mixed to mono, resampled."""

from __future__ import annotations

import av
import numpy as np
import torch
import torchaudio


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
