"""Score generated sounding videos against real clips and log the results to MLflow.

    python launch/eval.py --generated runs/samples --config configs/greatesthits.yaml \
        --reference data/greatesthits_test_shards \
        --set eval.metrics=[av_align,fad_vggish,fd_panns,fvd,kvd] \
        --set eval.vggish_path=checkpoints/eval/vggish.pt --set eval.panns_path=... --set eval.i3d_path=...
        [--run-id TRAINING_RUN | --weights runs/x/export/trained.safetensors]

Metrics (docs/method.md): av_align needs no weights; fad_vggish, fd_panns, fvd and kvd compare the
generated set with --reference (a folder of .mp4, or data_prep shards) through feature
networks loaded from the local files eval.vggish_path, eval.panns_path and eval.i3d_path
(nothing is downloaded; a missing file is an error naming its key); desync (Synchformer,
eval.synchformer_path) and ib_score (ImageBind, eval.imagebind_path: CC-BY-NC weights you supply)
score each clip, and the reference too when given. The config comes from
--config, else from the config stored in --weights, else the defaults.

Results go to the MLflow run given by --run-id (the training run), else to a new run tagged with
the checkpoint and holding its training config as params, so runs compare side by side in the UI.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from launch._cli import add_config_args, config_from  # noqa: E402


def _log_mlflow(cfg, result: dict, args) -> tuple[str, str]:
    from svgen.config import flatten, to_dict
    from svgen.tracking import MLflowTracker

    name = f"eval {Path(args.weights).name if args.weights else Path(args.generated).name}"
    tracker = MLflowTracker(cfg.track.tracking_uri, cfg.track.experiment, name, args.run_id,
                            system_metrics_interval=cfg.track.system_metrics_interval)
    # The checkpoint's training config as params (a training run already holds them: kept).
    tracker.log_params(flatten(to_dict(cfg)))
    tracker.log({f"eval/{k}": float(v) for k, v in result.items()}, step=0)
    tags = {"eval.generated": str(args.generated), "eval.reference": cfg.eval.reference,
            "eval.metrics": ",".join(cfg.eval.metrics)}
    if args.weights:
        tags["eval.checkpoint"] = str(args.weights)
    tracker.set_tags(tags)
    tracker.close()
    return tracker.run_id, tracker.uri


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--generated", required=True, type=Path, help="folder of generated .mp4 (launch/sample.py --out)")
    ap.add_argument("--reference", help="real clips: folder of .mp4 or data_prep shards (sets eval.reference)")
    ap.add_argument("--weights", help="the evaluated export: its stored config is used when --config is left out, "
                                      "and it tags a new MLflow run")
    add_config_args(ap, required=False)
    ap.add_argument("--metrics", help="comma list (sets eval.metrics), e.g. av_align,fvd,kvd")
    ap.add_argument("--run-id", help="log into this MLflow run (e.g. the training run)")
    ap.add_argument("--tracking-uri", help="MLflow store (sets track.tracking_uri)")
    ap.add_argument("--no-mlflow", action="store_true", help="print the scores only")
    ap.add_argument("--out", type=Path, help="also write the scores to this JSON file")
    args = ap.parse_args(argv)

    extra = []
    if args.reference:
        extra.append(f"eval.reference={args.reference}")
    if args.metrics:
        extra.append(f"eval.metrics=[{args.metrics}]")
    if args.tracking_uri:  # the flag is a shorthand for --set track.tracking_uri=...
        extra.append(f"track.tracking_uri={args.tracking_uri}")
    cfg = config_from(args, extra, defaults=True)
    if cfg is None:
        return 2

    from svgen.metrics.suite import ClipSourceError, FeatureNets, evaluate, iter_clips
    from svgen.metrics.weights import FeatureWeightsError

    if not args.generated.is_dir() or not any(args.generated.glob("*.mp4")):
        print(f"error: no .mp4 files in '{args.generated}' (generate them with launch/sample.py)", file=sys.stderr)
        return 2
    e = cfg.eval
    try:
        nets = FeatureNets(e, e.metrics)  # before any decoding: a missing weight file fails at once
        reference = iter_clips(e.reference, e.max_clips) if e.reference else None
        result, _ = evaluate(iter_clips(args.generated, e.max_clips), reference, e, nets=nets)
    except (FeatureWeightsError, ClipSourceError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
    if not args.no_mlflow:
        run_id, uri = _log_mlflow(cfg, result, args)
        print(f"logged to MLflow run {run_id} at {uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
