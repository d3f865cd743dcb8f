"""The cluster path: `ray start --head` on 127.0.0.1, then `ray job submit` of the data prep."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import ROOT, TINY
from svgen.testing.media import write_flash_click

BIN = Path(sys.executable).parent
DASHBOARD = 8275  # outside Ray's default worker port range (10002-19999)


pytestmark = pytest.mark.multiprocess  # Ray and subprocesses in every test


@pytest.fixture
def ray_head(tmp_path):
    # Token auth on for both the head and the CLI (the CLI reads the token ray start saved).
    env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
    # `ray stop` ends every Ray process on the machine: first shut down the embedded Ray that
    # earlier in-process data-prep tests started, or its loss would take this pytest process down.
    import ray

    ray.shutdown()
    start = subprocess.run([str(BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1", "--port=6389",
                            "--dashboard-host=127.0.0.1", f"--dashboard-port={DASHBOARD}", "--num-cpus=2",
                            "--include-dashboard=true", "--disable-usage-stats"],
                           env=env, capture_output=True, text=True, timeout=180)
    assert start.returncode == 0, start.stderr[-3000:]
    try:
        yield env
    finally:
        subprocess.run([str(BIN / "ray"), "stop"], env=env, capture_output=True, timeout=120)


def test_ray_job_submit_round_trip(tmp_path, ray_head):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        write_flash_click(src / f"v{i}.mp4", [0.4, 1.3], duration=2.1)
    out = tmp_path / "out"
    cmd = [str(BIN / "ray"), "job", "submit", "--address", f"http://127.0.0.1:{DASHBOARD}", "--working-dir", str(ROOT),
           "--", "python", "-m", "data_prep", "--input", str(src), "--output", str(out), "--config", str(TINY),
           "--set", "prep.inputs_per_shard=1", "--no-progress"]
    deadline = time.time() + 60
    while True:  # the dashboard's job API comes up a little after `ray start` returns
        proc = subprocess.run(cmd, env=ray_head, capture_output=True, text=True, timeout=600)
        if proc.returncode == 0 or time.time() > deadline or "Connection" not in proc.stdout + proc.stderr:
            break
        time.sleep(2)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "succeeded" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["inputs"] == 3 and summary["clips_written"] == 6 and summary["errors"] == 0
    assert len(list(out.glob("shard-*.tar"))) == 3
