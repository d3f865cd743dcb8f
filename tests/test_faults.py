"""Fault injection on the tiny config (issue 19): what a run does when its checkpoints, data,
settings, tracker or disk go wrong, and when files carry code. Runs train() in this process (a
process may train several times); the kill -9 and MLflow-outage cases use subprocesses.

Every test here failed on the code before issue 19."""

from __future__ import annotations

import errno
import json
import os
import pickle
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from svgen.config import ConfigError, load_config
from svgen.data.source import ShardError
from svgen.distributed import free_port
from svgen.shards import shard_name
from svgen.testing.shards import write_shards
from svgen.train.checkpoint import CheckpointError, file_digest
from svgen.train.guards import TrainingError
from svgen.train.loop import train
from svgen.train.resume import ResumeError

from .conftest import ROOT, TINY, tiny_overrides

BIN = Path(sys.executable).parent


# ---------------------------------------------------------------------------------------------
# Fixtures: shards written directly (no Ray, svgen.testing.shards), runs in this process
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return write_shards(tmp_path_factory.mktemp("fault_shards") / "shards")


def run_cfg(tiny_bases, shards: Path, out: Path, *extra: str):
    return load_config(TINY, tiny_overrides(tiny_bases) + [
        f"train.source.shards={shards}", f"train.out_dir={out}", "train.steps=4", "train.batch_size=1",
        "train.log_every=1", "train.ckpt.save_every=2", "train.ckpt.keep_last=5", "train.ema_decay=0.9",
        "sample.steps=2", "train.parallel.precision=fp32", "track.system_metrics_interval=0",
        f"track.tracking_uri=sqlite:///{out.parent / 'mlflow.db'}", *extra])


def steps_on_disk(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "ckpt").glob("step_*"))


