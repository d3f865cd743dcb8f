"""Time of the fused glue operators against the eager PyTorch they replace (issue 23), forward +
backward, at shapes of the paper's step: GEGLU (svgen::geglu), GroupNorm + SiLU
(svgen::group_norm_silu), a transformer block's residual add + layer norm + position embedding
(svgen::row_norm), the encoders' gain norm (the same op) and the video encoder's GEGLU with its
token shift (svgen::geglu_shift). Prints one row per op and shape: eager ms, fused ms, speed-up, and
the fused op's achieved bandwidth over its minimum traffic.

    python benchmarks/glue_kernels.py            # on CUDA (the Triton kernels)
    python benchmarks/glue_kernels.py --scale 0.05   # anywhere: the operators' PyTorch path (no speed-up expected)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from svgen.kernels import gain_norm, geglu_time_shift  # noqa: E402
from svgen.kernels.ops import geglu_op, group_norm_silu_op, row_norm_op  # noqa: E402
from svgen.kernels.reference import geglu_reference  # noqa: E402

# GEGLU: (rows, inner width) of the video UNet's spatial feed-forwards at 32 x 32 latents, the
# motion modules' at 16 x 16, batch 8 x 32 frames. GroupNorm: (N, C, H, W) of the video UNet's
# first and third resnet levels (32 groups).
GEGLU = {"spatial ff 32x32, 1280": (8 * 32 * 1024, 1280), "motion ff 16x16, 2560": (8 * 256 * 32, 2560)}
GROUP_NORM = {"resnet 320 @ 32x32": (8 * 32, 320, 32, 32), "resnet 1280 @ 8x8": (8 * 32, 1280, 8, 8)}
# Row norms: (rows, frames, C) of the motion modules' tokens at 32 x 32 (add + norm + position
# embedding) and of the video encoder's first token-shift feed-forward (gain norm, C = 1706);
# the token shift's GEGLU input (B, T, H, W, 2I) at the encoder's first level.
ADD_NORM = {"motion tokens 32x32, 320": (8 * 1024, 32, 320)}
GAIN_NORM = {"encoder ff 32x32, 1706": (8 * 32 * 1024, 1706)}
TOKEN_SHIFT = {"encoder ff 32x32, 1706": (8, 32, 32 * 32, 1706)}


def _time(fn, dev: torch.device, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of the rows / samples (default 1)")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    args = ap.parse_args()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dt = getattr(torch, args.dtype)
    size = torch.tensor([], dtype=dt).element_size()
    print(f"device {torch.cuda.get_device_name() if dev.type == 'cuda' else 'cpu'}, {args.dtype}, scale {args.scale}")
    print("| op | shape | eager ms | fused ms | speed-up | fused GB/s |\n|---|---|---|---|---|---|")
    for name, (rows, inner) in GEGLU.items():
        rows = max(1, int(rows * args.scale))
        x = torch.randn(rows, 2 * inner, device=dev, dtype=dt, requires_grad=True)
        dy = torch.randn(rows, inner, device=dev, dtype=dt)
        eager = _time(lambda: geglu_reference(x).backward(dy), dev, args.repeats)
        fused = _time(lambda: geglu_op(x).backward(dy), dev, args.repeats)
        traffic = (3 * inner + 5 * inner) * rows * size  # fwd: read 2I write I; bwd: read I + 2I, write 2I
        print(f"| geglu | {name} | {eager * 1e3:.2f} | {fused * 1e3:.2f} | {eager / fused:.2f}x | {traffic / fused / 1e9:.0f} |")
    for name, (n, c, h, w) in GROUP_NORM.items():
        n = max(1, int(n * args.scale))
        norm = torch.nn.GroupNorm(32, c, device=dev, dtype=dt).requires_grad_(False)  # frozen, as in the bases
        x = torch.randn(n, c, h, w, device=dev, dtype=dt, requires_grad=True)
        dy = torch.randn_like(x)
        eager = _time(lambda: F.silu(norm(x)).backward(dy), dev, args.repeats)
        fused = _time(lambda: group_norm_silu_op(x, norm.weight, norm.bias, 32, norm.eps)[0].backward(dy), dev,
                      args.repeats)
        traffic = 5 * x.numel() * size  # the minimum: fwd read x, write y; bwd read dy and x, write dx
        print(f"| group_norm_silu | {name} | {eager * 1e3:.2f} | {fused * 1e3:.2f} | {eager / fused:.2f}x | "
              f"{traffic / fused / 1e9:.0f} |")

    for name, (rows, frames, c) in ADD_NORM.items():
        rows = max(1, int(rows * args.scale))
        norm = torch.nn.LayerNorm(c, device=dev, dtype=dt).requires_grad_(False)
        x, r = (torch.randn(rows, frames, c, device=dev, dtype=dt, requires_grad=True) for _ in range(2))
        pe = torch.randn(frames, c, device=dev, dtype=dt)
        ds, dy = torch.randn_like(x), torch.randn_like(x)

        def eager_add_norm():
            s = x + r
            torch.autograd.backward([s, norm(s) + pe], [ds, dy])

        def fused_add_norm():
            s, y = row_norm_op(x, r, norm.weight, norm.bias, pe, norm.eps, False)[:2]
            torch.autograd.backward([s, y], [ds, dy])

        eager, fused = _time(eager_add_norm, dev, args.repeats), _time(fused_add_norm, dev, args.repeats)
        traffic = 8 * x.numel() * size  # fwd read x, r, write s, y; bwd read dy, ds, s, write dx
        print(f"| add + layer norm + pe | {name} | {eager * 1e3:.2f} | {fused * 1e3:.2f} | {eager / fused:.2f}x | "
              f"{traffic / fused / 1e9:.0f} |")
    for name, (rows, c) in GAIN_NORM.items():
        rows = max(1, int(rows * args.scale))
        g = torch.ones(c, device=dev, dtype=dt, requires_grad=True)
        x = torch.randn(rows, c, device=dev, dtype=dt, requires_grad=True)
        dy = torch.randn_like(x)
        eager = _time(lambda: gain_norm(x, g, eps=1e-3, kernel="reference").backward(dy), dev, args.repeats)
        fused = _time(lambda: gain_norm(x, g, eps=1e-3, kernel="triton").backward(dy), dev, args.repeats)
        traffic = 5 * x.numel() * size
        print(f"| gain norm | {name} | {eager * 1e3:.2f} | {fused * 1e3:.2f} | {eager / fused:.2f}x | "
              f"{traffic / fused / 1e9:.0f} |")
    for name, (b, t, hw, inner) in TOKEN_SHIFT.items():
        b = max(1, int(b * args.scale))
        x = torch.randn(b, t, hw, 2 * inner, device=dev, dtype=dt, requires_grad=True)
        dy = torch.randn(b, t, hw, inner, device=dev, dtype=dt)
        eager = _time(lambda: geglu_time_shift(x, kernel="reference").backward(dy), dev, args.repeats)
        fused = _time(lambda: geglu_time_shift(x, kernel="triton").backward(dy), dev, args.repeats)
        traffic = 8 * inner * b * t * hw * size
        print(f"| geglu + token shift | {name} | {eager * 1e3:.2f} | {fused * 1e3:.2f} | {eager / fused:.2f}x | "
              f"{traffic / fused / 1e9:.0f} |")


if __name__ == "__main__":
    main()
