"""The ablation's measures and its one-command run (issue 12)."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from launch.ablation.experiment import VARIANTS, aggregate, mean_ci
from launch.ablation.hits import Spec, make_clip
from launch.ablation.measures import detector_check, measure_clip, pair_errors, summarise, visual_impacts

from .conftest import ROOT


@pytest.mark.parametrize("index", range(6))
def test_visual_impacts_are_read_off_the_picture_exactly(index):
    clip = make_clip(7, index, Spec())
    assert list(visual_impacts(clip.frames, Spec.fps)) == pytest.approx(clip.impacts)


def test_real_clips_are_in_sync_and_mismatched_ones_are_not():
    spec = Spec()
    clips = [make_clip(11, i, spec) for i in range(12)]
    real = [measure_clip(c.frames, c.wave, spec.fps, spec.sample_rate) for c in clips]
    shuffled = [measure_clip(c.frames, clips[(i + 1) % len(clips)].wave, spec.fps, spec.sample_rate)
                for i, c in enumerate(clips)]
    ceiling, floor = summarise(real), summarise(shuffled)
    assert detector_check(real, [c.impacts for c in clips], spec.fps) == {"impact_recall": 1.0, "impact_precision": 1.0}
    assert ceiling.hit_match == 1.0 and ceiling.timing_err_ms_median < 40  # librosa's onset frames are 23 ms
    assert floor.hit_match < 0.6 and floor.timing_err_ms_median > 2 * ceiling.timing_err_ms_median
    assert all(min(m.onsets, default=1.0) >= 0.1 for m in real)  # librosa's start-of-clip onset is dropped


def test_pairing_and_match_counts():
    assert pair_errors(np.array([1.0, 2.0, 3.0]), np.array([1.02, 2.3, 2.95]), 0.25) == pytest.approx([0.02, 0.05])
    assert pair_errors(np.array([1.0]), np.array([]), 0.25) == []
    s = summarise([])
    assert s.clips == 0 and s.timing_err_ms_median is None and s.hit_match is None


def test_mean_and_95_interval_over_seeds():
    m, ci = mean_ci([1.0, 2.0, 3.0])
    assert m == 2.0 and ci == pytest.approx(4.303 * 1.0 / math.sqrt(3))
    assert mean_ci([0.5]) == (0.5, None) and mean_ci([None, None]) == (None, None)
    rows = [{"variant": "cmcpe", "gamma": 1.5, "seed": s, "av_align": v, "timing_err_ms_median": None}
            for s, v in enumerate([0.2, 0.4])]
    (entry,) = aggregate(rows)
    assert entry["seeds"] == 2 and entry["av_align"] == pytest.approx(0.3) and entry["timing_err_ms_median"] is None


def _run_smoke(out) -> str:
    # A process of its own, as a user runs it: training in-process would leave this test process
    # a torch.distributed group and MASTER_PORT for every later test's subprocesses.
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}  # the runs go to out/mlflow.db
    proc = subprocess.run([sys.executable, "-m", "launch.ablation", "run", "--smoke", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.multiprocess
def test_smoke_run_writes_every_row_and_a_rerun_redoes_only_what_is_missing(tmp_path):
    """Plumbing only (toy sizes): the table has every variant x gamma, the reference rows, the
    plot and one MLflow run per variant; finished stages are skipped on a rerun."""
    import mlflow

    out = tmp_path / "abl"
    _run_smoke(out)
    result = json.loads((out / "results.json").read_text())
    rows = result["rows"]
    assert {(r["variant"], r["gamma"]) for r in rows} >= {(v, g) for v in VARIANTS for g in (1.0, 1.5)}
    assert {(r["variant"], r["gamma"]) for r in rows if r["variant"] == "cmcpe"} >= {("cmcpe", 2.0)}  # the sweep
    for r in rows:
        assert 0.0 <= r["av_align"] <= 1.0 and "timing_err_ms_median" in r and "timing_err_ms_p90" in r
        assert r["heldout_loss_audio"] > 0 and r["heldout_loss_video"] > 0
        if r["variant"] == "independent":  # no cross-modal path: moving the other modality changes nothing
            assert r["heldout_shift_gain_audio"] == 0.0 and r["heldout_shift_gain_video"] == 0.0
    assert len(json.loads((out / "rows" / "cmcpe_seed0_gamma1.5.clips.json").read_text())) == 2
    assert [r["variant"] for r in result["reference"]] == ["ceiling", "floor"]
    table = (out / "results.md").read_text()
    for v in VARIANTS:
        assert f"| {v} | 1 |" in table and f"| {v} | 1.5 |" in table
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list((out / "samples").glob("cmcpe_seed0_gamma1.5/*.mp4"))) == 2

    mlflow.set_tracking_uri(f"sqlite:///{out / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["ablation"], output_format="list")
    assert sorted(r.info.run_name for r in runs) == sorted(f"{v}-seed0" for v in VARIANTS)
    for r in runs:
        assert "gamma1.5/av_align" in r.data.metrics and "heldout_loss_audio" in r.data.metrics

    # A rerun: only the deleted row is sampled again; training, bases and data are kept.
    gone = out / "rows" / "xattn_seq_seed0_gamma1.5.json"
    kept = out / "rows" / "cmcpe_seed0_gamma1.json"
    gone.unlink()
    stamp = kept.stat().st_mtime_ns
    printed = _run_smoke(out)
    assert "xattn_seq seed 0 gamma 1.5" in printed and "cmcpe seed 0 gamma 1:" not in printed
    assert gone.is_file() and kept.stat().st_mtime_ns == stamp
    assert len(mlflow.search_runs(experiment_names=["ablation"], output_format="list")) == len(VARIANTS)


def test_run_refuses_bad_sizes(capsys):
    from launch.ablation.__main__ import main

    with pytest.raises(SystemExit):
        main(["run", "--smoke", "--seeds", "0", "--out", "/nonexistent"])
    assert "--seeds must be >= 1 (got 0)" in capsys.readouterr().err


def test_a_preempted_training_stops_the_ablation_instead_of_sampling_it(tmp_path, monkeypatch):
    import svgen.train.loop as loop
    from launch.ablation.experiment import Plan, train_variant

    monkeypatch.setattr(loop, "train", lambda cfg: {"step": 1, "reason": "stopped by SIGTERM"})
    spec = {"seconds": 2.0, "fps": 8, "size": 64, "sample_rate": 16000}
    with pytest.raises(SystemExit, match="cmcpe seed 0 stopped by SIGTERM at step 1 of 2; run the same command again"):
        train_variant("cmcpe", 0, tmp_path, Plan.smoke(), spec)