class Payload:
    """Unpickling this runs ``touch MARKER``: what a hostile checkpoint file would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def plant(path: Path, marker: Path) -> None:
    torch.save({"state": Payload(marker)}, path)


def update_manifest(folder: Path, name: str) -> None:
    """What an attacker who can write the checkpoint would also do: make the manifest agree."""
    m = json.loads((folder / "manifest.json").read_text())
    m["files"][name] = file_digest(folder / name)
    (folder / "manifest.json").write_text(json.dumps(m))


@pytest.fixture(scope="module")
def reference(tiny_bases, shards, tmp_path_factory) -> dict:
    """An uninterrupted 4-step run: checkpoints at steps 2 and 4, weights exported."""
    out = tmp_path_factory.mktemp("ref") / "run"
    result = train(run_cfg(tiny_bases, shards, out))
    return {"out": out, "result": result, "weights": load_file(result["weights"])}


def interrupted(tiny_bases, shards, tmp_path, *extra) -> Path:
    """A run stopped after 2 steps (checkpoint step_0000002), as a preemption leaves it."""
    out = tmp_path / "run"
    r = train(run_cfg(tiny_bases, shards, out, *extra), stop_after=2)
    assert r["reason"] == "stopped (stop_after)" and steps_on_disk(out) == ["step_0000002"]
    return out


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=lambda m: f"{k}: {m}")


# ---------------------------------------------------------------------------------------------
# Code execution from files
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"])
def test_a_pickle_payload_in_deepspeeds_files_is_refused_and_never_runs(tiny_bases, shards, tmp_path, name):
    out = interrupted(tiny_bases, shards, tmp_path)
    ckpt = out / "ckpt" / "step_0000002"
    marker = tmp_path / "pwned"
    plant(ckpt / name, marker)
    update_manifest(ckpt, name)  # the checksum agrees: only the unpickler stands in the way
    with pytest.raises(CheckpointError, match=f"refusing to load '.*{name}'.*objects other than tensors"):
        train(run_cfg(tiny_bases, shards, out))
    assert not marker.exists()


@pytest.mark.parametrize("name", ["trainer.pt", "rng_rank0.pt"])
def test_a_pickle_payload_in_a_format1_checkpoint_is_refused_and_never_runs(tiny_bases, shards, tmp_path, name):
    """Checkpoints written before manifests (trainer.pt, rng_rankR.pt pickles) still load, with
    weights_only: a payload there is refused too."""
    out = interrupted(tiny_bases, shards, tmp_path)
    ckpt = out / "ckpt" / "step_0000002"
    # Turn it into a format-1 checkpoint: pickled trainer state and RNGs, no manifest.
    trainer = json.loads((ckpt / "trainer.json").read_text())
    trainer["ema"] = {**trainer["ema"], "shadow": load_file(str(ckpt / "ema.safetensors"))}
    torch.save(trainer, ckpt / "trainer.pt")
    torch.save({"python": (3, tuple(range(625)), None), "numpy": ("MT19937", np.zeros(624, np.uint32), 0, 0, 0.0),
                "torch": torch.get_rng_state()}, ckpt / "rng_rank0.pt")
    for f in ("trainer.json", "ema.safetensors", "rng_rank0.safetensors", "manifest.json", "config.yaml"):
        (ckpt / f).unlink()
    marker = tmp_path / "pwned"
    plant(ckpt / name, marker)
    with pytest.raises(CheckpointError, match=f"refusing to load '.*{name}'"):
        train(run_cfg(tiny_bases, shards, out))
    assert not marker.exists()


def test_a_payload_that_breaks_the_checksum_is_set_aside_and_the_run_falls_back(tiny_bases, shards, tmp_path,
                                                                               reference):
    out = tmp_path / "run"
    train(run_cfg(tiny_bases, shards, out, "train.ckpt.save_every=1"), stop_after=3)
    marker = tmp_path / "pwned"
    plant(out / "ckpt" / "step_0000003" / "mp_rank_00_model_states.pt", marker)
    result = train(run_cfg(tiny_bases, shards, out, "train.ckpt.save_every=1"))
    assert not marker.exists()
    assert result["started_at"] == 2 and result["step"] == 4
    assert (out / "ckpt" / "damaged_step_0000003").is_dir()
    assert_same_weights(reference["weights"], load_file(result["weights"]))


def test_pipe_lines_in_a_shard_list_are_refused_unless_allowed(tiny_bases, shards, tmp_path):
    marker = tmp_path / "pwned"
    listing = tmp_path / "shards.txt"
    listing.write_text(f"{shards / shard_name(0)}\npipe:touch {marker}; cat {shards / shard_name(1)}\n")
    with pytest.raises(ShardError, match=r"line 2 is a shell command.*train.source.allow_pipe=true"):
        train(run_cfg(tiny_bases, listing, tmp_path / "run"))
    listing.write_text(f"{shards / shard_name(0)}\nhttp://example.com/shard-000001.tar\n")
    with pytest.raises(ShardError, match=r"line 2 has URL scheme 'http:'"):
        train(run_cfg(tiny_bases, listing, tmp_path / "run"))
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------
# Silent data loss
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["no_latest", "latest_dangling"])
def test_a_lost_latest_pointer_resumes_from_the_newest_checkpoint(tiny_bases, shards, tmp_path, reference, damage):
    out = interrupted(tiny_bases, shards, tmp_path)
    before = file_digest(out / "ckpt" / "step_0000002" / "manifest.json")
    if damage == "no_latest":
        (out / "ckpt" / "latest").unlink()
    else:
        (out / "ckpt" / "latest").write_text("step_0000099")
    result = train(run_cfg(tiny_bases, shards, out))
    assert result["started_at"] == 2 and result["step"] == 4
    assert file_digest(out / "ckpt" / "step_0000002" / "manifest.json") == before  # not overwritten
    assert_same_weights(reference["weights"], load_file(result["weights"]))


def test_starting_over_or_resuming_an_older_checkpoint_never_overwrites_newer_ones(tiny_bases, shards, tmp_path):
    out = tmp_path / "run"
    train(run_cfg(tiny_bases, shards, out, "train.ckpt.save_every=1"), stop_after=3)
    with pytest.raises(ResumeError, match="already holds checkpoints.*--resume auto"):
        train(run_cfg(tiny_bases, shards, out), resume="none")
    with pytest.raises(ResumeError, match="would train over newer checkpoints.*step_0000003"):
        train(run_cfg(tiny_bases, shards, out), resume=str(out / "ckpt" / "step_0000002"))
    assert steps_on_disk(out) == ["step_0000001", "step_0000002", "step_0000003"]


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_a_damaged_latest_checkpoint_is_detected_and_the_one_before_is_used(tiny_bases, shards, tmp_path, reference,
                                                                            damage, capsys):
    out = tmp_path / "run"
    train(run_cfg(tiny_bases, shards, out, "train.ckpt.save_every=1"), stop_after=3)
    target = out / "ckpt" / "step_0000003" / "mp_rank_00_model_states.pt"
    raw = bytearray(target.read_bytes())
    if damage == "flip":
        mid = len(raw) // 2
        raw[mid:mid + 4096] = bytes(b ^ 0xFF for b in raw[mid:mid + 4096])
        target.write_bytes(bytes(raw))
    elif damage == "truncate":
        target.write_bytes(bytes(raw[: len(raw) // 3]))
    else:
        target.unlink()
    result = train(run_cfg(tiny_bases, shards, out, "train.ckpt.save_every=1"))
    said = capsys.readouterr().out
    assert "checkpoint step_0000003 fails verification" in said and "resuming from step_0000002" in said
    assert result["started_at"] == 2 and result["step"] == 4
    assert_same_weights(reference["weights"], load_file(result["weights"]))


def test_when_no_checkpoint_verifies_the_run_stops_instead_of_starting_over(tiny_bases, shards, tmp_path):
    out = interrupted(tiny_bases, shards, tmp_path)
    (out / "ckpt" / "step_0000002" / "trainer.json").write_text("{}")
    with pytest.raises(CheckpointError, match="no checkpoint under .* verifies.*trainer.json"):
        train(run_cfg(tiny_bases, shards, out))
    assert not steps_on_disk(out)  # set aside as damaged_step_*, nothing new written over it
    assert (out / "ckpt" / "damaged_step_0000002").is_dir()


def test_non_finite_loss_stops_the_run_and_no_poisoned_checkpoint_is_written(tiny_bases, shards, tmp_path):
    out = tmp_path / "run"
    cfg = run_cfg(tiny_bases, shards, out, "train.optim.lr=1e30", "train.optim.grad_clip=0", "train.steps=30",
                  "train.ckpt.save_every=1", "train.max_nonfinite_steps=2")
    with pytest.raises(TrainingError, match=r"(audio|video).* loss has been NaN or infinite for 2 consecutive steps "
                                            r"\(steps \d+-\d+|trained weights hold NaN"):
        train(cfg)
    for step in (out / "ckpt").glob("step_*"):  # whatever was saved is finite
        weights = torch.load(step / "mp_rank_00_model_states.pt", weights_only=True)["module"]
        assert all(torch.isfinite(v).all() for v in weights.values()), step.name
    assert not (out / "export").exists()
    assert json.loads((out / "train_result.json").read_text())["reason"].startswith("failed: TrainingError")


def test_non_finite_numbers_in_the_config_are_refused(tiny_bases):
    for value in (".inf", "-.inf", ".nan", "nan", "inf"):
        with pytest.raises(ConfigError, match="train.optim.lr' must be a finite number"):
            load_config(TINY, [f"train.optim.lr={value}"])


def test_a_failing_validation_still_leaves_the_exported_weights(tiny_bases, shards, tmp_path):
    out = tmp_path / "run"
    out.mkdir(parents=True)
    (out / "samples").write_text("a file where the samples folder should be")
    result = train(run_cfg(tiny_bases, shards, out, "train.steps=2"))
    assert Path(result["weights"]).is_file() and Path(result["ema_weights"]).is_file()
    assert result["reason"] == "finished" and "samples" in result["validation_error"]
    import mlflow

    run = mlflow.MlflowClient(f"sqlite:///{out.parent / 'mlflow.db'}").get_run(result["run_id"])
    assert run.info.status == "FINISHED" and "samples" in run.data.tags["svgen.validation_error.step_2"]


def test_a_crashed_run_is_marked_failed_in_mlflow_with_its_error(tiny_bases, tmp_path):
    bad = write_shards(tmp_path / "bad", shards=2, per_shard=2)
    for i in range(1):  # the samples of one shard lose their audio
        path = bad / shard_name(i)
        with tarfile.open(path) as tf:
            members = [(m, tf.extractfile(m).read()) for m in tf.getmembers() if not m.name.endswith("audio.npy")]
        with tarfile.open(path, "w") as tf:
            for m, data in members:
                import io

                tf.addfile(m, io.BytesIO(data))
    out = tmp_path / "run"
    with pytest.raises(TrainingError, match=r"damaged samples.*audio.npy is missing"):
        train(run_cfg(tiny_bases, bad, out, "train.source.max_bad_samples=1"))
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{out.parent / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("svgen").experiment_id])
    assert run.info.status == "FAILED" and "audio.npy is missing" in run.data.tags["svgen.error"]


def test_resume_applies_a_new_lr_records_it_and_refuses_fixed_settings(tiny_bases, shards, tmp_path):
    out = interrupted(tiny_bases, shards, tmp_path)
    with pytest.raises(ResumeError, match=r"model.cmcpe.depth: 1 -> 2.*train.optim.weight_decay"):
        train(run_cfg(tiny_bases, shards, out, "model.cmcpe.depth=2", "train.optim.weight_decay=0.5"))
    result = train(run_cfg(tiny_bases, shards, out, "train.optim.lr=2.5e-4"))
    import mlflow

    run = mlflow.MlflowClient(f"sqlite:///{out.parent / 'mlflow.db'}").get_run(result["run_id"])
    history = mlflow.MlflowClient(f"sqlite:///{out.parent / 'mlflow.db'}").get_metric_history(result["run_id"], "lr")
    lrs = [m.value for m in sorted(history, key=lambda m: m.step)]
    assert lrs[:2] == [pytest.approx(1e-3)] * 2 and lrs[2:] == [pytest.approx(2.5e-4)] * 2  # applied after resume
    assert load_config(out / "config.yaml").train.optim.lr == 2.5e-4
    changes = [json.loads(x) for x in (out / "config_changes.jsonl").read_text().splitlines()]
    assert changes == [{"step": 2, "changes": {"train.optim.lr": [1e-3, 2.5e-4]}}]
    from safetensors import safe_open

    with safe_open(result["weights"], "pt") as f:
        meta = f.metadata()
    assert "lr: 0.00025" in meta["config"] and '"train.optim.lr": [0.001, 0.00025]' in meta["resume_changes"]
    assert json.loads(run.data.tags["svgen.resume_changes.step_2"]) == {"train.optim.lr": [1e-3, 2.5e-4]}


# ---------------------------------------------------------------------------------------------
# Bad input, clear errors
# ---------------------------------------------------------------------------------------------


def test_damaged_shards_and_samples_are_named_skipped_and_counted(tiny_bases, tmp_path):
    data = write_shards(tmp_path / "data", shards=4, per_shard=2)
    raw = (data / shard_name(1)).read_bytes()
    (data / shard_name(1)).write_bytes(raw[: len(raw) // 2 + 100])  # truncated mid-member
    with tarfile.open(data / shard_name(2)) as tf:
        members = [(m, tf.extractfile(m).read()) for m in tf.getmembers()]
    import io

    with tarfile.open(data / shard_name(2), "w") as tf:
        for m, b in members:
            if m.name == "000002_0000.audio.npy":
                continue  # a sample without its audio
            if m.name == "000002_0001.video_offsets.npy":
                b = b"not an array"
                m.size = len(b)
            tf.addfile(m, io.BytesIO(b))
    out = tmp_path / "run"
    result = train(run_cfg(tiny_bases, data, out, "train.steps=6"))
    assert result["step"] == 6 and result["bad_samples"] == 3
    logged = [json.loads(x) for x in (out / "bad_samples.rank0.jsonl").read_text().splitlines()]
    said = {(Path(r["shard"]).name, r.get("member")) for r in logged}
    assert said == {(shard_name(1), None), (shard_name(2), "audio.npy"), (shard_name(2), "video_offsets.npy")}
    assert any("truncated or corrupt tar" in r["error"] for r in logged)
    import mlflow

    history = mlflow.MlflowClient(f"sqlite:///{out.parent / 'mlflow.db'}").get_metric_history(result["run_id"],
                                                                                               "data/bad_samples")
    assert history[-1].value == 3
    with pytest.raises(TrainingError, match=r"3 damaged samples or shards on rank 0, more than "
                                            r"train.source.max_bad_samples=2 \(first: .*bad_samples.rank0.jsonl"):
        train(run_cfg(tiny_bases, data, tmp_path / "strict", "train.steps=6", "train.source.max_bad_samples=2"))


def _main(script: str, argv: list[str], capsys) -> tuple[int, str]:
    """A launch script's main() in this process: (exit status, the last line on stderr)."""
    import importlib

    module = importlib.import_module(f"launch.{script}")
    try:
        code = module.main(argv)
    except SystemExit as e:  # argparse's usage errors
        code = e.code
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    return code, err.splitlines()[-1] if err else ""


