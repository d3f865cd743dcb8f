"""What the step benchmarks share: bases at benchmark sizes, a random latent batch, the joint
training step and the same step structure through the two bases alone."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from svgen.config import Config, load_config  # noqa: E402
from svgen.data.latents import LatentBatch  # noqa: E402
from svgen.models.codec import latent_shapes  # noqa: E402
from svgen.models.tiny import build_tiny_bases  # noqa: E402
from svgen.system import DTYPES, JointSystem  # noqa: E402

# name: (config file, tiny-base width or "full", overrides)
SIZES = {
    "tiny": ("tiny.yaml", 16, []),
    "cpu-medium": ("tiny.yaml", 64, ["data.size=128", "data.seconds=2.0", "model.encoder.context_dim=256"]),
    # Real AudioLDM-m / SD-1.5 / motion-adapter v1-5-2 sizes (random weights) at the paper's
    # GreatestHits setting (4 s, 8 fps, 256 px, bf16): for a GPU.
    "full-size": ("greatesthits.yaml", "full", []),
}


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def bench_config(size: str, root: Path, extra: list[str] = (), bases: dict | None = None) -> tuple[Config, dict]:
    """The config of a benchmark size over bases saved under ``root`` (built unless given), with
    the x0_hat pass always on (x0_zero_prob 0) so every step does the same work."""
    cfg_file, width, overrides = SIZES[size]
    full = width == "full"
    if bases is None:
        bases = build_tiny_bases(root / size, width=16 if full else width, full=full,
                                 dtype=torch.bfloat16 if full else torch.float32)
    sets = [f"model.audio.path={bases['audio']}", f"model.video.path={bases['video']}",
            f"model.video.motion_adapter_path={bases['motion_adapter']}", "train.batch_size=1",
            *overrides, *extra, "train.loss.x0_zero_prob=0.0"]
    return load_config(ROOT / "configs" / cfg_file, sets), bases


def random_batch(system: JointSystem, cfg: Config, batch: int, dev: torch.device, seed: int = 0) -> LatentBatch:
    g = torch.Generator(device=dev).manual_seed(seed)
    shape_a, shape_v = latent_shapes(system.audio, system.video, cfg.data, batch)
    text_a, text_v = system.encode_text(["x"] * batch)
    return LatentBatch(torch.randn(shape_a, generator=g, device=dev), torch.randn(shape_v, generator=g, device=dev),
                       text_a, text_v)


def bases_step(system: JointSystem, batch: LatentBatch, dtype: torch.dtype):
    """The joint step's structure through the bases alone: both UNets forward without grad, then
    forward and backward from their outputs, no added modules. The noisy latents need grad so
    that backward traverses the UNets as it does when adapters sit inside them."""
    ua, uv = system.audio.unet, system.video.unet
    frames = batch.x_v.shape[2]
    t = torch.full((batch.x_a.shape[0],), 500, device=batch.x_a.device)
    xa = system.model.pad_audio(batch.x_a).to(dtype)
    xv = batch.x_v.to(dtype)
    ta = batch.text_a.to(dtype)
    tv = batch.text_v.to(dtype).repeat_interleave(frames, 0)  # UNetMotionModel takes one context per frame

    def step():
        with torch.no_grad():
            ua(xa, t, None, class_labels=ta)
            uv(xv, t, tv)
        za, zv = xa.clone().requires_grad_(True), xv.clone().requires_grad_(True)
        oa = ua(za, t, None, class_labels=ta).sample
        ov = uv(zv, t, tv).sample
        (oa.float().square().mean() + ov.float().square().mean()).backward()

    return step


def base_dtype(cfg: Config) -> torch.dtype:
    return DTYPES[cfg.model.base_dtype]
