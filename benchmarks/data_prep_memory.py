"""Data-prep memory against corpus size (issue 14, item 5): the peak of the summed resident memory
of the driver and its Ray worker processes, sampled every 0.2 s, for a corpus and for 4x it,
with each video decoder. Memory must stay flat: the 4x peak within 10 % of the 1x peak.

    python benchmarks/data_prep_memory.py [--videos 6] [--seconds 10] [--backends pyav,decord]
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
sys.path.insert(0, str(ROOT / "tests"))

import psutil  # noqa: E402

from data_prep.run import _init_ray, run  # noqa: E402
from media_fixtures import write_benchmark_corpus  # noqa: E402
from svgen.config import load_config  # noqa: E402


class PeakRSS:
    """Samples the summed RSS of this process and every Ray worker ('ray::' processes)."""

    def __init__(self, interval: float = 0.2):
        self.interval, self.peak, self.worker_peak = interval, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        me = psutil.Process(os.getpid())
        while not self._stop.is_set():
            total, largest = me.memory_info().rss, 0
            for p in psutil.process_iter(["name", "cmdline"]):
                try:
                    title = " ".join(p.info["cmdline"] or []) or (p.info["name"] or "")
                    if title.startswith("ray::"):  # Ray's workers, busy or idle
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
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    try:
        src = write_benchmark_corpus(tmp / "in", 4 * args.videos, args.seconds, args.size)
        files = sorted(src.iterdir())
        _init_ray(None, 2)
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
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
