"""The main job on an embedded default: synthetic sounding clips (mp4) -> Ray data prep into
WebDataset shards -> train the joint model over tiny bases from those shards -> sample one
sounding video as an mp4.

    python -m launch.demo                       # what `make demo` runs
    python -m launch.demo --set train.steps=200 --out runs/demo2

Everything it makes goes under --out (default runs/demo); it prints where at the end.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from data_prep.run import report
from data_prep.run import run as run_prep
from svgen.config import load_config, to_yaml
from svgen.data.latents import latent_stream
from svgen.data.loader import make_loader, repeat
from svgen.data.synthetic import make_clip
from svgen.generate import generate, save_sounding_videos
from svgen.media.mp4 import probe, write_mp4
from svgen.models.build import build_system
from svgen.models.tiny import build_tiny_bases
from svgen.train_loop import train

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "tiny.yaml"


def write_synthetic_videos(out: Path, cfg, num_clips: int) -> Path:
    """Synthetic sounding clips (flash + click) as mp4 files plus a CSV manifest with captions."""
    out.mkdir(parents=True, exist_ok=True)
    rows = ["path,caption"]
    for i in range(num_clips):
        clip = make_clip(cfg.data, seed=i)
        write_mp4(out / f"clip_{i:03d}.mp4", clip.frames, cfg.data.fps, clip.wave, cfg.data.sample_rate)
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

    t0 = time.time()
    out = Path(args.out)
    cfg = load_config(args.config, args.set)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(to_yaml(cfg))
    if not Path(cfg.model.audio.path).exists() or not Path(cfg.model.video.path).exists():
        root = Path(cfg.model.audio.path).parent
        print(f"[demo] building tiny random bases under {root}")
        build_tiny_bases(root, n_mels=cfg.data.n_mels, hop_length=cfg.data.hop_length,
                         sample_rate=cfg.data.sample_rate)
    system = build_system(cfg)
    counts = system.model.parameter_counts()
    print(f"[demo] joint model: {counts['trainable']:,} trainable / {counts['frozen']:,} frozen parameters")

    manifest = write_synthetic_videos(out / "raw", cfg, args.clips)
    summary = run_prep(str(manifest), str(out / "shards"), cfg, progress=True)
    print(report(summary, str(out / "shards")))
    loader = make_loader(out / "shards", cfg.train.batch_size, seed=cfg.train.seed)
    history = train(system, latent_stream(system, repeat(loader), cfg.data), cfg.train)
    first = sum(h["loss"] for h in history[:5]) / max(1, len(history[:5]))
    last = sum(h["loss"] for h in history[-5:]) / max(1, len(history[-5:]))
    print(f"[demo] trained {len(history)} steps: loss {first:.4f} -> {last:.4f} (mean of first/last 5)")

    frames, wave = generate(system, [cfg.sample.prompt], cfg.data, cfg.sample)
    (mp4,) = save_sounding_videos(out / "samples", frames, wave, cfg.data)
    info = probe(mp4)
    summary = {"config": str(out / "config.yaml"), "shards": str(out / "shards"), "sample": str(mp4), "probe": info,
               "parameters": counts, "loss_first": first, "loss_last": last, "seconds": time.time() - t0}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    kinds = ", ".join(f"{s['type']} {s['codec']} {s['duration']:.2f}s" for s in info["streams"])
    print(f"[demo] sample: {mp4} ({kinds})")
    print(f"[demo] config: {out / 'config.yaml'}   summary: {out / 'summary.json'}")
    print(f"[demo] done in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
