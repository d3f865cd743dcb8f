"""The training loop, started the same way by deepspeed, torchrun, srun and plain python
(launch/train.py). Read it top to bottom:

  train(): distributed init -> set_up(): shards, checkpoint folder and resume plan checked ->
  bases + joint model -> speed levers -> DeepSpeed engine (trained modules only) -> EMA -> resume
  (the newest checkpoint that verifies; engine, EMA, step, data position, RNG; changed settings
  checked) -> tracker -> run_steps(): for each step: micro batches from the shards, latents from
  the frozen VAEs, the joint loss (docs/method.md), backward, step -> log, vote (signals,
  non-finite losses, damaged data) -> checkpoint on schedule or on SIGTERM/SIGUSR1 -> validation
  samples -> finish(): export trained weights, then the last validation.

Nothing in a step waits for the GPU: metrics stay on the device until a log step reads them, the
vote is read a step late, batches are pinned and copied asynchronously. A failure marks the
tracker run FAILED (KILLED for an interrupt) with the error as a tag and leaves every
checkpoint as it was.

Validation (svgen.train.validation), run provenance (svgen.train.provenance), the guards
(svgen.train.guards) and the resume rules (svgen.train.resume) live in their own modules; the
resumable state is svgen.train.checkpoint's.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from svgen.config import Config, to_yaml
from svgen.data.latents import from_cached
from svgen.data.loader import endless, make_loader
from svgen.data.source import resolve_shards
from svgen.distributed import DistInfo, barrier, cleanup, init_distributed, launcher_environ
from svgen.fileio import write_json, write_text
from svgen.system import JointSystem, build_system
from svgen.tracking import MLflowTracker, NullTracker, check_reachable
from svgen.train.checkpoint import Checkpointer, TrainerState, export_weights
from svgen.train.ema import EMA
from svgen.train.engine import build_engine, gathered, trained_state_dict
from svgen.train.guards import BadData, NonFiniteGuard, require_finite
from svgen.train.perf import Throughput, apply_levers, attention_backend, card_peak_tflops, count_flops, resolve_levers
from svgen.train.provenance import frozen_digest, record_start
from svgen.train.resume import apply_lr, check_changes, config_changes, plan_start
from svgen.train.validation import Validator


class _StopFlag:
    """Set by SIGTERM / SIGUSR1 (Slurm preemption and its pre-timeout warning)."""

    def __init__(self):
        self.raised = None
        self.previous = {sig: signal.signal(sig, self._handler) for sig in (signal.SIGTERM, signal.SIGUSR1)}

    def restore(self) -> None:
        """Give the signals back to whoever handled them before (the process may live on)."""
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _handler(self, signum, frame):
        if self.raised is not None:  # a second signal: stop now (e.g. a rank stuck in a collective)
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        self.raised = signal.Signals(signum).name


class _Vote:
    """Flags every rank agrees on, at the same step: [a rank was signalled, the audio loss is not
    finite, the video loss is not finite, a rank has more damaged data than allowed] (max over
    ranks; a signal may reach the ranks at different steps). On CUDA the flags of each step are
    read one step later, from a pinned copy: waiting for them then costs nothing, as reading them
    at once would stall the host. Returns (the step the flags belong to, the flags), or None."""

    def __init__(self, info: DistInfo):
        self.info = info
        self.pending: tuple[int, torch.Tensor, torch.cuda.Event] | None = None

    def __call__(self, step: int, *, stop: bool, loss_a: torch.Tensor, loss_v: torch.Tensor,
                 bad: bool) -> tuple[int, list[bool]] | None:
        dev = self.info.device
        host = torch.tensor([float(stop), 0.0, 0.0, float(bad)], device=dev)
        nonfinite = (~torch.isfinite(torch.stack([loss_a.float().reshape(()), loss_v.float().reshape(())]))).float()
        t = torch.cat([host[:1], nonfinite.to(dev), host[3:]])
        if self.info.world_size > 1:
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
        if dev.type != "cuda":
            return step, [bool(x) for x in t.tolist()]
        pinned = torch.empty(4, pin_memory=True)
        pinned.copy_(t, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        previous, self.pending = self.pending, (step, pinned, done)
        if previous is None:
            return None
        previous[2].synchronize()  # recorded a whole step ago
        return previous[0], [bool(x) for x in previous[1].tolist()]


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def make_tracker(cfg: Config, info: DistInfo, run_id: str | None):
    if not info.is_main or cfg.track.backend == "none":
        return NullTracker()
    out = Path(cfg.train.out_dir)
    return MLflowTracker(cfg.track.tracking_uri, cfg.track.experiment, cfg.track.run_name or out.name, run_id,
                         artifact_root=str(out.parent / "mlartifacts"),
                         system_metrics_interval=cfg.track.system_metrics_interval,
                         spill=out / "tracker_unsent.jsonl")


@dataclass
class Run:
    """What one training run holds between set-up and the end."""

    cfg: Config
    info: DistInfo
    system: JointSystem
    engine: object
    """The DeepSpeed engine over the trained modules."""
    sched: torch.optim.lr_scheduler.LambdaLR
    ema: EMA | None
    averaged: dict[str, torch.nn.Parameter]
    """The weights the EMA tracks."""
    ckpt: Checkpointer
    gen: torch.Generator
    state: TrainerState
    levers: object
    source: object
    """The resolved shards (svgen.data.source.ShardSource)."""
    config_yaml: str
    """The config that trains from here on (recorded in each checkpoint and the export)."""
    resumed: bool
    changes: dict
    """Settings changed on resume: key -> (old, new)."""
    tracker: object = None

    @property
    def out_dir(self) -> Path:
        return Path(self.cfg.train.out_dir)

    def trained(self) -> list[torch.nn.Parameter]:
        return [p for p in self.engine.module.parameters() if p.requires_grad]


def train(cfg: Config, resume: str = "auto", stop_after: int | None = None) -> dict:
    """Run (or resume) training; returns a summary (rank 0 also writes out_dir/train_result.json).

    ``resume``: 'auto' (the newest checkpoint in out_dir that verifies, if any), 'none' (refused
    when out_dir holds checkpoints), or a checkpoint folder.
    ``stop_after``: leave after this many steps in this process (tests), as a preemption would.

    The torch.distributed variables live in os.environ only while it runs, and a process group
    it created is destroyed when it returns: a process may train several times.
    """
    with launcher_environ() as env:
        owned = not dist.is_initialized()
        info = init_distributed(env)
        try:
            if info.is_main and cfg.track.backend == "mlflow":
                check_reachable(cfg.track.tracking_uri)  # seconds, before any model loads
            run = set_up(cfg, info, resume)
            check_frozen = cfg.train.check_frozen and info.is_main
            frozen_before = frozen_digest(run.system.model) if check_frozen else None
            run.tracker = make_tracker(cfg, info, run.state.run_id)
            try:
                result = run_steps(run, stop_after)
                if check_frozen:
                    result.update(frozen_before=frozen_before, frozen_after=frozen_digest(run.system.model))
            except BaseException as e:
                _failed(run, e)
                raise
            if info.is_main:
                write_json(run.out_dir / "train_result.json", result, indent=2)
            run.tracker.close("FINISHED" if result["reason"] == "finished" else "KILLED")
            barrier()
            return result
        finally:
            if owned:
                cleanup()


def _failed(run: Run, e: BaseException) -> None:
    """Mark the tracker run FAILED (KILLED for an interrupt) with the error, and say so in
    out_dir/train_result.json; the checkpoints stay as they were."""
    error = f"{type(e).__name__}: {e}"
    run.tracker.set_tags({"svgen.error": error[:5000]})
    run.tracker.close("KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
    if run.info.is_main:
        write_json(run.out_dir / "train_result.json",
                   {"step": run.state.step, "reason": f"failed: {error}", "run_id": run.tracker.run_id}, indent=2)


def set_up(cfg: Config, info: DistInfo, resume: str) -> Run:
    """Everything before the first step; what can be checked before a model loads is checked first."""
    t = cfg.train
    out_dir = Path(t.out_dir)
    source = resolve_shards(t.source.shards, latents=t.source.cached_latents, allow_pipe=t.source.allow_pipe)
    ckpt = Checkpointer(out_dir, info.rank, t.ckpt.keep_last, info.world_size)
    ckpt.check_writable()
    explicit = plan_start(ckpt.steps(), resume)

    system = build_system(cfg).to(info.device)  # added modules seeded identically on every rank
    levers = resolve_levers(t.perf, info.device)
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
    gen = torch.Generator(device=info.device).manual_seed(t.seed * 1000 + info.rank)  # noise differs per rank

    # Resume: the newest checkpoint that verifies, with the settings it was written with.
    log = print if info.is_main else (lambda *a, **k: None)
    start = None if resume == "none" else explicit or ckpt.resume_point(log)
    changes: dict = {}
    state = TrainerState()
    if start is not None:
        stored = ckpt.stored_config(start) or _legacy_config(out_dir)
        if stored is not None:
            changes = check_changes(config_changes(stored, cfg), start)
        state = ckpt.load(engine, gen, start)
        if "train.optim.lr" in changes:
            apply_lr(sched, t.optim.lr)
        if ema is not None and state.ema is not None:
            ema.load_state_dict(state.ema)
    config_yaml = to_yaml(cfg)
    if info.is_main:  # the config that trains from here on, and the changes a resume made
        write_text(out_dir / "config.yaml", config_yaml)
        if changes:
            _record_changes(out_dir, state.step, changes)
    barrier()
    return Run(cfg=cfg, info=info, system=system, engine=engine, sched=sched, ema=ema, averaged=averaged, ckpt=ckpt,
               gen=gen, state=state, levers=levers, source=source, config_yaml=config_yaml,
               resumed=start is not None, changes=changes)


def _legacy_config(out_dir: Path) -> str | None:
    """Checkpoints of format 1 hold no config: out_dir/config.yaml is the best record there is."""
    p = out_dir / "config.yaml"
    return p.read_text() if p.is_file() else None


def _record_changes(out_dir: Path, step: int, changes: dict) -> None:
    line = json.dumps({"step": step, "changes": {k: list(v) for k, v in changes.items()}})
    path = out_dir / "config_changes.jsonl"
    previous = path.read_text() if path.is_file() else ""
    write_text(path, previous + line + "\n")
    print(f"resumed at step {step} with changed settings: "
          + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changes.items()), flush=True)


def run_steps(run: Run, stop_after: int | None) -> dict:
    """The steps, then :func:`finish`; returns the summary."""
    cfg, info, state, tracker, engine, system = run.cfg, run.info, run.state, run.tracker, run.engine, run.system
    t = cfg.train
    validate = Validator(cfg, run.out_dir, info, tracker)  # loads feature networks now: fails before training
    loader = make_loader(run.source, t.batch_size, rank=info.rank, world_size=info.world_size,
                         num_workers=t.source.loader_workers, seed=t.seed, pin_memory=info.device.type == "cuda",
                         tolerant=True)
    if not run.resumed:
        record_start(tracker, cfg, source=run.source, info=info, out_dir=run.out_dir)
    else:
        tracker.set_tags({"resumed_from_step": str(state.step)})
        if run.changes:
            tracker.set_tags({f"svgen.resume_changes.step_{state.step}":
                              json.dumps({k: list(v) for k, v in run.changes.items()})[:5000]})
    bad = BadData(run.out_dir, info.rank, t.source.max_bad_samples)
    nonfinite = NonFiniteGuard(t.max_nonfinite_steps)
    batches = endless(loader, state.data, on_bad=bad)
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
    try:
        while state.step < t.steps:
            parts: dict[str, torch.Tensor] = {}
            for _ in range(accum):
                t0 = time.perf_counter()
                raw = next(batches)
                t1 = time.perf_counter()
                batch = (from_cached(raw, info.device, run.gen) if t.source.cached_latents
                         else system.encode(raw, cfg.data, run.gen))

                def forward_backward() -> dict[str, torch.Tensor]:
                    with attention_backend(run.levers.attention):
                        loss, metrics = system.loss(batch, t.loss, generator=run.gen, model=engine,
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
            if run.ema is not None:
                with gathered(engine, run.averaged.values()):
                    run.ema.update(run.averaged)
            if state.step % t.log_every == 0 or state.step == t.steps:
                now = time.perf_counter()
                gn = engine.get_global_grad_norm()
                logged = {k: float(v) for k, v in parts.items()}
                logged.update({
                    "lr": run.sched.get_last_lr()[0], "grad_norm": float(gn) if gn is not None else 0.0,
                    **throughput.metrics(state.step - logged_at, now - last_log),
                    "data_wait_frac": wait / max(wait + compute, 1e-9), "peak_mem_mb": _peak_memory_mb(info.device),
                    "data/bad_samples": float(bad.count)})
                tracker.log(logged, state.step)
                if info.is_main:
                    print(f"step {state.step}/{t.steps} loss {logged['loss']:.4f} (a {logged['loss_audio']:.4f} "
                          f"v {logged['loss_video']:.4f}) lr {logged['lr']:.2e} "
                          f"{logged['samples_per_s']:.2f} samples/s{(' ' + throughput.describe(logged)).rstrip()} "
                          f"wait {logged['data_wait_frac']:.0%}", flush=True)
                last_log, logged_at, wait, compute = now, state.step, 0.0, 0.0
            flags = vote(state.step, stop=stop.raised is not None, loss_a=parts["loss_audio"], loss_v=parts["loss_video"],
                         bad=bad.exceeded)
            preempted = False
            if flags is not None:
                at, (signalled, audio_bad, video_bad, too_bad) = flags
                if too_bad:
                    raise bad.error()
                nonfinite.update(at, audio_bad, video_bad)
                preempted = signalled
            leaving = preempted or (stop_after is not None and steps_here >= stop_after)
            if state.step % t.ckpt.save_every == 0 or state.step == t.steps or leaving:
                require_finite(run.trained(), state.step, "checkpoint", run.ckpt.latest())
                state.run_id, state.ema = tracker.run_id, run.ema.state_dict() if run.ema is not None else None
                run.ckpt.save(engine, state, run.gen, run.config_yaml)
            if t.val.every and state.step % t.val.every == 0 and state.step < t.steps:
                _validate(validate, system, state.step, tracker)
            if leaving:
                reason = f"stopped by {stop.raised}" if preempted else "stopped (stop_after)"
                break
    finally:
        stop.restore()
    result = {"step": state.step, "started_at": started, "reason": reason, "world_size": info.world_size,
              "run_id": tracker.run_id, "tracking_uri": getattr(tracker, "uri", None), "bad_samples": bad.count}
    if state.step >= t.steps:
        result.update(finish(run, validate))
    return result


def finish(run: Run, validate: Validator) -> dict:
    """Export the trained (and EMA) weights, then validate. The weights come first: a failing
    validation (an unwritable samples folder, a metric's error) must not cost the run its result."""
    step, out_dir = run.state.step, run.out_dir
    require_finite(run.trained(), step, "export", run.ckpt.latest())
    weights = trained_state_dict(run.engine)
    ema_weights = run.ema.merged(weights) if run.ema is not None else None  # averaged where tracked
    result: dict = {}
    if run.info.is_main:
        meta = {"step": str(step), "config": run.config_yaml}
        history = out_dir / "config_changes.jsonl"
        if history.is_file():
            meta["resume_changes"] = history.read_text()
        result["weights"] = str(export_weights(out_dir / "export" / "trained.safetensors", weights, meta))
        if ema_weights is not None:
            result["ema_weights"] = str(export_weights(out_dir / "export" / "trained_ema.safetensors", ema_weights, meta))
    sample, error = _validate(validate, run.system, step, run.tracker)
    if run.info.is_main:
        result["sample"] = str(sample) if sample is not None else None
        if error:
            result["validation_error"] = error
    return result


def _validate(validate: Validator, system: JointSystem, step: int, tracker) -> tuple[Path | None, str | None]:
    """A validation whose failure is reported (printed, tagged on the tracker run) but never
    stops the run: (the first sample's path, the error)."""
    try:
        return validate(system, step), None
    except Exception as e:  # noqa: BLE001 - any failure of sampling, mp4 writing or scoring
        error = f"{type(e).__name__}: {e}"
        print(f"validation at step {step} failed, training goes on ({error})", flush=True)
        tracker.set_tags({f"svgen.validation_error.step_{step}": error[:5000]})
        return None, error
