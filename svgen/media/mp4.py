"""Write a sounding video as an mp4 (H.264 + AAC, yuv420p, faststart) that browsers play.

PyAV bundles FFmpeg, so no ffmpeg binary is needed.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
from av.video.reformatter import VideoReformatter
import numpy as np
import torch

from svgen.fileio import atomic_path


def write_mp4(path: str | Path, frames: torch.Tensor | np.ndarray, *, fps: int,
              wave: torch.Tensor | np.ndarray, sample_rate: int, lossless: bool = False) -> Path:
    """frames: (F, H, W, 3) uint8; wave: (N,) float in [-1, 1] (mono). Written atomically.

    ``lossless`` encodes the video at x264's qp 0 (about 5x the bytes of the default crf 18): it
    decodes to exactly the frames' yuv420p conversion. x264 at crf 18 is not bit-reproducible
    here: the same frames encoded again can decode a few levels apart in an odd frame (4 outputs
    in 30 encodes of one 64x64 clip, with or without threads), so data that must be the same on
    every run (a benchmark corpus) is written lossless."""
    path = Path(path)
    frames = np.asarray(frames.cpu() if torch.is_tensor(frames) else frames)
    wave = np.asarray(wave.detach().float().cpu() if torch.is_tensor(wave) else wave, dtype=np.float32)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (F, H, W, 3), got {frames.dtype} {frames.shape}")
    if wave.ndim != 1:
        raise ValueError(f"wave must be mono (N,), got shape {wave.shape}")
    h, w = frames.shape[1:3]
    if h % 2 or w % 2:  # yuv420p needs even sizes
        frames = frames[:, : h - h % 2, : w - w % 2]
    with atomic_path(path) as tmp:
        with av.open(str(tmp), mode="w", format="mp4", options={"movflags": "+faststart"}) as out:
            vs = out.add_stream("libx264", rate=fps)
            vs.width, vs.height = frames.shape[2], frames.shape[1]
            vs.pix_fmt = "yuv420p"
            vs.options = {"qp": "0", "preset": "veryfast"} if lossless else {"crf": "18", "preset": "veryfast"}
            as_ = out.add_stream("aac", rate=sample_rate)
            as_.layout = "mono"
            as_.bit_rate = 128000
            for i, img in enumerate(frames):
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
                frame.pts, frame.time_base = i, Fraction(1, fps)
                out.mux(vs.encode(frame))
            out.mux(vs.encode())
            samples = np.clip(wave, -1.0, 1.0)[None]
            chunk = 1024
            for start in range(0, samples.shape[1], chunk):
                af = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, start:start + chunk]),
                                                format="fltp", layout="mono")
                af.sample_rate, af.pts, af.time_base = sample_rate, start, Fraction(1, sample_rate)
                out.mux(as_.encode(af))
            out.mux(as_.encode())
    return path


def probe(path: str | Path) -> dict:
    """Streams and durations of a media file (what ffprobe would report), via PyAV."""
    with av.open(str(path)) as f:
        streams = []
        for s in f.streams:
            dur = float(s.duration * s.time_base) if s.duration is not None else None
            info = {"type": s.type, "codec": s.codec_context.name, "duration": dur}
            if s.type == "video":
                info.update(width=s.codec_context.width, height=s.codec_context.height,
                            frames=s.frames, fps=float(s.average_rate) if s.average_rate else None)
            elif s.type == "audio":
                info.update(sample_rate=s.codec_context.sample_rate, channels=s.codec_context.channels)
            streams.append(info)
        return {"duration": f.duration / 1e6 if f.duration else None, "streams": streams}


def read_mp4(path: str | Path, sample_rate: int = 16000) -> tuple[np.ndarray, np.ndarray, float]:
    """All frames (F, H, W, 3) uint8, the mono waveform at ``sample_rate`` and the frame rate of a
    sounding video (for evaluation of generated clips)."""
    import torchaudio

    frames, chunks, sr = [], [], None
    with av.open(str(path)) as f:
        fps = float(f.streams.video[0].average_rate or 0)
        rgb = VideoReformatter()  # one swscale context for all frames (to_ndarray(format=) makes one a frame)
        for fr in f.decode(video=0):
            frames.append(rgb.reformat(fr, format="rgb24").to_ndarray())
    with av.open(str(path)) as f:
        if f.streams.audio:
            for fr in f.decode(audio=0):
                x = fr.to_ndarray().astype(np.float32)
                x = x.reshape(fr.layout.nb_channels, -1) if fr.format.is_planar else x.reshape(-1, fr.layout.nb_channels).T
                chunks.append(x.mean(axis=0))
                sr = fr.sample_rate
    wave = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    if sr and sr != sample_rate:
        wave = torchaudio.functional.resample(torch.from_numpy(wave), sr, sample_rate).numpy()
    return np.stack(frames), wave.astype(np.float32), fps
