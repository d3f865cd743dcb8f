"""The training loop: one readable function, started the same way by deepspeed, torchrun, srun and
plain python (launch/train.py). Read it top to bottom:

  distributed init -> bases + joint model -> speed levers -> DeepSpeed engine (trained modules only) -> EMA ->
  resume (engine, EMA, step, data position, RNG) -> tracker -> for each step: micro batches from
  the shards, latents from the frozen VAEs, METHOD.md loss, backward, step -> log, checkpoint on
  schedule or on SIGTERM/SIGUSR1, validation samples -> export trained weights.

Nothing in a step waits for the GPU: metrics stay on the device until a log step reads them, the
preemption vote is read a step late, batches are pinned and copied asynchronously.

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
from svgen.train.perf import Throughput, apply_levers, attention_backend, card_peak_tflops, count_flops, resolve_levers
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


class _Vote:
    """True on every rank, at the same step, once any rank has been signalled (a signal may reach
    the ranks at different steps). On CUDA the vote of each step is read one step later, from a
    pinned copy: waiting for it then costs nothing, as reading it at once would stall the host."""

    def __init__(self, info: DistInfo):
        self.info = info
        self.pending: tuple[torch.Tensor, torch.cuda.Event] | None = None

    def __call__(self, flag: bool) -> bool:
        if self.info.world_size == 1:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.info.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        if self.info.device.type != "cuda":
            return bool(t.item())
        host = torch.empty(1, pin_memory=True)
        host.copy_(t, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        previous, self.pending = self.pending, (host, done)
        if previous is None:
            return False
        previous[1].synchronize()  # recorded a whole step ago
        return bool(previous[0].item())


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
    levers = resolve_levers(t.perf, info.device)
    check_frozen = t.check_frozen and info.is_main
    frozen_before = frozen_digest(system.model) if check_frozen else None
    if t.source.cached_latents:
        source.check_latent_cache(system.encoder_fingerprint(cfg.data))
    # ZeRO-3's parameter hooks on the trained modules do not trace: compile only the bases there.
    apply_levers(system.model, levers, compile_added=t.parallel.zero_stage < 3)
    if info.is_main:
        print(levers.describe(), flush=True)
    engine, _, sched = build_engine(system.model, t, info.world_size, fused_optimizer=levers.fused_optimizer)
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
    loader = make_loader(source, t.batch_size, info.rank, info.world_size, t.source.loader_workers, t.seed,
                         pin_memory=info.device.type == "cuda")
    if resumed is None:
        record_start(tracker, cfg, source, info, out_dir)
    else:
        tracker.set_tags({"resumed_from_step": str(state.step)})
    batches = endless(loader, state.data)
    stop, vote = _StopFlag(), _Vote(info)
    started, steps_here, last_log, logged_at = state.step, 0, time.perf_counter(), state.step
    wait = compute = 0.0
    accum = t.accumulation(info.world_size)  # from train.global_batch when set (the paper: 16)
    samples_per_step = t.batch_size * accum * info.world_size
    peak = card_peak_tflops(info.device, t.perf.peak_tflops, cfg.model.base_dtype)
    throughput = Throughput(samples_per_step, t.batch_size * accum, peak, state.flops_per_sample,  # per GPU
                            recomputed=t.parallel.activation_checkpointing)
    # Skipping the x0_hat pass when every estimate is zeroed needs the masks on the host: worth it
    # on CPU, a stall per step on CUDA; and never under ZeRO-3, whose forward is collective.
    skip_unused = t.parallel.zero_stage < 3 and info.device.type != "cuda"
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

            def forward_backward() -> dict[str, torch.Tensor]:
                with attention_backend(levers.attention):
                    loss, metrics = system.loss(batch, t.loss, generator=gen, model=engine,
                                                skip_unused_pass=skip_unused)
                    engine.backward(loss)
                return metrics

            if throughput.flops_per_sample is None:  # counted once, on the run's first micro step
                out: list = []
                throughput.flops_per_sample = count_flops(lambda: out.append(forward_backward())) / t.batch_size
                state.flops_per_sample = throughput.flops_per_sample
                metrics = out[0]
            else:
                metrics = forward_backward()
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
                **throughput.metrics(state.step - logged_at, now - last_log),
                "data_wait_frac": wait / max(wait + compute, 1e-9), "peak_mem_mb": _peak_memory_mb(info.device)})
            tracker.log(logged, state.step)
            if info.is_main:
                mfu = f" {throughput.key.upper()} {logged[throughput.key]:.1%}" if throughput.key in logged else ""
                print(f"step {state.step}/{t.steps} loss {logged['loss']:.4f} (a {logged['loss_audio']:.4f} "
                      f"v {logged['loss_video']:.4f}) lr {logged['lr']:.2e} "
                      f"{logged['samples_per_s']:.2f} samples/s{mfu} wait {logged['data_wait_frac']:.0%}", flush=True)
            last_log, logged_at, wait, compute = now, state.step, 0.0, 0.0
        preempted = vote(stop.raised is not None)
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
