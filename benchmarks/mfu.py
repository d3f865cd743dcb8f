"""Model-FLOPs utilisation of the joint training step (issue 13).

One step = what the trainer runs per micro batch (docs/method.md): the no-grad x0_hat pass, the
training pass, backward, and the AdamW update, on random latents at the configured shapes.
Model FLOPs are counted once (torch.utils.flop_counter, an eager batch-1 step without
activation checkpointing, times the batch: recomputation is not model work); time is the mean over
``--repeats`` steps after ``--warmup`` steps (which absorb compilation and autotuning), with one
device synchronisation at each end. MFU = FLOPs per step / step time / the card's dense peak
(datasheet, svgen.train.perf.PEAK_TFLOPS_16BIT; on CPU, the peak of a large matrix product
measured in the same run).

For each lever configuration (``--levers``) and batch size it prints one row: TFLOP per step,
step time, TFLOP/s, MFU, samples/s, peak memory (CUDA; benchmarks/activation_memory.py sizes it
on any machine), and the same step through the two bases alone
at the same batch and levers (adapter overhead = joint / bases). With several configurations,
the first is the baseline: each row also shows its speed-up over it and the first step's loss
difference from it (the levers must not change the maths).

    python benchmarks/mfu.py                                  # CUDA: full-size bases, levers 'auto'
    python benchmarks/mfu.py --batches 1,4,8 --levers eager,auto
    python benchmarks/mfu.py --tiny                           # CPU smoke (CI): tiny bases
    python benchmarks/mfu.py --levers eager,channels_last,fused,flash,compile,auto --batches 8

A lever configuration is a name from LEVERS below or ``name=key:value+key:value`` over config
keys (e.g. ``frozen_motion=train.perf.compile:off+model.train_motion_modules:false``).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import tempfile
import time
from pathlib import Path

import torch

from common import ROOT, base_dtype, bases_step, bench_config, random_batch, sync  # noqa: I001

from svgen.system import build_system
from svgen.train.engine import enable_activation_checkpointing, make_optimizer, recomputation_off
from svgen.train.perf import (Levers, apply_levers, attention_backend, card_peak_tflops, count_flops,
                              resolve_levers)

OFF = ["train.perf.compile=off", "train.perf.channels_last=off", "train.perf.fused_optimizer=off",
       "train.perf.attention=auto", "model.glue_kernel=reference"]
LEVERS = {
    "eager": OFF,
    "channels_last": OFF + ["train.perf.channels_last=on"],
    "fused": OFF + ["train.perf.fused_optimizer=on"],
    "flash": OFF + ["train.perf.attention=flash"],
    "cudnn": OFF + ["train.perf.attention=cudnn"],
    "compile": OFF + ["train.perf.compile=on"],
    "cudagraphs": OFF + ["train.perf.compile=on", "train.perf.compile_mode=reduce-overhead"],
    "ckpt": OFF + ["train.parallel.activation_checkpointing=true"],
    "glue": OFF + ["model.glue_kernel=triton"],  # the fused GEGLU and GroupNorm + SiLU operators
    "auto": [],  # the trainer's defaults for the device
}


def parse_levers(spec: str) -> tuple[str, list[str]]:
    if "=" not in spec:
        if spec not in LEVERS:
            raise SystemExit(f"unknown lever configuration {spec!r}: use one of {sorted(LEVERS)} or name=key:value+...")
        return spec, LEVERS[spec]
    name, body = spec.split("=", 1)
    return name, [kv.replace(":", "=", 1) for kv in body.split("+")]


def measured_peak_tflops(dev: torch.device, dtype: torch.dtype) -> float:
    """A large matrix product's rate on this device (the CPU has no datasheet figure here)."""
    n = 4096 if dev.type == "cuda" else 1024
    a, b = torch.randn(n, n, device=dev, dtype=dtype), torch.randn(n, n, device=dev, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(dev)
    reps = 20 if dev.type == "cuda" else 5
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(dev)
    return 2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e12


class Bench:
    """One lever configuration: the system built once, stepped at each batch size."""

    def __init__(self, size: str, root: Path, bases: dict | None, sets: list[str], dev: torch.device):
        self.cfg, self.bases = bench_config(size, root, sets, bases)
        self.dev = dev
        self.levers: Levers = resolve_levers(self.cfg.train.perf, dev)
        torch.manual_seed(0)
        self.system = build_system(self.cfg).to(dev)
        # Trained-looking blocks (zero-initialised outputs would hide the added modules from the
        # loss comparison), the same in every configuration.
        g = torch.Generator().manual_seed(0)
        for blocks in (self.system.model.blocks_a, self.system.model.blocks_v):
            for block in blocks.values():
                w = block.proj_out.weight
                w.data.copy_(torch.randn(w.shape, generator=g) * 0.02)
        self.dtype = base_dtype(self.cfg)
        self.system.model.to(self.dtype)  # as DeepSpeed's bf16 mode: trained modules compute in the bases' dtype
        if self.cfg.train.parallel.activation_checkpointing:
            enable_activation_checkpointing(self.system.model)
        apply_levers(self.system.model, self.levers)
        self.opt = make_optimizer(self.system.model, self.cfg.train.optim, fused=self.levers.fused_optimizer)
        self._flops: int | None = None
        self.first_loss = float("nan")

    def step_fn(self, batch, gen):
        system, loss_cfg, opt, attention = self.system, self.cfg.train.loss, self.opt, self.levers.attention
        losses = []

        def forward_backward():
            with attention_backend(attention):
                loss, _ = system.loss(batch, loss_cfg, generator=gen, skip_unused_pass=False)
                loss.backward()
            losses.append(loss.detach())

        def step():
            forward_backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return forward_backward, step, losses

    def model_flops_per_sample(self) -> int:
        """Model FLOPs of one sample's step, counted on an eager batch-1 step (FLOPs grow
        linearly with the batch) without activation checkpointing, whose recomputation is work
        the model does not need; the same step's loss is every configuration's first loss."""
        if self._flops is None:
            forward_backward, _, losses = self.step_fn(random_batch(self.system, self.cfg, 1, self.dev),
                                                       torch.Generator(device=self.dev).manual_seed(1))
            with recomputation_off(self.system.model):
                self._flops = count_flops(forward_backward)
            self.first_loss = float(losses[0])
            self.opt.zero_grad(set_to_none=True)
        return self._flops

    def measure(self, b: int, warmup: int, repeats: int, with_bases: bool) -> dict:
        dev, out = self.dev, {"batch": b}
        out["flops"], out["first_loss"] = self.model_flops_per_sample() * b, self.first_loss
        batch = random_batch(self.system, self.cfg, b, dev)
        gen = torch.Generator(device=dev).manual_seed(1)
        _, step, _ = self.step_fn(batch, gen)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        t0 = time.perf_counter()
        for _ in range(warmup):
            step()
        sync(dev)
        out["warmup_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(repeats):
            step()
        sync(dev)
        out["step_s"] = (time.perf_counter() - t0) / repeats
        out["peak_gib"] = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None
        if with_bases:
            fb = bases_step(self.system, batch, self.dtype)
            for _ in range(2):
                fb()
            times = []
            for _ in range(max(3, repeats // 2)):
                sync(dev)
                t0 = time.perf_counter()
                fb()
                sync(dev)
                times.append(time.perf_counter() - t0)
            out["bases_s"] = statistics.median(times)
        return out


def fmt_row(name: str, r: dict, peak: float, base: dict | None) -> str:
    if "error" in r:
        return f"| {name} | {r['batch']} | {r['error']} | | | | | | | | |"
    tflop = r["flops"] / 1e12
    rate = tflop / r["step_s"]
    mem = f"{r['peak_gib']:.1f} GiB" if r["peak_gib"] is not None else "-"
    bases = f"{r['bases_s'] * 1e3:.0f} ms ({r['step_s'] / r['bases_s']:.2f}x)" if "bases_s" in r else "-"
    vs = "-"
    if base is not None and "step_s" in base:
        dl = abs(r["first_loss"] - base["first_loss"]) / max(abs(base["first_loss"]), 1e-12)
        vs = f"{base['step_s'] / r['step_s']:.2f}x, loss diff {dl:.1e}"
    return (f"| {name} | {r['batch']} | {tflop:.3g} | {r['step_s'] * 1e3:.1f} ms | {rate:.3g} | {100 * rate / peak:.1f} % "
            f"| {r['batch'] / r['step_s']:.2f} | {mem} | {bases} | {vs} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny bases, fp32 (the CPU smoke run CI does)")
    ap.add_argument("--batches", default=None, help="comma list of batch sizes per step (default: 1,4,8 on CUDA, 1,2 tiny)")
    ap.add_argument("--levers", default=None,
                    help=f"comma list of lever configurations, the first is the baseline (default: eager,auto on "
                         f"CUDA, eager for --tiny); names: {', '.join(LEVERS)}")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation, autotuning)")
    ap.add_argument("--repeats", type=int, default=None, help="timed steps (default 10 on CUDA, 3 on CPU)")
    ap.add_argument("--no-bases", action="store_true", help="skip the bases-alone step (the overhead ratio)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override for every run")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    dev = torch.device(args.device)
    size = "tiny" if args.tiny or dev.type != "cuda" else "full-size"
    batches = [int(b) for b in (args.batches or ("1,2" if size == "tiny" else "1,4,8")).split(",")]
    configs = [parse_levers(s) for s in (args.levers or ("eager" if size == "tiny" else "eager,auto")).split(",")]
    repeats = args.repeats or (10 if dev.type == "cuda" else 3)
    extra = list(args.set)

    card = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    with tempfile.TemporaryDirectory() as tmp:
        bases, rows = None, []
        for i, (name, sets) in enumerate(configs):
            bench = Bench(size, Path(tmp), bases, sets + extra, dev)
            bases = bench.bases
            if i == 0:
                dtype = base_dtype(bench.cfg)
                sheet = card_peak_tflops(dev, bench.cfg.train.perf.peak_tflops, bench.cfg.model.base_dtype)
                measured = measured_peak_tflops(dev, dtype)
                peak = sheet or measured
                d = bench.cfg.data
                print(f"torch {torch.__version__}, {card}; {size} bases, {bench.cfg.model.base_dtype}, "
                      f"{d.seconds:g} s x {d.fps} fps x {d.size} px")
                print(f"peak: {peak:.1f} TFLOP/s ({'datasheet' if sheet else 'measured matrix product'}); "
                      f"measured {dtype} matrix product: {measured:.1f} TFLOP/s")
                print("| levers | batch | TFLOP/step | step | TFLOP/s | MFU | samples/s | peak memory "
                      "| bases alone (joint/bases) | vs baseline |")
                print("|---|---|---|---|---|---|---|---|---|---|")
            print(f"<!-- {name}: {bench.levers.describe()} -->", flush=True)
            for b in batches:
                try:
                    r = bench.measure(b, args.warmup, repeats, not args.no_bases and name in (configs[0][0], configs[-1][0]))
                except torch.OutOfMemoryError:
                    r = {"batch": b, "error": "out of memory"}
                base = next((x for n, x in rows if n == configs[0][0] and x["batch"] == b), None) if i else None
                rows.append((name, r))
                print(fmt_row(name, r, peak, base), flush=True)
                gc.collect()
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
            del bench
            gc.collect()
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    done = [(n, r) for n, r in rows if "step_s" in r]
    if done:
        n, r = max(done, key=lambda nr: nr[1]["flops"] / nr[1]["step_s"])
        rate = r["flops"] / r["step_s"] / 1e12
        print(f"MFU {100 * rate / peak:.1f} % (best: levers {n}, batch {r['batch']}, {rate:.3g} TFLOP/s, "
              f"{r['batch'] / r['step_s']:.2f} samples/s)")


if __name__ == "__main__":
    main()
