"""Shards in data_prep's layout written directly from synthetic clips (no Ray, no decoding): for
tests and benchmarks of what reads shards (the loader, training, fault injection)."""

from __future__ import annotations

import json
from pathlib import Path

from svgen.config import DataConfig
from svgen.data.synthetic import make_clip
from svgen.shards import STATS_SUFFIX, encode_sample, shard_name


def write_shards(folder: Path, shards: int = 4, per_shard: int = 2, seed: int = 0,
                 data: DataConfig | None = None) -> Path:
    """``shards`` tars of ``per_shard`` synthetic clips each, with stats files as data_prep
    writes them (sample counts), at ``data``'s geometry (default: 1 s, 8 fps, 64 px, 16 kHz: the
    tiny config's)."""
    import webdataset as wds

    data = data or DataConfig(seconds=1.0, size=64)
    folder.mkdir(parents=True, exist_ok=True)
    for s in range(shards):
        keys = []
        with wds.TarWriter(str(folder / shard_name(s))) as sink:
            for c in range(per_shard):
                clip = make_clip(data, seed * 1000 + s * per_shard + c)
                key = f"{s:06d}_{c:04d}"
                sink.write(encode_sample(key, clip.frames, clip.wave, {"caption": clip.caption}, jpeg_quality=90))
                keys.append(key)
        (folder / (shard_name(s) + STATS_SUFFIX)).write_text(json.dumps({"num_clips": per_shard, "keys": keys}))
    return folder
