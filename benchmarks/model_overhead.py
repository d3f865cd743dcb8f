"""Adapter overhead of the joint model (issue 2).

For the tiny config and a larger CPU-feasible config (on CUDA: the real base sizes), prints trainable vs frozen parameter
counts and the time of one joint training step (docs/method.md: no-grad x0_hat pass + training pass,
backward, AdamW step) against the same step structure run through the two bases alone (both
UNets forward twice, backward from their outputs, no added modules). Ratio = joint / bases.

    python benchmarks/model_overhead.py [--repeats 5]          # CPU: tiny and cpu-medium, fp32
    python benchmarks/model_overhead.py --kernels reference,triton   # CUDA: full-size, bf16
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from common import SIZES, base_dtype, bases_step, bench_config, random_batch, sync  # noqa: I001

from svgen.system import build_system
from svgen.train.engine import make_optimizer


def _time_pair(fa, fb, repeats: int, dev: torch.device) -> tuple[float, float]:
    """Medians of fa and fb timed alternately, so drifting clocks or host load hit both alike."""
    for f in (fa, fb, fa, fb):  # warm-up (and Triton/cuDNN autotuning)
        f()
    ta, tb = [], []
    for _ in range(repeats):
        for f, times in ((fa, ta), (fb, tb)):
            sync(dev)
            t0 = time.perf_counter()
            f()
            sync(dev)
            times.append(time.perf_counter() - t0)
    return statistics.median(ta), statistics.median(tb)


def run(name: str, repeats: int, root: Path, dev: torch.device, kernels: list[str], extra: list[str]) -> None:
    bases = None
    for kernel in kernels:
        cfg, bases = bench_config(name, root, list(extra) + [f"model.cmcpe.kernel={kernel}"], bases)
        if kernel == kernels[0]:
            print(f"{name}: base dtype {cfg.model.base_dtype}, {cfg.data.seconds:g} s x {cfg.data.fps} fps x "
                  f"{cfg.data.size} px, device {dev}")
        system = build_system(cfg).to(dev)
        dtype = base_dtype(cfg)
        # As DeepSpeed's bf16 mode does: the trained modules compute in the bases' dtype.
        system.model.to(dtype)
        batch = random_batch(system, cfg, 1, dev)
        g = torch.Generator(device=dev).manual_seed(0)
        opt = make_optimizer(system.model, cfg.train.optim)

        def joint_step():
            loss, _ = system.loss(batch, cfg.train.loss, generator=g)
            opt.zero_grad()
            loss.backward()
            opt.step()

        counts = system.model.parameter_counts()
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t_joint, t_bases = _time_pair(joint_step, bases_step(system, batch, dtype), repeats, dev)
        mem = f"  peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if dev.type == "cuda" else ""
        print(f"  kernel {kernel}: latents a{tuple(batch.x_a.shape)} v{tuple(batch.x_v.shape)}")
        print(f"    params: trainable {counts['trainable']:,}  frozen {counts['frozen']:,}  "
              f"({100 * counts['trainable'] / counts['total']:.1f}% trainable)")
        print(f"    step: joint {t_joint * 1e3:.1f} ms  bases-only {t_bases * 1e3:.1f} ms  "
              f"overhead ratio {t_joint / t_bases:.2f}{mem}", flush=True)
        del system, opt, batch
        if dev.type == "cuda":
            torch.cuda.empty_cache()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--only", choices=sorted(SIZES), action="append",
                    help="run this config (repeatable); default: tiny and cpu-medium on CPU, full-size on CUDA")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--kernels", default="auto", help="comma list of CMC-PE kernels to time (auto, reference, "
                                                      "compile, triton)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override applied to every config (e.g. data.seconds=2.0)")
    args = ap.parse_args()
    dev = torch.device(args.device)
    names = args.only or (["full-size"] if dev.type == "cuda" else ["tiny", "cpu-medium"])
    torch.manual_seed(0)
    card = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    print(f"torch {torch.__version__}, {card}, {torch.get_num_threads()} CPU threads")
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            run(name, args.repeats, Path(tmp), dev, args.kernels.split(","), args.set)


if __name__ == "__main__":
    main()
