"""Training throughput (issue 4), in one run on the same model and data:

- a bare PyTorch loop (docs/method.md loss, AdamW, grad clip; same loader and latents) in one process;
- the framework loop (launch/train.py: DeepSpeed ZeRO-2, EMA, tracking off) with 1 process;
- the framework with 2 processes (torchrun, gloo): global samples/s and the 1 -> 2 scaling.

Overhead = bare / framework - 1 (target <= 5%). Every process runs one thread (OMP_NUM_THREADS=1)
so that 1 and 2 processes compare on this 2-core machine; fp32 (bf16 is slow on CPUs).

    python benchmarks/train_throughput.py [--steps 12] [--width 32]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from data_prep.run import run as run_prep  # noqa: E402
from svgen.testing.media import write_flash_click  # noqa: E402
from svgen.config import load_config  # noqa: E402
from svgen.data.loader import DataPosition, endless, make_loader  # noqa: E402
from svgen.system import build_system  # noqa: E402
from svgen.models.tiny import build_tiny_bases  # noqa: E402
from svgen.train.engine import make_optimizer  # noqa: E402

TINY = ROOT / "configs" / "tiny.yaml"
WARMUP = 3


def framework(sets: list[str], nproc: int, steps: int) -> float:
    args = []
    for s in sets + [f"train.steps={steps}", "train.log_every=1", "train.ckpt.save_every=100000", "track.backend=none"]:
        args += ["--set", s]
    launcher = [sys.executable] if nproc == 1 else [str(Path(sys.executable).parent / "torchrun"), "--standalone",
                                                    "--nproc_per_node", str(nproc)]
    out = subprocess.run(launcher + [str(ROOT / "launch" / "train.py"), "--config", str(TINY), "--resume", "none", *args],
                         cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    rates = [float(m) for m in re.findall(r"([0-9.]+) samples/s", out.stdout)]
    return statistics.median(rates[WARMUP:])


def bare(cfg, steps: int) -> float:
    torch.manual_seed(0)
    system = build_system(cfg)
    opt = make_optimizer(system.model, cfg.train.optim)
    it = endless(make_loader(cfg.train.source.shards, cfg.train.batch_size, seed=cfg.train.seed), DataPosition())
    gen = torch.Generator().manual_seed(0)
    system.model.train()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        batch = system.encode(next(it), cfg.data)
        loss, _ = system.loss(batch, cfg.train.loss, generator=gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(system.model.trainable_parameters(), cfg.train.optim.grad_clip)
        opt.step()
        times.append(time.perf_counter() - t0)
    return cfg.train.batch_size / statistics.median(times[WARMUP:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--width", type=int, default=16, help="tiny-base UNet width")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bases = build_tiny_bases(tmp / "bases", width=args.width)
        src = tmp / "in"
        src.mkdir()
        for i in range(8):
            write_flash_click(src / f"v{i}.mp4", [0.3, 1.1], duration=2.1)
        sets = [f"model.audio.path={bases['audio']}", f"model.video.path={bases['video']}",
                f"model.video.motion_adapter_path={bases['motion_adapter']}", f"train.source.shards={tmp / 'shards'}",
                f"train.out_dir={tmp / 'run'}", "train.batch_size=2", "train.parallel.precision=fp32", "train.parallel.zero_stage=2"]
        cfg = load_config(TINY, sets + ["prep.inputs_per_shard=2"])
        run_prep(str(src), str(tmp / "shards"), cfg, progress=False)
        import ray

        ray.shutdown()
        b = bare(cfg, args.steps)
        f1 = framework(sets, 1, args.steps)
        f2 = framework(sets + [f"train.out_dir={tmp / 'run2'}"], 2, args.steps)
    print(f"tiny joint model (width {args.width}), batch 2 per process, fp32, 1 thread per process, "
          f"median over steps {WARMUP + 1}..{args.steps}")
    print(f"bare PyTorch loop, 1 process: {b:.3f} samples/s")
    print(f"framework (DeepSpeed ZeRO-2 + EMA), 1 process: {f1:.3f} samples/s")
    print(f"framework overhead vs bare: {100 * (b / f1 - 1):+.1f}%  (target <= 5%)")
    print(f"framework, 2 processes: {f2:.3f} samples/s (global)  scaling 1 -> 2: {f2 / f1:.2f}x")


if __name__ == "__main__":
    main()
