"""The training loop: one readable function, started the same way by deepspeed, torchrun, srun and
plain python (launch/train.py). Read it top to bottom:

  distributed init -> bases + joint model -> DeepSpeed engine (trained modules only) -> EMA ->
  resume (engine, EMA, step, data position, RNG) -> tracker -> for each step: micro batches from
  the shards, latents from the frozen VAEs, METHOD.md loss, backward, step -> log, checkpoint on
  schedule or on SIGTERM/SIGUSR1, validation samples -> export trained weights.

Validation (svgen.train.validation) and run provenance (svgen.train.provenance) live in their
own modules; the resumable state is svgen.train.checkpoint's.
"""

from __future__ import annotations

import os
import resource
import signal
import time
from pathlib import Path

import torch
import torch.distributed as dist

from svgen.config import Config, to_yaml
from svgen.data.latents import from_cached
from svgen.data.loader import endless, make_loader
from svgen.data.source import resolve_shards
from svgen.distributed import DistInfo, barrier, init_distributed
from svgen.fileio import write_json, write_text
from svgen.system import build_system
from svgen.tracking import MLflowTracker, NullTracker
from svgen.train.checkpoint import Checkpointer, TrainerState, export_weights
from svgen.train.ema import EMA
from svgen.train.engine import build_engine, gathered, trained_state_dict
from svgen.train.provenance import frozen_digest, record_start
from svgen.train.validation import Validator


class _StopFlag:
    """Set by SIGTERM / SIGUSR1 (Slurm preemption and its pre-timeout warning)."""

    def __init__(self):
        self.raised = None
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._handler)

    def _handler(self, signum, frame):
        if self.raised is not None:  # a second signal: stop now (e.g. a rank stuck in a collective)
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        self.raised = signal.Signals(signum).name


def _agree(flag: bool, info: DistInfo) -> bool:
    """True on every rank if it is true on any (a signal may reach the ranks at different steps)."""
    if info.world_size == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def make_tracker(cfg: Config, info: DistInfo, run_id: str | None):
    if not info.is_main or cfg.track.backend == "none":
        return NullTracker()
    name = cfg.track.run_name or Path(cfg.train.out_dir).name
    return MLflowTracker(cfg.track.tracking_uri, cfg.track.experiment, name, run_id,
                         artifact_root=str(Path(cfg.train.out_dir).parent / "mlartifacts"),
                         system_metrics_interval=cfg.track.system_metrics_interval)


