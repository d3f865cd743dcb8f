"""The shard schema shared by data prep (writer) and training (reader).

One WebDataset sample per clip, keyed ``{input:06d}_{clip:04d}``, with these members:

| member       | content                                                        |
|--------------|----------------------------------------------------------------|
| video.jpgs   | the F frames at the target fps, centre-cropped, one JPEG each, |
|              | concatenated (prep.jpeg_quality > 0, the default)              |
| video_offsets.npy | int64 (F + 1,) byte offsets of the frames in video.jpgs   |
| video.npy    | uint8 (F, H, W, 3) raw frames instead (prep.jpeg_quality = 0)  |
| audio.npy    | int16 (N,) mono PCM at the target sample rate                  |
| mel.npy      | float16 (frames, n_mels) log-mel, when prep computed it        |
| json         | clip metadata (source, window, caption, A/V offset, backend)   |

Arrays are ``.npy`` bytes read with ``allow_pickle=False`` and frames are plain JPEG: a shard can
never run code when it is decoded. JPEG frames make a shard about a tenth of the raw arrays (raw
frames of a 200 k-clip corpus would pass a terabyte); benchmarks/loader_throughput.py measures
what decoding them costs the loader. Like ``svgen.config``, this module imports nothing else from svgen, so ``data_prep``
may depend on it.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np

SCHEMA_VERSION = 1
VIDEO, AUDIO, MEL, META = "video.npy", "audio.npy", "mel.npy", "json"
VIDEO_JPEG, VIDEO_OFFSETS = "video.jpgs", "video_offsets.npy"
# Cached-latent shards (launch/cache_latents.py): the frozen encoders' outputs for one clip, the
# VAE posteriors as mean and standard deviation (training samples from them).
LATENT_A, LATENT_V, TEXT_A, TEXT_V = "latent_a.npy", "latent_v.npy", "text_a.npy", "text_v.npy"
LATENT_A_STD, LATENT_V_STD = "latent_a_std.npy", "latent_v_std.npy"
LATENT_MEMBERS = (("latent_a", LATENT_A), ("latent_a_std", LATENT_A_STD), ("latent_v", LATENT_V),
                  ("latent_v_std", LATENT_V_STD), ("text_a", TEXT_A), ("text_v", TEXT_V))
LATENT_PREFIX = "latent-"
LATENT_INDEX = "latents.json"
STATS_SUFFIX = ".stats.json"


def clip_key(input_index: int, clip_index: int) -> str:
    return f"{input_index:06d}_{clip_index:04d}"


def shard_name(shard_index: int) -> str:
    return f"shard-{shard_index:06d}.tar"


def encode_array(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


def decode_array(b: bytes) -> np.ndarray:
    return np.load(io.BytesIO(b), allow_pickle=False)


def audio_to_pcm16(wave: np.ndarray) -> np.ndarray:
    return (np.clip(wave, -1.0, 1.0) * 32767.0).round().astype(np.int16)


def pcm16_to_audio(pcm: np.ndarray) -> np.ndarray:
    return pcm.astype(np.float32) / 32767.0


def encode_frames_jpeg(frames: np.ndarray, quality: int) -> tuple[bytes, np.ndarray]:
    """(F, H, W, 3) uint8 -> (concatenated JPEG bytes, (F + 1,) offsets)."""
    from PIL import Image

    blobs = []
    for f in frames:
        buf = io.BytesIO()
        Image.fromarray(f, "RGB").save(buf, format="JPEG", quality=quality)
        blobs.append(buf.getvalue())
    offsets = np.concatenate([[0], np.cumsum([len(b) for b in blobs])]).astype(np.int64)
    return b"".join(blobs), offsets


def decode_frames_jpeg(blob: bytes, offsets: np.ndarray) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.open(io.BytesIO(blob[a:b])).convert("RGB"))
                     for a, b in zip(offsets[:-1], offsets[1:])])


def encode_sample(key: str, frames: np.ndarray, wave: np.ndarray, meta: dict[str, Any], *,
                  mel: np.ndarray | None = None, jpeg_quality: int = 0) -> dict[str, Any]:
    """A WebDataset sample dict (``__key__`` + members) for one clip; frames as JPEG when
    ``jpeg_quality`` > 0, else raw."""
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 (F, H, W, 3), got {frames.dtype} {frames.shape}")
    sample = {"__key__": key, AUDIO: encode_array(audio_to_pcm16(wave)),
              META: json.dumps({"schema": SCHEMA_VERSION, **meta}).encode()}
    if jpeg_quality > 0:
        blob, offsets = encode_frames_jpeg(frames, jpeg_quality)
        sample[VIDEO_JPEG], sample[VIDEO_OFFSETS] = blob, encode_array(offsets)
    else:
        sample[VIDEO] = encode_array(frames)
    if mel is not None:
        sample[MEL] = encode_array(mel.astype(np.float16))
    return sample


def encode_latent_sample(key: str, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> dict[str, Any]:
    """A cached-latent sample from ``arrays`` named as in LATENT_MEMBERS (latent_a, latent_a_std,
    latent_v, latent_v_std, text_a, text_v): scaled posterior means and deviations and the text
    embeddings, stored as float16."""
    missing = [name for name, _ in LATENT_MEMBERS if name not in arrays]
    if missing:
        raise ValueError(f"cached-latent sample '{key}' lacks {missing}")
    return {"__key__": key, META: json.dumps({"schema": SCHEMA_VERSION, **meta}).encode(),
            **{member: encode_array(np.asarray(arrays[name], dtype=np.float16)) for name, member in LATENT_MEMBERS}}


class SampleError(ValueError):
    """One sample of a shard cannot be decoded: a member is missing or damaged."""

    def __init__(self, key: str, member: str, why: str):
        super().__init__(f"sample {key}: {member} {why}")
        self.key, self.member, self.why = key, member, why


def _member(sample: dict[str, Any], name: str) -> bytes:
    if name not in sample:
        raise SampleError(sample.get("__key__", "?"), name, "is missing")
    return sample[name]


def _array(sample: dict[str, Any], name: str) -> np.ndarray:
    try:
        return decode_array(_member(sample, name))
    except SampleError:
        raise
    except (ValueError, EOFError, OSError) as e:
        raise SampleError(sample.get("__key__", "?"), name, f"is not a valid .npy array ({e})") from None


def decode_sample(sample: dict[str, Any]) -> dict[str, Any]:
    """Raw or cached-latent member bytes -> numpy arrays and metadata (no pickle anywhere). A
    missing or damaged member raises :class:`SampleError` naming it."""
    key = sample.get("__key__", "?")
    try:
        meta = json.loads(_member(sample, META))
    except (ValueError, UnicodeDecodeError) as e:
        raise SampleError(key, META, f"is not valid JSON ({e})") from None
    out = {"key": key, "meta": meta}
    if LATENT_A in sample:
        for name, member in LATENT_MEMBERS:
            if member in sample:
                out[name] = _array(sample, member).astype(np.float32)
        return out
    if VIDEO_JPEG in sample:
        offsets = _array(sample, VIDEO_OFFSETS)
        try:
            out["frames"] = decode_frames_jpeg(sample[VIDEO_JPEG], offsets)
        except (ValueError, OSError) as e:  # PIL raises OSError for a broken JPEG
            raise SampleError(key, VIDEO_JPEG, f"holds a damaged JPEG frame ({e})") from None
    else:
        out["frames"] = _array(sample, VIDEO)
    out["wave"] = pcm16_to_audio(_array(sample, AUDIO))
    if MEL in sample:
        out["mel"] = _array(sample, MEL).astype(np.float32)
    return out
