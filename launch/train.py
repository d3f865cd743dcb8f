"""Train the joint model on prepared shards: one loop for every launcher.

    python launch/train.py --config configs/tiny.yaml --set train.source.shards=runs/demo/shards
    torchrun --nproc_per_node 8 launch/train.py --config configs/greatesthits.yaml --set train.source.shards=/data/gh
    deepspeed --num_gpus 8 launch/train.py --config ...
    srun python launch/train.py --config ...        # slurm/train.sbatch does this

--resume auto (default) continues from the latest checkpoint in train.out_dir, if any. SIGTERM or
SIGUSR1 make the run checkpoint and exit (Slurm preemption; train.sbatch requeues the job).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from launch._cli import add_config_args, config_from  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(ap)
    ap.add_argument("--resume", default="auto", help="'auto' (latest checkpoint if any), 'none', or a checkpoint dir")
    ap.add_argument("--stop-after", type=int, default=None, help="leave after N steps in this process (testing)")
    ap.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)  # deepspeed
    args = ap.parse_args(argv)
    cfg = config_from(args)
    if cfg is None:
        return 2
    from svgen.train.loop import train

    result = train(cfg, resume=args.resume, stop_after=args.stop_after)
    if result.get("weights"):
        print(f"trained weights: {result['weights']}")
    if result.get("run_id") and result.get("tracking_uri"):
        from svgen.tracking import run_ui_route

        print(f"MLflow run {result['run_id']} in {result['tracking_uri']}; in the UI (mlflow ui --backend-store-uri "
              f"{result['tracking_uri']}): http://127.0.0.1:5000/{run_ui_route(result['tracking_uri'], result['run_id'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
