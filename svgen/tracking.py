"""Experiment tracking behind one small protocol; MLflow is the backend, ranks other than 0 get
the null tracker (STYLE.md, convention 7)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol


class Tracker(Protocol):
    run_id: str | None

    def log_params(self, params: dict) -> None: ...
    def log(self, metrics: dict[str, float], step: int) -> None: ...
    def log_artifact(self, path: str | Path, subdir: str | None = None) -> None: ...
    def set_tags(self, tags: dict[str, str]) -> None: ...
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

    def close(self, status: str = "FINISHED") -> None:
        pass


class MLflowTracker:
    """One MLflow run per training run; a resumed run passes its ``run_id`` and continues it."""

    def __init__(self, tracking_uri: str, experiment: str, run_name: str, run_id: str | None = None,
                 artifact_root: str | None = None):
        import mlflow

        self.mlflow = mlflow
        uri = os.environ.get("MLFLOW_TRACKING_URI") or tracking_uri
        if uri.startswith("sqlite:///"):
            Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        mlflow.set_tracking_uri(uri)
        self.uri = uri
        if mlflow.get_experiment_by_name(experiment) is None:
            location = None
            if artifact_root is not None:
                location = Path(artifact_root).resolve().as_uri()
            mlflow.create_experiment(experiment, artifact_location=location)
        mlflow.set_experiment(experiment)
        self.run = mlflow.start_run(run_id=run_id) if run_id else mlflow.start_run(run_name=run_name)
        self.run_id = self.run.info.run_id

    def log_params(self, params: dict) -> None:
        # MLflow caps a param value at 6000 characters and rejects re-logging a changed value.
        existing = self.mlflow.get_run(self.run_id).data.params
        fresh = {k: str(v)[:6000] for k, v in params.items() if k not in existing}
        items = list(fresh.items())
        for i in range(0, len(items), 100):
            self.mlflow.log_params(dict(items[i:i + 100]))

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    def log_artifact(self, path, subdir=None) -> None:
        self.mlflow.log_artifact(str(path), artifact_path=subdir)

    def set_tags(self, tags: dict[str, str]) -> None:
        self.mlflow.set_tags(tags)

    def close(self, status: str = "FINISHED") -> None:
        self.mlflow.end_run(status=status)
