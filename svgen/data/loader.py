"""Read the shards written by data_prep: decode without pickle, shuffle, split by node and by
worker; fail loudly (instead of hanging) when there are fewer shards than ranks x workers."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
import webdataset as wds

from svgen.data.source import ShardError, ShardSource, resolve_shards
from svgen.shards import LATENT_MEMBERS, decode_sample

__all__ = ["ClipStream", "DataPosition", "ShardError", "check_split", "collate", "endless", "make_loader"]


ARRAYS = ("frames", "wave", "mel") + tuple(name for name, _ in LATENT_MEMBERS)
"""Per-clip arrays a batch may carry (raw shards, or cached latents)."""


def check_split(num_shards: int, world_size: int, num_workers: int) -> None:
    need = world_size * max(1, num_workers)
    if num_shards < need:
        raise ShardError(f"{num_shards} shards cannot feed {world_size} ranks x {max(1, num_workers)} loader "
                         f"workers ({need} readers): some readers would get no data and the job would hang at "
                         f"the first collective. Write more, smaller shards (prep.inputs_per_shard) or lower "
                         f"the loader workers.")


class ClipStream(torch.utils.data.IterableDataset):
    """Clips of the shards assigned to this rank and loader worker, shuffled per epoch.

    Shards are split deterministically: the shard list is shuffled with (seed, epoch), identical on
    every rank, then rank r takes every world_size-th shard and worker w every num_workers-th of
    those. Samples are shuffled within a buffer.
    """

    def __init__(self, urls: list[str], rank: int = 0, world_size: int = 1, seed: int = 0,
                 shuffle_buffer: int = 64, epoch: int = 0):
        self.urls, self.rank, self.world_size = list(urls), rank, world_size
        self.seed, self.shuffle_buffer, self.epoch = seed, shuffle_buffer, epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def my_shards(self, worker: int, num_workers: int) -> list[str]:
        check_split(len(self.urls), self.world_size, num_workers)
        order = list(self.urls)
        random.Random(self.seed * 100003 + self.epoch).shuffle(order)
        return order[self.rank::self.world_size][worker::max(1, num_workers)]

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        shards = self.my_shards(worker, num_workers)
        rng = random.Random(hash((self.seed, self.epoch, self.rank, worker)))
        pipeline = wds.DataPipeline(
            wds.SimpleShardList(shards),
            wds.tarfile_to_samples(handler=wds.reraise_exception),
            wds.shuffle(self.shuffle_buffer, rng=rng) if self.shuffle_buffer > 1 else wds.map(lambda x: x),
            wds.map(decode_sample),
        )
        for s in pipeline:
            item = {"key": s["key"], "caption": s["meta"].get("caption", ""), "meta": s["meta"]}
            for name in ARRAYS:
                if name in s:
                    item[name] = torch.from_numpy(s[name])
            yield item


def collate(items: list[dict]) -> dict:
    out = {"key": [i["key"] for i in items], "caption": [i["caption"] for i in items], "meta": [i["meta"] for i in items]}
    for name in ARRAYS:
        if all(name in i for i in items):
            out[name] = torch.stack([i[name] for i in items])
    return out


def make_loader(source: ShardSource | str | Path, batch_size: int, rank: int = 0, world_size: int = 1,
                num_workers: int = 0, seed: int = 0, shuffle_buffer: int = 64, latents: bool = False,
                pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """Batches of this rank's share of ``source`` (a resolved source, or a path resolved with
    ``latents``). ``pin_memory`` (CUDA): page-locked batches, so the copy to the GPU can be
    asynchronous instead of waiting for the GPU's queue."""
    urls = list((source if isinstance(source, ShardSource) else resolve_shards(source, latents)).urls)
    check_split(len(urls), world_size, num_workers)  # in the main process: an error, not a hang
    ds = ClipStream(urls, rank, world_size, seed, shuffle_buffer)
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=num_workers, collate_fn=collate,
                                       drop_last=True, persistent_workers=False, pin_memory=pin_memory)


@dataclass
class DataPosition:
    """Where a run stands in its data: the epoch (it seeds the shuffle) and the batches of that
    epoch already trained on. Part of the resumable state (svgen.train.checkpoint)."""

    epoch: int = 0
    batches: int = 0


def endless(loader: torch.utils.data.DataLoader, position: DataPosition) -> Iterator[dict]:
    """Endless batches, a new shuffle each epoch, keeping ``position`` current. Started from a
    resumed position, it skips what the interrupted run already trained on (same seed and epoch
    give the same shuffle)."""
    epoch, skip = position.epoch, position.batches
    while True:
        loader.dataset.set_epoch(epoch)
        n = 0
        for i, batch in enumerate(loader):
            n += 1
            if i < skip:
                continue
            position.epoch, position.batches = epoch, i + 1
            yield batch
        if n == 0:
            raise ShardError("the shards yielded no full batch: lower train.batch_size or add data")
        epoch, skip = epoch + 1, 0
        position.epoch, position.batches = epoch, 0
