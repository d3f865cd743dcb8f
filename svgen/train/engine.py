"""The one place that wraps the joint model for distributed training (docs/design.md, "Networks free of distributed code"):
DeepSpeed config generated from the typed config, ZeRO over the trained modules only, AdamW,
LR schedule, activation checkpointing of the frozen UNets.

Frozen bases never enter the engine: JointModel references them without registering them, so
under ZeRO 1/2/3 each rank holds them whole in their dtype and nothing gathers or partitions
them; ZeRO shards only the trained weights, their gradients and optimizer state.
"""

from __future__ import annotations

import contextlib
import functools
import math

import torch
import torch.utils.checkpoint

from svgen.config import OptimConfig, TrainConfig
from svgen.models.joint import JointModel


def deepspeed_config(t: TrainConfig, world_size: int) -> dict:
    """Micro batch, accumulation and global batch from one source of truth (train.*)."""
    accum = t.accumulation(world_size)
    ds = {
        "train_micro_batch_size_per_gpu": t.batch_size,
        "gradient_accumulation_steps": accum,
        "train_batch_size": t.batch_size * accum * world_size,
        "gradient_clipping": t.optim.grad_clip if t.optim.grad_clip > 0 else 0.0,
        "zero_optimization": {"stage": t.parallel.zero_stage},
        "bf16": {"enabled": t.parallel.precision == "bf16"},
        "steps_per_print": 10 ** 9,
        "wall_clock_breakdown": False,
    }
    if t.parallel.zero_stage == 3:
        # Trained modules are small next to the bases: keep whole-module gathers cheap and
        # avoid prefetch buckets sized for LLMs.
        ds["zero_optimization"].update({"stage3_param_persistence_threshold": 0,
                                        "stage3_prefetch_bucket_size": 5e7})
    return ds


def lr_lambda(o: OptimConfig, steps: int):
    """LR factor per step: linear warm-up, then constant or cosine to 0 at ``steps``."""

    def f(step: int) -> float:
        if o.warmup_steps and step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        if o.schedule == "cosine":
            span = max(1, steps - o.warmup_steps)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - o.warmup_steps) / span)))
        return 1.0
    return f


_recompute = True


def _recomputed(forward, *args, **kwargs):
    if torch.is_grad_enabled() and _recompute:
        return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False, **kwargs)
    return forward(*args, **kwargs)


def checkpoint_module(module: torch.nn.Module) -> None:
    """Recompute ``module``'s activations in backward instead of keeping them (when grads are on)."""
    if not isinstance(module.forward, functools.partial):  # once
        module.forward = functools.partial(_recomputed, module.forward)


@contextlib.contextmanager
def recomputation_off(model: JointModel):
    """Within: every activation is kept again (e.g. to count the model's own FLOPs, which
    exclude recomputation)."""
    global _recompute
    unets = [u for u in (model.audio_unet, model.video_unet) if u.is_gradient_checkpointing]
    for unet in unets:
        unet.disable_gradient_checkpointing()
    _recompute = False
    try:
        yield
    finally:
        _recompute = True
        for unet in unets:
            unet.enable_gradient_checkpointing()


def enable_activation_checkpointing(model: JointModel, trained: bool = True) -> list[str]:
    """Recompute activations in backward instead of keeping them; returns the recomputed regions
    besides diffusers' own.

    Small regions, so that backward never holds much recomputed at once: the UNets' resnets and
    transformers (diffusers' mechanism), each motion module (which diffusers leaves out), and
    with ``trained`` the environment encoders and the cross-modal blocks. At the paper's sizes
    this peaks lower than whole UNet blocks as regions (benchmarks/activation_memory.py sizes
    both; figures in benchmarks/RESULTS.md).

    ``trained=False`` under ZeRO-3, whose parameter-gathering hooks on trained modules must run
    once: trained motion modules and the added modules are then left as they are."""
    # diffusers (0.42) checkpoints whenever grads are enabled, in eval mode too: the bases keep
    # eval mode (no dropout).
    for unet in (model.audio_unet, model.video_unet):
        unet.enable_gradient_checkpointing()
    wrapped = []
    if trained or not model.cfg.train_motion_modules:
        for name, module in model.video_unet.named_modules():
            if name.endswith("motion_modules"):
                for i, m in enumerate(module):
                    checkpoint_module(m)
                    wrapped.append(f"video_unet.{name}.{i}")
    if trained:
        regions = {"encoder_a": model.encoder_a, "encoder_v": model.encoder_v}
        regions.update({f"blocks_a.{k}": b for k, b in model.blocks_a.items()})
        regions.update({f"blocks_v.{k}": b for k, b in model.blocks_v.items()})
        for name, module in regions.items():
            checkpoint_module(module)
            wrapped.append(name)
    return wrapped


def make_optimizer(model: JointModel, o: OptimConfig, fused: bool = False) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters only (added modules, plus motion modules if switched on).
    ``fused``: one kernel for the whole update (train.perf.fused_optimizer), else torch's default."""
    params = model.trainable_parameters()
    if not params:
        raise ValueError("the joint model has no trainable parameters")
    return torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay,
                             fused=True if fused else None)


def build_engine(model: JointModel, t: TrainConfig, world_size: int, fused_optimizer: bool = False):
    """(engine, optimizer, scheduler) over the trainable parameters only."""
    import deepspeed

    if t.parallel.activation_checkpointing:
        enable_activation_checkpointing(model, trained=t.parallel.zero_stage < 3)
    opt = make_optimizer(model, t.optim, fused=fused_optimizer)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(t.optim, t.steps))
    engine, opt, _, sched = deepspeed.initialize(model=model, optimizer=opt, lr_scheduler=sched,
                                                 config=deepspeed_config(t, world_size))
    return engine, opt, sched


def gathered(engine, params):
    """Context giving full parameter values on every rank (a no-op below ZeRO-3)."""
    import contextlib

    import deepspeed

    if engine.zero_optimization_stage() == 3:
        return deepspeed.zero.GatheredParameters(list(params), modifier_rank=None)
    return contextlib.nullcontext()


def trained_state_dict(engine) -> dict[str, torch.Tensor]:
    """Full trained weights (fp32, CPU) on every rank, whatever the ZeRO stage."""
    module = engine.module
    named = dict(module.named_parameters())
    with gathered(engine, named.values()):
        return {n: p.detach().float().cpu().clone() for n, p in named.items()}
