"""The ablation's statistics and report (issue 20): results.json, results.md, results.png.

The unit of analysis is the joint-training seed. Within a seed every variant samples the same
prompts with the same noise, so each comparison is paired per clip; each seed gives one number
per variant (the mean over its clips) and the summary is over seeds: a mean with its 95 %
t-interval, a paired t-test and a sign test against the other variant (or against 0).

The primary measure, named before the run (measures.PRIMARY), is the excess of onset-impact F1
at one frame over its null (the clip's onsets against the impacts of other clips of its
material); everything else is secondary.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path

import numpy as np

from experiments.ablation.measures import PRIMARY, SCORES
from experiments.ablation.stages import TRAINED, VARIANTS, Plan

PRIMARY_KEY = PRIMARY + "_excess"
PROBE_LEVEL = 100  # the context probe's row in the report: the encoder sees the other modality nearly clean
LABELS = {"f1": "onset-impact F1 at one frame", "hit_match": "hits with a sound", "sound_match": "sounds with a hit",
          "timing_ms": "median |onset - impact| (ms)", "av_align": "AV-Align"}
HELDOUT = ("heldout_loss_audio", "heldout_loss_video", "heldout_mismatch_rise_audio", "heldout_mismatch_rise_video")


def interval(values: list[float]) -> dict:
    """Mean, 95 % t-interval, t-test p (against 0) and sign test (positive count, p) of ``values``."""
    from scipy import stats

    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=float)
    out = {"n": int(len(v)), "mean": float(v.mean()) if len(v) else None, "ci95": None, "p_t": None,
           "positive": int((v > 0).sum()), "negative": int((v < 0).sum()), "p_sign": None}
    if len(v) >= 2:
        sd = float(v.std(ddof=1))
        out["ci95"] = float(stats.t.ppf(0.975, len(v) - 1) * sd / math.sqrt(len(v)))
        out["p_t"] = float(stats.ttest_1samp(v, 0.0).pvalue) if sd > 0 else (0.0 if v.mean() != 0 else 1.0)
    nonzero = out["positive"] + out["negative"]
    if nonzero:
        out["p_sign"] = float(stats.binomtest(out["positive"], nonzero, 0.5).pvalue)
    return out


def _by(rows: list[dict], variant: str, gamma: float) -> dict[int, dict]:
    return {r["seed"]: r for r in rows if r["variant"] == variant and r["gamma"] == gamma}


def summarise_rows(rows: list[dict], plan: Plan) -> dict:
    """Per variant x gamma: every score's mean over seeds (and its null and excess, each with
    an interval); paired comparisons of the primary measure; the held-out losses per variant."""
    per_variant = []
    for variant in VARIANTS:
        for gamma in plan.gammas:
            seeds = _by(rows, variant, gamma)
            if not seeds:
                continue
            entry = {"variant": variant, "gamma": gamma, "seeds": sorted(seeds)}
            for key in SCORES:
                for suffix in ("", "_null", "_excess"):
                    entry[key + suffix] = interval([r.get(key + suffix) for r in seeds.values()])
            for key in ("impacts_per_clip", "onsets_per_clip"):
                entry[key] = interval([r[key] for r in seeds.values()])
            per_variant.append(entry)
    comparisons = []
    pairs = [("cmcpe", v) for v in VARIANTS if v != "cmcpe"] + [(v, "independent") for v in TRAINED if v != "cmcpe"]
    for a, b in pairs:
        for gamma in plan.gammas:
            ra, rb = _by(rows, a, gamma), _by(rows, b, gamma)
            common = sorted(set(ra) & set(rb))
            if not common:
                continue
            diffs = [ra[s][PRIMARY_KEY] - rb[s][PRIMARY_KEY] for s in common
                     if ra[s][PRIMARY_KEY] is not None and rb[s][PRIMARY_KEY] is not None]
            comparisons.append({"a": a, "b": b, "gamma": gamma, "measure": PRIMARY_KEY, **interval(diffs)})
    heldout = []
    for variant in VARIANTS:
        seeds = _by(rows, variant, plan.gammas[0])  # the same for every gamma
        if seeds:
            heldout.append({"variant": variant, **{k: interval([r.get(k) for r in seeds.values()]) for k in HELDOUT}})
    return {"per_variant": per_variant, "comparisons": comparisons, "heldout": heldout}


def _level(record: dict, modality: str) -> dict:
    """A probe record's figures for ``modality`` ('audio'/'video') at PROBE_LEVEL."""
    return next(r for r in record[modality] if r["level"] == PROBE_LEVEL)


def _f(x, fmt: str = "{:.3f}") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)


def _ci(e: dict, fmt: str = "{:.3f}") -> str:
    return _f(e["mean"], fmt) + (f" ± {_f(e['ci95'], fmt)}" if e.get("ci95") is not None else "")


def _p(e: dict) -> str:
    sign = f"{e['positive']}/{e['positive'] + e['negative']} positive, sign p = {_f(e['p_sign'], '{:.3g}')}"
    return f"t p = {_f(e['p_t'], '{:.3g}')}; {sign}"


