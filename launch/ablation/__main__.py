"""The controlled ablation of issue 12: does CMC-PE (and timestep adjustment) teach sync?

    python -m launch.ablation make-data --out runs/ablation/data [--train 240 --test 60]
    python -m launch.ablation make-bases --data runs/ablation/data --out runs/ablation/bases
    python -m launch.ablation run --out runs/ablation           # everything below, then the report
    python -m launch.ablation run --smoke --out /tmp/ablation   # every stage at toy size (CI)

make-data writes the synthetic "hits" corpus (launch/ablation/hits.py): a train and a test split
from different seeds, each as mp4 clips (H.264 + AAC) with the ground-truth impact times in
impacts.json, then shards each split with the real data prep (data_prep.run, Ray on this
machine). make-bases pre-trains the tiny audio and video bases on the train shards, each alone
(launch/ablation/bases.py), into the diffusers layout that configs/ablation.yaml points at.
On the 2-core CI machine make-data takes about 75 s for 300 clips; make-bases at its defaults
about 22 min (measured per step at batch 8: mel VAE 0.24 s, image VAE 0.09 s on 32 frames,
audio UNet 0.21 s, video UNet 0.34 s).
Finished work is skipped on a rerun: a complete split is not written again, data prep skips
shards it has already written, and bases whose bases.json matches the request are kept.

run does it all (launch/ablation/experiment.py): the corpus and the bases under --out, then each
variant (independent, xattn_pooled, xattn_seq, cmcpe) trained with each seed, sampled on the
test prompts with gamma 1 and 1.5 (CMC-PE also with a sweep), measured (AV-Align, onset-impact
timing error, match rates, held-out denoising losses) next to the real clips' ceiling and floor.
It writes results.json, results.md and results.png under --out; every variant x seed is an
MLflow run of the experiment 'ablation' in --out/mlflow.db (mlflow ui --backend-store-uri
sqlite:///DIR/mlflow.db). Each stage's result is written last and skipped on a rerun.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

from launch.ablation.hits import MEDIA, Spec, write_split

ROOT = Path(__file__).resolve().parents[2]
TEST_SEED_OFFSET = 1_000_003  # the test split never shares a clip seed with the train split


CONFIG = ROOT / "configs" / "ablation.yaml"


def spec_overrides(spec: dict) -> list[str]:
    """Config overrides giving the clip geometry of a corpus spec (hits.Spec as a dict)."""
    return [f"data.{k}={spec[k]}" for k in ("seconds", "fps", "size", "sample_rate")]


def bases_overrides(bases: Path) -> list[str]:
    """Config overrides pointing the model at the ablation's bases under ``bases``."""
    return [f"model.audio.path={bases / 'audioldm'}", f"model.video.path={bases / 'sd15'}",
            f"model.video.motion_adapter_path={bases / 'motion_adapter'}"]


def prep_config(spec: Spec, workers: int):
    from svgen.config import load_config

    return load_config(CONFIG, spec_overrides(asdict(spec)) + [f"prep.workers={workers}", "prep.min_shards=1"])


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


