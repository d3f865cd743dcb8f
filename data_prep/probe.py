"""Probe stage: what an input holds (streams, spans, fps, size, rotation), read from its packets.

    probe(path) -> (Probe, None) | (None, ErrorRecord)

The timeline is presentation time in seconds, as the container states it.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass

import av

from data_prep.records import ErrorRecord


@dataclass(kw_only=True)
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

    def restricted(self, start: float | None, end: float | None) -> "Probe":
        """The same input limited to the video span [start, end] (a manifest's sub-range)."""
        return dataclasses.replace(self, video_start=max(self.video_start, start if start is not None else self.video_start),
                                   video_end=min(self.video_end, end if end is not None else self.video_end))

    @property
    def av_offset(self) -> float:
        """Audio start minus video start, seconds."""
        return (self.audio_start - self.video_start) if self.has_audio else 0.0


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
        why = ("dangling symbolic link (its target does not exist)" if os.path.islink(path) and not os.path.exists(path)
               else "not a readable file" if os.path.exists(path) else "file does not exist")
        return None, ErrorRecord(path, "probe", why)
    if os.path.getsize(path) == 0:
        return None, ErrorRecord(path, "probe", "zero-length file")
    try:
        with av.open(path) as c:
            if not c.streams.video:
                return None, ErrorRecord(path, "probe", "no video stream")
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
        return None, ErrorRecord(path, "probe", f"not a media file (FFmpeg cannot read it as a container: {e})")
    if vspan is None or vspan[1] <= vspan[0]:
        return None, ErrorRecord(path, "probe", "video stream has no frames")
    if rotation is None:
        return None, ErrorRecord(path, "probe", "no decodable video frame")
    return Probe(path=path, video_start=vspan[0], video_end=vspan[1], fps=fps, width=width, height=height,
                 rotation=rotation, audio_start=aspan[0] if aspan else None, audio_end=aspan[1] if aspan else None,
                 sample_rate=sr, channels=ch, video_codec=vcodec, audio_codec=acodec), None


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
