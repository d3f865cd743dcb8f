"""The controlled ablation (issues 12 and 20): does CMC-PE teach sync, against live
cross-attention baselines, measured against chance?

    python -m experiments.ablation run --media SOUNDS --out runs/ablation          # everything, then the report
    python -m experiments.ablation run --media SOUNDS --out /tmp/abl --smoke       # every stage at toy size (CI)
    python -m experiments.ablation run --media SOUNDS --out runs/abl0 --block 0    # bases seed 0 and joint seeds 0-1
    python -m experiments.ablation save-block --out runs/abl0 --block 0 --to saved/block0
    python -m experiments.ablation run --media SOUNDS --out runs/abl1 --block 1 --with saved/block0   # report: both
    python -m experiments.ablation probe --out runs/abl0                          # what each context carries
    python -m experiments.ablation make-data --media SOUNDS --out runs/ablation/data
    python -m experiments.ablation make-bases --data runs/ablation/data --out runs/ablation/bases/seed0

SOUNDS is a folder with the corpus' one-shot recordings (see --help of make-data). make-data
writes the synthetic "hits" corpus (hits.py): a train and a test split from different seeds, mp4
clips with the ground-truth impact times in impacts.json, sharded by the real data prep (Ray).
make-bases pre-trains the tiny audio and video bases on the train shards, each alone (bases.py),
in the diffusers layout. run does both, then trains every variant (stages.py) with every joint
seed, measures held-out losses and samples (measures.py), and writes results.json, results.md
and results.png (report.py) under --out; every variant x seed is an MLflow run of the experiment
'ablation' in --out/mlflow.db. Each stage's result is written last and skipped on a rerun; each
joint seed is finished (trained, sampled, measured) before the next. The work splits into blocks,
one per bases seed (blocks.py), for machines or sessions that cannot run it all at once.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from experiments.ablation.hits import SOUNDS_HELP, Spec
from experiments.ablation.stages import Plan


def _plan_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--smoke", action="store_true", help="every stage at toy size: checks the plumbing, not the result")
    parser.add_argument("--seeds", type=int, help=f"joint-training seeds (default: {len(Plan().seeds)}; smoke 1)")
    parser.add_argument("--bases-seeds", type=int, help=f"bases seeds (default: {len(Plan().bases_seeds)}; smoke 1); "
                                                        "the joint seeds are split evenly over them")
    parser.add_argument("--train-steps", type=int,
                        help=f"joint training steps per variant x seed (default: {Plan().train_steps})")
    parser.add_argument("--unet-steps", type=int, help=f"base UNet pre-training steps (default: {Plan().unet_steps})")
    parser.add_argument("--samples", type=int,
                        help=f"test prompts sampled per variant x gamma x seed (default: {Plan().samples})")


def _plan(ap: argparse.ArgumentParser, args) -> Plan:
    plan = Plan.smoke() if args.smoke else Plan()
    given = {"seeds": args.seeds, "bases_seeds": args.bases_seeds, "train_steps": args.train_steps,
             "unet_steps": args.unet_steps, "samples": args.samples}
    for key, value in given.items():
        if value is not None and value < 1:
            ap.error(f"--{key.replace('_', '-')} must be >= 1 (got {value})")
    for key in ("seeds", "bases_seeds"):
        if given[key] is not None:
            given[key] = tuple(range(given[key]))
    plan = replace(plan, **{k: v for k, v in given.items() if v is not None})
    if len(plan.seeds) < len(plan.bases_seeds):
        ap.error(f"--seeds ({len(plan.seeds)}) must be at least --bases-seeds ({len(plan.bases_seeds)})")
    return plan


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.ablation", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    mk = sub.add_parser("make-data", help="write and shard the synthetic hits corpus (train and test splits)")
    mk.add_argument("--media", required=True, type=Path, help=SOUNDS_HELP)
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
    mb.add_argument("--out", default="runs/ablation/bases/seed0", help="where the bases go (default: %(default)s)")
    mb.add_argument("--vae-steps", type=int, default=600, help="autoencoder steps, each base (default: %(default)s)")
    mb.add_argument("--unet-steps", type=int, default=2000, help="UNet steps, each base (default: %(default)s)")
    mb.add_argument("--width", type=int, default=16, help="UNet base width (default: %(default)s)")
    mb.add_argument("--batch-size", type=int, default=8, help="clips per step (default: %(default)s)")
    mb.add_argument("--seed", type=int, default=0)
    rn = sub.add_parser("run", help="the whole ablation: corpus, bases, variants x seeds, samples, measures, report")
    rn.add_argument("--media", required=True, type=Path, help=SOUNDS_HELP)
    rn.add_argument("--out", default="runs/ablation", help="everything goes here (default: %(default)s)")
    _plan_arguments(rn)
    rn.add_argument("--block", type=int, help="run one block only: bases seed number BLOCK (0-based) and its share of "
                                              "the joint seeds (the report covers what is there)")
    rn.add_argument("--with", dest="imports", type=Path, action="append", default=[], metavar="FOLDER",
                    help="a block saved by save-block (same plan and corpus) whose results join the report; repeatable")
    rn.add_argument("--workers", type=int, default=2, help="Ray workers of data prep (default: %(default)s)")
    sb = sub.add_parser("save-block", help="keep a finished block's results (rows, liveness, times; JSON only) in a "
                                           "folder that run --with brings into another run")
    sb.add_argument("--out", default="runs/ablation", help="the run's folder (default: %(default)s)")
    sb.add_argument("--block", type=int, required=True, help="which block (bases seed number, 0-based)")
    sb.add_argument("--to", type=Path, required=True, help="a new folder for the saved block")
    _plan_arguments(sb)
    pr = sub.add_parser("probe", help="what each trained variant's cross-modal context carries: how much the "
                                      "environment encoders' pooled features vary in time and differ between "
                                      "clips of the same material (writes probe.json under --out)")
    pr.add_argument("--out", default="runs/ablation", help="the run's folder (default: %(default)s)")
    pr.add_argument("--clips", type=int, help="test clips per variant x seed (default: 16, or all the test clips "
                                              "when fewer); a variant x seed already probed is read back")
    _plan_arguments(pr)
    args = ap.parse_args(argv)
    if args.command == "probe":
        from dataclasses import asdict

        from experiments.ablation.probe import probe

        if args.clips is not None and args.clips < 2:
            ap.error(f"--clips must be >= 2: each clip is compared with another of its material (got {args.clips})")
        plan = _plan(ap, args)
        try:
            probe(Path(args.out), plan, asdict(Spec(seconds=plan.seconds)), clips=args.clips)
        except FileNotFoundError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"probe: {Path(args.out) / 'probe.json'}")
        return 0
    if args.command in ("run", "save-block"):
        plan = _plan(ap, args)
        if args.block is not None and not 0 <= args.block < len(plan.bases_seeds):
            ap.error(f"--block {args.block} does not exist: the plan has {len(plan.bases_seeds)} bases seeds, so "
                     f"blocks 0 to {len(plan.bases_seeds) - 1}")
    if args.command == "save-block":
        from experiments.ablation.blocks import save_block

        try:
            files = save_block(Path(args.out), plan, args.block, args.to)
        except (FileNotFoundError, FileExistsError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"saved block {args.block}: {len(files)} files in {args.to}")
        return 0
    if args.command == "run":
        from experiments.ablation.experiment import run

        outcome = run(Path(args.out), plan, args.media, workers=args.workers, block=args.block,
                      imports=tuple(args.imports))
        print((Path(args.out) / "results.md").read_text())
        for kind, path in outcome.files.items():
            print(f"{kind}: {path}")
        return 0
    if args.command == "make-bases":
        from experiments.ablation.stages import make_bases

        record = make_bases(Path(args.data), Path(args.out), args.vae_steps, args.unet_steps, args.width, args.seed,
                            args.batch_size)
        print(f"bases: {record.parent} ({record.name})")
    if args.command == "make-data":
        from experiments.ablation.stages import make_data

        if min(args.train, args.test) < 1:
            ap.error("--train and --test need at least one clip each")
        spec = Spec(seconds=args.seconds, fps=args.fps, size=args.size, max_hits=args.max_hits)
        for name, path in make_data(Path(args.out), args.train, args.test, args.seed, spec, args.media,
                                    not args.no_prep, args.workers).items():
            print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
