"""Read the shards written by data_prep: decode without pickle, shuffle, split by node and by
worker; fail loudly (instead of hanging) when there are fewer shards than ranks x workers; a
damaged sample or shard is named (shard, sample, member) and, in training, skipped and counted."""

from __future__ import annotations

import json
import random
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
import webdataset as wds

from svgen.data.source import ShardError, ShardSource, resolve_shards
from svgen.shards import LATENT_MEMBERS, STATS_SUFFIX, SampleError, decode_sample

__all__ = ["Batches", "ClipStream", "DataPosition", "ShardError", "check_split", "collate", "describe_bad", "endless",
           "make_loader", "read_shard"]


ARRAYS = ("frames", "wave", "mel") + tuple(name for name, _ in LATENT_MEMBERS)
"""Per-clip arrays a batch may carry (raw shards, or cached latents)."""


def check_split(num_shards: int, world_size: int, num_workers: int) -> None:
    need = world_size * max(1, num_workers)
    if num_shards < need:
        raise ShardError(f"{num_shards} shards cannot feed {world_size} ranks x {max(1, num_workers)} loader "
                         f"workers ({need} readers): some readers would get no data and the job would hang at "
                         f"the first collective. Write more, smaller shards (prep.inputs_per_shard) or lower "
                         f"the loader workers.")


