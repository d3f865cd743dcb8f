"""Time and memory bandwidth of the CMC-PE hot path: eager vs torch.compile vs Triton (issue 5).

The op: u = LayerNorm(x) over C, a = u + e resampled along time and broadcast over S.
Minimum traffic, counted for the bandwidth figures:
    forward : read x, write u and a             -> 3 * N * C elements (+ emb, weight: negligible)
    backward: read x, du, da, write dx          -> 4 * N * C elements (+ per-row mean/rstd)
with N = B * T * S rows. Achieved bandwidth = bytes / median time; "% peak" uses the card's
HBM peak from PEAK_BW (by device name), or --peak-gbs.

    python benchmarks/cmcpe_kernel.py                 # paper shapes on CUDA
    python benchmarks/cmcpe_kernel.py --scale 0.125   # reduced batch (e.g. on CPU: eager/compile only)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch._functorch.config

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from svgen.kernels.reference import norm_add_embedding_reference  # noqa: E402

# name: (B, T, S, C, T_other) at the paper's sizes (docs/method.md; issue 5)
SHAPES = {
    "video 32f x 16x16 x 1280": (16, 32, 256, 1280, 13),
    "video 32f x 8x8 x 1280": (16, 32, 64, 1280, 13),
    "audio 52 x 8 x 1280": (16, 52, 8, 1280, 32),
}
PEAK_BW = {"H100 SXM": 3350e9, "H100 NVL": 3900e9, "H100 PCIe": 2000e9, "H100": 3350e9, "H200": 4800e9,
           "A100-SXM4-80GB": 2039e9, "A100": 1555e9}


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def _bench(fn, dev, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        fn()
    _sync(dev)
    times = []
    for _ in range(iters):
        if dev.type == "cuda":
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            fn()
            e.record()
            torch.cuda.synchronize()
            times.append(s.elapsed_time(e) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peak_bandwidth(dev: torch.device, override: float | None) -> tuple[float | None, str]:
    if override:
        return override * 1e9, "given"
    if dev.type != "cuda":
        return None, "cpu"
    name = torch.cuda.get_device_name(dev)
    for key, bw in PEAK_BW.items():
        if key in name:
            return bw, name
    return None, name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--scale", type=float, default=1.0, help="multiply the batch by this (>= 1 sample)")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--impls", default="eager,compile,triton", help="comma list of eager, compile, triton")
    ap.add_argument("--peak-gbs", type=float, help="peak memory bandwidth in GB/s, if not a known card")
    ap.add_argument("--sweep", action="store_true",
                    help="also time the Triton kernels under other launch shapes (tile, warps, programs)")
    args = ap.parse_args()

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype)
    impls = args.impls.split(",")
    if dev.type == "cpu" and "triton" in impls:
        print("no CUDA device: Triton is skipped (its CPU interpreter is a correctness tool, not a benchmark)")
        impls.remove("triton")
    peak, card = peak_bandwidth(dev, args.peak_gbs)
    print(f"device: {card}; dtype {args.dtype}; torch {torch.__version__}; peak "
          f"{peak / 1e9:.0f} GB/s" if peak else f"device: {card}; dtype {args.dtype}; torch {torch.__version__}; peak unknown")
    fns = {"eager": norm_add_embedding_reference}
    if "compile" in impls:
        # Donated buffers forbid retain_graph, which the repeated backward timing needs.
        torch._functorch.config.donated_buffer = False
        fns["compile"] = torch.compile(norm_add_embedding_reference)
    if "triton" in impls:
        from svgen.kernels.triton_cmcpe import norm_add_embedding_triton
        fns["triton"] = norm_add_embedding_triton
    esize = torch.finfo(dtype).bits // 8

    for name, (B, T, S, C, To) in SHAPES.items():
        B = max(1, round(B * args.scale))
        n = B * T * S * C
        x = torch.randn(B, T, S, C, device=dev, dtype=dtype, requires_grad=True)
        e = torch.randn(B, To, C, device=dev, dtype=dtype, requires_grad=True)
        w = torch.ones(C, device=dev, requires_grad=True)
        b = torch.zeros(C, device=dev, requires_grad=True)
        gu, ga = torch.randn_like(x), torch.randn_like(x)
        fwd_bytes, bwd_bytes = 3 * n * esize, 4 * n * esize
        print(f"\n{name}: B={B} T={T} S={S} C={C} T_other={To} ({n * esize / 2**20:.0f} MiB per tensor)")
        results = {}
        for impl, fn in fns.items():
            with torch.no_grad():
                t_f = _bench(lambda: fn(x, e, w, b, eps=1e-5, mode="nearest"), dev, 3, args.iters)
            u, a = fn(x, e, w, b, eps=1e-5, mode="nearest")

            def backward():
                torch.autograd.grad((u, a), (x, e, w, b), (gu, ga), retain_graph=True)
            t_b = _bench(backward, dev, 3, args.iters)
            results[impl] = (t_f, t_b)
            line = f"  {impl:8s} fwd {t_f * 1e3:8.3f} ms {fwd_bytes / t_f / 1e9:7.0f} GB/s"
            if peak:
                line += f" ({100 * fwd_bytes / t_f / peak:4.0f}% peak)"
            line += f" | bwd {t_b * 1e3:8.3f} ms {bwd_bytes / t_b / 1e9:7.0f} GB/s"
            if peak:
                line += f" ({100 * bwd_bytes / t_b / peak:4.0f}% peak)"
            print(line)
            del u, a
        for impl in results:
            if impl != "eager":
                (ef, eb), (tf, tb) = results["eager"], results[impl]
                print(f"  speed-up {impl} vs eager: fwd {ef / tf:.2f}x  bwd {eb / tb:.2f}x")
        if args.sweep and "triton" in fns:
            sweep(x, e, w, b, gu, ga, dev, args.iters, fwd_bytes, bwd_bytes, peak)
        del x, e, gu, ga
        if dev.type == "cuda":
            torch.cuda.empty_cache()


def sweep(x, e, w, b, gu, ga, dev, iters, fwd_bytes, bwd_bytes, peak) -> None:
    from svgen.kernels import triton_cmcpe as tk

    default = dict(tk.LAUNCH)
    pct = (lambda nbytes, t: f"{100 * nbytes / t / peak:4.0f}% peak") if peak else (lambda nbytes, t: "")
    try:
        for tile, warps, programs in [(4096, 4, None), (8192, 8, None), (8192, 8, 8192), (8192, 8, 1 << 20),
                                      (8192, 8, 512)]:
            tk.LAUNCH.update(fwd_tile=tile, fwd_warps=warps, fwd_programs=programs)
            with torch.no_grad():
                t = _bench(lambda: tk.norm_add_embedding_triton(x, e, w, b, eps=1e-5, mode="nearest"), dev, 3, iters)
            print(f"  sweep fwd tile {tile:5d} warps {warps:2d} programs {programs or 'auto':>7}: {t * 1e3:7.3f} ms "
                  f"{pct(fwd_bytes, t)}")
        tk.LAUNCH.update(default)
        u, a = tk.norm_add_embedding_triton(x, e, w, b, eps=1e-5, mode="nearest")
        for tile, warps, programs in [(2048, 4, None), (4096, 8, None), (4096, 8, 2048), (4096, 8, 132),
                                      (8192, 8, None)]:
            tk.LAUNCH.update(bwd_tile=tile, bwd_warps=warps, bwd_programs=programs)
            t = _bench(lambda: torch.autograd.grad((u, a), (x, e, w, b), (gu, ga), retain_graph=True), dev, 3, iters)
            print(f"  sweep bwd tile {tile:5d} warps {warps:2d} programs {programs or 'auto':>7}: {t * 1e3:7.3f} ms "
                  f"{pct(bwd_bytes, t)}")
    finally:
        tk.LAUNCH.update(default)


if __name__ == "__main__":
    main()
