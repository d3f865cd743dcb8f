"""The ablation's measures, nulls, statistics and its one-command run (issues 12 and 20)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from experiments.ablation.hits import Spec, make_clip
from experiments.ablation.measures import (ClipEvents, clip_events, clip_scores, detector_check, pair_errors, score,
                                           summarise, visual_impacts)
from experiments.ablation.report import interval, summarise_rows
from experiments.ablation.stages import VARIANTS, Plan, mismatch_partners

from .conftest import ROOT

from .conftest import MEDIA_SOUNDS as MEDIA  # noqa: E402


@pytest.mark.parametrize("index", range(6))
def test_visual_impacts_are_read_off_the_picture_exactly(index):
    clip = make_clip(7, index, Spec(), MEDIA)
    assert list(visual_impacts(clip.frames, Spec.fps)) == pytest.approx(clip.impacts)


def test_real_clips_beat_their_null_and_the_detector_is_exact():
    spec = Spec()
    clips = [make_clip(11, i, spec, MEDIA) for i in range(16)]
    events = [clip_events(c.frames, c.wave, spec.fps, spec.sample_rate, c.caption) for c in clips]
    assert detector_check(events, [c.impacts for c in clips], spec.fps) == {"impact_recall": 1.0, "impact_precision": 1.0}
    s = summarise(clip_scores(events, spec.fps)).values
    assert s["hit_match"] == 1.0 and s["timing_ms"] < 40  # librosa's onset frames are 23 ms
    # A one-shot can ring into a second onset (precision ~0.6), yet F1 is far above its null.
    assert s["f1"] > 0.6 and s["f1_null"] < 0.2 and s["f1_excess"] > 0.4 and s["hit_match_excess"] > 0.6
    assert all(min(e.onsets, default=1.0) >= 0.1 for e in events)  # librosa's start-of-clip onset is dropped


def test_dense_noise_scores_no_better_than_its_null():
    """The audit's case: 16 random onsets a clip against ~8 random impacts meet most impacts
    within a frame (hit match near 1, timing error small), yet its excess over the null is ~0."""
    rng = np.random.default_rng(0)
    events = [ClipEvents(impacts=sorted(rng.uniform(0.2, 3.9, 8).tolist()), onsets=sorted(rng.uniform(0.1, 4, 16).tolist()),
                         peaks=sorted(rng.uniform(0.2, 3.9, 8).tolist()), caption=f"c{i % 4}") for i in range(64)]
    s = summarise(clip_scores(events, 8.0)).values
    assert s["hit_match"] > 0.6                       # looks good alone...
    for key in ("f1", "hit_match", "sound_match", "av_align"):
        assert abs(s[key + "_excess"]) < 0.05, key     # ...but is chance
    assert abs(s["timing_ms_excess"]) < 15


def test_scores_and_pairing():
    assert pair_errors(np.array([1.0, 2.0, 3.0]), np.array([1.02, 2.3, 2.95]), 0.25) == pytest.approx([0.02, 0.05])
    assert pair_errors(np.array([1.0]), np.array([]), 0.25) == []
    s = score([1.0, 2.02, 3.5], [1.01, 2.0], [], fps=8.0)
    assert s["hit_match"] == 1.0 and s["sound_match"] == pytest.approx(2 / 3) and s["f1"] == pytest.approx(0.8)
    assert score([], [1.0], [], 8.0)["f1"] == 0.0 and score([], [1.0], [], 8.0)["sound_match"] is None
    assert mismatch_partners(["a", "b", "a", "a", "c"]) == [2, 1, 3, 0, 4]


def test_statistics_are_per_seed_with_t_and_sign_tests():
    e = interval([1.0, 2.0, 3.0, 4.0])
    assert e["mean"] == 2.5 and e["ci95"] == pytest.approx(3.182 * np.std([1, 2, 3, 4], ddof=1) / 2, rel=1e-3)
    assert e["positive"] == 4 and e["p_sign"] == pytest.approx(0.125) and e["p_t"] < 0.05
    plan = Plan(seeds=(0, 1, 2), bases_seeds=(0,), gammas=(1.0,))
    rows = [{"variant": v, "gamma": 1.0, "seed": s, "f1_excess": base + 0.01 * s, "impacts_per_clip": 2.0,
             "onsets_per_clip": 2.0, **{k: 0.0 for k in ("heldout_loss_audio", "heldout_loss_video",
                                                         "heldout_mismatch_rise_audio", "heldout_mismatch_rise_video")}}
            for v, base in (("independent", 0.0), ("cmcpe", 0.1)) for s in range(3)]
    summary = summarise_rows(rows, plan)
    (cmp,) = [c for c in summary["comparisons"] if c["a"] == "cmcpe" and c["b"] == "independent"]
    assert cmp["n"] == 3 and cmp["mean"] == pytest.approx(0.1) and cmp["positive"] == 3
    assert [Plan().bases_of(s) for s in range(8)] == [0, 0, 1, 1, 2, 2, 3, 3]  # joint seeds split evenly over the bases


def _run_smoke(out) -> tuple[str, float]:
    # A process of its own, as a user runs it.
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "experiments.ablation", "run", "--smoke", "--media", str(MEDIA),
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=900, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, time.time() - t0


@pytest.mark.multiprocess
def test_smoke_run_writes_every_row_and_a_rerun_redoes_only_what_is_missing(tmp_path):
    """Plumbing only (toy sizes; it takes about 3 minutes on 2 CPU cores): every variant x gamma
    row with the primary measure, its null and their difference, the liveness record of every
    trained variant, the real clips, the plot and one MLflow run per variant; finished stages
    are skipped on a rerun."""
    import mlflow

    out = tmp_path / "abl"
    _, seconds = _run_smoke(out)
    print(f"smoke run: {seconds:.0f} s")
    result = json.loads((out / "results.json").read_text())
    assert result["seeds"] == [0] and result["bases_seeds"] == [0] and result["primary_measure"] == "f1_excess"
    rows = result["rows"]
    assert {(r["variant"], r["gamma"]) for r in rows} == {(v, g) for v in VARIANTS for g in (1.0, 1.5)}
    for r in rows:
        assert 0.0 <= r["f1"] <= 1.0 and r["f1_excess"] == pytest.approx(r["f1"] - r["f1_null"])
        assert r["heldout_loss_audio"] > 0 and r["heldout_loss_video"] > 0
        if r["variant"] == "independent":  # no cross-modal path: swapping the other modality changes nothing
            assert r["heldout_mismatch_rise_audio"] == 0.0 and r["heldout_mismatch_rise_video"] == 0.0
    assert set(result["cross_weight_delta"]) == set(VARIANTS[1:])
    for v, d in result["cross_weight_delta"].items():
        assert d["cross_weight_delta"]["mean"] > 0, v  # the cross-modal path moved
    assert "stage_seconds" in result and result["wall_seconds"] > 0
    probe = result["context_probe"]
    assert probe["level"] == 100 and sorted(probe["per_variant"]) == sorted(VARIANTS[1:])
    assert [(r["variant"], r["seed"]) for r in probe["per_seed"]] == [(v, 0) for v in sorted(VARIANTS[1:])]
    for d in probe["per_variant"].values():
        for m in ("audio", "video"):
            assert 0.0 < d[m]["time_variation"]["mean"] <= 1.0 and d[m]["clip_specificity"]["mean"] > 0.0
    assert len(json.loads((out / "rows" / "cmcpe_seed0_gamma1.5.clips.json").read_text())) == 4
    table = (out / "results.md").read_text()
    assert table.startswith("# Ablation result") and "**Primary" in table and "## What crosses over" in table
    for v in VARIANTS:
        assert f"| {v} | 1 |" in table and f"| {v} | 1.5 |" in table
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    runs = mlflow.MlflowClient(f"sqlite:///{out / 'mlflow.db'}").search_runs(
        [mlflow.MlflowClient(f"sqlite:///{out / 'mlflow.db'}").get_experiment_by_name("ablation").experiment_id])
    assert sorted(r.info.run_name for r in runs) == sorted(f"{v}-seed0" for v in VARIANTS)
    for r in runs:
        assert "gamma1.5/f1_excess" in r.data.metrics and "heldout_loss_audio" in r.data.metrics

    # A rerun: only what was deleted is done again (one row sampled, one variant trained, sampled and
    # measured), the rest is kept; and what is redone comes out bit for bit as before (same corpus,
    # seeds and bases): a seed's result must not depend on the run it came from.
    import shutil

    from safetensors.torch import load_file

    def measures(row: Path) -> dict:
        return {k: v for k, v in json.loads(row.read_text()).items() if k not in ("sample_seconds", "run_id")}

    gone = out / "rows" / "xattn_seq_seed0_gamma1.5.json"
    retrained = out / "train" / "cmcpe" / "seed0"
    kept = out / "rows" / "independent_seed0_gamma1.json"
    before = {row.name: measures(row) for row in [gone, *(out / "rows").glob("cmcpe_seed0_gamma*[0-9].json")]}
    assert len(before) == 3
    weights = load_file(retrained / "export" / "trained.safetensors")
    live = json.loads((retrained / "liveness.json").read_text())
    gone.unlink()
    for row in (out / "rows").glob("cmcpe_seed0_*"):
        row.unlink()
    shutil.rmtree(retrained)
    stamp = kept.stat().st_mtime_ns
    printed, _ = _run_smoke(out)
    assert "xattn_seq seed 0 gamma 1.5" in printed and "cmcpe seed 0 gamma 1:" in printed
    assert "independent seed 0 gamma 1:" not in printed and kept.stat().st_mtime_ns == stamp
    again = load_file(retrained / "export" / "trained.safetensors")
    assert sorted(again) == sorted(weights) and all(torch.equal(again[k], weights[k]) for k in weights)
    assert json.loads((retrained / "liveness.json").read_text()) == live
    assert {name: measures(out / "rows" / name) for name in before} == before

    # The probe command: every trained variant's record of the run, read back, in one file.
    from experiments.ablation.__main__ import main

    assert main(["probe", "--smoke", "--out", str(out)]) == 0
    probed = json.loads((out / "probe.json").read_text())
    assert [(r["variant"], r["seed"]) for r in probed] == [(v, 0) for v in VARIANTS[1:]]
    for r in probed:
        assert r["clips"] == 4
        for name in ("audio", "video"):
            assert [x["level"] for x in r[name]] == [100, 500, 900]
            for x in r[name]:
                assert 0.0 < x["time_variation"] <= 1.0 and x["clip_specificity"] > 0.0


def test_run_refuses_bad_sizes(capsys):
    from experiments.ablation.__main__ import main

    with pytest.raises(SystemExit):
        main(["run", "--smoke", "--seeds", "0", "--media", str(MEDIA), "--out", "/nonexistent"])
    assert "--seeds must be >= 1 (got 0)" in capsys.readouterr().err


def test_a_preempted_training_stops_the_ablation_instead_of_sampling_it(tmp_path, monkeypatch):
    import svgen.train.loop as loop
    from experiments.ablation.stages import train_variant

    monkeypatch.setattr(loop, "train", lambda cfg: {"step": 1, "reason": "stopped by SIGTERM"})
    spec = {"seconds": 2.0, "fps": 8, "size": 64, "sample_rate": 16000}
    with pytest.raises(SystemExit, match="cmcpe seed 0 stopped by SIGTERM at step 1 of 2; run the same command again"):
        train_variant("cmcpe", 0, tmp_path, Plan.smoke(), spec)


def test_context_probe_figures_are_zero_without_timing_and_grow_with_it():
    import torch

    from experiments.ablation.probe import clip_specificity, time_variation

    flat = torch.ones(1, 4, 16)
    assert time_variation(flat) == 0.0 and clip_specificity(flat, flat.clone()) == 0.0
    events = torch.zeros(1, 4, 16)
    events[..., 3] = events[..., 9] = 1.0
    other = torch.roll(events, 4, dims=-1)  # same material, other instants
    assert time_variation(flat + 0.1 * events) < time_variation(flat + events)
    assert clip_specificity(flat + 0.1 * events, flat + 0.1 * other) < clip_specificity(flat + events, flat + other)
    assert clip_specificity(events, other) == pytest.approx(2 ** 0.5)


def test_probe_without_a_finished_variant_says_what_to_run(tmp_path, capsys):
    from experiments.ablation.__main__ import main

    assert main(["probe", "--smoke", "--out", str(tmp_path)]) == 2
    assert "run the ablation first" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["probe", "--out", str(tmp_path), "--clips", "1"])