def _group_key(name: str) -> tuple[str, str]:
    """WebDataset's member naming: 'dir/000001_0000.video.jpgs' -> ('dir/000001_0000', 'video.jpgs')."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext


def _expected_samples(url: str) -> int | None:
    """The sample count data_prep recorded for a local shard (its stats file), if any."""
    stats = Path(url + STATS_SUFFIX)
    try:
        return int(json.loads(stats.read_text())["num_clips"]) if stats.is_file() else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def read_shard(url: str, allow_pipe: bool = False) -> Iterator[dict]:
    """The raw samples (``__key__`` + member bytes) of one shard, streamed, then nothing more.
    Damage becomes a record ``{"bad": {...}}`` in the stream instead of an exception: a tar that
    cannot be read on (truncated, corrupt), or that holds fewer samples than its data_prep stats
    say. ``pipe:`` URLs (a shell command) are opened only with ``allow_pipe``."""
    if url.startswith("pipe:"):
        if not allow_pipe:
            raise ShardError(f"shard URL {url[:120]!r} is a shell command: refused unless train.source.allow_pipe=true")
        stream = wds.gopen(url)
    else:
        try:
            stream = open(url, "rb")
        except OSError as e:
            yield {"bad": {"shard": url, "key": None, "error": f"cannot be opened ({e.strerror or e})"}}
            return
    current, sample, count, last = None, {}, 0, None
    try:
        with stream, tarfile.open(fileobj=stream, mode="r|*") as tf:
            for member in tf:
                if not member.isfile():
                    continue
                key, ext = _group_key(member.name)
                data = tf.extractfile(member).read()
                if key != current:
                    if sample:
                        yield sample
                        count += 1
                    current, sample = key, {"__key__": key, "__url__": url}
                sample[ext] = data
                last = member.name
            if sample:
                yield sample
                count += 1
                sample = {}
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        where = f"after member {last}" if last else "at its start"
        yield {"bad": {"shard": url, "key": current, "error": f"truncated or corrupt tar {where} ({type(e).__name__}: {e})"}}
        return
    expected = _expected_samples(url)
    if expected is not None and count < expected:
        yield {"bad": {"shard": url, "key": None,
                       "error": f"holds {count} samples, its data_prep stats say {expected} (truncated?)"}}


class ClipStream(torch.utils.data.IterableDataset):
    """Clips of the shards assigned to this rank and loader worker, shuffled per epoch.

    Shards are split deterministically: the shard list is shuffled with (seed, epoch), identical on
    every rank, then rank r takes every world_size-th shard and worker w every num_workers-th of
    those. Samples are shuffled within a buffer.

    Iterating yields clips and raises :class:`ShardError` at the first damaged sample or shard;
    :meth:`records` yields clips and ``{"bad": {...}}`` records instead (training skips those,
    up to train.source.max_bad_samples)."""

    def __init__(self, urls: list[str], *, rank: int = 0, world_size: int = 1, seed: int = 0,
                 shuffle_buffer: int = 64, epoch: int = 0, allow_pipe: bool = False):
        self.urls, self.rank, self.world_size = list(urls), rank, world_size
        self.seed, self.shuffle_buffer, self.epoch = seed, shuffle_buffer, epoch
        self.allow_pipe = allow_pipe

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def my_shards(self, worker: int, num_workers: int) -> list[str]:
        check_split(len(self.urls), self.world_size, num_workers)
        order = list(self.urls)
        random.Random(self.seed * 100003 + self.epoch).shuffle(order)
        return order[self.rank::self.world_size][worker::max(1, num_workers)]

    def records(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        rng = random.Random(hash((self.seed, self.epoch, self.rank, worker)))
        buffer: list[dict] = []
        for url in self.my_shards(worker, num_workers):
            for raw in read_shard(url, self.allow_pipe):
                if "bad" in raw:
                    yield raw
                    continue
                try:
                    s = decode_sample(raw)
                except SampleError as e:
                    yield {"bad": {"shard": url, "key": e.key, "member": e.member, "error": e.why}}
                    continue
                item = {"key": s["key"], "caption": s["meta"].get("caption", ""), "meta": s["meta"]}
                for name in ARRAYS:
                    if name in s:
                        item[name] = torch.from_numpy(s[name])
                if self.shuffle_buffer <= 1:
                    yield item
                    continue
                buffer.append(item)
                if len(buffer) >= self.shuffle_buffer:
                    i = rng.randrange(len(buffer))
                    buffer[i], buffer[-1] = buffer[-1], buffer[i]
                    yield buffer.pop()
        rng.shuffle(buffer)
        yield from buffer

    def __iter__(self) -> Iterator[dict]:
        for r in self.records():
            if "bad" in r:
                raise ShardError(describe_bad(r["bad"]))
            yield r


def describe_bad(b: dict) -> str:
    """One line naming the shard, the sample and the member of a damage record."""
    where = Path(b["shard"]).name if not b["shard"].startswith("pipe:") else b["shard"]
    if b.get("member"):
        return f"{where}: sample {b['key']}: {b['member']} {b['error']}"
    return f"{where}: {b['error']}" + (f" (in sample {b['key']})" if b.get("key") else "")


class Batches(torch.utils.data.IterableDataset):
    """Batches of ``batch_size`` clips of a :class:`ClipStream` (collated in the loader worker).
    With ``tolerant``, damage records ride along in ``batch["bad"]``; those after the last full
    batch come as a batch with no clips."""

    def __init__(self, stream: ClipStream, batch_size: int, tolerant: bool):
        self.stream, self.batch_size, self.tolerant = stream, batch_size, tolerant

    def set_epoch(self, epoch: int) -> None:
        self.stream.set_epoch(epoch)

    def __iter__(self) -> Iterator[dict]:
        items: list[dict] = []
        bad: list[dict] = []
        for r in (self.stream.records() if self.tolerant else self.stream):
            if "bad" in r:
                bad.append(r["bad"])
                continue
            items.append(r)
            if len(items) == self.batch_size:
                yield {**collate(items), "bad": bad}
                items, bad = [], []
        if bad:
            yield {"key": [], "caption": [], "meta": [], "bad": bad}


def collate(items: list[dict]) -> dict:
    out = {"key": [i["key"] for i in items], "caption": [i["caption"] for i in items], "meta": [i["meta"] for i in items]}
    for name in ARRAYS:
        if all(name in i for i in items):
            out[name] = torch.stack([i[name] for i in items])
    return out


def make_loader(source: ShardSource | str | Path, batch_size: int, *, rank: int = 0, world_size: int = 1,
                num_workers: int = 0, seed: int = 0, shuffle_buffer: int = 64, latents: bool = False,
                pin_memory: bool = False, tolerant: bool = False) -> torch.utils.data.DataLoader:
    """Batches of this rank's share of ``source`` (a resolved source, or a path resolved with
    ``latents``). ``pin_memory`` (CUDA): page-locked batches, so the copy to the GPU can be
    asynchronous instead of waiting for the GPU's queue. ``tolerant``: damaged samples and
    shards are skipped and reported in ``batch["bad"]`` (see :func:`endless`) instead of raising."""
    src = source if isinstance(source, ShardSource) else resolve_shards(source, latents)
    urls = list(src.urls)
    check_split(len(urls), world_size, num_workers)  # in the main process: an error, not a hang
    ds = Batches(ClipStream(urls, rank=rank, world_size=world_size, seed=seed, shuffle_buffer=shuffle_buffer,
                            allow_pipe=src.allow_pipe),
                 batch_size, tolerant)
    return torch.utils.data.DataLoader(ds, batch_size=None, num_workers=num_workers,
                                       persistent_workers=False, pin_memory=pin_memory)


@dataclass
class DataPosition:
    """Where a run stands in its data: the epoch (it seeds the shuffle) and the batches of that
    epoch already trained on. Part of the resumable state (svgen.train.checkpoint)."""

    epoch: int = 0
    batches: int = 0


def endless(loader: torch.utils.data.DataLoader, position: DataPosition,
            on_bad: Callable[[list[dict]], None] | None = None) -> Iterator[dict]:
    """Endless batches, a new shuffle each epoch, keeping ``position`` current. Started from a
    resumed position, it skips what the interrupted run already trained on (same seed and epoch
    give the same shuffle); damage records of the batches it skips were counted before and are
    not reported again. ``on_bad`` gets the damage records of each new batch (tolerant loaders)."""
    epoch, skip = position.epoch, position.batches
    while True:
        loader.dataset.set_epoch(epoch)
        n = damaged = 0
        for i, batch in enumerate(loader):
            damaged += len(batch.get("bad") or [])
            if i < skip:
                if batch["key"]:
                    n += 1
                continue
            position.epoch, position.batches = epoch, i + 1
            if batch.get("bad") and on_bad is not None:
                on_bad(batch["bad"])
            if not batch["key"]:
                continue
            n += 1
            yield batch
        if n == 0:
            why = f" ({damaged} damaged samples or shards were skipped)" if damaged else ""
            raise ShardError(f"the shards yielded no full batch{why}: lower train.batch_size (or the ranks x loader "
                             "workers that share the data) or add data")
        epoch, skip = epoch + 1, 0
        position.epoch, position.batches = epoch, 0
