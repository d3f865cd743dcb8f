"""Write one shard: every input of the shard through the stages, clips into a WebDataset tar.

The tar is written under a temporary name and renamed when complete; the stats JSON, written
last and also atomically, is the proof that the shard is finished: a re-run skips a shard whose
tar still has the size and SHA-256 its stats record, and remakes it otherwise.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import torch
import webdataset as wds

from data_prep.decode import decode_clips
from data_prep.inputs import InputItem
from data_prep.probe import probe
from data_prep.records import ErrorRecord
from data_prep.windows import plan_windows
from svgen.config import Config
from svgen.fileio import atomic_path, file_digest, write_json
from svgen.media.audio import log_mel
from svgen.shards import STATS_SUFFIX, clip_key, encode_sample, shard_name


def _digest(path: Path) -> dict:
    d = file_digest(path)
    return {"bytes": d["size"], "sha256": d["sha256"]}


def stats_path(out_dir: Path, shard_index: int) -> Path:
    return out_dir / (shard_name(shard_index) + STATS_SUFFIX)


def is_finished(out_dir: Path, shard_index: int) -> bool:
    """The shard's stats exist (written last) and its tar has the size they record."""
    stats, tar = stats_path(out_dir, shard_index), out_dir / shard_name(shard_index)
    if not (stats.is_file() and tar.is_file()):
        return False
    try:
        recorded = json.loads(stats.read_text())
    except ValueError:
        return False
    return recorded.get("bytes") == tar.stat().st_size


def damaged(out_dir: Path, shard_index: int) -> str | None:
    """Why a finished shard no longer matches its stats (its SHA-256 differs: altered or
    corrupted since it was written), or None. Reads the whole tar."""
    recorded = json.loads(stats_path(out_dir, shard_index).read_text())
    want = recorded.get("sha256")
    if want is None:  # stats of an older svgen: size only
        return None
    got = file_digest(out_dir / shard_name(shard_index))["sha256"]
    return None if got == want else f"{shard_name(shard_index)} does not match the SHA-256 in its stats"


def write_shard(out_dir: str | Path, shard_index: int, items: list[InputItem], cfg: Config) -> dict:
    """Process the inputs of one shard; returns (and saves) its stats."""
    torch.set_num_threads(1)  # one Ray task per CPU
    out_dir = Path(out_dir)
    t0 = time.time()
    final = out_dir / shard_name(shard_index)
    clips, errors, media_seconds = [], [], 0.0
    data, prep = cfg.data, cfg.prep
    with atomic_path(final) as tmp, wds.TarWriter(str(tmp)) as sink:
        for item in items:
            p, err = probe(item.path)
            if err is None and not p.has_audio and prep.no_audio == "skip":
                err = ErrorRecord(item.path, "probe", "no audio stream (set prep.no_audio=silence to keep it)")
            if err is not None:
                errors.append(err.to_dict())
                continue
            media_seconds += p.video_end - p.video_start
            p = p.restricted(item.start, item.end)  # a manifest's sub-range, if any
            windows, err = plan_windows(p, data, prep)
            if err is not None:
                errors.append(err.to_dict())
                continue
            for clip, err in decode_clips(p, windows, data, prep):
                if err is not None:
                    errors.append(err.to_dict())
                    continue
                key = clip_key(item.index, clip.meta["window"])
                mel = None
                if prep.mel:
                    mel = log_mel(torch.from_numpy(clip.wave), sample_rate=data.sample_rate, n_mels=data.n_mels,
                                  hop_length=data.hop_length,
                                  win_length=data.win_length, fmax=data.fmax).numpy()
                meta = {**clip.meta, "caption": item.caption, "input_index": item.index}
                sink.write(encode_sample(key, clip.frames, clip.wave, meta, mel=mel, jpeg_quality=prep.jpeg_quality))
                clips.append({"key": key, "input": item.path, "window": clip.meta["window"],
                              "start": clip.meta["start"], "av_offset": clip.meta["av_offset"]})
    stats = {"shard": final.name, "shard_index": shard_index, "inputs": [asdict(i) for i in items],
             "clips": clips, "errors": errors, "num_clips": len(clips), "media_seconds": media_seconds,
             "clip_seconds": len(clips) * data.seconds, "seconds": time.time() - t0, **_digest(final)}
    write_json(stats_path(out_dir, shard_index), stats)
    return stats

