"""Write one shard: every input of the shard through the stages, clips into a WebDataset tar.

The tar is written under a temporary name and renamed when complete; the stats JSON, written
last and also atomically, is the proof that the shard is finished (a re-run skips it).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import asdict
from pathlib import Path

import torch
import webdataset as wds

from data_prep.inputs import InputItem
from data_prep.stages import decode_clips, error, plan_windows, probe
from svgen.config import Config
from svgen.shards import STATS_SUFFIX, clip_key, encode_sample, log_mel, shard_name


def stats_path(out_dir: Path, shard_index: int) -> Path:
    return out_dir / (shard_name(shard_index) + STATS_SUFFIX)


def is_finished(out_dir: Path, shard_index: int) -> bool:
    return stats_path(out_dir, shard_index).is_file() and (out_dir / shard_name(shard_index)).is_file()


def _tmp_name(path: Path) -> Path:
    # Unique per writer: a task orphaned by a killed driver may still be writing the same shard
    # while a re-run writes it again; each writes its own file and the rename is atomic.
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def _atomic_json(path: Path, obj) -> None:
    tmp = _tmp_name(path)
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def write_shard(out_dir: str | Path, shard_index: int, items: list[InputItem], cfg: Config) -> dict:
    """Process the inputs of one shard; returns (and saves) its stats."""
    torch.set_num_threads(1)  # one Ray task per CPU
    out_dir = Path(out_dir)
    t0 = time.time()
    final = out_dir / shard_name(shard_index)
    tmp = _tmp_name(final)
    clips, errors, media_seconds = [], [], 0.0
    data, prep = cfg.data, cfg.prep
    with wds.TarWriter(str(tmp)) as sink:
        for item in items:
            p, err = probe(item.path)
            if err is None and not p.has_audio and prep.no_audio == "skip":
                err = error(item.path, "probe", "no audio stream (set prep.no_audio=silence to keep it)")
            if err is not None:
                errors.append(err)
                continue
            media_seconds += p.video_end - p.video_start
            if item.start is not None or item.end is not None:  # manifest sub-range
                p.video_start = max(p.video_start, item.start or p.video_start)
                p.video_end = min(p.video_end, item.end if item.end is not None else p.video_end)
            windows, err = plan_windows(p, data, prep)
            if err is not None:
                errors.append(err)
                continue
            for clip, err in decode_clips(p, windows, data, prep):
                if err is not None:
                    errors.append(err)
                    continue
                key = clip_key(item.index, clip.meta["window"])
                mel = None
                if prep.mel:
                    mel = log_mel(torch.from_numpy(clip.wave), data.sample_rate, data.n_mels, data.hop_length,
                                  data.win_length, data.fmax).numpy()
                meta = {**clip.meta, "caption": item.caption, "input_index": item.index}
                sink.write(encode_sample(key, clip.frames, clip.wave, meta, mel))
                clips.append({"key": key, "input": item.path, "window": clip.meta["window"],
                              "start": clip.meta["start"], "av_offset": clip.meta["av_offset"]})
    os.replace(tmp, final)
    stats = {"shard": final.name, "shard_index": shard_index, "inputs": [asdict(i) for i in items],
             "clips": clips, "errors": errors, "num_clips": len(clips), "media_seconds": media_seconds,
             "clip_seconds": len(clips) * data.seconds, "seconds": time.time() - t0, "bytes": final.stat().st_size}
    _atomic_json(stats_path(out_dir, shard_index), stats)
    return stats

