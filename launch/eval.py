"""Score generated sounding videos and log the results to MLflow.

    python launch/eval.py --generated runs/samples [--reference REAL_MP4_DIR] [--vggish weights.pt]
                          [--run-id MLFLOW_RUN | --weights trained.safetensors]

AV-Align needs no weights. FAD needs --reference and local VGGish weights (a torch state_dict;
nothing is downloaded). Results go to the training run given by --run-id, else to a new run
tagged with the checkpoint (--weights), so runs compare side by side in the MLflow UI.
Not yet here: FVD/KVD (I3D) and the ImageBind score.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from svgen.media.mp4 import read_mp4  # noqa: E402
from svgen.metrics.av_align import av_align  # noqa: E402


def evaluate(generated: Path, reference: Path | None, vggish: Path | None, sample_rate: int = 16000) -> dict:
    gen = sorted(generated.glob("*.mp4"))
    if not gen:
        raise SystemExit(f"error: no .mp4 files in '{generated}'")
    scores, gen_waves = [], []
    for path in gen:
        frames, wave, fps = read_mp4(path, sample_rate)
        scores.append(av_align(frames, wave, fps, sample_rate)["av_align"])
        gen_waves.append(wave)
    result = {"av_align": float(np.mean(scores)), "num_generated": len(gen)}
    if vggish is not None:
        if reference is None:
            raise SystemExit("error: FAD needs --reference (a folder of real clips)")
        from svgen.metrics.fad import frechet_distance, load_vggish, vggish_embeddings

        net = load_vggish(vggish)
        ref_waves = [read_mp4(p, sample_rate)[1] for p in sorted(reference.glob("*.mp4"))]
        emb = lambda waves: np.concatenate([vggish_embeddings(net, w, sample_rate) for w in waves])  # noqa: E731
        result["fad_vggish"] = frechet_distance(emb(ref_waves), emb(gen_waves))
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--generated", required=True, type=Path, help="folder of generated .mp4")
    ap.add_argument("--reference", type=Path, help="folder of real .mp4 clips (for FAD)")
    ap.add_argument("--vggish", type=Path, help="local VGGish state_dict (for FAD)")
    ap.add_argument("--run-id", help="log into this MLflow run (the training run)")
    ap.add_argument("--weights", help="the evaluated checkpoint, recorded as a tag on a new run")
    ap.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///runs/mlflow.db"))
    ap.add_argument("--experiment", default="svgen")
    ap.add_argument("--no-mlflow", action="store_true")
    args = ap.parse_args(argv)
    result = evaluate(args.generated, args.reference, args.vggish)
    print(json.dumps(result, indent=2))
    if not args.no_mlflow:
        import mlflow

        mlflow.set_tracking_uri(args.tracking_uri)
        mlflow.set_experiment(args.experiment)
        with (mlflow.start_run(run_id=args.run_id) if args.run_id else
              mlflow.start_run(run_name=f"eval {Path(args.weights).name if args.weights else args.generated.name}")) as run:
            mlflow.log_metrics({f"eval/{k}": float(v) for k, v in result.items()})
            mlflow.set_tags({"eval.generated": str(args.generated), "eval.checkpoint": str(args.weights or "")})
            print(f"logged to MLflow run {run.info.run_id} at {args.tracking_uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
