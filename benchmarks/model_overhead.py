"""Adapter overhead of the joint model (issue 2).

For the tiny config and a larger CPU-feasible config (on CUDA: the real base sizes), prints trainable vs frozen parameter
counts and the time of one joint training step (METHOD.md: no-grad x0_hat pass + training pass,
backward, AdamW step) against the same step structure run through the two bases alone (both
UNets forward twice, backward from their outputs, no added modules). Ratio = joint / bases.

    python benchmarks/model_overhead.py [--repeats 5]          # CPU: tiny and cpu-medium, fp32
    python benchmarks/model_overhead.py --kernels reference,triton   # CUDA: full-size, bf16
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from svgen.config import load_config  # noqa: E402
from svgen.data.latents import LatentBatch  # noqa: E402
from svgen.models.codec import latent_shapes  # noqa: E402
from svgen.system import DTYPES, build_system  # noqa: E402
from svgen.models.tiny import build_tiny_bases  # noqa: E402
from svgen.train.engine import make_optimizer  # noqa: E402

CONFIGS = {
    # name: (config file, tiny-base width or "full", overrides)
    "tiny": ("tiny.yaml", 16, []),
    "cpu-medium": ("tiny.yaml", 64, ["data.size=128", "data.seconds=2.0", "model.encoder.context_dim=256"]),
    # Real AudioLDM-m / SD-1.5 / motion-adapter v1-5-2 sizes (random weights) at the paper's
    # GreatestHits setting (4 s, 8 fps, 256 px, bf16): for a GPU.
    "full-size": ("greatesthits.yaml", "full", []),
}


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def _time_pair(fa, fb, repeats: int, dev: torch.device) -> tuple[float, float]:
    """Medians of fa and fb timed alternately, so drifting clocks or host load hit both alike."""
    for f in (fa, fb, fa, fb):  # warm-up (and Triton/cuDNN autotuning)
        f()
    ta, tb = [], []
    for _ in range(repeats):
        for f, times in ((fa, ta), (fb, tb)):
            _sync(dev)
            t0 = time.perf_counter()
            f()
            _sync(dev)
            times.append(time.perf_counter() - t0)
    return statistics.median(ta), statistics.median(tb)


def run(name: str, repeats: int, root: Path, dev: torch.device, kernels: list[str], extra: list[str]) -> None:
    cfg_file, width, overrides = CONFIGS[name]
    full = width == "full"
    bases = build_tiny_bases(root / name, width=16 if full else width, full=full,
                             dtype=torch.bfloat16 if full else torch.float32)
    sets = [f"model.audio.path={bases['audio']}", f"model.video.path={bases['video']}",
            f"model.video.motion_adapter_path={bases['motion_adapter']}", "train.batch_size=1"] + overrides + extra
    # Always run the x0_hat pass (x0_zero_prob 0) so both sides do two forwards.
    cfg = load_config(ROOT / "configs" / cfg_file, sets + ["train.loss.x0_zero_prob=0.0"])
    print(f"{name}: base dtype {cfg.model.base_dtype}, {cfg.data.seconds:g} s x {cfg.data.fps} fps x "
          f"{cfg.data.size} px, device {dev}")
    for kernel in kernels:
        cfg = load_config(ROOT / "configs" / cfg_file, sets + ["train.loss.x0_zero_prob=0.0", f"model.cmcpe.kernel={kernel}"])
        system = build_system(cfg).to(dev)
        dtype = DTYPES[cfg.model.base_dtype]
        # As DeepSpeed's bf16 mode does: the trained modules compute in the bases' dtype.
        system.model.to(dtype)
        shape_a, shape_v = latent_shapes(system.audio, system.video, cfg.data, 1)
        g = torch.Generator(device=dev).manual_seed(0)
        text_a, text_v = system.encode_text(["x"])
        batch = LatentBatch(torch.randn(shape_a, generator=g, device=dev), torch.randn(shape_v, generator=g, device=dev),
                            text_a, text_v)
        opt = make_optimizer(system.model, cfg.train.optim)

        def joint_step():
            loss, _ = system.loss(batch, cfg.train.loss, generator=g)
            opt.zero_grad()
            loss.backward()
            opt.step()

        # Bases alone: same structure; the noisy latents need grad so backward traverses the UNets
        # as it does when adapters sit inside them.
        ua, uv = system.audio.unet, system.video.unet
        t = torch.tensor([500], device=dev)
        xa, xv = batch.x_a.to(dtype), batch.x_v.to(dtype)
        ta, tv = batch.text_a.to(dtype), batch.text_v.to(dtype).repeat_interleave(shape_v[2], 0)

        def bases_step():
            with torch.no_grad():
                ua(xa, t, None, class_labels=ta)
                uv(xv, t, tv)
            za, zv = xa.clone().requires_grad_(True), xv.clone().requires_grad_(True)
            oa = ua(za, t, None, class_labels=ta).sample
            ov = uv(zv, t, tv).sample
            (oa.float().square().mean() + ov.float().square().mean()).backward()

        counts = system.model.parameter_counts()
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t_joint, t_bases = _time_pair(joint_step, bases_step, repeats, dev)
        mem = f"  peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if dev.type == "cuda" else ""
        print(f"  kernel {kernel}: latents a{tuple(shape_a)} v{tuple(shape_v)}")
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
    ap.add_argument("--only", choices=sorted(CONFIGS), action="append",
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
