"""Adapter overhead of the joint model (issue 2).

For the tiny config and a larger CPU-feasible config, prints trainable vs frozen parameter
counts and the time of one joint training step (METHOD.md: no-grad x0_hat pass + training pass,
backward, AdamW step) against the same step structure run through the two bases alone (both
UNets forward twice, backward from their outputs, no added modules). Ratio = joint / bases.

    python benchmarks/model_overhead.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from svgen.config import load_config  # noqa: E402
from svgen.diffusion.objective import LatentBatch, joint_loss  # noqa: E402
from svgen.media.codec import latent_shapes  # noqa: E402
from svgen.models.build import build_system  # noqa: E402
from svgen.models.tiny import build_tiny_bases  # noqa: E402
from svgen.train.engine import make_optimizer  # noqa: E402

CONFIGS = {
    # name: (tiny-base width, overrides)
    "tiny": (16, []),
    "cpu-medium": (64, ["data.size=128", "data.seconds=2.0", "model.encoder.channels=64",
                        "model.encoder.context_dim=256", "model.cmcpe.heads=4"]),
}


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run(name: str, width: int, overrides: list[str], repeats: int, root: Path) -> None:
    bases = build_tiny_bases(root / name, width=width)
    sets = [f"model.audio.path={bases['audio']}", f"model.video.path={bases['video']}",
            f"model.video.motion_adapter_path={bases['motion_adapter']}", "train.batch_size=1"] + overrides
    cfg = load_config(Path(__file__).resolve().parent.parent / "configs" / "tiny.yaml", sets)
    # Always run the x0_hat pass so both sides do two forwards.
    cfg.train.x0_zero_prob = 0.0
    system = build_system(cfg)
    shape_a, shape_v = latent_shapes(system.audio, system.video, cfg.data, 1)
    g = torch.Generator().manual_seed(0)
    batch = LatentBatch(torch.randn(shape_a, generator=g), torch.randn(shape_v, generator=g),
                        *system.encode_text(["x"]))
    opt = make_optimizer(system.model, cfg)

    def joint_step():
        loss, _ = joint_loss(system.model, system.sched_a, system.sched_v, batch, system.empty_a,
                             system.empty_v, cfg.train, g)
        opt.zero_grad()
        loss.backward()
        opt.step()

    # Bases alone: same structure; the noisy latents need grad so backward traverses the UNets
    # as it does when adapters sit inside them.
    ua, uv = system.audio.unet, system.video.unet
    t = torch.tensor([500])

    def bases_step():
        with torch.no_grad():
            ua(batch.x_a, t, None, class_labels=batch.text_a)
            uv(batch.x_v, t, batch.text_v.repeat_interleave(shape_v[2], 0))
        za = batch.x_a.clone().requires_grad_(True)
        zv = batch.x_v.clone().requires_grad_(True)
        oa = ua(za, t, None, class_labels=batch.text_a).sample
        ov = uv(zv, t, batch.text_v.repeat_interleave(shape_v[2], 0)).sample
        (oa.square().mean() + ov.square().mean()).backward()

    counts = system.model.parameter_counts()
    t_joint = _time(joint_step, repeats)
    t_bases = _time(bases_step, repeats)
    print(f"{name:11s} latents a{tuple(shape_a)} v{tuple(shape_v)}")
    print(f"{'':11s} params: trainable {counts['trainable']:,}  frozen {counts['frozen']:,}  "
          f"({100 * counts['trainable'] / counts['total']:.1f}% trainable)")
    print(f"{'':11s} step: joint {t_joint * 1e3:.1f} ms  bases-only {t_bases * 1e3:.1f} ms  "
          f"overhead ratio {t_joint / t_bases:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--only", choices=sorted(CONFIGS), help="run one config")
    args = ap.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, CPU")
    with tempfile.TemporaryDirectory() as tmp:
        for name, (width, overrides) in CONFIGS.items():
            if args.only and name != args.only:
                continue
            run(name, width, overrides, args.repeats, Path(tmp))


if __name__ == "__main__":
    main()
