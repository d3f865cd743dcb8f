"""The training loop: one readable function, started the same way by deepspeed, torchrun, srun and
plain python (launch/train.py). Read it top to bottom:

  distributed init -> bases + joint model -> DeepSpeed engine (trained modules only) -> EMA ->
  resume (engine, EMA, step, data position, RNG) -> tracker -> for each step: micro batches from
  the shards, latents from the frozen VAEs, METHOD.md loss, backward, step -> log, checkpoint on
  schedule or on SIGTERM/SIGUSR1, validation samples -> export trained weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import signal
import subprocess
import time
from pathlib import Path
from typing import Iterator

import torch
import torch.distributed as dist

from svgen.config import Config, flatten, to_dict, to_yaml
from svgen.data.latents import encoder_fingerprint, from_cached, to_latents
from svgen.data.loader import make_loader
from svgen.diffusion.objective import joint_loss
from svgen.distributed import DistInfo, barrier, init_distributed
from svgen.generate import generate, save_sounding_videos
from svgen.metrics.suite import NEEDS_REFERENCE, RATE, Clip, FeatureNets, evaluate, iter_clips
from svgen.models.build import build_system
from svgen.shards import LATENT_INDEX
from svgen.tracking import MLflowTracker, NullTracker
from svgen.train.checkpoint import Checkpointer, export_weights
from svgen.train.ema import EMA
from svgen.train.engine import build_engine, gathered, trained_state_dict


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


def _frozen_digest(model) -> str:
    h = hashlib.sha1()
    for name, p in sorted(model.frozen_parameters().items()):
        h.update(name.encode())
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                              cwd=Path(__file__).resolve().parent).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _batches(loader, position: dict) -> Iterator[dict]:
    """Endless batches that keep ``position`` = {epoch, batches consumed in it} current, and on
    resume skip what the interrupted run already trained on (same shuffle: same seed and epoch)."""
    epoch, skip = position["epoch"], position["batches"]
    while True:
        loader.dataset.set_epoch(epoch)
        n = 0
        for i, batch in enumerate(loader):
            n += 1
            if i < skip:
                continue
            position.update(epoch=epoch, batches=i + 1)
            yield batch
        if n == 0:
            raise RuntimeError("the shards yielded no full batch: lower train.batch_size or add data")
        epoch, skip = epoch + 1, 0
        position.update(epoch=epoch, batches=0)


def make_tracker(cfg: Config, info: DistInfo, run_id: str | None):
    if not info.is_main or cfg.track.backend == "none":
        return NullTracker()
    name = cfg.track.run_name or Path(cfg.train.out_dir).name
    return MLflowTracker(cfg.track.tracking_uri, cfg.track.experiment, name, run_id,
                         artifact_root=str(Path(cfg.train.out_dir).parent / "mlartifacts"))


def validate(system, cfg: Config, out_dir: Path, step: int, tracker, info: DistInfo,
             cache: dict | None = None) -> Path | None:
    """``train.val_clips`` sounding videos from the current weights, logged as artifacts and
    scored by the same code as launch/eval.py: AV-Align, plus the distances of ``eval.metrics``
    when ``eval.reference`` is set and there are >= 2 clips (reference features and feature
    networks are kept in ``cache`` across validations). Every rank runs the sampler (under
    ZeRO-3 the forward gathers weights collectively); rank 0 writes and scores."""
    n = cfg.train.val_clips
    frames, wave = generate(system, [cfg.sample.prompt] * n, cfg.data, cfg.sample,
                            seed=[cfg.sample.seed + i for i in range(n)], progress=False)
    if not info.is_main:
        return None
    paths = save_sounding_videos(out_dir / "samples", frames, wave, cfg.data, stem=f"step{step:07d}")
    for path in paths:
        tracker.log_artifact(path, "samples")
    e, cache, metrics = cfg.eval, cache if cache is not None else {}, _val_metrics(cfg)
    wave = wave.float().cpu()
    if cfg.data.sample_rate != RATE:
        import torchaudio

        wave = torchaudio.functional.resample(wave, cfg.data.sample_rate, RATE)
    clips = [Clip(p.stem, frames[i].cpu().numpy(), wave[i].numpy(), float(cfg.data.fps)) for i, p in enumerate(paths)]
    if "nets" not in cache:
        cache["nets"] = FeatureNets(e, metrics)
    need_ref = len(metrics) > 1 and "reference" not in cache
    try:
        scores, ref = evaluate(clips, iter_clips(e.reference, e.max_clips) if need_ref else None, e, metrics,
                               cache["nets"], cache.get("reference"), progress=False)
    except (OSError, ValueError) as err:  # a bad reference must not cost the run: the mp4s are saved
        print(f"validation at step {step}: scoring failed: {err}", flush=True)
        return paths[0]
    if ref is not None:
        cache["reference"] = ref
    tracker.log({f"val/{k}": v for k, v in scores.items() if not k.startswith("num_")}, step)
    return paths[0]


def _val_metrics(cfg: Config) -> list[str]:
    """AV-Align always; the distances of eval.metrics when there is a reference and >= 2 clips."""
    e = cfg.eval
    return ["av_align"] + [m for m in e.metrics if m in NEEDS_REFERENCE and e.reference and cfg.train.val_clips >= 2]


def train(cfg: Config, resume: str = "auto", stop_after: int | None = None) -> dict:
    """Run (or resume) training; returns a summary (rank 0 also writes out_dir/train_result.json).

    ``resume``: 'auto' (latest checkpoint in out_dir if any), 'none', or a checkpoint folder.
    ``stop_after``: leave after this many steps in this process (tests), as a preemption would.
    """
    info = init_distributed()
    t = cfg.train
    out_dir = Path(t.out_dir)
    if not t.shards:
        raise ValueError("train.shards is empty: point it at a data_prep output folder")
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.yaml").write_text(to_yaml(cfg))
    barrier()

    system = build_system(cfg).to(info.device)  # added modules seeded identically on every rank
    frozen_before = _frozen_digest(system.model)
    engine, _, sched = build_engine(system.model, cfg, info.world_size)
    system.model = engine.module
    named = dict(engine.module.named_parameters())
    with gathered(engine, named.values()):
        ema = EMA(named, t.ema_decay) if t.ema_decay > 0 else None
    ckpt = Checkpointer(out_dir, info.rank, t.keep_last)
    gen = torch.Generator(device=info.device).manual_seed(t.seed * 1000 + info.rank)  # noise differs per rank

    state = None
    if resume != "none":
        state = ckpt.load(engine, gen, None if resume == "auto" else Path(resume))
    step = state["step"] if state else 0
    position = dict(state["data"]) if state else {"epoch": 0, "batches": 0}
    if state and ema is not None and "ema" in state:
        ema.load_state_dict(state["ema"])

    tracker = make_tracker(cfg, info, state.get("run_id") if state else None)
    val_cache: dict = {}
    if info.is_main:  # a missing feature-network file or too-short clips fail now, not after training
        val_cache["nets"] = FeatureNets(cfg.eval, _val_metrics(cfg))
        frames = round(cfg.data.seconds * cfg.data.fps)
        if {"fvd", "kvd"} & set(_val_metrics(cfg)) and frames < cfg.eval.fvd_frames:
            raise ValueError(f"validation scores fvd/kvd on {cfg.eval.fvd_frames} frames (eval.fvd_frames) but "
                             f"clips have {frames}: lower eval.fvd_frames or drop fvd/kvd from eval.metrics")
    if t.cached_latents:
        check_latent_cache(t.shards, encoder_fingerprint(system, cfg.data))
    loader = make_loader(t.shards, t.batch_size, info.rank, info.world_size, t.loader_workers, t.seed,
                         latents=t.cached_latents)
    if state is None:
        shard_list = "\n".join(loader.dataset.urls)
        tracker.log_params(flatten(to_dict(cfg)))
        tracker.set_tags({"git_commit": _git_commit(), "world_size": str(info.world_size),
                          "shards_sha1": hashlib.sha1(shard_list.encode()).hexdigest(),
                          "dataset_manifest_sha1": _manifest_digest(t.shards)})
        if info.is_main:
            (out_dir / "shards.txt").write_text(shard_list + "\n")
            tracker.log_artifact(out_dir / "shards.txt")
            tracker.log_artifact(out_dir / "config.yaml")
    else:
        tracker.set_tags({"resumed_from_step": str(step)})
    it = _batches(loader, position)
    stop = _StopFlag()
    started, steps_here, last_log = step, 0, time.perf_counter()
    wait = compute = 0.0
    samples_per_step = t.batch_size * t.grad_accum * info.world_size
    engine.train()
    reason = "finished"
    while step < t.steps:
        metrics_acc: dict[str, float] = {}
        for _ in range(t.grad_accum):
            t0 = time.perf_counter()
            raw = next(it)
            t1 = time.perf_counter()
            batch = from_cached(raw, info.device) if t.cached_latents else to_latents(system, raw, cfg.data)
            loss, metrics = joint_loss(engine, system.sched_a, system.sched_v, batch, system.empty_a,
                                       system.empty_v, t, gen, skip_unused_pass=t.zero_stage < 3)
            engine.backward(loss)
            engine.step()
            wait += t1 - t0
            compute += time.perf_counter() - t1
            for k, v in metrics.items():
                metrics_acc[k] = metrics_acc.get(k, 0.0) + v / t.grad_accum
        step += 1
        steps_here += 1
        if ema is not None:
            with gathered(engine, named.values()):
                ema.update(named)
        if step % t.log_every == 0 or step == t.steps:
            now = time.perf_counter()
            gn = engine.get_global_grad_norm()
            metrics_acc.update({
                "lr": sched.get_last_lr()[0], "grad_norm": float(gn) if gn is not None else 0.0,
                "samples_per_s": samples_per_step * t.log_every / max(now - last_log, 1e-9),
                "data_wait_frac": wait / max(wait + compute, 1e-9), "peak_mem_mb": _peak_memory_mb(info.device)})
            tracker.log(metrics_acc, step)
            if info.is_main:
                print(f"step {step}/{t.steps} loss {metrics_acc['loss']:.4f} (a {metrics_acc['loss_audio']:.4f} "
                      f"v {metrics_acc['loss_video']:.4f}) lr {metrics_acc['lr']:.2e} "
                      f"{metrics_acc['samples_per_s']:.2f} samples/s wait {metrics_acc['data_wait_frac']:.0%}",
                      flush=True)
            last_log, wait, compute = now, 0.0, 0.0
        preempted = _agree(stop.raised is not None, info)
        leaving = preempted or (stop_after is not None and steps_here >= stop_after)
        if step % t.save_every == 0 or step == t.steps or leaving:
            trainer_state = {"data": dict(position), "run_id": tracker.run_id,
                             "ema": ema.state_dict() if ema is not None else None}
            ckpt.save(engine, step, trainer_state, gen)
        if t.val_every and step % t.val_every == 0 and step < t.steps:
            validate(system, cfg, out_dir, step, tracker, info, val_cache)
        if leaving:
            reason = f"stopped by {stop.raised}" if preempted else "stopped (stop_after)"
            break

    result = {"step": step, "started_at": started, "reason": reason, "frozen_before": frozen_before,
              "frozen_after": _frozen_digest(system.model), "world_size": info.world_size,
              "run_id": tracker.run_id, "tracking_uri": getattr(tracker, "uri", None)}
    weights = trained_state_dict(engine)
    if step >= t.steps:
        sample = validate(system, cfg, out_dir, step, tracker, info, val_cache)
        if info.is_main:
            meta = {"step": str(step), "config": to_yaml(cfg)}
            result["weights"] = str(export_weights(out_dir / "export" / "trained.safetensors", weights, meta))
            if ema is not None:
                result["ema_weights"] = str(export_weights(out_dir / "export" / "trained_ema.safetensors",
                                                           ema.state_dict()["shadow"], meta))
            result["sample"] = str(sample)
    if info.is_main:
        (out_dir / "train_result.json").write_text(json.dumps(result, indent=2))
    tracker.close("FINISHED" if reason == "finished" else "KILLED")
    barrier()
    return result


def check_latent_cache(shards: str, fingerprint: str) -> None:
    """Refuse a latent cache made by other encoders or clip settings (it would train on wrong latents)."""
    index = Path(shards) / LATENT_INDEX
    if not index.is_file():
        raise FileNotFoundError(f"train.cached_latents is set but '{index}' is missing: run launch/cache_latents.py")
    cached = json.loads(index.read_text())["encoder_fingerprint"]
    if cached != fingerprint:
        raise ValueError(f"stale latent cache in '{shards}': made with encoders/settings {cached[:12]}, this model's "
                         f"are {fingerprint[:12]}; re-run launch/cache_latents.py (after deleting the old latent shards)")


def _manifest_digest(shards: str) -> str:
    manifest = Path(shards) / "manifest.jsonl"
    return hashlib.sha1(manifest.read_bytes()).hexdigest() if manifest.is_file() else "none"