def test_mistakes_are_one_line_errors_naming_the_key_or_flag(tiny_bases, shards, tmp_path, capsys):
    import re

    loop = tmp_path / "loop.yaml"
    loop.write_text("base: loop.yaml\ntrain: {steps: 3}\n")
    bases = sum((["--set", o] for o in tiny_overrides(tiny_bases)), [])
    cases = [
        ("train", ["--config", str(loop)], "base:' links form a loop"),
        ("train", ["--config", str(TINY), "--set", "train.steps=0"], "train.steps' must be >= 1"),
        ("train", ["--config", str(TINY), "--set", "train.source.shards=/nowhere", *bases], "no shards at '/nowhere'"),
        ("train", ["--config", str(TINY), "--set", f"train.source.shards={shards}", *bases,
                   "--set", "model.audio.path=/nowhere/audioldm", "--set", f"train.out_dir={tmp_path / 'x'}"],
         "config key model.audio.path.*'/nowhere/audioldm'"),
        ("train", ["--config", str(TINY), "--set", f"train.source.shards={shards}", *bases,
                   "--set", f"train.out_dir={tmp_path / 'y'}", "--set", "train.batch_size=64",
                   "--set", "track.backend=none"], "yielded no full batch.*train.batch_size"),
        ("sample", ["--weights", "w.safetensors", "--num", "0"], "--num must be >= 1"),
        ("sample", ["--weights", "w.safetensors", "--batch-size", "0"], "--batch-size must be >= 1"),
        ("eval", ["--generated", str(tmp_path), "--weights", str(tmp_path / "none.safetensors")],
         "--weights '.*none.safetensors' does not exist"),
    ]
    for script, argv, expect in cases:
        code, last = _main(script, argv, capsys)
        assert code == 2 and re.search(expect, last), (script, argv, code, last)


