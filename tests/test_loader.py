"""The shard reader: node/worker splits, shuffling, and a clear error instead of a hang."""

import pytest
import torch

from data_prep.run import run
from svgen.config import load_config
from svgen.data.loader import ClipStream, ShardError, check_split, make_loader
from svgen.data.source import resolve_shards

from .conftest import TINY
from svgen.testing.media import write_flash_click


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("loader")
    src = root / "in"
    src.mkdir()
    for i in range(6):
        write_flash_click(src / f"v{i}.mp4", [0.5], duration=2.1)
    cfg = load_config(TINY, ["prep.inputs_per_shard=1", "prep.workers=2", "prep.mel=false"])
    run(str(src), str(root / "out"), cfg, progress=False)
    return root / "out"


@pytest.mark.multiprocess
def test_split_by_node_and_worker_is_a_partition(shards):
    urls = list(resolve_shards(shards).urls)
    assert len(urls) == 6
    parts = [ClipStream(urls, rank=r, world_size=2, seed=3).my_shards(w, 3) for r in range(2) for w in range(3)]
    flat = [u for p in parts for u in p]
    assert sorted(flat) == sorted(urls) and all(len(p) == 1 for p in parts)
    # Every rank computes the same shard order for an epoch; a new epoch reshuffles.
    a = ClipStream(urls, seed=3, epoch=0).my_shards(0, 1)
    assert a == ClipStream(urls, seed=3, epoch=0).my_shards(0, 1)
    assert a != ClipStream(urls, seed=3, epoch=1).my_shards(0, 1)


@pytest.mark.multiprocess
def test_each_clip_once_per_epoch_with_workers(shards):
    loader = make_loader(shards, batch_size=1, num_workers=2, shuffle_buffer=4)
    keys = [k for b in loader for k in b["key"]]
    assert len(keys) == len(set(keys)) == 12  # 6 videos x 2 windows
    batch = next(iter(make_loader(shards, batch_size=2)))
    assert batch["frames"].shape == (2, 8, 64, 64, 3) and batch["frames"].dtype == torch.uint8
    assert batch["wave"].shape == (2, 16000) and "mel" not in batch


@pytest.mark.multiprocess
def test_fewer_shards_than_readers_is_an_error_not_a_hang(shards):
    with pytest.raises(ShardError, match="6 shards cannot feed 4 ranks x 2"):
        make_loader(shards, batch_size=1, rank=0, world_size=4, num_workers=2)
    check_split(6, 3, 2)  # exactly enough is fine


def test_missing_shards(tmp_path):
    with pytest.raises(ShardError, match="no shard-"):
        resolve_shards(tmp_path)
