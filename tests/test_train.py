"""Distributed training on CPU: 2 processes under ZeRO-2 and ZeRO-3 (gloo), two launcher
invocations acting as 2 nodes, SIGTERM + resume == uninterrupted, MLflow contents, Slurm dry runs."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from data_prep.run import run as run_prep
from svgen.config import load_config
from svgen.distributed import free_port
from svgen.media.mp4 import probe

from .conftest import ROOT, TINY, tiny_overrides
from svgen.testing.media import write_flash_click

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_data")
    src = root / "in"
    src.mkdir()
    rows = ["path,caption"]
    for i in range(8):
        write_flash_click(src / f"v{i}.mp4", [0.3 + 0.05 * i, 1.2], duration=2.1)
        rows.append(f"v{i}.mp4,flash {i % 3}")
    (src / "list.csv").write_text("\n".join(rows) + "\n")
    run_prep(str(src / "list.csv"), str(root / "shards"), load_config(TINY, ["prep.inputs_per_shard=2", "prep.workers=2"]),
             progress=False)
    return root / "shards"


def _sets(tiny_bases, shards, out: Path, *extra: str) -> list[str]:
    sets = tiny_overrides(tiny_bases) + [
        f"train.source.shards={shards}", f"train.out_dir={out}", "train.steps=4", "train.batch_size=1", "train.log_every=1",
        "train.ckpt.save_every=100", "train.ema_decay=0.9", "sample.steps=2", "data.size=64", "train.check_frozen=true",
        f"track.tracking_uri=sqlite:///{out.parent}/mlflow.db", *extra]
    args = []
    for s in sets:
        args += ["--set", s]
    return args


def _env(**extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def _result(out: Path) -> dict:
    return json.loads((out / "train_result.json").read_text())


# The ZeRO-2 run also pulls every speed lever that runs on CPU (compiled regions through dynamo's
# graph capture, fused AdamW, an attention backend): tests/test_perf.py checks they keep the maths.
LEVERS_ON = ("train.perf.compile=on", "train.perf.compile_backend=eager", "train.perf.fused_optimizer=on",
             "train.perf.attention=math")


@pytest.mark.multiprocess
@pytest.mark.parametrize("stage,precision,levers", [(2, "bf16", LEVERS_ON), (3, "fp32", ())])
def test_two_processes_zero(tmp_path, tiny_bases, shards, stage, precision, levers):
    out = tmp_path / f"zero{stage}"
    cmd = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", str(ROOT / "launch" / "train.py"),
           "--config", str(TINY), *_sets(tiny_bases, shards, out, f"train.parallel.zero_stage={stage}",
                                         f"train.parallel.precision={precision}", "train.steps=3", *levers)]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    if levers:
        assert "levers: compile, fused_optimizer (eager, default); attention math" in proc.stdout
    r = _result(out)
    assert r["step"] == 3 and r["world_size"] == 2 and r["reason"] == "finished"
    assert r["frozen_before"] == r["frozen_after"]
    w = load_file(r["weights"])
    assert w and not any(k.startswith(("audio_unet", "video_unet")) for k in w)  # trained weights only
    blocks = [v for k, v in w.items() if k.endswith("proj_out.weight")]
    assert any(v.abs().sum() > 0 for v in blocks)  # the zero-initialised outputs moved


@pytest.mark.multiprocess
def test_two_nodes_on_one_machine(tmp_path, tiny_bases, shards):
    """Two launcher invocations as node ranks 0 and 1 (what slurm/train.sbatch does per node)."""
    out = tmp_path / "multinode"
    port = free_port()
    procs = []
    for node_rank in (0, 1):
        cmd = [str(BIN / "torchrun"), "--nnodes", "2", "--nproc_per_node", "1", "--node_rank", str(node_rank),
               "--master_addr", "127.0.0.1", "--master_port", str(port), str(ROOT / "launch" / "train.py"),
               "--config", str(TINY), *_sets(tiny_bases, shards, out, "train.steps=2", "train.parallel.precision=fp32")]
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-4000:]
    r = _result(out)
    assert r["world_size"] == 2 and r["step"] == 2 and r["frozen_before"] == r["frozen_after"]


@pytest.mark.multiprocess
def test_sigterm_then_resume_matches_uninterrupted(tmp_path, tiny_bases, shards):
    ref = tmp_path / "ref"
    base = [sys.executable, str(ROOT / "launch" / "train.py"), "--config", str(TINY)]
    extra = ("train.steps=5", "train.parallel.precision=fp32", "train.parallel.zero_stage=2",
             "track.system_metrics_interval=1", "train.perf.peak_tflops=1.0")
    proc = subprocess.run(base + _sets(tiny_bases, shards, ref, *extra), cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]

    out = tmp_path / "run"
    p = subprocess.Popen(base + _sets(tiny_bases, shards, out, *extra), cwd=ROOT, env=_env(),
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in p.stdout:  # preempt once step 2 has been logged
        if line.startswith("step 2/"):
            p.send_signal(signal.SIGTERM)
            break
    rest, _ = p.communicate(timeout=600)
    assert p.returncode == 75  # EX_TEMPFAIL: checkpointed for preemption, slurm/train.sbatch requeues
    first = _result(out)
    assert first["reason"] == "stopped by SIGTERM" and 2 <= first["step"] < 5
    assert (out / "ckpt" / "latest").read_text().strip() == f"step_{first['step']:07d}"

    proc = subprocess.run(base + _sets(tiny_bases, shards, out, *extra) + ["--resume", "auto"], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    second = _result(out)
    assert second["started_at"] == first["step"] and second["step"] == 5
    a, b = load_file(_result(ref)["weights"]), load_file(second["weights"])
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=lambda m: f"{k}: {m}")
    ea, eb = load_file(_result(ref)["ema_weights"]), load_file(second["ema_weights"])
    for k in ea:
        torch.testing.assert_close(eb[k], ea[k], rtol=1e-5, atol=1e-6)

    # The resumed run continued the same MLflow run, which holds the metrics and an mp4 with sound.
    import mlflow

    assert second["run_id"] == first["run_id"]
    mlflow.set_tracking_uri(f"sqlite:///{out.parent}/mlflow.db")
    client = mlflow.MlflowClient()
    run = client.get_run(second["run_id"])
    for key in ("loss", "loss_audio", "loss_video", "lr", "grad_norm", "samples_per_s", "tflops_per_s", "mfu",
                "data_wait_frac", "peak_mem_mb", "val/av_align"):
        assert key in run.data.metrics, key
    # MFU = achieved TFLOP/s over the configured peak (1 TFLOP/s here), from FLOPs counted once.
    assert run.data.metrics["mfu"] == pytest.approx(run.data.metrics["tflops_per_s"] / 1.0)
    assert 0 < run.data.metrics["tflops_per_s"] < 1.0
    steps = [m.step for m in client.get_metric_history(second["run_id"], "loss")]
    assert sorted(steps) == [1, 2, 3, 4, 5]  # each step logged once: the resumed run starts after the checkpoint
    assert run.data.params["train.parallel.zero_stage"] == "2" and run.data.tags["git_commit"]
    # What the MLflow UI needs: the model-training view, the training data as the run's dataset
    # (with data_prep's manifest digest), and system metrics.
    exp = client.get_experiment(run.info.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    datasets = [d.dataset for d in run.inputs.dataset_inputs]
    assert len(datasets) == 1 and datasets[0].name == shards.name
    assert datasets[0].digest == run.data.tags["dataset_manifest_sha1"][:36]
    assert any(k.startswith("system/cpu_utilization") for k in run.data.metrics), sorted(run.data.metrics)
    # MLflow 3.17's UI ignores that tag (launch/mlflow_ui_check.py): the printed link selects the view.
    from svgen.tracking import run_ui_route

    assert run_ui_route(f"sqlite:///{out.parent}/mlflow.db", run.info.run_id) == (
        f"#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}?workflowType=machine_learning")
    arts = [a.path for a in client.list_artifacts(run.info.run_id, "samples")]
    assert arts and arts[0].endswith(".mp4")
    local = client.download_artifacts(run.info.run_id, arts[0], str(tmp_path))
    assert {s["type"] for s in probe(local)["streams"]} == {"video", "audio"}


def _fake_slurm(**extra):
    return {**os.environ, "SLURM_JOB_ID": "4242", "SLURM_JOB_NUM_NODES": "2", "SLURM_NTASKS_PER_NODE": "4",
            "SLURM_JOB_NODELIST": "gpu-a,gpu-b", "SLURM_CPUS_PER_TASK": "16", "SVGEN_DRY_RUN": "1",
            "PATH": "/usr/bin:/bin", **extra}


def test_train_sbatch_dry_run():
    proc = subprocess.run(["bash", str(ROOT / "slurm" / "train.sbatch"), "--config", "configs/greatesthits.yaml",
                           "--set", "train.source.shards=/data/gh"], env=_fake_slurm(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "MASTER_ADDR=gpu-a MASTER_PORT=29500 WORLD_SIZE=8" in proc.stdout
    assert "srun --kill-on-bad-exit=1 --nodes 2 --ntasks-per-node 4" in proc.stdout
    assert "launch/train.py --resume auto --config configs/greatesthits.yaml --set train.source.shards=/data/gh" in proc.stdout
    assert "/runs/slurm/4242/rank-%t.log" in proc.stdout and "on exit status 75: scontrol requeue 4242" in proc.stdout


def test_prep_sbatch_dry_run():
    proc = subprocess.run(["bash", str(ROOT / "slurm" / "prep.sbatch"), "--input", "/in/list.txt", "--output", "/out"],
                          env=_fake_slurm(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "-w gpu-a" in lines[0] and "start --head --node-ip-address gpu-a" in lines[0]
    assert "-w gpu-b" in lines[1] and "start --address gpu-a:6379" in lines[1]
    assert "job submit --address http://gpu-a:8265" in lines[2] and "-m data_prep --input /in/list.txt --output /out" in lines[2]


def test_sbatch_refuses_outside_slurm():
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM")}
    proc = subprocess.run(["bash", str(ROOT / "slurm" / "train.sbatch")], env=env, capture_output=True, text=True)
    assert proc.returncode != 0 and "not inside a Slurm allocation" in proc.stderr


def test_deepspeed_config_has_one_source_of_truth(tiny_cfg):
    from svgen.train.engine import deepspeed_config

    cfg = tiny_cfg("train.batch_size=3", "train.grad_accum=4", "train.parallel.zero_stage=3", "train.optim.grad_clip=0.5",
                   "train.parallel.precision=bf16")
    ds = deepspeed_config(cfg.train, world_size=8)
    assert ds["train_batch_size"] == 3 * 4 * 8
    assert ds["train_micro_batch_size_per_gpu"] == 3 and ds["gradient_accumulation_steps"] == 4
    assert ds["zero_optimization"]["stage"] == 3 and ds["gradient_clipping"] == 0.5 and ds["bf16"]["enabled"]


def test_launcher_env_detection():
    from svgen.distributed import launcher_env

    torchrun = launcher_env({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "n0", "MASTER_PORT": "1234"})
    assert torchrun == {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "n0", "MASTER_PORT": "1234"}
    srun = launcher_env({"SLURM_PROCID": "5", "SLURM_NTASKS": "16", "SLURM_LOCALID": "5", "MASTER_ADDR": "gpu-a",
                         "MASTER_PORT": "29500"})
    assert (srun["RANK"], srun["WORLD_SIZE"], srun["LOCAL_RANK"], srun["MASTER_ADDR"]) == ("5", "16", "5", "gpu-a")
    plain = launcher_env({})
    assert (plain["RANK"], plain["WORLD_SIZE"], plain["MASTER_ADDR"]) == ("0", "1", "127.0.0.1")
    with pytest.raises(RuntimeError, match="MASTER_ADDR"):
        launcher_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "2"})
