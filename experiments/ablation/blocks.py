"""Blocks: the ablation split by bases seed, so that it can run in parts (issue 20).

The joint seeds are split into equal blocks, one per bases seed (Plan.bases_of). A block is
self-contained: its bases, its joint seeds' trainings, their rows. ``run --block B`` runs one
block; ``save-block`` keeps what the report needs of it (rows with their per-clip scores, each
trained variant's liveness and training record, the block's bases record and wall times, and
the corpus it ran on) in a small folder of JSON; ``run --with FOLDER`` brings a saved block into
another run's folder, so that its report covers every block. Weights, checkpoints and shards are
not kept: a saved block is its results, not a way to resume it.

Blocks may only be merged when they ran on the same corpus design: the ground truth of both
splits (impacts.json: every clip's caption, sound and impact times) must be identical. The mp4
bytes may differ between machines (the AAC encoder is not bit-reproducible), which changes
nothing the design fixes.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from experiments.ablation.stages import TRAINED, VARIANTS, Plan

CORPUS = "corpus.json"
SECONDS = "stage_seconds.json"


def block_seeds(plan: Plan, block: int | None) -> tuple[int, ...]:
    """The joint seeds of ``block`` (an index into plan.bases_seeds), or all of them for None."""
    if block is None:
        return plan.seeds
    if not 0 <= block < len(plan.bases_seeds):
        raise ValueError(f"block {block} does not exist: the plan has {len(plan.bases_seeds)} bases seeds "
                         f"{list(plan.bases_seeds)}, so blocks 0 to {len(plan.bases_seeds) - 1}")
    return tuple(s for s in plan.seeds if plan.bases_of(s) == plan.bases_seeds[block])


def block_bases(plan: Plan, block: int | None) -> tuple[int, ...]:
    return plan.bases_seeds if block is None else (plan.bases_seeds[block],)


def corpus_record(data: Path) -> dict:
    """The corpus' identity: the SHA-256 of each split's ground truth."""
    out = {}
    for split in ("train", "test"):
        truth = data / split / "impacts.json"
        out[split] = hashlib.sha256(truth.read_bytes()).hexdigest()
    return out


def block_files(out: Path, plan: Plan, block: int) -> list[Path]:
    """The files of ``block`` under ``out`` that its part of the report needs, relative to ``out``;
    an error naming what is missing when the block is not finished."""
    files, missing = [], []
    for seed in block_seeds(plan, block):
        for variant in VARIANTS:
            for gamma in plan.gammas:
                stem = f"rows/{variant}_seed{seed}_gamma{gamma:g}"
                files += [Path(stem + ".json"), Path(stem + ".clips.json")]
            folder = Path("train") / variant / f"seed{seed}"
            files.append(folder / "train_result.json")
            if variant in TRAINED:
                files.append(folder / "liveness.json")
                if (out / folder / "probe.json").is_file():  # the context probe: blocks run before it lack it
                    files.append(folder / "probe.json")
    bases = Path("bases") / f"seed{plan.bases_seeds[block]}" / "bases.json"
    files.append(bases)
    missing = [str(f) for f in files if not (out / f).is_file()]
    if missing:
        raise FileNotFoundError(f"block {block} of {out} is not finished: {len(missing)} file(s) missing, e.g. "
                                f"{missing[:3]}; run `python -m experiments.ablation run --block {block}` to finish it")
    return files


def save_block(out: Path, plan: Plan, block: int, to: Path) -> list[Path]:
    """Copy ``block``'s results under ``out`` to ``to`` (same layout), with the corpus record and
    the block's wall times; returns the files written."""
    from svgen.fileio import write_json

    files = block_files(out, plan, block)
    if to.exists() and any(to.iterdir()):
        raise FileExistsError(f"'{to}' is not empty: save a block into a new folder")
    written = []
    for rel in files:
        (to / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(out / rel, to / rel)
        written.append(to / rel)
    seconds = json.loads((out / SECONDS).read_text()) if (out / SECONDS).is_file() else {}
    label = f"block {block}"
    write_json(to / SECONDS, {label: seconds.get(label, {})}, indent=1)
    write_json(to / CORPUS, corpus_record(out / "data"), indent=1)
    write_json(to / "block.json", {"block": block, "bases_seed": plan.bases_seeds[block],
                                   "seeds": list(block_seeds(plan, block)), "plan": _plan_key(plan)}, indent=1)
    return written + [to / SECONDS, to / CORPUS, to / "block.json"]


def _plan_key(plan: Plan) -> dict:
    """The plan's settings that must match for two blocks to be one experiment."""
    from dataclasses import asdict

    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(plan).items()}


def import_block(src: Path, out: Path, plan: Plan) -> dict:
    """Bring a saved block into ``out``: refused unless it ran on the same corpus design and plan;
    a file already in ``out`` must be identical. Returns the block's record."""
    from svgen.fileio import write_json

    record_file = src / "block.json"
    if not record_file.is_file():
        raise FileNotFoundError(f"'{src}' is not a saved block (no block.json): make one with "
                                "`python -m experiments.ablation save-block`")
    record = json.loads(record_file.read_text())
    if record["plan"] != _plan_key(plan):
        diff = sorted(k for k in set(record["plan"]) | set(_plan_key(plan))
                      if record["plan"].get(k) != _plan_key(plan).get(k))
        raise ValueError(f"block '{src}' ran another plan (differs in {diff}): blocks of one report share a plan")
    theirs, ours = json.loads((src / CORPUS).read_text()), corpus_record(out / "data")
    if theirs != ours:
        raise ValueError(f"block '{src}' ran on another corpus (impacts.json differs: theirs {theirs}, this run's "
                         f"{ours}); regenerate the corpus with the same sizes and seeds")
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        rel = path.relative_to(src)
        if rel.parts[0] not in ("rows", "train", "bases"):
            continue
        target = out / "imported" / rel if rel.parts[0] == "bases" else out / rel  # never mistaken for built bases
        if target.is_file():
            if target.read_bytes() != path.read_bytes():
                raise FileExistsError(f"'{target}' exists and differs from the saved block's '{path}': this folder "
                                      "already ran that block; import into a folder that did not")
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    seconds = json.loads((out / SECONDS).read_text()) if (out / SECONDS).is_file() else {}
    seconds.update(json.loads((src / SECONDS).read_text()))
    write_json(out / SECONDS, seconds, indent=1)
    return record
