"""Peak memory of the training step at the paper's sizes, on any machine (issue 13).

Runs one training step (x0_hat pass, training pass, backward) of the full-size joint model on
PyTorch's meta device, which tracks shapes but holds no data, and reports the peak of what the
step allocates and holds at once (svgen.train.perf.peak_live_bytes): activations, gradients,
temporaries, above the weights. Eager, with activation checkpointing as the trainer does it
(train.parallel.activation_checkpointing), and with whole UNet blocks as regions for comparison.

Attention runs through the flash-style kernel (which keeps q, k, v, the output and the row
statistics, as flash attention does on a GPU); on meta tensors PyTorch would otherwise take the
maths path and materialise every attention matrix. The encoders' short temporal attention with a
position bias keeps the maths path (small next to the rest).

A GPU's peak adds the weights (2.1 G parameters, bf16: 3.9 GiB) and the optimizer state. At
batch 4 the sizing (64.3 GiB) plus those came within a few per cent of an H200's measured peak
(69.5 GiB; benchmarks/RESULTS.md).

    python benchmarks/activation_memory.py [--batches 4,8,16] [--set model.train_motion_modules=false]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from common import bench_config  # noqa: I001

from svgen.data.latents import LatentBatch
from svgen.models.codec import latent_shapes
from svgen.models.unet_runner import unet_blocks
from svgen.system import build_system
from svgen.train.engine import checkpoint_module, enable_activation_checkpointing
from svgen.train.perf import peak_live_bytes

_SDPA = F.scaled_dot_product_attention


def _flash_style(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    if attn_mask is not None:
        return _SDPA(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale)
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, dropout_p, is_causal, scale=scale)[0]


def _whole_blocks(model) -> None:
    for unet in (model.audio_unet, model.video_unet):
        for block in unet_blocks(unet).values():
            checkpoint_module(block)
    for module in [model.encoder_a, model.encoder_v, *model.blocks_a.values(), *model.blocks_v.values()]:
        checkpoint_module(module)


VARIANTS = {"eager": None, "checkpointing (the trainer's)": enable_activation_checkpointing,
            "whole UNet blocks as regions": _whole_blocks}


def peak_gib(system, cfg, batch: int) -> float:
    meta = torch.device("meta")
    shape_a, shape_v = latent_shapes(system.audio, system.video, cfg.data, batch)
    text_a, text_v = system.encode_text(["x"] * batch)
    data = LatentBatch(torch.randn(shape_a, device=meta), torch.randn(shape_v, device=meta), text_a.to(meta),
                       text_v.to(meta))

    def step():
        loss, _ = system.loss(data, cfg.train.loss, skip_unused_pass=False)
        loss.backward()

    peak = peak_live_bytes(step)
    system.model.zero_grad(set_to_none=True)
    return peak / 2**30


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", default="4,8,16")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    F.scaled_dot_product_attention = _flash_style
    try:
        with tempfile.TemporaryDirectory() as tmp:
            cfg, _ = bench_config("full-size", Path(tmp), ["model.cmcpe.kernel=reference", *args.set])
            d = cfg.data
            print(f"full-size bases, {cfg.model.base_dtype}, {d.seconds:g} s x {d.fps} fps x {d.size} px, motion "
                  f"modules {'trained' if cfg.model.train_motion_modules else 'frozen'}: peak memory of one step "
                  "above the weights (meta-device sizing)")
            print("| batch | " + " | ".join(VARIANTS) + " |")
            print("|---|" + "---|" * len(VARIANTS))
            rows = {b: [] for b in batches}
            for recompute in VARIANTS.values():
                system = build_system(cfg)
                system.model.to_device(torch.device("meta"))
                system.model.to(torch.bfloat16)  # as DeepSpeed's bf16 mode
                system.empty_a, system.empty_v = system.empty_a.to("meta"), system.empty_v.to("meta")
                if recompute is not None:
                    recompute(system.model)
                for b in batches:
                    rows[b].append(peak_gib(system, cfg, b))
            for b in batches:
                print(f"| {b} | " + " | ".join(f"{g:.1f} GiB" for g in rows[b]) + " |", flush=True)
    finally:
        F.scaled_dot_product_attention = _SDPA


if __name__ == "__main__":
    main()