def test_an_unwritable_checkpoint_folder_fails_at_start(tiny_bases, shards, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "ckpt").write_text("not a folder")
    t0 = time.time()
    with pytest.raises(CheckpointError, match=r"cannot write checkpoints under '.*ckpt'.*train.out_dir"):
        train(run_cfg(tiny_bases, shards, out))
    assert time.time() - t0 < 10  # before any model loads


def test_a_full_disk_names_enospc_and_keeps_the_previous_checkpoint(tiny_bases, shards, tmp_path, monkeypatch):
    import deepspeed

    out = interrupted(tiny_bases, shards, tmp_path)
    real = deepspeed.DeepSpeedEngine.save_checkpoint

    def full(self, *a, **k):
        real(self, *a, **k)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(deepspeed.DeepSpeedEngine, "save_checkpoint", full)
    with pytest.raises(CheckpointError, match=r"step_0000004 was not written: no space left on device \(ENOSPC\).*"
                                              r"step_0000002\) is intact"):
        train(run_cfg(tiny_bases, shards, out))
    assert steps_on_disk(out) == ["step_0000002"] and not list((out / "ckpt").glob(".tmp_*"))


def test_sample_without_config_leaves_no_temporary_files(reference, tmp_path, capsys):
    import tempfile

    from launch.sample import main

    before = set(Path(tempfile.gettempdir()).glob("*.yaml"))
    assert main(["--weights", reference["result"]["ema_weights"], "--set", "sample.steps=1",
                 "--out", str(tmp_path / "s")]) == 0
    assert len(list((tmp_path / "s").glob("*.mp4"))) == 1
    assert set(Path(tempfile.gettempdir()).glob("*.yaml")) == before