def headline(summary: dict, plan: Plan) -> str:
    """The primary result in one sentence."""
    gamma = plan.gammas[0]
    cm = next((e for e in summary["per_variant"] if e["variant"] == "cmcpe" and e["gamma"] == gamma), None)
    vs = {c["b"]: c for c in summary["comparisons"] if c["a"] == "cmcpe" and c["gamma"] == gamma}
    if cm is None:
        return "No CMC-PE rows: nothing to report."
    ex = cm[PRIMARY_KEY]
    parts = [f"At gamma {gamma:g}, CMC-PE's onset-impact F1 exceeds its own chance null by {_ci(ex)} "
             f"({ex['n']} seeds; {_p(ex)})"]
    for other in ("independent", "xattn_timed"):
        if other in vs:
            parts.append(f"and differs from {other} by {_ci(vs[other])} ({_p(vs[other])})")
    return ", ".join(parts) + "."


def write_report(out: Path, rows: list[dict], reference: list[dict], liveness: list[dict], plan: Plan,
                 stage_seconds: dict[str, dict[str, float]], probes: list[dict] = ()) -> dict[str, Path]:
    """``stage_seconds``: per part of the run ('block 0', 'all blocks', ...) the wall seconds of
    each stage. A report over fewer joint seeds than the plan's says so in its title. ``probes``:
    probe.py's record per trained variant x seed."""
    from svgen.fileio import write_json, write_text

    summary = summarise_rows(rows, plan)
    live = {}
    for v in TRAINED:
        recs = [r for r in liveness if r["variant"] == v]
        if recs:
            live[v] = {"per_seed": recs, **{k: interval([r[k] for r in recs]) for k in
                                             ("cross_weight_delta", "cross_weight_rel", "encoder_weight_delta",
                                              "grad_norm_mean")}}
    context = {}
    for v in TRAINED:
        recs = [r for r in probes if r["variant"] == v]
        if recs:
            context[v] = {name: {key: interval([x for r in recs if (x := _level(r, name)[key]) is not None])
                                 for key in ("time_variation", "clip_specificity")} for name in ("audio", "video")}
    total = sum(v for part in stage_seconds.values() for v in part.values())
    present = sorted({r["seed"] for r in rows})
    bases_present = sorted({plan.bases_of(s) for s in present})
    partial = "" if present == sorted(plan.seeds) else (
        f" (PARTIAL: joint seeds {present} of the plan's {list(plan.seeds)}, bases seeds {bases_present} of "
        f"{list(plan.bases_seeds)})")
    write_json(out / "results.json", {
        "seeds": present, "bases_seeds": bases_present, "planned_seeds": list(plan.seeds),
        "planned_bases_seeds": list(plan.bases_seeds), "primary_measure": PRIMARY_KEY,
        "headline": headline(summary, plan), "plan": asdict(plan), "stage_seconds": stage_seconds,
        "wall_seconds": total, "rows": rows, "reference": reference, "cross_weight_delta": live,
        "context_probe": {"level": PROBE_LEVEL, "per_variant": context, "per_seed": list(probes)},
        "summary": summary}, indent=1)
    lines = [f"# Ablation result: {len(present)} joint seeds on {len(bases_present)} bases seeds, "
             f"{plan.train_steps} training steps, {plan.samples} test prompts, {plan.sample_steps} DDIM steps{partial}", "",
             "**Primary (onset-impact F1 at one frame, minus its density-matched null):** " + headline(summary, plan),
             "", "## Primary measure per variant (mean over seeds ± 95 % t-interval)", "",
             "| variant | gamma | F1 | null | excess | excess: t p, sign |", "|---|---|---|---|---|---|"]
    for e in summary["per_variant"]:
        lines.append(f"| {e['variant']} | {e['gamma']:g} | {_ci(e['f1'])} | {_ci(e['f1_null'])} | "
                     f"{_ci(e[PRIMARY_KEY])} | {_p(e[PRIMARY_KEY])} |")
    for r in reference:
        lines.append(f"| real clips (ceiling) | - | {_f(r.get('f1'))} | {_f(r.get('f1_null'))} | "
                     f"{_f(r.get(PRIMARY_KEY))} | |")
    lines += ["", "## Paired differences of the primary excess (per seed, same prompts and noise)", "",
              "| a - b | gamma | difference | t p, sign |", "|---|---|---|---|"]
    for c in summary["comparisons"]:
        lines.append(f"| {c['a']} - {c['b']} | {c['gamma']:g} | {_ci(c)} | {_p(c)} |")
    lines += ["", "## Held-out denoising: loss, and its rise when the other modality comes from another clip of the "
              "same material (exactly 0 without a cross-modal path)", "",
              "| variant | loss audio | loss video | audio rise (video swapped) | video rise (audio swapped) |",
              "|---|---|---|---|---|"]
    for h in summary["heldout"]:
        lines.append(f"| {h['variant']} | {_ci(h['heldout_loss_audio'], '{:.4f}')} | "
                     f"{_ci(h['heldout_loss_video'], '{:.4f}')} | {_ci(h['heldout_mismatch_rise_audio'], '{:+.4f}')} "
                     f"({_p(h['heldout_mismatch_rise_audio'])}) | {_ci(h['heldout_mismatch_rise_video'], '{:+.4f}')} "
                     f"({_p(h['heldout_mismatch_rise_video'])}) |")
    lines += ["", "## Do the cross-modal paths train? (trained - initial weights; a path that does not move is a bug)",
              "", "| variant | cross_weight_delta | relative to init | encoders' delta | mean grad norm |",
              "|---|---|---|---|---|"]
    for v, d in live.items():
        lines.append(f"| {v} | {_ci(d['cross_weight_delta'])} | {_ci(d['cross_weight_rel'])} | "
                     f"{_ci(d['encoder_weight_delta'])} | {_ci(d['grad_norm_mean'])} |")
    if context:
        lines += ["", f"## What crosses over: the environment encoders' pooled features (probe.py; encoder input at "
                      f"noise level {PROBE_LEVEL}; 0 = carries no timing)", "",
                  "| variant | audio p: time variation | audio p: clip vs same-material clip | video p: time variation "
                  "| video p: clip vs same-material clip |", "|---|---|---|---|---|"]
        for v, d in context.items():
            lines.append(f"| {v} | " + " | ".join(_ci(d[m][k]) for m in ("audio", "video")
                                                   for k in ("time_variation", "clip_specificity")) + " |")
    lines += ["", "## Secondary measures (mean over seeds ± 95 % t-interval: value / null / excess)", "",
              "| variant | gamma | " + " | ".join(LABELS[k] for k in SCORES if k != PRIMARY) +
              " | impacts / clip | onsets / clip |", "|---|---|" + "---|" * (len(SCORES) + 1)]
    for e in summary["per_variant"]:
        fmt = {"timing_ms": "{:.0f}"}
        cells = [" / ".join(_ci(e[k + s], fmt.get(k, "{:.3f}")) for s in ("", "_null", "_excess"))
                 for k in SCORES if k != PRIMARY]
        lines.append(f"| {e['variant']} | {e['gamma']:g} | " + " | ".join(cells) +
                     f" | {_ci(e['impacts_per_clip'], '{:.2f}')} | {_ci(e['onsets_per_clip'], '{:.2f}')} |")
    for r in reference:
        cells = [" / ".join(_f(r.get(k + s), "{:.0f}" if k == "timing_ms" else "{:.3f}") for s in ("", "_null", "_excess"))
                 for k in SCORES if k != PRIMARY]
        lines.append("| real clips | - | " + " | ".join(cells) + f" | {_f(r['impacts_per_clip'], '{:.2f}')} | "
                     f"{_f(r['onsets_per_clip'], '{:.2f}')} |")
        if "impact_recall" in r:
            lines += ["", f"Visual-impact detector on the real test clips: recall {r['impact_recall']:.2f}, "
                          f"precision {r['impact_precision']:.2f} against the ground truth."]
    lines += ["", "## Wall time (measured)", "", "| part | stage | minutes |", "|---|---|---|"]
    lines += [f"| {part} | {k} | {v / 60:.1f} |" for part, stages in stage_seconds.items() for k, v in stages.items()]
    lines += [f"| total | | {total / 60:.1f} |"]
    write_text(out / "results.md", "\n".join(lines) + "\n")
    plot(out / "results.png", summary, reference, plan)
    return {"json": out / "results.json", "md": out / "results.md", "png": out / "results.png"}


