"""Experiment tracking behind one small protocol; MLflow is the backend, ranks other than 0 get
the null tracker (docs/design.md, "Tracking")."""

from __future__ import annotations

import collections
import json
import threading
import time
import warnings
from pathlib import Path
from typing import Protocol


class Tracker(Protocol):
    run_id: str | None

    def log_params(self, params: dict) -> None: ...
    def log(self, metrics: dict[str, float], step: int) -> None: ...
    def log_artifact(self, path: str | Path, subdir: str | None = None) -> None: ...
    def set_tags(self, tags: dict[str, str]) -> None: ...
    def log_dataset(self, name: str, uri: str, digest: str) -> None: ...
    def supersede(self, earlier_run_id: str) -> None: ...
    def close(self, status: str = "FINISHED") -> None: ...


class NullTracker:
    run_id = None

    def log_params(self, params: dict) -> None:
        pass

    def log(self, metrics: dict[str, float], step: int) -> None:
        pass

    def log_artifact(self, path, subdir=None) -> None:
        pass

    def set_tags(self, tags: dict[str, str]) -> None:
        pass

    def log_dataset(self, name: str, uri: str, digest: str) -> None:
        pass

    def supersede(self, earlier_run_id: str) -> None:
        pass

    def close(self, status: str = "FINISHED") -> None:
        pass


# The experiment's kind, for MLflow UIs that read it to pick the model-training view.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
# MLflow 3.17's UI ignores that tag: a per-browser toggle picks the GenAI or the model-training
# view, GenAI until changed (seen in headless Chromium, launch/mlflow_ui_check.py). This query on
# a UI route selects model training (and the browser remembers it).
UI_VIEW = "workflowType=machine_learning"


def ui_route(experiment_id: str, run_id: str | None = None) -> str:
    """The MLflow UI route (after the server's address) of an experiment or one of its runs, in
    the model-training view where runs are compared on charts."""
    return f"#/experiments/{experiment_id}" + (f"/runs/{run_id}" if run_id else "") + f"?{UI_VIEW}"


def run_ui_route(tracking_uri: str, run_id: str) -> str:
    """ui_route of a run, looked up in its store."""
    import mlflow

    experiment_id = mlflow.MlflowClient(tracking_uri).get_run(run_id).info.experiment_id
    return ui_route(experiment_id, run_id)


class TrackingError(RuntimeError):
    """The tracking store cannot be used at start; the message names the URI and the fix."""


_RETRY_MAX_S = 30.0


