"""One readable training loop over the joint model (plain PyTorch, single process).

It optimises only the trainable parameters (added modules, plus motion modules when switched on).
"""

from __future__ import annotations

import itertools
from typing import Iterable, Iterator

import torch
from tqdm import tqdm

from svgen.config import TrainConfig
from svgen.diffusion.objective import LatentBatch, joint_loss
from svgen.models.build import JointSystem


def make_optimizer(system: JointSystem, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = system.model.trainable_parameters()
    if not params:
        raise ValueError("the joint model has no trainable parameters")
    return torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)


def train(system: JointSystem, batches: Iterable[LatentBatch], cfg: TrainConfig, steps: int | None = None,
          log=None, progress: bool = True) -> list[dict[str, float]]:
    """Run ``steps`` (default cfg.steps) optimizer steps; returns the per-step metrics."""
    steps = cfg.steps if steps is None else steps
    model = system.model
    model.train()
    dev = next(model.parameters()).device
    opt = make_optimizer(system, cfg)
    gen = torch.Generator(device=dev).manual_seed(cfg.seed)
    it: Iterator[LatentBatch] = iter(itertools.cycle(batches) if isinstance(batches, list) else batches)
    history = []
    bar = tqdm(range(steps), desc="training", disable=not progress)
    for step in bar:
        batch = next(it).to(dev)
        loss, metrics = joint_loss(model, system.sched_a, system.sched_v, batch, system.empty_a, system.empty_v,
                                   cfg, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            metrics["grad_norm"] = torch.nn.utils.clip_grad_norm_(model.trainable_parameters(), cfg.grad_clip).item()
        opt.step()
        history.append(metrics)
        bar.set_postfix(loss=f"{metrics['loss']:.4f}")
        if log is not None and (step + 1) % cfg.log_every == 0:
            log(metrics, step + 1)
    return history
