"""Orchestrate shard tasks and write the run's manifest, errors and summary.

On a cluster the driver attaches to the running Ray (``ray job submit`` sets RAY_ADDRESS, or
pass --address). On one machine, a small job runs on local worker processes (data_prep/local.py,
the same stage code without a cluster's start-up) and a larger one on an embedded Ray on
127.0.0.1 (``prep.executor`` and ``prep.local_max_inputs`` choose).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

from data_prep.inputs import InputItem, discover
from data_prep.shard import damaged, is_finished, stats_path, write_shard
from svgen.config import Config, to_dict
from svgen.fileio import write_json, write_lines
from svgen.shards import shard_name


class PrepError(RuntimeError):
    """The run cannot proceed as asked; the message says why and what to do."""


_NOT_OUTPUT = ("workers", "max_retries", "verify_shards", "executor", "local_max_inputs")
"""prep settings that change how a run goes, not what it writes."""


def _fingerprint(items: list[InputItem], cfg: Config) -> str:
    blob = json.dumps({"inputs": [asdict(i) for i in items], "data": to_dict(cfg)["data"],
                       "prep": {k: v for k, v in to_dict(cfg)["prep"].items() if k not in _NOT_OUTPUT}},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def shard_size(num_inputs: int, inputs_per_shard: int, min_shards: int) -> int:
    """Inputs per shard: ``inputs_per_shard``, or fewer when that would give under ``min_shards``
    shards (a small corpus in one shard would run on one worker)."""
    return max(1, min(inputs_per_shard, -(-num_inputs // min_shards)))


def init_ray(address: str | None, workers: int):
    """Ray, connected; and whether this call started an embedded cluster (the caller shuts it
    down when done: a library caller such as the ablation must not keep idle workers, a GCS and
    a raylet for the rest of its process)."""
    import ray

    if ray.is_initialized():
        return ray, False
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        return ray, False
    # Ray's agents and workers outlived a driver killed with SIGKILL: a watchdog, started before
    # the cluster (a kill inside ray.init too), ends them with it.
    from data_prep.reaper import cluster_temp_dir, start_watchdog

    temp_dir = cluster_temp_dir()
    start_watchdog(temp_dir)
    ray.init(address="local", num_cpus=workers or os.cpu_count(), include_dashboard=False,
             _node_ip_address="127.0.0.1", log_to_driver=True, _temp_dir=temp_dir)
    return ray, True


def run(source: str, output: str, cfg: Config, *, address: str | None = None, overwrite: bool = False,
        progress: bool = True) -> dict:
    t0 = time.time()
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    items = discover(source, cfg.prep.extensions)
    fp = _fingerprint(items, cfg)
    run_file = out / "run.json"
    if run_file.is_file():
        prev = json.loads(run_file.read_text())
        if prev.get("fingerprint") != fp and not overwrite:
            raise PrepError(f"'{out}' holds shards of another input list or config (fingerprint "
                            f"{prev.get('fingerprint')} != {fp}); choose a new --output or pass --overwrite")
        if prev.get("fingerprint") != fp:
            for f in out.glob("shard-*"):
                f.unlink()
    write_json(run_file, {"fingerprint": fp, "source": str(source), "config": to_dict(cfg)})

    n = shard_size(len(items), cfg.prep.inputs_per_shard, cfg.prep.min_shards)
    shards = {k: items[k * n:(k + 1) * n] for k in range((len(items) + n - 1) // n)}
    todo = [k for k in shards if not is_finished(out, k)]
    remade = _verify_finished(out, [k for k in shards if k not in todo], cfg.prep.verify_shards, progress)
    todo = sorted(todo + list(remade))
    skipped = len(shards) - len(todo)
    failed: dict[int, str] = {}
    clips = 0
    executor = "none (nothing to do)"
    if todo:
        bar = tqdm(total=len(todo), desc="shards", unit="shard", disable=not progress)

        def done(k: int, stats: dict | None, error: str | None) -> None:
            nonlocal clips
            if error is not None:
                failed[k] = error
            else:
                clips += stats["num_clips"]
            bar.update(1)
            bar.set_postfix(clips=clips, failed=len(failed))

        executor = choose_executor(cfg.prep, address, sum(len(shards[k]) for k in todo))
        if executor == "local":
            from data_prep.local import run_local

            run_local(write_shard, lambda k: (str(out), k, shards[k], cfg), todo,
                      workers=cfg.prep.workers or os.cpu_count() or 1, max_retries=cfg.prep.max_retries, on_done=done)
        else:
            _run_ray(out, shards, todo, cfg, address=address, done=done)
        bar.close()
    remove_stale_temporaries(out, before=t0)
    return finalize(out, shards, failed, skipped=skipped, seconds=time.time() - t0, clips_this_run=clips,
                    executor=executor)


def choose_executor(prep, address: str | None, inputs: int) -> str:
    """'ray' or 'local' for this run: prep.executor, or with 'auto', Ray when attaching to a
    cluster (--address or RAY_ADDRESS) or when more than prep.local_max_inputs inputs are to do,
    else local worker processes (a Ray cluster's start-up would be most of a small run)."""
    if prep.executor != "auto":
        return prep.executor
    if address or os.environ.get("RAY_ADDRESS"):
        return "ray"
    return "local" if inputs <= prep.local_max_inputs else "ray"


def _run_ray(out: Path, shards: dict, todo: list[int], cfg: Config, *, address: str | None, done) -> None:
    """The shard tasks on Ray (an attached cluster, or an embedded one started and shut down here)."""
    ray, started = init_ray(address, cfg.prep.workers)
    try:
        task = ray.remote(num_cpus=1, max_retries=cfg.prep.max_retries, retry_exceptions=True)(write_shard)
        limit = cfg.prep.workers or int(ray.cluster_resources().get("CPU", 1))
        pending, queue = {}, list(todo)
        while queue or pending:
            while queue and len(pending) < limit:
                k = queue.pop(0)
                pending[task.remote(str(out), k, shards[k], cfg)] = k
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                k = pending.pop(ref)
                try:
                    done(k, ray.get(ref), None)
                except Exception as e:  # noqa: BLE001 - a task that failed all its retries
                    done(k, None, f"{type(e).__name__}: {str(e).splitlines()[-1] if str(e) else ''}")
    finally:
        if started:
            ray.shutdown()


def _verify_finished(out: Path, finished: list[int], verify: bool, progress: bool) -> dict[int, str]:
    """Finished shards whose tar no longer matches its stats' SHA-256 (read in parallel
    threads: hashing releases the GIL); their stats are removed so they are remade."""
    if not verify or not finished:
        return {}
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        found = dict(zip(finished, tqdm(pool.map(lambda k: damaged(out, k), finished), total=len(finished),
                                        desc="verifying finished shards", unit="shard",
                                        disable=not progress or len(finished) < 16)))
    bad = {k: why for k, why in found.items() if why}
    for k, why in bad.items():
        print(f"remaking {shard_name(k)}: {why}", flush=True)
        stats_path(out, k).unlink(missing_ok=True)
    return bad


def remove_stale_temporaries(out: Path, before: float) -> list[Path]:
    """Delete hidden temporary files (``.NAME.PID.RANDOM.tmp``) that a killed earlier run left in
    ``out``: those last written before this run started. A writer still running (an orphaned task
    of a killed driver) keeps touching its file, so it is left alone."""
    removed = []
    for p in out.glob(".*.tmp"):
        try:
            if p.is_file() and p.stat().st_mtime < before:
                p.unlink()
                removed.append(p)
        except FileNotFoundError:  # renamed into place or removed meanwhile
            continue
    return removed


def finalize(out: Path, shards: dict[int, list[InputItem]], failed: dict[int, str], *, skipped: int,
             seconds: float, clips_this_run: int = 0, executor: str = "") -> dict:
    """Rebuild manifest, errors and summary from every shard's stats: nothing is counted twice
    and nothing is lost, however many runs it took."""
    manifest, errors, clips, media, clip_sec, by_stage = [], [], 0, 0.0, 0.0, {}
    for k, items in shards.items():
        if k in failed or not is_finished(out, k):
            reason = failed.get(k, "shard not finished")
            for item in items:
                errors.append({"input": item.path, "stage": "shard", "message": reason, "shard": shard_name(k)})
            continue
        stats = json.loads(stats_path(out, k).read_text())
        clips += stats["num_clips"]
        media += stats["media_seconds"]
        clip_sec += stats["clip_seconds"]
        by_input: dict[str, list] = {}
        for c in stats["clips"]:
            by_input.setdefault(c["input"], []).append(c["key"])
        for item in items:
            manifest.append({"input": item.path, "shard": stats["shard"], "clips": by_input.get(item.path, [])})
        for e in stats["errors"]:
            errors.append({**e, "shard": stats["shard"]})
    for e in errors:
        by_stage[e["stage"]] = by_stage.get(e["stage"], 0) + 1
    write_lines(out / "manifest.jsonl", [json.dumps(m) for m in manifest])
    write_lines(out / "errors.jsonl", [json.dumps(e) for e in errors])
    inputs = sum(len(v) for v in shards.values())
    with_errors = {e["input"] for e in errors}
    with_clips = {m["input"] for m in manifest if m["clips"]}
    summary = {
        # Disjoint, adding up to "inputs": clips only, clips and errors (some windows failed),
        # errors only (nothing kept), neither (e.g. shorter than one window: no window at all).
        "inputs": inputs, "inputs_with_clips_only": len(with_clips - with_errors),
        "inputs_with_clips_and_errors": len(with_clips & with_errors),
        "inputs_with_errors_only": len(with_errors - with_clips),
        "inputs_with_neither": inputs - len(with_clips | with_errors),
        "inputs_with_clips": len(with_clips), "inputs_with_errors": len(with_errors),
        "clips_written": clips, "errors": len(errors),
        "errors_by_stage": by_stage, "shards": len(shards), "shards_skipped": skipped,
        "shards_failed": sorted(shard_name(k) for k in failed),
        "media_hours": media / 3600, "clip_hours": clip_sec / 3600, "seconds": seconds,
        "clips_written_this_run": clips_this_run, "executor": executor,
        # The rate of the work done in this run: shards finished earlier took no time now.
        "clips_per_second": clips_this_run / seconds if seconds > 0 else 0.0,
    }
    write_json(out / "summary.json", summary)
    return summary


def report(summary: dict, out: str) -> str:
    s = summary
    lines = [
        f"data prep: {s['inputs']} inputs -> {s['clips_written']} clips in {s['shards']} shards "
        f"({s['shards_skipped']} already done) under {out}",
        f"  media {s['media_hours']:.3f} h probed, {s['clip_hours']:.3f} h of clips; this run wrote "
        f"{s.get('clips_written_this_run', s['clips_written'])} clips in {s['seconds']:.1f}s "
        f"({s['clips_per_second']:.2f} clips/s, {s.get('executor', 'ray')})",
        f"  errors: {s['errors']}" + (" (" + ", ".join(f"{k}: {v}" for k, v in sorted(s["errors_by_stage"].items())) + ")"
                                      if s["errors"] else ""),
        f"  manifest: {out}/manifest.jsonl  errors: {out}/errors.jsonl  summary: {out}/summary.json",
    ]
    if s["shards_failed"]:
        lines.append(f"  failed shards (re-run the same command to retry): {', '.join(s['shards_failed'])}")
    return "\n".join(lines)
