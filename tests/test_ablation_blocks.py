"""The ablation in blocks (issue 20): one bases seed and its joint seeds per block, a finished
block saved as JSON and brought into another run's report only when plan and corpus match."""

import json
from dataclasses import replace

import pytest

from experiments.ablation.blocks import block_seeds, corpus_record, import_block, save_block
from experiments.ablation.report import write_report
from experiments.ablation.stages import TRAINED, VARIANTS, Plan

PLAN = Plan(seeds=(0, 1, 2, 3), bases_seeds=(0, 1), gammas=(1.0,))
HELD = {k: 0.1 for k in ("heldout_loss_audio", "heldout_loss_video", "heldout_mismatch_rise_audio",
                         "heldout_mismatch_rise_video")}


def test_blocks_split_the_joint_seeds_by_bases_seed():
    assert block_seeds(Plan(), 0) == (0, 1) and block_seeds(Plan(), 3) == (6, 7)
    assert block_seeds(Plan(), None) == Plan().seeds
    with pytest.raises(ValueError, match="block 4 does not exist.*blocks 0 to 3"):
        block_seeds(Plan(), 4)


def _row(variant, seed, f1):
    return {"variant": variant, "gamma": 1.0, "seed": seed, "bases_seed": PLAN.bases_of(seed), "f1": f1,
            "f1_null": 0.2, "f1_excess": f1 - 0.2, "impacts_per_clip": 2.0, "onsets_per_clip": 2.5, **HELD}


def _corpus(out, tag="a"):
    for split in ("train", "test"):
        (out / "data" / split).mkdir(parents=True, exist_ok=True)
        (out / "data" / split / "impacts.json").write_text(json.dumps({"clips": {"00000.mp4": tag}}))


def _finished_block(out, block):
    _corpus(out)
    for seed in block_seeds(PLAN, block):
        for v in VARIANTS:
            stem = out / "rows" / f"{v}_seed{seed}_gamma1"
            stem.parent.mkdir(parents=True, exist_ok=True)
            stem.with_suffix(".json").write_text(json.dumps(_row(v, seed, 0.3 + 0.1 * (v == "cmcpe"))))
            stem.with_suffix(".clips.json").write_text("[]")
            folder = out / "train" / v / f"seed{seed}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "train_result.json").write_text(json.dumps({"step": PLAN.train_steps}))
            if v in TRAINED:
                (folder / "liveness.json").write_text(json.dumps({"variant": v, "seed": seed}))
    bases = out / "bases" / f"seed{PLAN.bases_seeds[block]}"
    bases.mkdir(parents=True, exist_ok=True)
    (bases / "bases.json").write_text("{}")
    (out / "stage_seconds.json").write_text(json.dumps({f"block {block}": {"training": 60.0}}))


def test_a_saved_block_joins_another_runs_report(tmp_path):
    first, second, saved = tmp_path / "first", tmp_path / "second", tmp_path / "saved"
    _finished_block(first, 0)
    with pytest.raises(FileNotFoundError, match="block 1 of .* is not finished"):
        save_block(first, PLAN, 1, tmp_path / "nope")
    # A probe record travels with its block where there is one (blocks run before the probe have none).
    (first / "train" / "cmcpe" / "seed0" / "probe.json").write_text(json.dumps({"variant": "cmcpe", "seed": 0}))
    files = save_block(first, PLAN, 0, saved)
    assert len(files) == 2 * len(VARIANTS) * 2 + len(VARIANTS) * 2 + len(TRAINED) * 2 + 1 + 3 + 1
    assert json.loads((saved / "corpus.json").read_text()) == corpus_record(first / "data")
    assert not (saved / "data").exists()  # results only: no clips, shards or weights
    with pytest.raises(FileExistsError, match="not empty"):
        save_block(first, PLAN, 0, saved)

    _finished_block(second, 1)
    record = import_block(saved, second, PLAN)
    assert record["seeds"] == [0, 1] and record["bases_seed"] == 0
    rows = sorted((second / "rows").glob("cmcpe_seed*_gamma1.json"))
    assert [p.name for p in rows] == [f"cmcpe_seed{s}_gamma1.json" for s in range(4)]
    assert (second / "train" / "cmcpe" / "seed0" / "liveness.json").is_file()
    assert json.loads((second / "train" / "cmcpe" / "seed0" / "probe.json").read_text())["seed"] == 0
    assert (second / "imported" / "bases" / "seed0" / "bases.json").is_file()
    assert not (second / "bases" / "seed0").exists()  # never mistaken for bases built here
    seconds = json.loads((second / "stage_seconds.json").read_text())
    assert set(seconds) == {"block 0", "block 1"}
    import_block(saved, second, PLAN)  # again: identical files are fine

    # The report covers both blocks: four seeds, not flagged partial.
    all_rows = [json.loads(p.read_text()) for p in (second / "rows").glob("*_gamma1.json")]
    write_report(second, all_rows, [], [], PLAN, seconds)
    result = json.loads((second / "results.json").read_text())
    assert result["seeds"] == [0, 1, 2, 3] and result["bases_seeds"] == [0, 1]
    assert "PARTIAL" not in (second / "results.md").read_text()
    (cmp,) = [c for c in result["summary"]["comparisons"] if c["a"] == "cmcpe" and c["b"] == "independent"]
    assert cmp["n"] == 4 and cmp["mean"] == pytest.approx(0.1)


def test_blocks_of_another_plan_or_corpus_or_a_conflicting_file_are_refused(tmp_path):
    first, saved = tmp_path / "first", tmp_path / "saved"
    _finished_block(first, 0)
    save_block(first, PLAN, 0, saved)
    other = tmp_path / "other"
    _corpus(other, tag="b")
    with pytest.raises(ValueError, match="ran on another corpus"):
        import_block(saved, other, PLAN)
    _corpus(other)
    with pytest.raises(ValueError, match=r"ran another plan \(differs in \['train_steps'\]\)"):
        import_block(saved, other, replace(PLAN, train_steps=7))
    row = other / "rows" / "cmcpe_seed0_gamma1.json"
    row.parent.mkdir(parents=True)
    row.write_text("{}")
    with pytest.raises(FileExistsError, match="already ran that block"):
        import_block(saved, other, PLAN)
    with pytest.raises(FileNotFoundError, match="not a saved block"):
        import_block(tmp_path / "first", other, PLAN)


def test_a_report_over_part_of_the_plan_says_so(tmp_path):
    _finished_block(tmp_path, 0)
    rows = [json.loads(p.read_text()) for p in (tmp_path / "rows").glob("*_gamma1.json")]
    write_report(tmp_path, rows, [], [], PLAN, {"block 0": {"training": 60.0}})
    md = (tmp_path / "results.md").read_text()
    assert "PARTIAL: joint seeds [0, 1] of the plan's [0, 1, 2, 3], bases seeds [0] of [0, 1]" in md.splitlines()[0]
    assert "| block 0 | training | 1.0 |" in md
    result = json.loads((tmp_path / "results.json").read_text())
    assert result["seeds"] == [0, 1] and result["planned_seeds"] == [0, 1, 2, 3]