def plot(path: Path, summary: dict, reference: list[dict], plan: Plan) -> None:
    """The primary excess per variant and gamma with 95 % intervals over seeds, 0 (chance) and the
    real clips' excess as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = summary["per_variant"]
    labels = [f"{e['variant']}\nγ={e['gamma']:g}" for e in items]
    order = {v: i for i, v in enumerate(VARIANTS)}
    fig, ax = plt.subplots(figsize=(max(8, 0.8 * len(items)), 4.2))
    means = [e[PRIMARY_KEY]["mean"] if e[PRIMARY_KEY]["mean"] is not None else np.nan for e in items]
    errs = [e[PRIMARY_KEY]["ci95"] or 0.0 for e in items]
    ax.bar(range(len(items)), means, yerr=errs, color=[f"C{order[e['variant']]}" for e in items], capsize=3, alpha=0.7)
    ax.axhline(0.0, color="k", linewidth=0.8)
    for r in reference:
        if r.get(PRIMARY_KEY) is not None:
            ax.axhline(r[PRIMARY_KEY], color="k", linestyle="--", linewidth=1, label="real clips")
    ax.set_xticks(range(len(items)), labels, fontsize=7)
    ax.set_title("onset-impact F1 minus its chance null (higher is better; 0 = chance)", fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
