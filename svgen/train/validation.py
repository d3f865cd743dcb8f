"""Validation during training: sounding videos from the current weights, logged as artifacts and
scored by the same code as launch/eval.py (svgen.metrics.suite).

AV-Align always; the distances of ``eval.metrics`` as well when ``eval.reference`` is set and a
validation makes >= 2 clips. The feature networks load when the validator is built, so a missing
weight file fails before training starts; the reference set's features are computed once and kept
for every later validation.
"""

from __future__ import annotations

from pathlib import Path

from svgen.config import Config
from svgen.distributed import DistInfo
from svgen.generate import generate, save_sounding_videos
from svgen.metrics.suite import NEEDS_REFERENCE, RATE, Clip, FeatureNets, evaluate, iter_clips
from svgen.system import JointSystem


def val_metrics(cfg: Config) -> list[str]:
    """AV-Align always; the distances of eval.metrics when there is a reference and >= 2 clips."""
    e = cfg.eval
    return ["av_align"] + [m for m in e.metrics if m in NEEDS_REFERENCE and e.reference and cfg.train.val.clips >= 2]


class Validator:
    """Runs validations of one training run; rank 0 writes and scores, every rank samples."""

    def __init__(self, cfg: Config, out_dir: str | Path, info: DistInfo, tracker):
        self.cfg, self.out_dir, self.info, self.tracker = cfg, Path(out_dir), info, tracker
        self.metrics = val_metrics(cfg)
        self.nets = FeatureNets(cfg.eval, self.metrics) if info.is_main else None
        self.reference = None
        """Features of eval.reference, computed at the first scored validation."""

    def __call__(self, system: JointSystem, step: int) -> Path | None:
        """``train.val.clips`` sounding videos at ``step``; the first mp4's path on rank 0. Every rank
        runs the sampler (under ZeRO-3 the forward gathers weights collectively)."""
        cfg, n = self.cfg, self.cfg.train.val.clips
        frames, wave = generate(system, [cfg.sample.prompt] * n, cfg.data, cfg.sample,
                                seed=[cfg.sample.seed + i for i in range(n)], progress=False)
        if not self.info.is_main:
            return None
        paths = save_sounding_videos(self.out_dir / "samples", frames, wave, cfg.data, stem=f"step{step:07d}")
        for path in paths:
            self.tracker.log_artifact(path, "samples")
        wave = wave.float().cpu()
        if cfg.data.sample_rate != RATE:
            import torchaudio

            wave = torchaudio.functional.resample(wave, cfg.data.sample_rate, RATE)
        clips = [Clip(p.stem, frames[i].cpu().numpy(), wave[i].numpy(), float(cfg.data.fps)) for i, p in enumerate(paths)]
        e = cfg.eval
        need_ref = len(self.metrics) > 1 and self.reference is None
        try:
            scores, ref = evaluate(clips, iter_clips(e.reference, e.max_clips) if need_ref else None, e,
                                   metrics=self.metrics, nets=self.nets, reference_features=self.reference,
                                   progress=False)
        except (OSError, ValueError) as err:  # a bad reference must not cost the run: the mp4s are saved
            print(f"validation at step {step}: scoring failed: {err}", flush=True)
            return paths[0]
        if ref is not None:
            self.reference = ref
        self.tracker.log({f"val/{k}": v for k, v in scores.items() if not k.startswith("num_")}, step)
        return paths[0]
