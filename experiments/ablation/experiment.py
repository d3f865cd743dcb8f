"""The whole ablation in order (``python -m experiments.ablation run``): corpus, bases (one set
per bases seed), every variant trained with every joint seed, held-out losses, sampling and
measures, the real clips, the report. Finished stages are skipped; each stage's wall time is
measured into results.json (a resumed run counts only what it ran itself)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from experiments.ablation.hits import Spec
from experiments.ablation.report import write_report
from experiments.ablation.stages import (VARIANTS, Plan, make_bases, make_data, reference_rows, sample_and_measure,
                                         train_variant)


@dataclass
class Outcome:
    rows: list[dict] = field(default_factory=list)
    reference: list[dict] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)


def run(out: Path, plan: Plan, media: Path, workers: int = 2, progress: bool = True) -> Outcome:
    """Every stage in order, finished ones skipped."""
    out.mkdir(parents=True, exist_ok=True)
    spec = Spec(seconds=plan.seconds)
    say = print if progress else (lambda *a, **k: None)
    times_file = out / "stage_seconds.json"
    seconds: dict[str, float] = json.loads(times_file.read_text()) if times_file.is_file() else {}

    def timed(stage: str, fn):
        t0 = time.time()
        result = fn()
        seconds[stage] = seconds.get(stage, 0.0) + time.time() - t0
        from svgen.fileio import write_json

        write_json(times_file, seconds, indent=1)
        return result

    say(f"[1/5] corpus: {plan.train_clips} train + {plan.test_clips} test clips -> {out / 'data'}", flush=True)
    timed("corpus and data prep", lambda: make_data(out / "data", plan.train_clips, plan.test_clips, 0, spec, media,
                                                    workers=workers, progress=progress))
    for b in plan.bases_seeds:
        say(f"[2/5] bases seed {b}: autoencoders {plan.vae_steps} steps, UNets {plan.unet_steps} steps", flush=True)
        timed("bases", lambda: make_bases(out / "data", out / "bases" / f"seed{b}", plan.vae_steps, plan.unet_steps,
                                          seed=b, batch_size=plan.batch_size))
    spec_d = asdict(spec)
    say(f"[3/5] training {len(VARIANTS) - 1} variants x {len(plan.seeds)} seeds, {plan.train_steps} steps each",
        flush=True)
    results = {}
    for seed in plan.seeds:
        for variant in VARIANTS:
            results[variant, seed] = timed("training", lambda: train_variant(variant, seed, out, plan, spec_d))
    say(f"[4/5] held-out losses, then {plan.samples} test prompts per variant x gamma x seed, measured", flush=True)
    rows = []
    for seed in plan.seeds:
        for variant in VARIANTS:
            rows += timed("held-out losses, sampling, measures",
                          lambda: sample_and_measure(variant, seed, out, plan, spec_d, progress))
    say("[5/5] the real clips; report", flush=True)
    reference = timed("real clips", lambda: reference_rows(out, spec_d, plan))
    liveness = [json.loads(p.read_text()) for p in sorted((out / "train").glob("*/seed*/liveness.json"))
                if int(p.parent.name[4:]) in plan.seeds]
    files = write_report(out, rows, reference, liveness, plan, seconds)
    return Outcome(rows, reference, files)
