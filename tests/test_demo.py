"""End to end: `python -m launch.demo` on a fresh output folder ends with a sounding mp4."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from svgen.media.mp4 import probe

from .conftest import ROOT, tiny_overrides


@pytest.mark.multiprocess
def test_demo_end_to_end(tmp_path, tiny_bases):
    out = tmp_path / "demo"
    sets = []
    for o in tiny_overrides(tiny_bases) + ["train.steps=4", "sample.steps=3"]:
        sets += ["--set", o]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.run([sys.executable, "-m", "launch.demo", "--out", str(out), "--clips", "4", *sets],
                          cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    mp4 = Path(summary["sample"])
    assert mp4.is_file() and str(mp4) in proc.stdout and mp4.is_relative_to(out)
    assert summary["step"] == 4 and summary["frozen_before"] == summary["frozen_after"]
    assert len(list((out / "shards").glob("shard-*.tar"))) == 2  # 4 clips, 2 inputs per shard
    assert "mlflow ui" in proc.stdout and f"sqlite:///{out}/mlflow.db" in proc.stdout
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{out}/mlflow.db")
    run = mlflow.MlflowClient().get_run(summary["run_id"])
    assert "loss" in run.data.metrics and run.info.status == "FINISHED"
    info = probe(mp4)
    streams = {s["type"]: s for s in info["streams"]}
    assert set(streams) == {"video", "audio"} and len(info["streams"]) == 2
    assert streams["video"]["duration"] == pytest.approx(1.0, abs=0.13)
    assert streams["audio"]["duration"] == pytest.approx(1.0, abs=0.05)


def test_demo_help():
    proc = subprocess.run([sys.executable, "-m", "launch.demo", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0 and "--set" in proc.stdout and "configs/tiny.yaml" in proc.stdout
