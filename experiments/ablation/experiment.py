"""The whole ablation in order (``python -m experiments.ablation run``): corpus, bases (one set
per bases seed), every variant trained with every joint seed, held-out losses, sampling and
measures, the real clips, the report. Finished stages are skipped; each stage's wall time is
measured into results.json (a resumed run counts only what it ran itself)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from experiments.ablation.blocks import SECONDS, block_bases, block_seeds, import_block
from experiments.ablation.hits import Spec
from experiments.ablation.probe import PROBE, format_row, probe_variant
from experiments.ablation.report import write_report
from experiments.ablation.stages import (TRAINED, VARIANTS, Plan, make_bases, make_data, reference_rows, sample_and_measure,
                                         train_variant)


@dataclass
class Outcome:
    rows: list[dict] = field(default_factory=list)
    reference: list[dict] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)


def run(out: Path, plan: Plan, media: Path, workers: int = 2, progress: bool = True, block: int | None = None,
        imports: tuple[Path, ...] = ()) -> Outcome:
    """Every stage in order, finished ones skipped: the whole plan, or one block of it (one bases
    seed and its joint seeds; blocks.py). Saved blocks in ``imports`` join the report. Each joint
    seed is finished (every variant trained, then sampled and measured) before the next starts,
    so a run that is stopped leaves whole seeds."""
    out.mkdir(parents=True, exist_ok=True)
    spec = Spec(seconds=plan.seconds)
    seeds = block_seeds(plan, block)
    say = print if progress else (lambda *a, **k: None)
    times_file = out / SECONDS
    label = "all blocks" if block is None else f"block {block}"

    def timed(stage: str, fn):
        t0 = time.time()
        result = fn()
        seconds = json.loads(times_file.read_text()) if times_file.is_file() else {}
        mine = seconds.setdefault(label, {})
        mine[stage] = mine.get(stage, 0.0) + time.time() - t0
        from svgen.fileio import write_json

        write_json(times_file, seconds, indent=1)
        return result

    say(f"[1/5] corpus: {plan.train_clips} train + {plan.test_clips} test clips -> {out / 'data'}", flush=True)
    timed("corpus and data prep", lambda: make_data(out / "data", plan.train_clips, plan.test_clips, 0, spec, media,
                                                    workers=workers, progress=progress))
    for src in imports:
        record = import_block(Path(src), out, plan)
        say(f"      imported block {record['block']} (joint seeds {record['seeds']}) from {src}", flush=True)
    for b in block_bases(plan, block):
        say(f"[2/5] bases seed {b}: autoencoders {plan.vae_steps} steps, UNets {plan.unet_steps} steps", flush=True)
        timed("bases", lambda: make_bases(out / "data", out / "bases" / f"seed{b}", plan.vae_steps, plan.unet_steps,
                                          seed=b, batch_size=plan.batch_size))
    spec_d = asdict(spec)
    say(f"[3-4/5] per joint seed {list(seeds)}: {len(VARIANTS) - 1} variants trained {plan.train_steps} steps, then "
        f"held-out losses and {plan.samples} test prompts per variant x gamma, measured", flush=True)
    for seed in seeds:
        for variant in VARIANTS:
            timed("training", lambda: train_variant(variant, seed, out, plan, spec_d))
        for variant in VARIANTS:
            timed("held-out losses, sampling, measures", lambda: sample_and_measure(variant, seed, out, plan, spec_d,
                                                                                   progress))
        for variant in TRAINED:
            row = timed("context probe", lambda: probe_variant(variant, seed, out, plan, spec_d))
            say("  " + format_row(row), flush=True)
    say("[5/5] the real clips; report", flush=True)
    reference = timed("real clips", lambda: reference_rows(out, spec_d, plan))
    rows = [json.loads(p.read_text()) for p in sorted((out / "rows").glob("*_seed*_gamma*.json"))
            if not p.name.endswith(".clips.json")]
    rows = [r for r in rows if r["seed"] in plan.seeds and r["gamma"] in plan.gammas]
    finished = lambda name: [json.loads(p.read_text()) for p in sorted((out / "train").glob(f"*/seed*/{name}"))  # noqa: E731
                             if int(p.parent.name[4:]) in plan.seeds]
    liveness, probes = finished("liveness.json"), finished(PROBE)
    seconds = json.loads(times_file.read_text())
    files = write_report(out, rows, reference, liveness, plan, seconds, probes)
    return Outcome(rows, reference, files)
