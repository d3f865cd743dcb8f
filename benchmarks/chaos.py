"""Random faults against real training runs on the tiny config (issue 19); prints what survived.

    .venv/bin/python benchmarks/chaos.py                 # 12 faults, about 8 minutes on 2 CPU cores
    .venv/bin/python benchmarks/chaos.py --faults 30 --seed 3

Each trial starts a fresh run (launch/train.py in a subprocess, 8 steps, a checkpoint every 2)
and injects one fault at a random moment: SIGKILL, SIGTERM or SIGUSR1 to the trainer; or a kill
followed by damage to the newest checkpoint (bytes flipped, a file truncated or deleted); or a
pickle payload planted in a checkpoint file (with the manifest left alone or rewritten to
match, as an attacker with write access would). Then it runs `--resume auto` until the run
ends (a refused payload checkpoint is deleted by hand first, as the error tells the user to).

Printed: faults injected, runs that ended with their exported weights, steps lost per fault
(the last step the killed run logged minus the step the resumed run started from; never more
than train.ckpt.save_every when the checkpoint survived, more when the fault destroyed the
newest checkpoint and the run fell back to the one before), and payloads executed (must be 0).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

STEPS, SAVE_EVERY = 8, 2
FAULTS = ("SIGKILL", "SIGTERM", "SIGUSR1", "flip", "truncate", "delete", "payload", "payload+manifest")


def _cmd(bases: dict, shards: Path, out: Path) -> list[str]:
    sets = [f"model.audio.path={bases['audio']}", f"model.video.path={bases['video']}",
            f"model.video.motion_adapter_path={bases['motion_adapter']}", f"train.source.shards={shards}",
            f"train.out_dir={out}", f"train.steps={STEPS}", "train.batch_size=1", "train.log_every=1",
            f"train.ckpt.save_every={SAVE_EVERY}", "train.ckpt.keep_last=3", "train.parallel.precision=fp32",
            "sample.steps=2", "track.system_metrics_interval=0", f"track.tracking_uri=sqlite:///{out.parent}/mlflow.db"]
    return [sys.executable, str(ROOT / "launch" / "train.py"), "--config", str(ROOT / "configs" / "tiny.yaml"),
            *sum((["--set", s] for s in sets), [])]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _run_until_fault(cmd: list[str], fault: str, rng: random.Random) -> int:
    """Start a run; at a random logged step (then a random delay) deliver the fault's signal.
    Returns the last step the run logged."""
    sig = {"SIGTERM": signal.SIGTERM, "SIGUSR1": signal.SIGUSR1}.get(fault, signal.SIGKILL)
    at = rng.randint(1, STEPS - 2)
    p = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    last = 0
    for line in p.stdout:
        if line.startswith("step "):
            last = int(line.split()[1].split("/")[0])
            if last == at:
                time.sleep(rng.uniform(0.0, 1.0))
                p.send_signal(sig)
                break
    for line in p.stdout:  # a graceful stop may still log a step
        if line.startswith("step "):
            last = int(line.split()[1].split("/")[0])
    p.wait(timeout=600)
    return last


def _damage(out: Path, fault: str, rng: random.Random, marker: Path) -> str:
    """Damage the newest checkpoint as ``fault`` says; returns what was done."""
    import torch

    steps = sorted((out / "ckpt").glob("step_*"))
    if not steps:
        return "no checkpoint to damage"
    newest = steps[-1]
    files = sorted(p for p in newest.iterdir() if p.is_file() and p.name != "manifest.json")
    if fault.startswith("payload"):
        target = newest / rng.choice([f.name for f in files if f.suffix == ".pt"])

        class Payload:
            def __reduce__(self):
                return (os.system, (f"touch {marker}",))

        torch.save({"x": Payload()}, target)
        if fault == "payload+manifest":
            from svgen.train.checkpoint import file_digest

            m = json.loads((newest / "manifest.json").read_text())
            m["files"][target.name] = file_digest(target)
            (newest / "manifest.json").write_text(json.dumps(m))
        return f"{fault} in {newest.name}/{target.name}"
    target = rng.choice(files)
    raw = bytearray(target.read_bytes())
    if fault == "flip":
        at = rng.randrange(max(1, len(raw) - 4096))
        raw[at:at + 4096] = bytes(b ^ 0xFF for b in raw[at:at + 4096])
        target.write_bytes(bytes(raw))
    elif fault == "truncate":
        target.write_bytes(bytes(raw[: rng.randrange(len(raw))]))
    else:
        target.unlink()
    return f"{fault} {newest.name}/{target.name}"


def trial(i: int, fault: str, bases: dict, shards: Path, work: Path, rng: random.Random) -> dict:
    out = work / f"run{i:03d}"
    marker = work / f"payload_ran_{i}"
    cmd = _cmd(bases, shards, out)
    logged = _run_until_fault(cmd, fault, rng)
    done = fault if fault.startswith("SIG") else _damage(out, fault, rng, marker)
    refused = False
    for _ in range(4):  # a preempted run is resumed until it ends
        proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
        if proc.returncode == 1 and "refusing to load" in proc.stderr:
            refused = True  # what the error tells the user: delete that checkpoint, resume again
            shutil.rmtree(sorted((out / "ckpt").glob("step_*"))[-1])
            continue
        if proc.returncode == 1 and "verifies" in proc.stderr:
            continue  # the only checkpoint was destroyed (now damaged_step_*): run again starts over
        if proc.returncode != 75:
            break
    result = json.loads((out / "train_result.json").read_text()) if (out / "train_result.json").is_file() else {}
    weights = bool(result.get("weights")) and Path(result["weights"]).is_file()
    newest_lost = not fault.startswith("SIG") and not done.startswith("no checkpoint")
    return {"fault": fault, "done": done, "logged": logged, "resumed_from": result.get("started_at"),
            "newest_destroyed": newest_lost,
            "lost": None if result.get("started_at") is None else max(0, logged - result["started_at"]),
            "weights": weights and proc.returncode == 0, "refused": refused, "payload_ran": marker.exists()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--faults", type=int, default=12, help="trials, one fault each (default 12)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", action="store_true", help="keep the runs' folders")
    args = ap.parse_args()
    from svgen.models.tiny import build_tiny_bases
    from svgen.testing.shards import write_shards

    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="svgen_chaos_"))
    bases = build_tiny_bases(work / "bases")
    shards = write_shards(work / "shards", shards=4, per_shard=2)
    t0 = time.time()
    rows = []
    for i in range(args.faults):
        fault = FAULTS[i % len(FAULTS)] if i < len(FAULTS) else rng.choice(FAULTS)
        row = trial(i, fault, bases, shards, work, rng)
        rows.append(row)
        print(f"[{i + 1}/{args.faults}] {row['done']}: logged step {row['logged']}, resumed from "
              f"{row['resumed_from']}, lost {row['lost']}, weights {'yes' if row['weights'] else 'NO'}"
              f"{', payload refused' if row['refused'] else ''}{', PAYLOAD RAN' if row['payload_ran'] else ''}",
              flush=True)
    def lost(kept: bool) -> str:
        vals = [r["lost"] for r in rows if r["lost"] is not None and r["newest_destroyed"] != kept]
        return f"max {max(vals)}, mean {sum(vals) / len(vals):.2f} over {len(vals)}" if vals else "-"

    print(f"\nfaults injected: {len(rows)} ({time.time() - t0:.0f} s, tiny config, {STEPS} steps, "
          f"save_every {SAVE_EVERY})")
    print(f"runs that ended with their weights: {sum(r['weights'] for r in rows)}/{len(rows)}")
    print(f"steps lost per fault, signals (the newest checkpoint intact): {lost(True)} (bound: save_every "
          f"{SAVE_EVERY})")
    print(f"steps lost per fault, the newest checkpoint destroyed (falls back to the one before, or to step 0 "
          f"when it was the only one): {lost(False)}")
    print(f"payloads planted: {sum(r['fault'].startswith('payload') for r in rows)}, refused at load: "
          f"{sum(r['refused'] for r in rows)}, executed: {sum(r['payload_ran'] for r in rows)}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