def test_two_runs_in_one_process_leave_the_environment_as_it_was(tiny_bases, shards, tmp_path):
    keys = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    before = {k: os.environ.get(k) for k in keys}
    a = train(run_cfg(tiny_bases, shards, tmp_path / "a", "train.steps=2"))
    b = train(run_cfg(tiny_bases, shards, tmp_path / "b", "train.steps=2"))
    assert a["reason"] == b["reason"] == "finished"
    assert {k: os.environ.get(k) for k in keys} == before
    assert not torch.distributed.is_initialized()
    assert_same_weights(load_file(a["weights"]), load_file(b["weights"]))


# ---------------------------------------------------------------------------------------------
# Processes killed, tracker killed
# ---------------------------------------------------------------------------------------------


def _train_cmd(tiny_bases, shards, out: Path, *extra: str) -> list[str]:
    cfg = run_cfg(tiny_bases, shards, out, *extra)
    args = [sys.executable, str(ROOT / "launch" / "train.py"), "--config", str(TINY)]
    for s in tiny_overrides(tiny_bases) + [
            f"train.source.shards={shards}", f"train.out_dir={out}", f"train.steps={cfg.train.steps}",
            "train.batch_size=1", "train.log_every=1", f"train.ckpt.save_every={cfg.train.ckpt.save_every}",
            "train.ckpt.keep_last=5", "train.ema_decay=0.9", "sample.steps=2", "train.parallel.precision=fp32",
            "track.system_metrics_interval=0", f"track.tracking_uri={cfg.track.tracking_uri}", *extra]:
        args += ["--set", s]
    return args


