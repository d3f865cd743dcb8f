"""The ablation's stages (issues 12 and 20): corpus, bases, training, held-out losses, sampling,
measures, real-clip reference; ``python -m experiments.ablation`` drives them, report.py writes
the result.

Variants share the bases, the data, the steps and the seeds; they differ only in ``model.cmcpe``:

- ``independent``: the two bases side by side, no cross-modal block, nothing trained;
- ``xattn_pooled``: cross-attention to one pooled token per clip (the reference code's baseline);
- ``xattn_seq``: cross-attention to one token per time step;
- ``xattn_timed``: the same with rotary time positions in seconds on queries and keys: the fair
  test of "positional encoding vs attention", since plain cross-attention cannot tell when;
- ``cmcpe``: the paper's cross-modal conditioning as positional encoding.

Every cross-attention variant normalises its context (model.cmcpe.xattn_context_norm, set in
configs/ablation.yaml), as CMC-PE does. The motion modules stay frozen in every variant, so what
differs is the cross-modal path alone; captions are never dropped and samples are drawn without
classifier-free guidance (the bases never trained an unconditional branch).

Units: each joint-training seed is trained on one of the bases seeds (the seeds are split into
equal blocks, one per bases seed). Sampling noise is seeded per clip and per seed, the same for
every variant, so comparisons are paired per clip.

Every stage writes its result last and is skipped when that result exists: a rerun resumes.
Bases, held-out losses and sampling run on CUDA when present (joint training does anyway).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from experiments.ablation.hits import Spec, write_split
from experiments.ablation.measures import SetSummary, clip_events, clip_scores, detector_check, summarise

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "ablation.yaml"
VARIANTS = ("independent", "xattn_pooled", "xattn_seq", "xattn_timed", "cmcpe")
TRAINED = VARIANTS[1:]
EXPERIMENT = "ablation"
TEST_SEED_OFFSET = 1_000_003  # the test split never shares a clip seed with the train split


@dataclass(frozen=True)
class Plan:
    """The sizes of one ablation run (``run`` at its defaults, or ``--smoke``)."""

    train_clips: int = 240
    test_clips: int = 60
    seconds: float = 4.0
    vae_steps: int = 600
    unet_steps: int = 2000
    train_steps: int = 200
    batch_size: int = 8
    lr: float = 1e-3
    bases_seeds: tuple[int, ...] = (0, 1, 2, 3)
    """Four bases, two joint seeds each: a block (one bases seed and its joint seeds, about
    1.5 h on 2 CPU cores) fits one sitting, and the bases' own variation is sampled four times."""
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 7)
    """Joint-training seeds, split into equal blocks over ``bases_seeds``."""
    samples: int = 32
    """Test prompts sampled per variant x gamma x seed (the first test clips' captions)."""
    sample_steps: int = 25
    gammas: tuple[float, ...] = (1.0, 1.5)
    quality_batches: int = 4
    """Held-out test batches for the denoising losses."""

    @classmethod
    def smoke(cls) -> "Plan":
        return cls(train_clips=8, test_clips=4, seconds=2.0, vae_steps=3, unet_steps=3, train_steps=2, batch_size=2,
                   bases_seeds=(0,), seeds=(0,), samples=4, sample_steps=2, quality_batches=1)

    def bases_of(self, seed: int) -> int:
        """The bases seed that joint seed ``seed`` trains on."""
        i = self.seeds.index(seed)
        return self.bases_seeds[i * len(self.bases_seeds) // len(self.seeds)]


def device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def tracking_uri(out: Path) -> str:
    """The ablation's MLflow store."""
    return f"sqlite:///{(out / 'mlflow.db').resolve()}"


def spec_overrides(spec: dict) -> list[str]:
    """Config overrides giving the clip geometry of a corpus spec (hits.Spec as a dict)."""
    return [f"data.{k}={spec[k]}" for k in ("seconds", "fps", "size", "sample_rate")]


def bases_overrides(bases: Path) -> list[str]:
    """Config overrides pointing the model at the ablation's bases under ``bases``."""
    return [f"model.audio.path={bases / 'audioldm'}", f"model.video.path={bases / 'sd15'}",
            f"model.video.motion_adapter_path={bases / 'motion_adapter'}"]


# ----------------------------------------------------------------------------------------------
# Corpus and bases


def make_data(out: Path, n_train: int, n_test: int, seed: int, spec: Spec, media: Path, prep: bool = True,
              workers: int = 2, progress: bool = True) -> dict[str, Path]:
    """Both splits under ``out`` (train/, test/), sharded unless ``prep`` is False; returns the
    shard folders (or the clip folders without prep)."""
    from svgen.config import load_config

    splits = {"train": (n_train, seed), "test": (n_test, seed + TEST_SEED_OFFSET)}
    result = {}
    for name, (n, split_seed) in splits.items():
        folder = out / name
        truth = folder / "impacts.json"
        before = truth.stat().st_mtime_ns if truth.is_file() else None
        write_split(folder, n, split_seed, spec, media, progress=progress)
        if truth.stat().st_mtime_ns != before and (folder / "shards").is_dir():
            shutil.rmtree(folder / "shards")  # shards of the clips this split held before: not these
        result[name] = folder / "clips"
        if prep:
            from data_prep.run import run as run_prep

            cfg = load_config(CONFIG, spec_overrides(asdict(spec)) + [f"prep.workers={workers}", "prep.min_shards=1"])
            run_prep(str(folder / "list.csv"), str(folder / "shards"), cfg, progress=progress)
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

    from experiments.ablation.bases import pretrain_autoencoders, pretrain_denoisers

    truth = data / "train" / "impacts.json"
    if not truth.is_file():
        raise FileNotFoundError(f"{truth} is missing: run python -m experiments.ablation make-data --out {data} first")
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
    dev = device()
    bases = build_tiny_bases(out, n_mels=64, sample_rate=spec["sample_rate"], width=width, seed=seed)
    torch.manual_seed(seed)
    batches = list(make_loader(data / "train" / "shards", batch_size, seed=seed))  # small: kept in memory
    print(f"make-bases: {len(batches)} batches of {batch_size} clips; autoencoders {vae_steps} steps, "
          f"UNets {unet_steps} steps, on {dev}", flush=True)
    fits = pretrain_autoencoders(bases["audio"], bases["video"], batches, cfg.data, vae_steps, seed, device=dev)
    fits |= {f"unet_{k}": v for k, v in pretrain_denoisers(cfg, batches, unet_steps, seed, unet_lr, device=dev).items()}
    write_json(record, {**want, "seconds": time.time() - t0, "device": str(dev),
                        "fits": {k: asdict(v) for k, v in fits.items()}}, indent=1)
    return record


# ----------------------------------------------------------------------------------------------
# Training


def variant_overrides(variant: str, bases: Path) -> list[str]:
    """Config overrides (on configs/ablation.yaml) that make ``variant`` on the bases at ``bases``."""
    paths = bases_overrides(bases)
    if variant == "independent":
        return paths + ["model.cmcpe.down_blocks=[]", "model.cmcpe.up_blocks=[]"]
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {list(VARIANTS)}")
    return paths + [f"model.cmcpe.mode={variant}"]


def variant_config(variant: str, seed: int, out: Path, plan: Plan, spec: dict, extra: list[str] = ()):
    """The joint config of one variant x seed (training and sampling)."""
    from svgen.config import load_config

    bases = out / "bases" / f"seed{plan.bases_of(seed)}"
    return load_config(CONFIG, variant_overrides(variant, bases) + spec_overrides(spec) + [
        f"train.source.shards={out / 'data' / 'train' / 'shards'}", f"train.out_dir={out / 'train' / variant / f'seed{seed}'}",
        f"train.steps={plan.train_steps}", f"train.batch_size={plan.batch_size}", f"train.seed={seed}",
        f"train.optim.lr={plan.lr}", f"train.ckpt.save_every={max(1, plan.train_steps // 4)}",
        f"train.log_every={max(1, min(10, plan.train_steps))}", "track.system_metrics_interval=0",
        f"track.tracking_uri={tracking_uri(out)}", f"track.experiment={EXPERIMENT}", f"track.run_name={variant}-seed{seed}",
        f"sample.steps={plan.sample_steps}", *extra])


def train_variant(variant: str, seed: int, out: Path, plan: Plan, spec: dict) -> dict:
    """Train one variant x seed (resuming an interrupted run); the independent variant has nothing
    to train and gets an MLflow run of its own for its measures. Then :func:`liveness`."""
    folder = out / "train" / variant / f"seed{seed}"
    done = folder / "train_result.json"
    if done.is_file() and json.loads(done.read_text()).get("step") == plan.train_steps:
        result = json.loads(done.read_text())
    else:
        cfg = variant_config(variant, seed, out, plan, spec)
        if variant == "independent":
            from svgen.fileio import write_json
            from svgen.tracking import MLflowTracker

            tracker = MLflowTracker(cfg.track.tracking_uri, EXPERIMENT, f"{variant}-seed{seed}",
                                    system_metrics_interval=0)
            tracker.log_params({"variant": variant, "seed": seed, "bases_seed": plan.bases_of(seed), "train.steps": 0})
            tracker.set_tags({"ablation.variant": variant})
            result = {"step": plan.train_steps, "run_id": tracker.run_id, "weights": None}
            tracker.close()
            write_json(done, result, indent=2)
        else:
            from svgen.train.loop import train

            result = train(cfg)
            if result.get("step") != plan.train_steps:  # preempted: never sample a half-trained variant
                raise SystemExit(f"training of {variant} seed {seed} {result.get('reason', 'stopped')} at step "
                                 f"{result.get('step')} of {plan.train_steps}; run the same command again to resume")
    if variant != "independent":
        liveness(variant, seed, out, plan, spec, result)
    return result


CROSS_PATH = {"cmcpe": ("embed.", "embed_norm.", "cond_attn."),
              "xattn": ("cross.", "norm_x.", "norm_ctx.")}
"""Parameter-name parts of each block kind's path from the other modality into the block."""


def liveness(variant: str, seed: int, out: Path, plan: Plan, spec: dict, result: dict) -> dict:
    """Did the cross-modal path train? ``cross_weight_delta``: the L2 norm of (trained - initial)
    over the blocks' cross-modal parameters, and ``cross_weight_rel`` over their initial norm;
    the same for the environment encoders; the trainer's global gradient norm over training
    (mean and last, from MLflow). Written to liveness.json beside the training result."""
    path = out / "train" / variant / f"seed{seed}" / "liveness.json"
    if path.is_file():
        return json.loads(path.read_text())
    import torch
    from safetensors.torch import load_file

    from svgen.fileio import write_json
    from svgen.system import build_system

    cfg = variant_config(variant, seed, out, plan, spec)
    init = {n: p.detach().float() for n, p in build_system(cfg).model.named_parameters()}  # seeded as training was
    final = load_file(result["weights"])
    parts = CROSS_PATH["cmcpe" if variant == "cmcpe" else "xattn"]

    def delta(select) -> tuple[float, float]:
        names = [n for n in init if select(n)]
        d = sum(float((final[n] - init[n]).square().sum()) for n in names) ** 0.5
        ref = sum(float(init[n].square().sum()) for n in names) ** 0.5
        return d, d / ref if ref else float("nan")

    cross = delta(lambda n: n.startswith("blocks_") and any(f".{p}" in n for p in parts))
    enc = delta(lambda n: n.startswith("encoder_"))
    grad = _metric_history(result, "grad_norm")
    record = {"variant": variant, "seed": seed, "cross_weight_delta": cross[0], "cross_weight_rel": cross[1],
              "encoder_weight_delta": enc[0], "encoder_weight_rel": enc[1],
              "grad_norm_mean": float(np.mean(grad)) if grad else None, "grad_norm_last": grad[-1] if grad else None}
    del torch
    write_json(path, record, indent=1)
    return record


def _metric_history(result: dict, key: str) -> list[float]:
    if not result.get("run_id") or not result.get("tracking_uri"):
        return []
    import mlflow

    history = mlflow.MlflowClient(result["tracking_uri"]).get_metric_history(result["run_id"], key)
    return [m.value for m in sorted(history, key=lambda m: m.step)]


# ----------------------------------------------------------------------------------------------
# Held-out losses, sampling, measures


def load_system(variant: str, seed: int, out: Path, plan: Plan, spec: dict):
    """The trained variant x seed (EMA weights) on the device, in eval mode."""
    import torch

    from svgen.models.weights import load_trained_weights
    from svgen.system import build_system

    cfg = variant_config(variant, seed, out, plan, spec)
    torch.manual_seed(0)
    system = build_system(cfg)
    result = json.loads((out / "train" / variant / f"seed{seed}" / "train_result.json").read_text())
    if result.get("weights"):
        load_trained_weights(system.model, result.get("ema_weights") or result["weights"])
    system.model.eval()
    return cfg, system.to(device()), result


def test_clips(out: Path, count: int) -> list[tuple[str, str]]:
    """(clip name, caption) of the first ``count`` test clips."""
    truth = json.loads((out / "data" / "test" / "impacts.json").read_text())["clips"]
    return [(name, truth[name]["caption"]) for name in sorted(truth)[:count]]


def mismatch_partners(captions: list[str]) -> list[int]:
    """For each clip, another clip with the same caption (the same material, other timing): the
    next one of its caption in order, cyclically; itself only when it is its caption's only clip."""
    out = []
    for i, c in enumerate(captions):
        same = [j for j, d in enumerate(captions) if d == c]
        out.append(same[(same.index(i) + 1) % len(same)])
    return out


def quality(system, cfg, out: Path, plan: Plan) -> dict[str, float]:
    """Held-out denoising losses per modality (the training objective on the test split, the
    same noise for every variant): how well the joint model still denoises each modality.

    And whether it uses the other modality's *timing*: the same losses with the other modality
    taken from another test clip of the same material (same caption, other instants), on the same
    noise. ``heldout_mismatch_rise_*`` = mismatched - aligned loss: above 0 when a modality's
    denoising relies on where the other's events are; exactly 0 without a cross-modal path."""
    import torch

    from svgen.data.latents import LatentBatch
    from svgen.data.loader import make_loader
    from svgen.system.objective import joint_loss

    dev = device()
    g = torch.Generator(device=dev).manual_seed(1234)
    clips = [b for b in make_loader(out / "data" / "test" / "shards", 1, seed=0, shuffle_buffer=1)]
    clips = clips[: plan.quality_batches * plan.batch_size]
    captions = [c["caption"][0] for c in clips]
    partner = mismatch_partners(captions)
    sums = {"loss_audio": 0.0, "loss_video": 0.0, "mismatch_rise_audio": 0.0, "mismatch_rise_video": 0.0}
    n = 0
    loss_cfg = replace(cfg.train.loss, caption_dropout=0.0)
    with torch.no_grad():
        lat = []
        for c in clips:  # one clip at a time: the same latents whatever the batch
            lat.append(system.encode({**c, "frames": c["frames"].to(dev), "wave": c["wave"].to(dev)}, cfg.data, g))
        for start in range(0, len(lat), plan.batch_size):
            idx = list(range(start, min(start + plan.batch_size, len(lat))))
            cat = lambda name, ids: torch.cat([getattr(lat[i], name) for i in ids])  # noqa: E731
            aligned = LatentBatch(cat("x_a", idx), cat("x_v", idx), cat("text_a", idx), cat("text_v", idx))
            other = [partner[i] for i in idx]
            video_other = LatentBatch(aligned.x_a, cat("x_v", other), aligned.text_a, aligned.text_v)
            audio_other = LatentBatch(cat("x_a", other), aligned.x_v, aligned.text_a, aligned.text_v)
            for _ in range(4):  # four noise draws per batch, each used for all three
                seed = int(torch.randint(0, 2**62, (1,), generator=g, device=dev))
                losses = [joint_loss(system, b, loss_cfg, generator=torch.Generator(device=dev).manual_seed(seed))[1]
                          for b in (aligned, video_other, audio_other)]
                sums["loss_audio"] += float(losses[0]["loss_audio"])
                sums["loss_video"] += float(losses[0]["loss_video"])
                sums["mismatch_rise_audio"] += float(losses[1]["loss_audio"] - losses[0]["loss_audio"])
                sums["mismatch_rise_video"] += float(losses[2]["loss_video"] - losses[0]["loss_video"])
                n += 1
    return {f"heldout_{k}": v / max(n, 1) for k, v in sums.items()}


def sample_and_measure(variant: str, seed: int, out: Path, plan: Plan, spec: dict, progress: bool = True) -> list[dict]:
    """Rows (one per gamma) of a trained variant x seed, each written to rows/ when done, with
    its per-clip scores and nulls beside it."""
    import torch

    from svgen.fileio import write_json
    from svgen.generate import generate, save_sounding_videos

    rows, todo = [], []
    for gamma in plan.gammas:
        path = out / "rows" / f"{variant}_seed{seed}_gamma{gamma:g}.json"
        if path.is_file():
            rows.append(json.loads(path.read_text()))
        else:
            todo.append((gamma, path))
    if not todo:
        return rows
    cfg, system, result = load_system(variant, seed, out, plan, spec)
    q = quality(system, cfg, out, plan)
    prompts = test_clips(out, plan.samples)
    for gamma, path in todo:
        t0 = time.time()
        sample_cfg = replace(cfg.sample, gamma=gamma, guidance_audio=1.0, guidance_video=1.0)
        events = []
        for start in range(0, len(prompts), 16):
            chunk = prompts[start:start + 16]
            # The same noise for every variant at a seed: the comparison is paired per clip.
            seeds = [10_000 * seed + start + k for k in range(len(chunk))]
            frames, wave = generate(system, [c for _, c in chunk], cfg.data, sample_cfg, seed=seeds, progress=False)
            frames, wave = frames.cpu(), wave.float().cpu()
            if start == 0:
                save_sounding_videos(out / "samples" / f"{variant}_seed{seed}_gamma{gamma:g}", frames[:4], wave[:4],
                                     cfg.data)
            events += [clip_events(f.numpy(), w.numpy(), cfg.data.fps, cfg.data.sample_rate, caption)
                       for f, w, (_, caption) in zip(frames, wave, chunk)]
        per_clip = clip_scores(events, cfg.data.fps)
        summary = summarise(per_clip)
        row = {"variant": variant, "gamma": gamma, "seed": seed, "bases_seed": plan.bases_of(seed),
               **_flat(summary), **q, "train_steps": plan.train_steps if variant != "independent" else 0,
               "sample_seconds": time.time() - t0, "device": str(device()), "run_id": result.get("run_id")}
        write_json(path.with_suffix(".clips.json"),
                   [{"prompt": p, "events": asdict(e), **s} for (p, _), e, s in zip(prompts, events, per_clip)])
        write_json(path, row, indent=1)
        log_row(out, row)
        rows.append(row)
        if progress:
            print(f"  {variant} seed {seed} gamma {gamma:g}: F1 {row['f1']:.3f} (null {row['f1_null']:.3f}), "
                  f"held-out rise a {q['heldout_mismatch_rise_audio']:+.4f} v {q['heldout_mismatch_rise_video']:+.4f}",
                  flush=True)
    del system
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return rows


def _flat(s: SetSummary) -> dict:
    return {"clips": s.clips, "impacts_per_clip": s.impacts_per_clip, "onsets_per_clip": s.onsets_per_clip, **s.values}


def log_row(out: Path, row: dict) -> None:
    """The row's measures into its variant x seed MLflow run, prefixed by gamma."""
    if not row.get("run_id"):
        return
    from svgen.tracking import MLflowTracker

    tracker = MLflowTracker(tracking_uri(out), EXPERIMENT, "", run_id=row["run_id"], system_metrics_interval=0)
    metrics = {f"gamma{row['gamma']:g}/{k}": v for k, v in row.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("gamma", "seed", "bases_seed")
               and v is not None and not k.startswith("heldout")}
    metrics |= {k: v for k, v in row.items() if k.startswith("heldout")}
    tracker.log(metrics, step=row.get("train_steps", 0))
    tracker.set_tags({"ablation.variant": row["variant"]})
    tracker.close()


def reference_rows(out: Path, spec: dict, plan: Plan) -> list[dict]:
    """The real test clips (as data prep decoded them) on the same measures: each score, its
    null (the clip's sound against other real clips of its material: the floor, at the real
    densities) and the excess (the ceiling a variant could reach); plus the visual detector's
    precision and recall against the generator's ground truth."""
    path = out / "rows" / "reference.json"
    if path.is_file():
        return json.loads(path.read_text())
    from svgen.fileio import write_json
    from svgen.metrics.suite import iter_clips

    truth = json.loads((out / "data" / "test" / "impacts.json").read_text())["clips"]
    # A shard key is '<input index>_<window>'; input i is list.csv's row i, clips/<i:05d>.mp4.
    by_name = {f"{int(c.name.split('_')[0]):05d}.mp4": c for c in iter_clips(out / "data" / "test" / "shards")}
    names = [(n, cap) for n, cap in test_clips(out, plan.samples) if n in by_name]
    if not names:
        raise RuntimeError(f"no test clip of {out / 'data' / 'test' / 'impacts.json'} was found in the test shards")
    fps, sr = spec["fps"], spec["sample_rate"]
    events = [clip_events(by_name[n].frames, by_name[n].wave, fps, sr, cap) for n, cap in names]
    summary = summarise(clip_scores(events, fps))
    check = detector_check(events, [truth[n]["impacts"] for n, _ in names], fps)
    rows = [{"variant": "real clips", "gamma": None, "seed": None, **_flat(summary), **check}]
    write_json(path, rows, indent=1)
    return rows