def train(cfg: Config, resume: str = "auto", stop_after: int | None = None) -> dict:
    """Run (or resume) training; returns a summary (rank 0 also writes out_dir/train_result.json).

    ``resume``: 'auto' (latest checkpoint in out_dir if any), 'none', or a checkpoint folder.
    ``stop_after``: leave after this many steps in this process (tests), as a preemption would.
    """
    info = init_distributed()
    t = cfg.train
    out_dir = Path(t.out_dir)
    source = resolve_shards(t.source.shards, latents=t.source.cached_latents)  # a bad path fails before any model loads
    if info.is_main:
        write_text(out_dir / "config.yaml", to_yaml(cfg))
    barrier()

    system = build_system(cfg).to(info.device)  # added modules seeded identically on every rank
    check_frozen = t.check_frozen and info.is_main
    frozen_before = frozen_digest(system.model) if check_frozen else None
    if t.source.cached_latents:
        source.check_latent_cache(system.encoder_fingerprint(cfg.data))
    engine, _, sched = build_engine(system.model, t, info.world_size)
    system.model = engine.module
    named = dict(engine.module.named_parameters())
    averaged = {n: p for n, p in named.items() if t.ema_motion_modules or not n.startswith("motion_modules.")}
    with gathered(engine, averaged.values()):
        ema = EMA(averaged, t.ema_decay) if t.ema_decay > 0 else None
    ckpt = Checkpointer(out_dir, info.rank, t.ckpt.keep_last)
    gen = torch.Generator(device=info.device).manual_seed(t.seed * 1000 + info.rank)  # noise differs per rank

    resumed = ckpt.load(engine, gen, None if resume == "auto" else Path(resume)) if resume != "none" else None
    state = resumed or TrainerState()
    if resumed is not None and ema is not None and resumed.ema is not None:
        ema.load_state_dict(resumed.ema)
    tracker = make_tracker(cfg, info, state.run_id)
    validate = Validator(cfg, out_dir, info, tracker)  # loads feature networks now: fails before training
    loader = make_loader(source, t.batch_size, info.rank, info.world_size, t.source.loader_workers, t.seed)
    if resumed is None:
        record_start(tracker, cfg, source, info, out_dir)
    else:
        tracker.set_tags({"resumed_from_step": str(state.step)})
    batches = endless(loader, state.data)
    stop = _StopFlag()
    started, steps_here, last_log = state.step, 0, time.perf_counter()
    wait = compute = 0.0
    accum = t.accumulation(info.world_size)  # from train.global_batch when set (the paper: 16)
    samples_per_step = t.batch_size * accum * info.world_size
    engine.train()
    reason = "finished"
    while state.step < t.steps:
        parts: dict[str, torch.Tensor] = {}
        for _ in range(accum):
            t0 = time.perf_counter()
            raw = next(batches)
            t1 = time.perf_counter()
            batch = (from_cached(raw, info.device, gen) if t.source.cached_latents
                     else system.encode(raw, cfg.data, gen))
            loss, metrics = system.loss(batch, t.loss, generator=gen, model=engine,
                                        skip_unused_pass=t.parallel.zero_stage < 3)
            engine.backward(loss)
            engine.step()
            wait += t1 - t0
            compute += time.perf_counter() - t1
            for k, v in metrics.items():  # tensors: no host sync until a log step reads them
                parts[k] = parts.get(k, 0.0) + v / accum
        state.step += 1
        steps_here += 1
        if ema is not None:
            with gathered(engine, averaged.values()):
                ema.update(averaged)
        if state.step % t.log_every == 0 or state.step == t.steps:
            now = time.perf_counter()
            gn = engine.get_global_grad_norm()
            logged = {k: float(v) for k, v in parts.items()}
            logged.update({
                "lr": sched.get_last_lr()[0], "grad_norm": float(gn) if gn is not None else 0.0,
                "samples_per_s": samples_per_step * t.log_every / max(now - last_log, 1e-9),
                "data_wait_frac": wait / max(wait + compute, 1e-9), "peak_mem_mb": _peak_memory_mb(info.device)})
            tracker.log(logged, state.step)
            if info.is_main:
                print(f"step {state.step}/{t.steps} loss {logged['loss']:.4f} (a {logged['loss_audio']:.4f} "
                      f"v {logged['loss_video']:.4f}) lr {logged['lr']:.2e} "
                      f"{logged['samples_per_s']:.2f} samples/s wait {logged['data_wait_frac']:.0%}", flush=True)
            last_log, wait, compute = now, 0.0, 0.0
        preempted = _agree(stop.raised is not None, info)
        leaving = preempted or (stop_after is not None and steps_here >= stop_after)
        if state.step % t.ckpt.save_every == 0 or state.step == t.steps or leaving:
            state.run_id, state.ema = tracker.run_id, ema.state_dict() if ema is not None else None
            ckpt.save(engine, state, gen)
        if t.val.every and state.step % t.val.every == 0 and state.step < t.steps:
            validate(system, state.step)
        if leaving:
            reason = f"stopped by {stop.raised}" if preempted else "stopped (stop_after)"
            break

    step = state.step
    result = {"step": step, "started_at": started, "reason": reason, "world_size": info.world_size,
              "run_id": tracker.run_id, "tracking_uri": getattr(tracker, "uri", None)}
    if check_frozen:
        result.update(frozen_before=frozen_before, frozen_after=frozen_digest(system.model))
    weights = trained_state_dict(engine)
    ema_weights = ema.merged(weights) if ema is not None else None  # averaged where tracked
    if step >= t.steps:
        sample = validate(system, step)
        if info.is_main:
            meta = {"step": str(step), "config": to_yaml(cfg)}
            result["weights"] = str(export_weights(out_dir / "export" / "trained.safetensors", weights, meta))
            if ema is not None:
                result["ema_weights"] = str(export_weights(out_dir / "export" / "trained_ema.safetensors",
                                                           ema_weights, meta))
            result["sample"] = str(sample)
    if info.is_main:
        write_json(out_dir / "train_result.json", result, indent=2)
    tracker.close("FINISHED" if reason == "finished" else "KILLED")
    barrier()
    return result
