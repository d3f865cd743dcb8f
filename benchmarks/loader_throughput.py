"""Shard size and loader throughput, JPEG frames against raw arrays (issue 14, item 7).

Preps one synthetic corpus twice at the paper's clip geometry (4 s, 8 fps, 256 px, 16 kHz), with
``prep.jpeg_quality=90`` (the default) and ``=0`` (raw), then reads every shard through the
training loader (decode included) with 0 and 2 worker processes. The H100 step consumes 8.2
samples/s at batch 8 (issue 13's table); the loader should deliver at least 10x that.

    python benchmarks/loader_throughput.py [--videos 16] [--seconds 12]
    python benchmarks/loader_throughput.py --input ../shared/media/video     # real footage, JPEG only

Synthetic frames are flat and compress far better than footage (their JPEGs are several times
smaller), so the real-footage mode is the figure to trust: it reports the loader per worker count.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from data_prep.run import run  # noqa: E402
from svgen.testing.media import write_benchmark_corpus  # noqa: E402
from svgen.config import load_config  # noqa: E402
from svgen.data.loader import make_loader  # noqa: E402

H100_SAMPLES_PER_S = 8.2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=12.0)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--input", default=None, help="a folder of real videos (JPEG shards only, workers 0, 1, 2)")
    ap.add_argument("--stride", type=float, default=0.5, help="window stride for --input (seconds; short clips)")
    ap.add_argument("--samples", type=int, default=480, help="clips a loader reads in --input mode (the shards "
                                                            "are listed as often as needed)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp())
    try:
        if args.input:
            real_footage(Path(args.input), tmp, args)
            return
        src = write_benchmark_corpus(tmp / "in", args.videos, args.seconds, 320)
        print(f"{args.videos} inputs of {args.seconds:.0f}s -> clips of 4 s x 8 fps x 256 px; batch {args.batch_size}")
        for quality in (90, 0):
            out = tmp / f"q{quality}"
            cfg = load_config(ROOT / "configs" / "greatesthits.yaml", [f"prep.jpeg_quality={quality}"])
            s = run(str(src), str(out), cfg, progress=False)
            size = sum(p.stat().st_size for p in out.glob("shard-*.tar"))
            label = f"jpeg q{quality}" if quality else "raw"
            print(f"{label:8s}: {s['clips_written']} clips, {size / s['clips_written'] / 2**20:.2f} MiB per clip")
            for workers in (0, 2):
                loader = make_loader(out, args.batch_size, num_workers=workers, seed=0)
                t0, n = time.perf_counter(), 0
                for _ in range(2):  # two epochs: the second without cold caches
                    for batch in loader:
                        n += batch["frames"].shape[0]
                rate = n / (time.perf_counter() - t0)
                print(f"          loader, {workers} workers: {rate:7.1f} clips/s = {rate / H100_SAMPLES_PER_S:5.1f}x "
                      f"the H100 step's {H100_SAMPLES_PER_S} samples/s", flush=True)
    finally:
        import ray

        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


def real_footage(src: Path, tmp: Path, args) -> None:
    """Real clips sharded with the default JPEG frames (overlapping windows, so short clips give
    enough samples), then read through the loader with 0, 1 and 2 workers. The shard list repeats
    the shards so one pass holds at least --samples clips: the steady rate (after the first batch)
    is what a long epoch sees, and the wait for the first batch (worker start-up) is reported
    apart, since it is paid once an epoch."""
    out = tmp / "real"
    cfg = load_config(ROOT / "configs" / "greatesthits.yaml", [f"prep.stride={args.stride}", "prep.min_shards=4"])
    s = run(str(src), str(out), cfg, progress=False)
    shards = sorted(out.glob("shard-*.tar"))
    size = sum(p.stat().st_size for p in shards)
    clips = max(s["clips_written"], 1)
    repeat = max(1, -(-args.samples // clips))
    listing = tmp / "repeated.txt"
    listing.write_text("".join(f"{p}\n" for _ in range(repeat) for p in shards))
    print(f"real footage {src}: {s['clips_written']} clips (4 s x 8 fps x 256 px), "
          f"{size / clips / 2**20:.2f} MiB per clip as JPEG; batch {args.batch_size}; "
          f"{repeat} passes over the shards = {repeat * clips} clips a run")
    for workers in (0, 1, 2):
        loader = make_loader(listing, args.batch_size, num_workers=workers, seed=0)
        t0, n, first = time.perf_counter(), 0, None
        for b in loader:
            if first is None:
                first = time.perf_counter()
            else:
                n += b["frames"].shape[0]
        rate = n / (time.perf_counter() - first)
        print(f"  loader, {workers} workers: {rate:7.1f} clips/s = {rate / H100_SAMPLES_PER_S:5.1f}x the H100 step's "
              f"{H100_SAMPLES_PER_S} samples/s (steady, {n} clips); first batch after {first - t0:.2f} s", flush=True)


if __name__ == "__main__":
    main()
