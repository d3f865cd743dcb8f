"""The controlled ablation of issue 12: does CMC-PE (and timestep adjustment) teach sync?

    python -m launch.ablation make-data --out runs/ablation/data [--train 240 --test 60]

make-data writes the synthetic "hits" corpus (launch/ablation/hits.py): a train and a test split
from different seeds, each as mp4 clips (H.264 + AAC) with the ground-truth impact times in
impacts.json, then shards each split with the real data prep (data_prep.run, Ray on this
machine). Finished work is skipped on a rerun: a complete split is not written again, and data
prep skips shards it has already written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from launch.ablation.hits import MEDIA, Spec, write_split

ROOT = Path(__file__).resolve().parents[2]
TEST_SEED_OFFSET = 1_000_003  # the test split never shares a clip seed with the train split


def prep_config(spec: Spec, workers: int):
    from svgen.config import load_config

    return load_config(ROOT / "configs" / "tiny.yaml", [
        f"data.seconds={spec.seconds}", f"data.fps={spec.fps}", f"data.size={spec.size}",
        f"data.sample_rate={spec.sample_rate}", f"prep.workers={workers}", "prep.min_shards=1"])


def make_data(out: Path, n_train: int, n_test: int, seed: int, spec: Spec, prep: bool = True, workers: int = 2,
              progress: bool = True) -> dict[str, Path]:
    """Both splits under ``out`` (train/, test/), sharded unless ``prep`` is False; returns the
    shard folders (or the clip folders without prep)."""
    splits = {"train": (n_train, seed), "test": (n_test, seed + TEST_SEED_OFFSET)}
    result = {}
    for name, (n, split_seed) in splits.items():
        folder = out / name
        write_split(folder, n, split_seed, spec, MEDIA, progress=progress)
        result[name] = folder / "clips"
        if prep:
            from data_prep.run import run as run_prep

            run_prep(str(folder / "list.csv"), str(folder / "shards"), prep_config(spec, workers), progress=progress)
            result[name] = folder / "shards"
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m launch.ablation", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    mk = sub.add_parser("make-data", help="write and shard the synthetic hits corpus (train and test splits)")
    mk.add_argument("--out", default="runs/ablation/data", help="folder for train/ and test/ (default: %(default)s)")
    mk.add_argument("--train", type=int, default=240, help="train clips (default: %(default)s)")
    mk.add_argument("--test", type=int, default=60, help="test clips (default: %(default)s)")
    mk.add_argument("--seed", type=int, default=0, help="train split seed; the test split uses another (default: %(default)s)")
    mk.add_argument("--seconds", type=float, default=Spec.seconds, help="clip length (default: %(default)s)")
    mk.add_argument("--fps", type=int, default=Spec.fps, help="frame rate (default: %(default)s)")
    mk.add_argument("--size", type=int, default=Spec.size, help="frame side in pixels (default: %(default)s)")
    mk.add_argument("--max-hits", type=int, default=Spec.max_hits, help="impacts per clip, 0 to this (default: %(default)s)")
    mk.add_argument("--workers", type=int, default=2, help="Ray workers of data prep (default: %(default)s)")
    mk.add_argument("--no-prep", action="store_true", help="write the clips only, no shards")
    args = ap.parse_args(argv)
    if args.command == "make-data":
        if min(args.train, args.test) < 1:
            ap.error("--train and --test need at least one clip each")
        spec = Spec(seconds=args.seconds, fps=args.fps, size=args.size, max_hits=args.max_hits)
        for name, path in make_data(Path(args.out), args.train, args.test, args.seed, spec, not args.no_prep,
                                    args.workers).items():
            print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