def _env() -> dict:
    # The thread count of this process (conftest): the reference run here and the runs there
    # then reduce in the same order.
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


@pytest.mark.multiprocess
def test_kill_9_at_a_random_moment_loses_at_most_save_every_steps(tiny_bases, shards, tmp_path, reference):
    """kill -9 somewhere in steps 2-4 (saves every step, so often inside a save): --resume auto
    finishes with the uninterrupted run's weights. 'step 2/' is printed before step 2's save, so a
    kill inside that save leaves step 1 as the newest complete checkpoint: at most save_every (1)
    step behind the printed one is lost, never more."""
    out = tmp_path / "run"
    cmd = _train_cmd(tiny_bases, shards, out, "train.ckpt.save_every=1")
    p = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in p.stdout:
        if line.startswith("step 2/"):
            time.sleep(float(np.random.default_rng().uniform(0.0, 1.5)))
            p.send_signal(signal.SIGKILL)
            break
    p.wait(timeout=120)
    # Folders are renamed into place only once written: the newest is the one to resume from.
    newest = max(int(d.name[5:]) for d in (out / "ckpt").glob("step_*"))
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "train_result.json").read_text())
    assert result["step"] == 4 and result["started_at"] == newest >= 1
    assert_same_weights(reference["weights"], load_file(result["weights"]))


@pytest.mark.multiprocess
def test_an_mlflow_outage_never_stops_training(tiny_bases, shards, tmp_path):
    """The tracking server dies after the run's first logged step: training finishes at its own
    pace with its weights, the calls it could not send are kept in tracker_unsent.jsonl; an
    unreachable server at start is an error within seconds."""
    port = free_port()
    store = tmp_path / "server.db"
    server = subprocess.Popen([str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{store}",
                               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                              env={**_env(), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        import requests

        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if requests.get(uri + "/health", timeout=2).ok:
                    break
            except requests.RequestException:
                time.sleep(0.5)
        out = tmp_path / "run"
        cmd = _train_cmd(tiny_bases, shards, out, "train.steps=6", f"track.tracking_uri={uri}")
        p = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for line in p.stdout:
            if line.startswith("step 1/"):
                os.killpg(server.pid, signal.SIGKILL)
                killed = time.time()
                break
        _, err = p.communicate(timeout=600)
        took = time.time() - killed
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
    assert p.returncode == 0, err[-3000:]
    result = json.loads((out / "train_result.json").read_text())
    assert result["step"] == 6 and Path(result["weights"]).is_file()
    assert took < 120, f"training after the outage took {took:.0f} s"
    unsent = [json.loads(x) for x in (out / "tracker_unsent.jsonl").read_text().splitlines()]
    assert any(u["kind"] == "metrics" and u["args"][1] == 6 for u in unsent)  # the last step's metrics kept
    assert unsent[-1]["kind"] == "terminate" and unsent[-1]["args"] == ["FINISHED"]

    t0 = time.time()
    proc = subprocess.run(_train_cmd(tiny_bases, shards, tmp_path / "run2", f"track.tracking_uri={uri}"), cwd=ROOT,
                          env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "does not answer" in proc.stderr.strip().splitlines()[-1]
    assert time.time() - t0 < 60
