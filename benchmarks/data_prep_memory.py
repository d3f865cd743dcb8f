"""Data-prep memory (issues 14 and 21): the peak of the summed resident memory of the whole
process tree (the driver, Ray's workers, its GCS, raylet and agents: every process of the
embedded cluster), sampled every 0.2 s.

- against corpus size: a corpus and 4x it, with each video decoder; the 4x peak must stay within
  10 % of the 1x peak;
- against the length of one input (--lengths, minutes): one input of each length through one
  worker; windows are decoded in groups reached by seeking, so the peak must not grow with it.

    python benchmarks/data_prep_memory.py [--videos 6] [--seconds 10] [--backends pyav,decord]
    python benchmarks/data_prep_memory.py --lengths 2,10,30 --backends pyav --skip-corpus
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from data_prep.run import init_ray, run  # noqa: E402
from svgen.testing.media import write_benchmark_corpus  # noqa: E402
from svgen.config import load_config  # noqa: E402


class PeakRSS:
    """Samples the summed RSS of this process, its child processes (local workers) and every
    process of its embedded Ray cluster (workers, GCS, raylet, agents: their command lines name
    the cluster's temp folder), or, when attached elsewhere, every 'ray::' worker."""

    def __init__(self, interval: float = 0.2):
        self.interval, self.peak, self.worker_peak = interval, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        from data_prep.reaper import cluster_temp_dir

        me = psutil.Process(os.getpid())
        folder = cluster_temp_dir()
        while not self._stop.is_set():
            total, largest = me.memory_info().rss, 0
            try:
                children = {c.pid for c in me.children(recursive=True)}  # local worker processes
            except psutil.NoSuchProcess:
                children = set()
            for p in psutil.process_iter(["name", "cmdline"]):
                try:
                    title = " ".join(p.info["cmdline"] or []) or (p.info["name"] or "")
                    if p.pid != me.pid and (p.pid in children or title.startswith("ray::") or folder in title):
                        rss = p.memory_info().rss
                        total += rss
                        largest = max(largest, rss)
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
            self.peak, self.worker_peak = max(self.peak, total), max(self.worker_peak, largest)
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=6, help="inputs in the 1x corpus")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--backends", default="pyav,decord")
    ap.add_argument("--lengths", default="", help="minutes, comma list: one input of each length (e.g. 2,10,30)")
    ap.add_argument("--long-size", type=int, default=128, help="frame size of the long inputs (default 128 px)")
    ap.add_argument("--skip-corpus", action="store_true", help="only the input-length axis")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    try:
        init_ray(None, 2)
        if args.lengths:
            lengths(tmp, [float(x) for x in args.lengths.split(",")], args.long_size, args.backends.split(","))
        if not args.skip_corpus:
            corpus_sizes(tmp, args)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def lengths(tmp: Path, minutes: list[float], size: int, backends: list[str]) -> None:
    from svgen.testing.media import write_flash_click

    print(f"one input per length: {size}px 25fps h264 + 44.1 kHz aac, an event every 2.7 s; 1 Ray worker; "
          "output 4 s x 8 fps x 256 px")
    for backend in backends:
        peaks = {}
        for m in minutes:
            src = tmp / f"len{m:g}"
            src.mkdir(exist_ok=True)
            seconds = 60.0 * m
            write_flash_click(src / "long.mp4", [1.3 + 2.7 * k for k in range(int(seconds / 2.7) - 1)],
                              duration=seconds, size=size, fps=25, sample_rate=44100)
            cfg = load_config(ROOT / "configs" / "greatesthits.yaml", [f"prep.video_backend={backend}", "prep.workers=1"])
            t0 = time.perf_counter()
            with PeakRSS() as mem:
                s = run(str(src), str(tmp / f"outlen{m:g}_{backend}"), cfg, progress=False)
            peaks[m] = mem.peak
            print(f"{backend:6s} {m:4g} min ({s['clips_written']:4d} clips, {time.perf_counter() - t0:6.1f}s): peak "
                  f"summed RSS {mem.peak / 2**20:7.0f} MiB, largest process {mem.worker_peak / 2**20:6.0f} MiB",
                  flush=True)
            shutil.rmtree(src)
        first = minutes[0]
        print(f"{backend:6s} " + ", ".join(f"{m:g} / {first:g} min peak: {peaks[m] / peaks[first]:.2f}"
                                           for m in minutes[1:]))


def corpus_sizes(tmp: Path, args) -> None:
    src = write_benchmark_corpus(tmp / "in", 4 * args.videos, args.seconds, args.size)
    files = sorted(src.iterdir())
    print(f"inputs: {args.seconds:.0f}s {args.size}px 30fps h264 + aac; 2 Ray workers; default shard sizing")
    for backend in args.backends.split(","):
        peaks = {}
        for scale in (1, 4):
            corpus = tmp / f"c{scale}_{backend}"
            corpus.mkdir()
            for f in files[: scale * args.videos]:
                os.symlink(f, corpus / f.name)
            # Default shard sizing (a small corpus is spread over many shards): both workers are
            # busy at 1x too, so 4x differs only by more shards through the same worker processes.
            cfg = load_config(ROOT / "configs" / "greatesthits.yaml", [f"prep.video_backend={backend}"])
            t0 = time.perf_counter()
            with PeakRSS() as m:
                s = run(str(corpus), str(tmp / f"out{scale}_{backend}"), cfg, progress=False)
            peaks[scale] = m.peak
            print(f"{backend:6s} {scale}x ({scale * args.videos:3d} inputs, {s['clips_written']:4d} clips, "
                  f"{time.perf_counter() - t0:5.1f}s): peak summed RSS {m.peak / 2**20:7.0f} MiB, "
                  f"largest worker {m.worker_peak / 2**20:6.0f} MiB", flush=True)
        print(f"{backend:6s} 4x / 1x peak: {peaks[4] / peaks[1]:.2f}  (target <= 1.10)")


if __name__ == "__main__":
    main()
