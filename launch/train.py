"""Train the joint model on prepared shards: one loop for every launcher.

    python launch/train.py --config configs/tiny.yaml --set train.source.shards=runs/demo/shards
    torchrun --nproc_per_node 8 launch/train.py --config configs/greatesthits.yaml --set train.source.shards=/data/gh
    deepspeed --num_gpus 8 launch/train.py --config ...
    srun python launch/train.py --config ...        # slurm/train.sbatch does this

--resume auto (default) continues from the newest checkpoint in train.out_dir that verifies
(a damaged one is moved aside and the one before it is used), if any. SIGTERM or SIGUSR1 make the
run checkpoint and exit with status 75 (EX_TEMPFAIL: "requeue me"; slurm/train.sbatch does).

Exit status: 0 finished (weights exported), 75 preempted (checkpoint saved, resume), 2 a bad
config or command line, 1 a run that stopped on a fault (the message names it; checkpoints kept).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from launch._cli import add_config_args, config_from  # noqa: E402

EXIT_PREEMPTED = 75
"""EX_TEMPFAIL (sysexits.h): stopped by a signal after saving a checkpoint; run again to resume."""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(ap)
    ap.add_argument("--resume", default="auto",
                    help="'auto' (the newest checkpoint that verifies, if any), 'none' (start over; refused when "
                         "train.out_dir holds checkpoints), or a checkpoint folder")
    ap.add_argument("--stop-after", type=int, default=None, help="leave after N steps in this process (testing)")
    ap.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)  # deepspeed
    args = ap.parse_args(argv)
    cfg = config_from(args)
    if cfg is None:
        return 2
    from svgen.config import ConfigError
    from svgen.data.source import ShardError
    from svgen.models.bases import BaseModelError
    from svgen.tracking import TrackingError
    from svgen.train.checkpoint import CheckpointError
    from svgen.train.guards import TrainingError
    from svgen.train.loop import train
    from svgen.train.resume import ResumeError

    try:
        result = train(cfg, resume=args.resume, stop_after=args.stop_after)
    except (ConfigError, ShardError, BaseModelError, ResumeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (CheckpointError, TrainingError, TrackingError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if result.get("weights"):
        print(f"trained weights: {result['weights']}")
    if result.get("validation_error"):
        print(f"warning: the final validation failed ({result['validation_error']}); the weights are exported",
              file=sys.stderr)
    if result.get("run_id") and result.get("tracking_uri"):
        from svgen.tracking import check_reachable, run_ui_route

        try:
            check_reachable(result["tracking_uri"], timeout=3)  # not MLflow's minutes of retries
            route = run_ui_route(result["tracking_uri"], result["run_id"])
            print(f"MLflow run {result['run_id']} in {result['tracking_uri']}; in the UI (mlflow ui --backend-store-uri "
                  f"{result['tracking_uri']}): http://127.0.0.1:5000/{route}")
        except Exception as e:  # the store may be down by now: the run's result stands
            print(f"MLflow run {result['run_id']} in {result['tracking_uri']} (not reachable now: {type(e).__name__})")
    if str(result.get("reason", "")).startswith("stopped by"):
        print(f"{result['reason']} at step {result['step']}: checkpoint saved; run again to resume "
              f"(exit status {EXIT_PREEMPTED})", file=sys.stderr)
        return EXIT_PREEMPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