def make_bases(data: Path, out: Path, vae_steps: int, unet_steps: int, width: int = 16, seed: int = 0,
               batch_size: int = 8, unet_lr: float = 5e-4) -> Path:
    """Tiny bases pre-trained on ``data``/train/shards under ``out`` (audioldm/, sd15/,
    motion_adapter/), with what was done in out/bases.json, written last: a matching one means
    the bases are complete and they are left as they are."""
    import torch

    from svgen.config import load_config
    from svgen.data.loader import make_loader
    from svgen.fileio import write_json
    from svgen.models.tiny import build_tiny_bases

    from launch.ablation.bases import pretrain_autoencoders, pretrain_denoisers

    truth = data / "train" / "impacts.json"
    if not truth.is_file():
        raise FileNotFoundError(f"{truth} is missing: run python -m launch.ablation make-data --out {data} first")
    spec = json.loads(truth.read_text())["spec"]
    cfg = load_config(CONFIG, bases_overrides(out) + spec_overrides(spec))
    want = {"data": str(data.resolve()), "vae_steps": vae_steps, "unet_steps": unet_steps, "width": width,
            "seed": seed, "batch_size": batch_size, "spec": spec, "unet_lr": unet_lr,
            "prediction": [cfg.model.audio.schedule.prediction_type, cfg.model.video.schedule.prediction_type]}
    record = out / "bases.json"
    if record.is_file():
        if {k: json.loads(record.read_text()).get(k) for k in want} == want:
            return record
        record.unlink()  # stale: the bases are about to be rebuilt, and an interrupted rebuild is not complete
    t0 = time.time()
    bases = build_tiny_bases(out, n_mels=64, sample_rate=spec["sample_rate"], width=width, seed=seed)
    torch.manual_seed(seed)
    batches = list(make_loader(data / "train" / "shards", batch_size, seed=seed))  # small: kept in memory
    print(f"make-bases: {len(batches)} batches of {batch_size} clips; autoencoders {vae_steps} steps, "
          f"UNets {unet_steps} steps", flush=True)
    fits = pretrain_autoencoders(bases["audio"], bases["video"], batches, cfg.data, vae_steps, seed)
    fits |= {f"unet_{k}": v for k, v in pretrain_denoisers(cfg, batches, unet_steps, seed, unet_lr).items()}
    write_json(record, {**want, "seconds": time.time() - t0, "fits": {k: asdict(v) for k, v in fits.items()}}, indent=1)
    return record


def _plan():
    from launch.ablation.experiment import Plan

    return Plan()


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
    mb = sub.add_parser("make-bases", help="pre-train the tiny audio and video bases on the corpus' train split")
    mb.add_argument("--data", default="runs/ablation/data", help="make-data's --out (default: %(default)s)")
    mb.add_argument("--out", default="runs/ablation/bases", help="where the bases go (default: %(default)s, "
                                                                  "as configs/ablation.yaml expects)")
    mb.add_argument("--vae-steps", type=int, default=600, help="autoencoder steps, each base (default: %(default)s)")
    mb.add_argument("--unet-steps", type=int, default=2000, help="UNet steps, each base (default: %(default)s)")
    mb.add_argument("--width", type=int, default=16, help="UNet base width (default: %(default)s)")
    mb.add_argument("--batch-size", type=int, default=8, help="clips per step (default: %(default)s)")
    mb.add_argument("--seed", type=int, default=0)
    rn = sub.add_parser("run", help="the whole ablation: corpus, bases, variants x seeds, samples, measures, report")
    rn.add_argument("--out", default="runs/ablation", help="everything goes here (default: %(default)s)")
    rn.add_argument("--smoke", action="store_true", help="every stage at toy size, in minutes: checks the plumbing, "
                                                         "not the result")
    rn.add_argument("--seeds", type=int, help="seeds per variant (default: 3; smoke 1)")
    rn.add_argument("--train-steps", type=int, help="joint training steps per variant x seed (default: %d)"
                    % _plan().train_steps)
    rn.add_argument("--unet-steps", type=int, help="base UNet pre-training steps (default: %d)" % _plan().unet_steps)
    rn.add_argument("--samples", type=int, help="test prompts sampled per variant x gamma x seed (default: %d)"
                    % _plan().samples)
    rn.add_argument("--workers", type=int, default=2, help="Ray workers of data prep (default: %(default)s)")
    args = ap.parse_args(argv)
    if args.command == "run":
        from dataclasses import replace

        from launch.ablation.experiment import Plan, run

        plan = Plan.smoke() if args.smoke else Plan()
        given = {"seeds": args.seeds, "train_steps": args.train_steps, "unet_steps": args.unet_steps,
                 "samples": args.samples}
        for key, value in given.items():
            if value is not None and value < 1:
                ap.error(f"--{key.replace('_', '-')} must be >= 1 (got {value})")
        if args.seeds is not None:
            given["seeds"] = tuple(range(args.seeds))
        plan = replace(plan, **{k: v for k, v in given.items() if v is not None})
        outcome = run(Path(args.out), plan, workers=args.workers)
        print((Path(args.out) / "results.md").read_text())
        for kind, path in outcome.files.items():
            print(f"{kind}: {path}")
        return 0
    if args.command == "make-bases":
        record = make_bases(Path(args.data), Path(args.out), args.vae_steps, args.unet_steps, args.width, args.seed,
                            args.batch_size)
        print(f"bases: {record.parent} ({record.name})")
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
