"""The one place that wraps the joint model for distributed training (STYLE.md, convention 4):
DeepSpeed config generated from the typed config, ZeRO over the trained modules only, AdamW,
LR schedule, activation checkpointing of the frozen UNets.

Frozen bases never enter the engine: JointModel references them without registering them, so
under ZeRO 1/2/3 each rank holds them whole in their dtype and nothing gathers or partitions
them; ZeRO shards only the trained weights, their gradients and optimizer state.
"""

from __future__ import annotations

import math

import torch

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


def enable_activation_checkpointing(model: JointModel) -> None:
    """Recompute the frozen UNets' block activations in backward (diffusers' own mechanism)."""
    # diffusers (0.42) checkpoints whenever grads are enabled, in eval mode too: the bases keep
    # eval mode (no dropout).
    for unet in (model.audio_unet, model.video_unet):
        unet.enable_gradient_checkpointing()


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
        enable_activation_checkpointing(model)
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
