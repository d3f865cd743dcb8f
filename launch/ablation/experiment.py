"""The ablation's stages after the corpus and the bases: train each variant, sample the test
prompts, measure, report (issue 12). ``python -m launch.ablation run`` drives them.

Variants share the bases, the data, the steps and the seeds; they differ only in ``model.cmcpe``:

- ``independent``: the two bases side by side, no cross-modal block, nothing trained;
- ``xattn_pooled``: cross-attention to one pooled token per clip (the reference code's baseline);
- ``xattn_seq``: cross-attention to one token per time step;
- ``cmcpe``: the paper's cross-modal conditioning as positional encoding.

The motion modules stay frozen in every variant (``model.train_motion_modules=false``), so what
differs between variants is the cross-modal path alone; captions are never dropped and samples
are drawn without classifier-free guidance (the bases were pre-trained with captions always on,
so their unconditional branch is untrained).

Every stage writes its result last and is skipped when that result exists: a rerun resumes.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from launch.ablation.measures import ClipMeasures, SetMeasures, detector_check, measure_clip, summarise

VARIANTS = ("independent", "xattn_pooled", "xattn_seq", "cmcpe")
LABELS = {"independent": "independent (no cross-modal modules)", "xattn_pooled": "cross-attention, one pooled token",
          "xattn_seq": "cross-attention, one token per time step", "cmcpe": "CMC-PE"}
EXPERIMENT = "ablation"


@dataclass(frozen=True)
class Plan:
    """The sizes of one ablation run (``run`` at its defaults, or ``--smoke``)."""

    train_clips: int = 240
    test_clips: int = 60
    seconds: float = 4.0
    vae_steps: int = 600
    unet_steps: int = 2000
    train_steps: int = 300
    batch_size: int = 8
    lr: float = 1e-3
    seeds: tuple[int, ...] = (0, 1, 2)
    samples: int = 32
    """Test prompts sampled per variant x gamma x seed (the first test clips' captions)."""
    sample_steps: int = 25
    gammas: tuple[float, ...] = (1.0, 1.5)
    sweep: tuple[float, ...] = (0.75, 1.25, 2.0, 3.0)
    """Further gammas for CMC-PE alone."""
    quality_batches: int = 4
    """Held-out test batches for the denoising losses."""

    @classmethod
    def smoke(cls) -> "Plan":
        return cls(train_clips=8, test_clips=4, seconds=2.0, vae_steps=3, unet_steps=3, train_steps=2, batch_size=2,
                   seeds=(0,), samples=2, sample_steps=2, sweep=(2.0,), quality_batches=1)

    def gammas_of(self, variant: str) -> tuple[float, ...]:
        return self.gammas + (self.sweep if variant == "cmcpe" else ())


def tracking_uri(out: Path) -> str:
    """The ablation's MLflow store (MLFLOW_TRACKING_URI still wins, as for every svgen run)."""
    return f"sqlite:///{(out / 'mlflow.db').resolve()}"


def variant_overrides(variant: str, bases: Path) -> list[str]:
    """Config overrides (on configs/ablation.yaml) that make ``variant`` on the bases at ``bases``."""
    from launch.ablation.__main__ import bases_overrides

    paths = bases_overrides(bases)
    if variant == "independent":
        return paths + ["model.cmcpe.down_blocks=[]", "model.cmcpe.up_blocks=[]"]
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {list(VARIANTS)}")
    return paths + [f"model.cmcpe.mode={variant}"]


def variant_config(variant: str, seed: int, out: Path, plan: Plan, spec: dict, extra: list[str] = ()):
    """The joint config of one variant x seed (training and sampling)."""
    from launch.ablation.__main__ import CONFIG, spec_overrides
    from svgen.config import load_config

    uri = tracking_uri(out)
    return load_config(CONFIG, variant_overrides(variant, out / "bases") + spec_overrides(spec) + [
        f"train.source.shards={out / 'data' / 'train' / 'shards'}", f"train.out_dir={out / 'train' / variant / f'seed{seed}'}",
        f"train.steps={plan.train_steps}", f"train.batch_size={plan.batch_size}", f"train.seed={seed}",
        f"train.optim.lr={plan.lr}", f"train.ckpt.save_every={max(1, plan.train_steps // 4)}",
        f"train.log_every={max(1, min(20, plan.train_steps))}",
        f"track.tracking_uri={uri}", f"track.experiment={EXPERIMENT}", f"track.run_name={variant}-seed{seed}",
        f"sample.steps={plan.sample_steps}", *extra])


# ----------------------------------------------------------------------------------------------
# Stages


def train_variant(variant: str, seed: int, out: Path, plan: Plan, spec: dict) -> dict:
    """Train one variant x seed (resuming an interrupted run); the independent variant has nothing
    to train and gets an MLflow run of its own for its measures."""
    folder = out / "train" / variant / f"seed{seed}"
    done = folder / "train_result.json"
    if done.is_file() and json.loads(done.read_text()).get("step") == plan.train_steps:
        return json.loads(done.read_text())
    cfg = variant_config(variant, seed, out, plan, spec)
    if variant == "independent":
        from svgen.fileio import write_json
        from svgen.tracking import MLflowTracker

        tracker = MLflowTracker(cfg.track.tracking_uri, EXPERIMENT, f"{variant}-seed{seed}", system_metrics_interval=0)
        tracker.log_params({"variant": variant, "seed": seed, "train.steps": 0})
        tracker.set_tags({"ablation.variant": variant})
        result = {"step": plan.train_steps, "run_id": tracker.run_id, "weights": None}
        tracker.close()
        write_json(done, result, indent=2)
        return result
    from svgen.train.loop import train

    result = train(cfg)
    if result.get("step") != plan.train_steps:  # preempted (SIGTERM/SIGUSR1): never sample a half-trained variant
        raise SystemExit(f"training of {variant} seed {seed} {result.get('reason', 'stopped')} at step "
                         f"{result.get('step')} of {plan.train_steps}; run the same command again to resume it")
    return result


def _load_system(variant: str, seed: int, out: Path, plan: Plan, spec: dict, gamma: float = 1.0):
    import torch

    from svgen.models.weights import load_trained_weights
    from svgen.system import build_system

    cfg = variant_config(variant, seed, out, plan, spec, [f"sample.gamma={gamma}"])
    torch.manual_seed(0)
    system = build_system(cfg)
    result = json.loads((out / "train" / variant / f"seed{seed}" / "train_result.json").read_text())
    if result.get("weights"):
        load_trained_weights(system.model, result.get("ema_weights") or result["weights"])
    system.model.eval()
    return cfg, system, result


def quality(system, cfg, out: Path, plan: Plan) -> dict[str, float]:
    """Held-out denoising losses per modality (the training objective on the test split, the
    same noise for every variant): how well the joint model still denoises each modality.

    And whether it uses the other modality's *timing*: the same losses with the other modality
    shifted by one second in time (circularly: same clip, same material, same caption, other
    instants), on the same noise. ``heldout_shift_gain_*`` = shifted - aligned loss: above 0 when
    a modality's denoising relies on where the other's events are; exactly 0 without a
    cross-modal path (the independent variant)."""
    import torch

    from svgen.data.latents import LatentBatch
    from svgen.data.loader import make_loader
    from svgen.system.objective import joint_loss

    g = torch.Generator().manual_seed(1234)
    sums = {"loss_audio": 0.0, "loss_video": 0.0, "shift_gain_audio": 0.0, "shift_gain_video": 0.0}
    n = 0
    loss_cfg = replace(cfg.train.loss, caption_dropout=0.0)
    with torch.no_grad():
        for i, batch in enumerate(make_loader(out / "data" / "test" / "shards", plan.batch_size, seed=0)):
            if i >= plan.quality_batches:
                break
            lb = system.encode(batch, cfg.data, g)
            shift_v = cfg.data.fps                                  # video latent frames per second
            shift_a = round(lb.x_a.shape[2] / cfg.data.seconds)     # audio latent frames per second
            video_moved = LatentBatch(lb.x_a, lb.x_v.roll(shift_v, dims=2), lb.text_a, lb.text_v)
            audio_moved = LatentBatch(lb.x_a.roll(shift_a, dims=2), lb.x_v, lb.text_a, lb.text_v)
            for _ in range(4):  # four noise draws per batch, each used for all three
                seed = int(torch.randint(0, 2**62, (1,), generator=g))
                losses = [joint_loss(system, b, loss_cfg, generator=torch.Generator().manual_seed(seed))[1]
                          for b in (lb, video_moved, audio_moved)]
                sums["loss_audio"] += float(losses[0]["loss_audio"])
                sums["loss_video"] += float(losses[0]["loss_video"])
                sums["shift_gain_audio"] += float(losses[1]["loss_audio"] - losses[0]["loss_audio"])
                sums["shift_gain_video"] += float(losses[2]["loss_video"] - losses[0]["loss_video"])
                n += 1
    return {f"heldout_{k}": v / max(n, 1) for k, v in sums.items()}


def test_prompts(out: Path, count: int) -> list[tuple[str, str]]:
    """(clip name, caption) of the first ``count`` test clips."""
    truth = json.loads((out / "data" / "test" / "impacts.json").read_text())["clips"]
    return [(name, truth[name]["caption"]) for name in sorted(truth)[:count]]


def sample_and_measure(variant: str, seed: int, out: Path, plan: Plan, spec: dict, progress: bool = True) -> list[dict]:
    """Rows (one per gamma) of a trained variant x seed; each row is written to rows/ when done."""
    import torch

    from svgen.generate import generate, save_sounding_videos

    rows, todo = [], []
    for gamma in plan.gammas_of(variant):
        path = out / "rows" / f"{variant}_seed{seed}_gamma{gamma:g}.json"
        if path.is_file():
            rows.append(json.loads(path.read_text()))
        else:
            todo.append((gamma, path))
    if not todo:
        return rows
    cfg, system, result = _load_system(variant, seed, out, plan, spec)
    q = quality(system, cfg, out, plan)
    prompts = test_prompts(out, plan.samples)
    for gamma, path in todo:
        t0 = time.time()
        sample_cfg = replace(cfg.sample, gamma=gamma, guidance_audio=1.0, guidance_video=1.0)
        clips: list[ClipMeasures] = []
        for start in range(0, len(prompts), 16):
            chunk = prompts[start:start + 16]
            # The same noise for every variant at a seed: the comparison is paired.
            seeds = [10_000 * seed + start + k for k in range(len(chunk))]
            frames, wave = generate(system, [c for _, c in chunk], cfg.data, sample_cfg, seed=seeds, progress=False)
            if start == 0:
                save_sounding_videos(out / "samples" / f"{variant}_seed{seed}_gamma{gamma:g}", frames[:4], wave[:4],
                                     cfg.data)
            clips += [measure_clip(f.numpy(), w.numpy(), cfg.data.fps, cfg.data.sample_rate)
                      for f, w in zip(frames, wave.float())]
        row = {"variant": variant, "gamma": gamma, "seed": seed, **asdict(summarise(clips)), **q,
               "train_steps": plan.train_steps if variant != "independent" else 0,
               "sample_seconds": time.time() - t0, "run_id": result.get("run_id")}
        row.pop("extra")
        from svgen.fileio import write_json

        # Per clip (impacts, onsets, errors), for reading a row beyond its summary.
        write_json(path.with_suffix(".clips.json"), [{"prompt": p, **asdict(c)} for (p, _), c in zip(prompts, clips)])
        write_json(path, row, indent=1)
        log_row(out, row)
        rows.append(row)
        if progress:
            print(f"  {variant} seed {seed} gamma {gamma:g}: AV-Align {row['av_align']:.3f}, timing "
                  f"{_fmt(row['timing_err_ms_median'])} ms, hit match {_fmt(row['hit_match'])}", flush=True)
    del system
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return rows


def log_row(out: Path, row: dict) -> None:
    """The row's measures into its variant x seed MLflow run, prefixed by gamma."""
    if not row.get("run_id"):
        return
    from svgen.tracking import MLflowTracker

    tracker = MLflowTracker(tracking_uri(out), EXPERIMENT, "", run_id=row["run_id"],
                            system_metrics_interval=0)
    metrics = {f"gamma{row['gamma']:g}/{k}": v for k, v in row.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("gamma", "seed")
               and v is not None and not k.startswith("heldout")}
    metrics |= {k: v for k, v in row.items() if k.startswith("heldout")}
    tracker.log(metrics, step=row.get("train_steps", 0))
    tracker.set_tags({"ablation.variant": row["variant"]})
    tracker.close()


def reference_rows(out: Path, spec: dict, plan: Plan) -> list[dict]:
    """The ceiling (real test clips, as data prep decoded them) and the floor (each real video
    with the next clip's audio), on the same measures, plus the visual detector's precision and
    recall against the generator's ground truth."""
    path = out / "rows" / "reference.json"
    if path.is_file():
        return json.loads(path.read_text())
    from svgen.fileio import write_json
    from svgen.metrics.suite import iter_clips

    truth = json.loads((out / "data" / "test" / "impacts.json").read_text())["clips"]
    # A shard key is '<input index>_<window>'; input i is list.csv's row i, clips/<i:05d>.mp4.
    by_name = {f"{int(c.name.split('_')[0]):05d}.mp4": c for c in iter_clips(out / "data" / "test" / "shards")}
    names = [n for n, _ in test_prompts(out, plan.samples) if n in by_name]
    real = [by_name[n] for n in names]
    if not real:
        raise RuntimeError(f"no test clip of {out / 'data' / 'test' / 'impacts.json'} was found in the test shards")
    fps, sr = spec["fps"], spec["sample_rate"]
    ceiling = [measure_clip(c.frames, c.wave, fps, sr) for c in real]
    floor = [measure_clip(c.frames, real[(i + 1) % len(real)].wave, fps, sr) for i, c in enumerate(real)]
    check = detector_check(ceiling, [truth[n]["impacts"] for n in names], fps)
    rows = [{"variant": "ceiling", "gamma": None, "seed": None, **asdict(summarise(ceiling)), **check},
            {"variant": "floor", "gamma": None, "seed": None, **asdict(summarise(floor))}]
    for r in rows:
        r.pop("extra")
    write_json(path, rows, indent=1)
    return rows


# ----------------------------------------------------------------------------------------------
# Report

MEASURES = (("av_align", "AV-Align", "{:.3f}"), ("timing_err_ms_median", "timing error median (ms)", "{:.0f}"),
            ("timing_err_ms_p90", "timing error p90 (ms)", "{:.0f}"), ("hit_match", "hits with a sound", "{:.2f}"),
            ("sound_match", "sounds with a hit", "{:.2f}"), ("impacts_per_clip", "impacts / clip", "{:.2f}"),
            ("onsets_per_clip", "onsets / clip", "{:.2f}"), ("heldout_loss_audio", "held-out loss, audio", "{:.4f}"),
            ("heldout_loss_video", "held-out loss, video", "{:.4f}"),
            ("heldout_shift_gain_audio", "audio loss rise, video moved 1 s", "{:+.4f}"),
            ("heldout_shift_gain_video", "video loss rise, audio moved 1 s", "{:+.4f}"))

# Two-sided 95 % Student t quantiles by degrees of freedom.
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def _fmt(v, f: str = "{:.3f}") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f.format(v)


def mean_ci(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and the half-width of its 95 % t interval (None with fewer than two values)."""
    vals = [v for v in values if v is not None]
    if not vals:
        return None, None
    m = float(np.mean(vals))
    if len(vals) < 2:
        return m, None
    return m, T95.get(len(vals) - 1, 1.96) * float(np.std(vals, ddof=1)) / math.sqrt(len(vals))


def aggregate(rows: list[dict]) -> list[dict]:
    """One entry per variant x gamma: each measure's mean and 95 % interval over seeds."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["variant"], r["gamma"]), []).append(r)
    out = []
    for (variant, gamma), rs in groups.items():
        entry = {"variant": variant, "gamma": gamma, "seeds": len(rs)}
        for key, _, _ in MEASURES:
            entry[key], entry[key + "_ci95"] = mean_ci([r.get(key) for r in rs])
        out.append(entry)
    return out


def write_report(out: Path, rows: list[dict], reference: list[dict], plan: Plan, seconds: float) -> dict[str, Path]:
    from svgen.fileio import write_json, write_text

    summary = aggregate(rows)
    write_json(out / "results.json", {"plan": asdict(plan), "wall_seconds": seconds, "rows": rows,
                                      "reference": reference, "summary": summary}, indent=1)
    head = "| variant | gamma | " + " | ".join(label for _, label, _ in MEASURES) + " |"
    lines = [f"Ablation: {len(plan.seeds)} seed(s), {plan.train_steps} training steps, {plan.samples} test prompts, "
             f"{plan.sample_steps} DDIM steps, no guidance. Mean ± 95 % interval over seeds.", "",
             head, "|" + "---|" * (len(MEASURES) + 2)]
    order = {v: i for i, v in enumerate(VARIANTS)}
    for s in sorted(summary, key=lambda e: (order.get(e["variant"], 9), e["gamma"])):
        cells = []
        for key, _, f in MEASURES:
            m, ci = s[key], s[key + "_ci95"]
            cells.append(_fmt(m, f) + (f" ± {_fmt(ci, f)}" if ci is not None else ""))
        lines.append(f"| {s['variant']} | {s['gamma']:g} | " + " | ".join(cells) + " |")
    for r in reference:
        cells = [_fmt(r.get(key), f) if not key.startswith("heldout") else "" for key, _, f in MEASURES]
        lines.append(f"| {r['variant']} (real clips) | - | " + " | ".join(cells) + " |")
    check = next((r for r in reference if "impact_recall" in r), None)
    if check:
        lines += ["", f"Visual-impact detector on the real test clips: recall {check['impact_recall']:.2f}, "
                      f"precision {check['impact_precision']:.2f} against the ground truth."]
    lines += ["", f"Wall time: {seconds / 60:.1f} min."]
    write_text(out / "results.md", "\n".join(lines) + "\n")
    plot(out / "results.png", summary, reference)
    return {"json": out / "results.json", "md": out / "results.md", "png": out / "results.png"}


def plot(path: Path, summary: list[dict], reference: list[dict]) -> None:
    """AV-Align and median timing error per variant x gamma, with 95 % intervals and the
    ceiling / floor as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = {v: i for i, v in enumerate(VARIANTS)}
    items = sorted(summary, key=lambda e: (order.get(e["variant"], 9), e["gamma"]))
    labels = [f"{e['variant']}\nγ={e['gamma']:g}" for e in items]
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 0.9 * len(items) * 2), 4.2))
    for ax, key, title in ((axes[0], "av_align", "AV-Align (higher is better)"),
                           (axes[1], "timing_err_ms_median", "median |onset - impact| ms (lower is better)")):
        vals = [e[key] if e[key] is not None else np.nan for e in items]
        errs = [e[key + "_ci95"] or 0.0 for e in items]
        colours = [f"C{order.get(e['variant'], 9)}" for e in items]
        ax.bar(range(len(items)), vals, yerr=errs, color=colours, capsize=3)
        for r, style in zip(reference, ("-", "--")):
            if r.get(key) is not None:
                ax.axhline(r[key], color="k", linestyle=style, linewidth=1, label=f"{r['variant']} (real)")
        ax.set_xticks(range(len(items)), labels, fontsize=7)
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    rows: list[dict] = field(default_factory=list)
    reference: list[dict] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)


def run(out: Path, plan: Plan, workers: int = 2, progress: bool = True) -> Outcome:
    """Every stage in order, finished ones skipped: data, bases, training (variant x seed),
    sampling and measures (variant x seed x gamma), the real-clip ceiling and floor, the report."""
    from launch.ablation.__main__ import make_bases, make_data
    from launch.ablation.hits import Spec

    t0 = time.time()
    out.mkdir(parents=True, exist_ok=True)
    spec = Spec(seconds=plan.seconds)
    say = print if progress else (lambda *a, **k: None)
    say(f"[1/5] corpus: {plan.train_clips} train + {plan.test_clips} test clips -> {out / 'data'}", flush=True)
    make_data(out / "data", plan.train_clips, plan.test_clips, 0, spec, workers=workers, progress=progress)
    say(f"[2/5] bases: autoencoders {plan.vae_steps} steps, UNets {plan.unet_steps} steps -> {out / 'bases'}", flush=True)
    make_bases(out / "data", out / "bases", plan.vae_steps, plan.unet_steps, seed=0, batch_size=plan.batch_size)
    spec_d = asdict(spec)
    say(f"[3/5] training {len(VARIANTS) - 1} variants x {len(plan.seeds)} seeds, {plan.train_steps} steps each", flush=True)
    for seed in plan.seeds:
        for variant in VARIANTS:
            train_variant(variant, seed, out, plan, spec_d)
    say(f"[4/5] sampling {plan.samples} test prompts per variant x gamma x seed, and measuring", flush=True)
    rows = []
    for seed in plan.seeds:
        for variant in VARIANTS:
            rows += sample_and_measure(variant, seed, out, plan, spec_d, progress)
    say("[5/5] real-clip ceiling and floor; report", flush=True)
    reference = reference_rows(out, spec_d, plan)
    files = write_report(out, rows, reference, plan, time.time() - t0)
    return Outcome(rows, reference, files)