class MLflowTracker:
    """One MLflow run per training run; a resumed run passes its ``run_id`` and continues it.
    ``system_metrics_interval`` > 0 samples CPU, memory, disk, network (and GPU where the NVIDIA
    management library is installed) every that many seconds into the run's system/* metrics.

    Tracking never stops training. The run is opened at once (an http(s) store that does not
    answer within ``connect_timeout`` seconds is an error naming the URI, not a four-minute
    stall), then every call is queued and sent by one background thread: while the store is
    down the calls wait in the queue (retried with back-off, one warning per outage) and go out
    when it is back. ``close`` waits at most ``flush_timeout`` seconds; what is still unsent then
    is written to ``spill`` (JSON Lines, replayable with ``python -m svgen.tracking replay FILE``)
    rather than lost. Every call names the run and the store explicitly (an MlflowClient): no
    process-wide MLflow state, so two trackers in one process do not meet."""

    def __init__(self, tracking_uri: str, experiment: str, run_name: str, run_id: str | None = None,
                 artifact_root: str | None = None, system_metrics_interval: float = 10.0,
                 connect_timeout: float = 5.0, flush_timeout: float = 30.0, spill: str | Path | None = None):
        import mlflow

        self.mlflow, self.uri = mlflow, tracking_uri
        self.flush_timeout, self.spill = flush_timeout, Path(spill) if spill else None
        if tracking_uri.startswith("sqlite:///"):
            Path(tracking_uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        elif tracking_uri.startswith(("http://", "https://")):
            check_reachable(tracking_uri, connect_timeout)
        try:
            self.client = mlflow.MlflowClient(tracking_uri)
            exp = self.client.get_experiment_by_name(experiment)
            if exp is None:
                location = Path(artifact_root).resolve().as_uri() if artifact_root is not None else None
                self.client.create_experiment(experiment, artifact_location=location)
                exp = self.client.get_experiment_by_name(experiment)
            if EXPERIMENT_KIND[0] not in (exp.tags or {}):
                self.client.set_experiment_tag(exp.experiment_id, *EXPERIMENT_KIND)
            if run_id:
                self.client.update_run(run_id, status="RUNNING")
            else:
                run_id = self.client.create_run(exp.experiment_id, run_name=run_name or None).info.run_id
        except mlflow.exceptions.MlflowException as e:
            raise TrackingError(f"cannot open an MLflow run in '{tracking_uri}' (track.tracking_uri): "
                                f"{str(e).splitlines()[0][:300]}; fix the URI, or set track.backend=none") from None
        self.run_id = run_id
        self.experiment_id = exp.experiment_id
        self._queue: collections.deque = collections.deque()
        self._lock = threading.Condition()
        self._closing = False
        self._down_since: float | None = None
        self.unsent = 0
        self._thread = threading.Thread(target=self._send_loop, name="svgen-mlflow", daemon=True)
        self._thread.start()
        self._monitor = None
        if system_metrics_interval > 0:
            try:
                from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

                self._monitor = SystemMetricsMonitor(run_id, sampling_interval=system_metrics_interval,
                                                     resume_logging=True, tracking_uri=tracking_uri)
                self._monitor.start()
            except Exception as e:  # system metrics are a nicety: never a reason to stop
                warnings.warn(f"MLflow system metrics are off: {e}")

    # -- the queue -----------------------------------------------------------------------------

    def _put(self, kind: str, *args) -> None:
        with self._lock:
            self._queue.append((kind, args))
            self._lock.notify()

    def _send(self, kind: str, args: tuple) -> None:
        c, run = self.client, self.run_id
        if kind == "metrics":
            metrics, step, ts = args
            from mlflow.entities import Metric

            batch = [Metric(k, v, ts, step) for k, v in metrics.items()]
            for i in range(0, len(batch), 1000):
                c.log_batch(run, metrics=batch[i:i + 1000], synchronous=True)
        elif kind == "params":
            from mlflow.entities import Param

            (params,) = args
            existing = c.get_run(run).data.params  # MLflow refuses re-logging a changed value
            fresh = [Param(k, v) for k, v in params.items() if k not in existing]
            for i in range(0, len(fresh), 100):
                c.log_batch(run, params=fresh[i:i + 100], synchronous=True)
        elif kind == "tags":
            from mlflow.entities import RunTag

            c.log_batch(run, tags=[RunTag(k, v) for k, v in args[0].items()], synchronous=True)
        elif kind == "artifact":
            path, subdir = args
            c.log_artifact(run, path, artifact_path=subdir)
        elif kind == "dataset":
            from mlflow.data.dataset_source_registry import resolve_dataset_source
            from mlflow.data.meta_dataset import MetaDataset
            from mlflow.tracking.fluent import _create_dataset_input

            name, uri, digest = args
            ds = MetaDataset(resolve_dataset_source(uri), name=name, digest=digest[:36])
            c.log_inputs(run, [_create_dataset_input(ds, "training", None)])
        elif kind == "supersede":
            (earlier,) = args
            try:
                prior = c.get_run(earlier)
            except self.mlflow.exceptions.MlflowException:
                return  # another store, or deleted
            c.set_tag(earlier, "svgen.superseded_by", run)
            if prior.info.status == "RUNNING":
                c.set_terminated(earlier, status="KILLED")
        elif kind == "terminate":
            c.set_terminated(run, status=args[0])

    def _send_loop(self) -> None:
        wait = 1.0
        while True:
            with self._lock:
                while not self._queue and not self._closing:
                    self._lock.wait()
                if not self._queue:
                    return
                kind, args = self._queue[0]
            try:
                self._send(kind, args)
            except Exception as e:  # the store is down or refused: keep the call, retry later
                if self._down_since is None:
                    self._down_since = time.time()
                    warnings.warn(f"MLflow ({self.uri}) did not take a {kind} call ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0][:200] if str(e) else ''}); training goes on, calls are "
                                  "kept and retried", stacklevel=1)
                with self._lock:
                    self._lock.wait(timeout=wait)
                wait = min(wait * 2, _RETRY_MAX_S)
                continue
            if self._down_since is not None:
                print(f"MLflow ({self.uri}) is back after {time.time() - self._down_since:.0f} s; sending the "
                      f"{len(self._queue)} kept calls", flush=True)
                self._down_since, wait = None, 1.0
            with self._lock:
                self._queue.popleft()
                self._lock.notify_all()

    def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for every queued call to be sent; True when all were."""
        deadline = time.time() + timeout
        with self._lock:
            while self._queue and time.time() < deadline:
                self._lock.wait(timeout=max(0.0, min(1.0, deadline - time.time())))
            return not self._queue

    # -- the protocol --------------------------------------------------------------------------

    def log_params(self, params: dict) -> None:
        # MLflow caps a param value at 6000 characters.
        self._put("params", {k: str(v)[:6000] for k, v in params.items()})

    def log(self, metrics: dict[str, float], step: int) -> None:
        self._put("metrics", {k: float(v) for k, v in metrics.items()}, int(step), int(time.time() * 1000))

    def log_artifact(self, path, subdir=None) -> None:
        self._put("artifact", str(path), subdir)

    def set_tags(self, tags: dict[str, str]) -> None:
        self._put("tags", {k: str(v)[:5000] for k, v in tags.items()})

    def log_dataset(self, name: str, uri: str, digest: str) -> None:
        """The training data as the run's dataset input (the UI's 'Datasets' column)."""
        self._put("dataset", name, uri, digest)

    def supersede(self, earlier_run_id: str) -> None:
        """Mark an earlier run of the same out_dir that never reached a checkpoint (its process
        was killed) as KILLED, tagged with this run's id; a finished one is left as it is."""
        self._put("supersede", earlier_run_id)

    def close(self, status: str = "FINISHED") -> None:
        """End the run with ``status`` (FINISHED, FAILED, KILLED) after sending what is queued;
        what cannot be sent within ``flush_timeout`` goes to ``spill``."""
        if self._monitor is not None:
            try:
                self._monitor.finish()
            except Exception:
                pass
            self._monitor = None
        self._put("terminate", status)
        sent = self.flush(self.flush_timeout)
        with self._lock:
            self._closing = True
            left = list(self._queue) if not sent else []
            self._queue.clear()
            self._lock.notify_all()
        if left:
            self.unsent = len(left)
            where = "dropped"
            if self.spill is not None:
                from svgen.fileio import write_lines

                write_lines(self.spill, [json.dumps({"uri": self.uri, "run_id": self.run_id, "kind": k,
                                                     "args": list(a)}) for k, a in left])
                where = f"written to {self.spill} (send them later: python -m svgen.tracking replay {self.spill})"
            warnings.warn(f"MLflow ({self.uri}) was unreachable for the last {len(left)} tracker calls: {where}")


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail within ``timeout`` seconds when an MLflow server does not answer (a no-op for a
    local sqlite store)."""
    if not uri.startswith(("http://", "https://")):
        return
    import requests

    try:
        r = requests.get(uri.rstrip("/") + "/health", timeout=timeout)
        if r.status_code >= 500:
            raise OSError(f"HTTP {r.status_code}")
    except (OSError, requests.RequestException) as e:
        raise TrackingError(f"the MLflow server at '{uri}' (track.tracking_uri) does not answer ({type(e).__name__}): "
                            "start it, fix the URI, or set track.backend=none to train without tracking") from None


def replay(path: str | Path) -> int:
    """Send the calls a closed tracker spilled to ``path``; returns how many were sent."""
    lines = [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]
    by_target: dict = {}
    for rec in lines:
        by_target.setdefault((rec["uri"], rec["run_id"]), []).append(rec)
    sent = 0
    for (uri, run_id), recs in by_target.items():
        t = object.__new__(MLflowTracker)
        import mlflow

        t.mlflow, t.uri, t.run_id, t.client = mlflow, uri, run_id, mlflow.MlflowClient(uri)
        for rec in recs:
            t._send(rec["kind"], tuple(rec["args"]))
            sent += 1
    return sent


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 3 or sys.argv[1] != "replay":
        sys.exit("usage: python -m svgen.tracking replay SPILL.jsonl")
    print(f"sent {replay(sys.argv[2])} tracker calls")
