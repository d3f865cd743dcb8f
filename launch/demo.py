"""The main job on an embedded default, end to end on one machine:

  synthetic sounding clips (mp4, flash + click) -> Ray data prep into WebDataset shards ->
  DeepSpeed training of the joint model over tiny frozen bases -> a sampled mp4 with sound ->
  one MLflow run holding the metrics, the config and the sample.

    python -m launch.demo                       # what `make demo` runs
    python -m launch.demo --set train.steps=200 --out runs/demo2

Everything goes under --out (default runs/demo); the end of the output says where.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from svgen.config import load_config
from svgen.fileio import write_json

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "tiny.yaml"


def write_synthetic_videos(out: Path, cfg, num_clips: int) -> Path:
    """Synthetic sounding clips (flash + click) as mp4 files plus a CSV manifest with captions."""
    from svgen.data.synthetic import make_clip
    from svgen.media.mp4 import write_mp4

    out.mkdir(parents=True, exist_ok=True)
    rows = ["path,caption"]
    for i in range(num_clips):
        clip = make_clip(cfg.data, seed=i)
        write_mp4(out / f"clip_{i:03d}.mp4", clip.frames, fps=cfg.data.fps, wave=clip.wave,
                  sample_rate=cfg.data.sample_rate)
        rows.append(f"clip_{i:03d}.mp4,{clip.caption}")
    (out / "manifest.csv").write_text("\n".join(rows) + "\n")
    return out / "manifest.csv"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(DEFAULT_CONFIG), help="YAML config (default: configs/tiny.yaml)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="dotted override, repeatable (e.g. --set train.steps=100)")
    ap.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    ap.add_argument("--clips", type=int, default=8, help="synthetic source videos (default 8)")
    args = ap.parse_args()
    # Heavy imports after argument parsing, so --help answers at once.
    from data_prep.run import report
    from data_prep.run import run as run_prep
    from svgen.media.mp4 import probe
    from svgen.models.tiny import build_tiny_bases

    t0 = time.time()
    out = Path(args.out).resolve()
    uri = f"sqlite:///{out}/mlflow.db"  # --set track.tracking_uri=... overrides it
    cfg = load_config(args.config, [f"train.out_dir={out}/train", f"train.source.shards={out}/shards",
                                    f"track.tracking_uri={uri}", "track.run_name=demo",
                                    "train.check_frozen=true",  # tiny bases: the proof is cheap
                                    "prep.executor=ray"] + args.set)  # the demo shows the Ray path
    out.mkdir(parents=True, exist_ok=True)
    if not Path(cfg.model.audio.path).exists() or not Path(cfg.model.video.path).exists():
        root = Path(cfg.model.audio.path).parent
        print(f"[demo] building tiny random bases under {root}")
        build_tiny_bases(root, n_mels=cfg.data.n_mels, hop_length=cfg.data.hop_length,
                         sample_rate=cfg.data.sample_rate)

    manifest = write_synthetic_videos(out / "raw", cfg, args.clips)
    print(f"[demo] {args.clips} synthetic sounding videos in {manifest.parent}")
    summary = run_prep(str(manifest), cfg.train.source.shards, cfg, overwrite=True)
    print(report(summary, cfg.train.source.shards))

    from svgen.train.loop import train  # imports DeepSpeed: after data prep, which does not need it

    if Path(cfg.train.out_dir).is_dir():  # the demo starts over (training never overwrites checkpoints)
        shutil.rmtree(cfg.train.out_dir)
    result = train(cfg, resume="none")
    info = probe(result["sample"])
    kinds = ", ".join(f"{s['type']} {s['codec']} {s['duration']:.2f}s" for s in info["streams"])
    write_json(out / "summary.json", {**result, "probe": info, "seconds": time.time() - t0}, indent=2)
    print(f"[demo] sample: {result['sample']} ({kinds})")
    print(f"[demo] trained weights: {result['weights']} (EMA: {result.get('ema_weights')})")
    print(f"[demo] shards: {cfg.train.source.shards}   checkpoints: {cfg.train.out_dir}/ckpt   summary: {out / 'summary.json'}")
    from svgen.tracking import run_ui_route

    uri = cfg.track.tracking_uri
    print(f"[demo] MLflow run {result['run_id']}; to browse it:")
    print(f"       MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false .venv/bin/mlflow ui --workers 1 --host 127.0.0.1 "
          f"--backend-store-uri {uri}")
    print(f"       then open http://127.0.0.1:5000/{run_ui_route(uri, result['run_id'])}")
    print(f"[demo] done in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
